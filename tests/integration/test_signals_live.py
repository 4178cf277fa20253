"""Rebalance signals end to end on the real broker: approval, rejection, refusals, expiry,
supersession, and the closed loop through the paper trade engine.

Every book starts at 60/40 (A 600 @ 100, B 800 @ 50, no cash, NAV 100,000) with weight
limits 60% and 40% +/- 5 points; a rally of A to 140 breaches both (67.7% / 32.3%), and
trading to target at NAV 124,000 means SELL 69 A (9,600 / 140 = 68.57) and BUY 192 B.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.contract import validate
from monitor.ops.processes import spawn, terminate
from tests.faults import changelog_books
from tests.conftest import consume, produce, worker_env

pytestmark = pytest.mark.integration

START = datetime.now(timezone.utc).replace(microsecond=0)


def ts(offset_s: float = 0.0) -> str:
    return (START + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def instrument(iid: str) -> dict:
    return {"instrument_id": iid, "currency": "USD", "asset_class": "equity", "sector": "Technology",
            "adv": 1_000_000, "spread_bps": 2, "daily_vol": 0.02}


def book(pid: str, rebalance: dict[str, Any]) -> list[tuple[str, str, dict]]:
    policy = {"portfolio_id": pid, "version": 1, "base_currency": "USD",
              "limits": [{"metric": "weight", "instrument": "A", "target": 0.6, "band": {"width": 0.05}},
                         {"metric": "weight", "instrument": "B", "target": 0.4, "band": {"width": 0.05}}],
              "rebalance": {"trade_to": "target", **rebalance}}
    snapshot = {"portfolio_id": pid, "as_of": ts(0), "cash": {"USD": 0},
                "positions": [{"instrument_id": "A", "quantity": 600}, {"instrument_id": "B", "quantity": 800}]}
    return [("policies", pid, policy), ("positions", pid, snapshot)]


def market(*books: list[tuple[str, str, dict]]) -> list[tuple[str, str | None, Any]]:
    return [("instruments", "A", instrument("A")), ("instruments", "B", instrument("B")),
            *(m for b in books for m in b),
            ("prices", "A", {"instrument_id": "A", "price": 100.0, "ts": ts(0)}),
            ("prices", "B", {"instrument_id": "B", "price": 50.0, "ts": ts(0)})]


def price_a(px: float, at: float) -> tuple[str, str, dict]:
    return ("prices", "A", {"instrument_id": "A", "price": px, "ts": ts(at)})


def approval(pid: str, signal_id: str, decision: str = "APPROVE", at: float = 2.0) -> tuple[str, str, dict]:
    return ("approvals", pid, {"signal_id": signal_id, "portfolio_id": pid, "decision": decision,
                               "approver": "j.smith", "reason": "checked", "ts": ts(at)})


def signals_of(records: list[dict], pid: str) -> list[dict]:
    out = [r for r in records if r["portfolio_id"] == pid]
    for r in out:
        validate("rebalance-signals", {k: v for k, v in r.items() if k not in ("key", "partition", "offset")})
    return out


def states(records: list[dict], pid: str) -> list[str]:
    return [r["state"] for r in signals_of(records, pid)]


def wait_for_signals(settings, until, timeout: float = 60.0) -> list[dict]:
    return consume(settings, "rebalance-signals", until, timeout=timeout)


def test_approve_reject_and_refused_approvals(worker, settings):
    gated = {"approval": {"notional_above": 1_000, "ttl_seconds": 600}}
    produce(settings, market(book("P-APPROVE", gated), book("P-REJECT", gated)))
    time.sleep(1.0)  # let the books be valued at 60/40 first
    produce(settings, [price_a(140.0, 1.0)])
    got = wait_for_signals(settings, lambda r: len(r) >= 2)
    [pending] = signals_of(got, "P-APPROVE")
    [to_reject] = signals_of(got, "P-REJECT")
    assert pending["state"] == "PENDING_APPROVAL" and pending["expires_ts"] == ts(601)
    assert {(t["instrument_id"], t["side"], t["quantity"]) for t in pending["trades"]} == \
        {("A", "SELL", 69.0), ("B", "BUY", 192.0)}
    alerts = consume(settings, "drift-alerts", lambda r: len(r) >= 4)
    assert sorted(pending["alert_ids"]) == sorted(a["alert_id"] for a in alerts if a["portfolio_id"] == "P-APPROVE")

    # The rejection goes through the command a risk engineer would use.
    rejected = CliRunner().invoke(main, [
        "signal", "reject", to_reject["signal_id"], "--book", "P-REJECT", "--approver", "j.smith",
        "--reason", "checked", "--ts", ts(2.0), "--bootstrap", settings.bootstrap_servers,
        "--topic-prefix", settings.topic_prefix])
    assert rejected.exit_code == 0, rejected.output
    produce(settings, [approval("P-APPROVE", pending["signal_id"]),
                       approval("P-APPROVE", pending["signal_id"], "REJECT", at=3.0),  # already decided
                       approval("P-APPROVE", "no-such-signal")])
    got = wait_for_signals(settings, lambda r: len(r) >= 4)
    assert states(got, "P-APPROVE") == ["PENDING_APPROVAL", "APPROVED"]
    assert states(got, "P-REJECT") == ["PENDING_APPROVAL", "REJECTED"]
    assert signals_of(got, "P-REJECT")[1]["approver"] == "j.smith"
    approved = signals_of(got, "P-APPROVE")[1]
    assert (approved["approver"], approved["reason"], approved["trades"]) == ("j.smith", "checked", pending["trades"])

    dead = consume(settings, "monitor-dlq", lambda r: len(r) >= 2)
    assert [d["reason_code"] for d in dead] == ["signal_decided", "unknown_signal"]
    assert all(d["source"]["topic"] == settings.topic("approvals") for d in dead)
    assert "already APPROVED" in dead[0]["reason"] and orjson.loads(dead[1]["original"])["signal_id"] == "no-such-signal"


def test_expiry_and_supersession(worker, settings):
    produce(settings, market(book("P-EXPIRE", {"approval": {"notional_above": 0, "ttl_seconds": 5}}),
                             book("P-SUPERSEDE", {"approval": {"notional_above": 0, "ttl_seconds": 600}})))
    time.sleep(1.0)
    produce(settings, [price_a(140.0, 1.0)])
    got = wait_for_signals(settings, lambda r: len(r) >= 2)
    first = signals_of(got, "P-SUPERSEDE")[0]
    # Event time moves on: 7 s later P-EXPIRE's signal (created at 1 s, TTL 5 s) has expired, and
    # A at 200 (75%, three bands out) escalates both books' alerts: a new proposal replaces the old.
    produce(settings, [price_a(200.0, 8.0)])
    got = wait_for_signals(settings, lambda r: len(r) >= 6)
    assert states(got, "P-EXPIRE")[:2] == ["PENDING_APPROVAL", "EXPIRED"]
    expired = signals_of(got, "P-EXPIRE")[1]
    assert expired["event_ts"] == ts(6) and expired["reason"] == "no decision within the TTL"
    assert states(got, "P-SUPERSEDE") == ["PENDING_APPROVAL", "SUPERSEDED", "PENDING_APPROVAL"]
    _, superseded, newer = signals_of(got, "P-SUPERSEDE")
    assert superseded["signal_id"] == first["signal_id"] and newer["signal_id"] != first["signal_id"]
    assert newer["signal_id"] in superseded["reason"]
    produce(settings, [approval("P-SUPERSEDE", first["signal_id"], at=9.0)])
    [dead] = consume(settings, "monitor-dlq", lambda r: len(r) >= 1)
    assert dead["reason_code"] == "signal_decided" and "SUPERSEDED" in dead["reason"]


def rally_with_paper_trader(settings, tmp_path) -> tuple[dict, list[dict]]:
    """With `monitor paper-trade` running (its own process, a real client), A rallies to 140: the
    book's one signal, and its alerts once two have resolved."""
    trader = spawn([sys.executable, "-m", "monitor", "paper-trade"], env=worker_env(settings),
                   log_path=tmp_path / "paper.log")
    try:
        time.sleep(1.0)
        produce(settings, [price_a(140.0, 1.0)])
        [signal] = wait_for_signals(settings, lambda r: len(r) >= 1)
        alerts = consume(settings, "drift-alerts", lambda r: sum(a["state"] == "RESOLVED" for a in r) >= 2,
                         timeout=60)
    finally:
        terminate(trader)
    return signal, alerts


