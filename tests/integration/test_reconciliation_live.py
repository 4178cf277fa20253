"""Reconciliation breaks end to end on the real broker: a fill the books of record never booked shows
as a RECONCILIATION_BREAK on drift-alerts, counted in /metrics, without holding the snapshot back;
the next snapshot that agrees resolves it.

The book: A 600 @ 100, B 800 @ 50, no cash (NAV 100,000). The monitor applies BUY 10 A @ 100 at 1 s
(A 610, cash -1,000); the books of record as of 2 s do not have it (A 600, cash 0).
"""

from __future__ import annotations

import pytest

from monitor.contract import validate
from tests.conftest import consume, produce
from tests.faults import changelog_books, wait_for
from tests.integration.test_signals_live import book, market, ts

pytestmark = pytest.mark.integration

PID = "P-RECON"


def snapshot(at: float, a: float, cash: float) -> tuple[str, str, dict]:
    return ("positions", PID, {"portfolio_id": PID, "as_of": ts(at), "cash": {"USD": cash},
                               "positions": [{"instrument_id": "A", "quantity": a},
                                             {"instrument_id": "B", "quantity": 800}]})


def test_a_fill_missing_from_the_books_of_record_is_a_break_then_resolves(worker, settings):
    produce(settings, market(book(PID, {})))
    produce(settings, [("fills", PID, {"fill_id": "F-1", "portfolio_id": PID, "instrument_id": "A", "side": "BUY",
                                       "quantity": 10, "price": 100.0, "ts": ts(1)}),
                       snapshot(2, 600, 0.0)])
    [opened] = consume(settings, "drift-alerts", lambda r: len(r) >= 1)
    validate("drift-alerts", {k: v for k, v in opened.items() if k not in ("key", "partition", "offset")})
    assert (opened["kind"], opened["state"], opened["portfolio_id"], opened["event_ts"]) == (
        "RECONCILIATION_BREAK", "OPEN", PID, ts(2))
    assert opened["reconciliation"] == {
        "as_of": ts(2),
        "positions": [{"instrument_id": "A", "expected": 610.0, "reported": 600.0, "difference": -10.0}],
        "cash": [{"currency": "USD", "expected": -1_000.0, "reported": 0.0, "difference": 1_000.0}]}
    assert opened["inputs"]["last_fill_id"] == "F-1"

    # The snapshot took effect all the same: the worker's own record of the book is the books of record.
    # (its book-inputs changelog, folded as a restarted worker would: the fill is in the snapshot).
    wanted = ({"A": 600.0, "B": 800.0}, 0.0)
    wait_for(lambda: None if changelog_books(settings).get(PID) == wanted else "the snapshot is not in force",
             timeout=30)

    produce(settings, [snapshot(3, 600, 0.0)])  # agrees with what the monitor now holds
    alerts = consume(settings, "drift-alerts", lambda r: len(r) >= 2)
    assert [(a["kind"], a["state"], a["alert_id"]) for a in alerts] == [
        ("RECONCILIATION_BREAK", "OPEN", opened["alert_id"]), ("RECONCILIATION_BREAK", "RESOLVED", opened["alert_id"])]
    assert alerts[1]["reconciliation"] == {"as_of": ts(3), "positions": [], "cash": []}

    samples = worker.metrics()
    assert samples[("monitor_reconciliation_breaks_total", ())] == 1.0
    assert samples[("monitor_alerts_emitted_total", (("severity", "BREACH"), ("state", "OPEN")))] == 1.0