def test_closed_loop_breach_signal_paper_fills_resolved(worker, settings, tmp_path):
    """A breach leads to an AUTO_APPROVED signal; `monitor paper-trade` (its own process, a real
    client) executes it; the fills come back through the worker; the alerts resolve."""
    produce(settings, market(book("P-LOOP", {})))
    signal, alerts = rally_with_paper_trader(settings, tmp_path)
    assert signal["state"] == "AUTO_APPROVED"
    assert [(a["limit_id"], a["state"]) for a in alerts] == [
        ("weight:A", "OPEN"), ("weight:B", "OPEN"), ("weight:A", "RESOLVED"), ("weight:B", "RESOLVED")]
    fills = consume(settings, "fills", lambda r: len(r) >= 2)
    assert {(f["instrument_id"], f["side"], f["quantity"], f["price"]) for f in fills} == \
        {("A", "SELL", 69.0, 140.0), ("B", "BUY", 192.0, 50.0)}
    resolved = alerts[2]
    assert resolved["inputs"]["last_fill_id"] in {f["fill_id"] for f in fills}
    # The worker's own record of the book (its book-inputs changelog, folded as a restarted worker
    # would): 600 - 69 A, 800 + 192 B, and cash 69 x 140 - 192 x 50 = +60. At NAV 124,000:
    # A 74,340 (59.95%), B 49,600 (40.00%).
    positions, cash = changelog_books(settings)["P-LOOP"]
    assert positions == {"A": 531.0, "B": 992.0} and cash == 60.0


def test_closed_loop_to_the_edge_with_lots_resolves_at_the_default_hysteresis(worker, settings, tmp_path):
    """Issue 16: `trade_to: edge` once left its alerts open for good (the band edge is usage 1.0, an
    alert resolves at 1 - hysteresis = 0.8). Edge is now where the alert resolves: at A 140 (67.7% /
    32.3% of NAV 124,000) the goals are 64% and 36%: SELL 4,640 / 140 = 33.1 -> 34 A, BUY 4,640 / 50 =
    92.8 -> 95 B in lots of 5 (rounded up, never short). Executed by `monitor paper-trade`, both resolve:
    A 566 x 140 = 79,240 (63.90%), B 895 x 50 = 44,750 (36.09%)."""
    pid = "P-EDGE"
    messages = market(book(pid, {"trade_to": "edge"}))
    messages[1] = ("instruments", "B", {**instrument("B"), "lot_size": 5})
    produce(settings, messages)
    signal, alerts = rally_with_paper_trader(settings, tmp_path)
    assert (signal["state"], signal["trade_to"], signal["warnings"]) == ("AUTO_APPROVED", "edge", [])
    assert [(t["instrument_id"], t["side"], t["quantity"]) for t in signal["trades"]] == [
        ("A", "SELL", 34.0), ("B", "BUY", 95.0)]
    assert [(a["limit_id"], a["state"]) for a in alerts] == [
        ("weight:A", "OPEN"), ("weight:B", "OPEN"), ("weight:A", "RESOLVED"), ("weight:B", "RESOLVED")]
    resolved = {a["limit_id"]: a["actual"] for a in alerts if a["state"] == "RESOLVED"}
    assert resolved == {"weight:A": pytest.approx(79_240 / 124_000), "weight:B": pytest.approx(44_750 / 124_000)}
    assert sorted(signal["alert_ids"]) == sorted(a["alert_id"] for a in alerts if a["state"] == "OPEN")
