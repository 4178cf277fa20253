"""Reconciliation breaks: a new snapshot against what the monitor held for its as_of.

The book: 100 AAA (USD, price 100) and 2 ES (USD future, multiplier 50), 10,000 USD cash, as of T0.
Between T0 and the next snapshot at T0 + 2 s the monitor applies fills; a fill at T0 + 3 s is after
that snapshot and must be taken back out of what the monitor expects for T0 + 2 s.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.contract import validate
from monitor.engine import AlertEvent, Engine, Fill, Instrument, Price, Snapshot, parse_policy, parse_ts
from monitor.engine.engine import Event, Watch
from monitor.engine.reconcile import Break, held_as_of, reconcile

T0 = parse_ts("2026-11-24T14:00:00Z")
SEC = 1_000_000
AAA = Instrument("AAA", "USD", "equity", 1.0, {})
ES = Instrument("ES", "USD", "future", 50.0, {})


def fill(fid: str, iid: str, side: str, qty: float, px: float, at: int, fees: float = 0.0) -> Fill:
    return Fill(fid, "B1", iid, side, qty, px, at, fees)


def engine(tick: int = 0, **evaluation: Any) -> Engine:
    e = Engine(tick)
    e.on_instrument(AAA)
    e.on_instrument(ES)
    e.on_policy(parse_policy({"portfolio_id": "B1", "version": 3, "base_currency": "USD", "evaluation": evaluation,
                              "limits": [{"metric": "gross_leverage", "target": 1.0, "band": {"width": 5.0}}]},
                             "test"))
    e.on_prices([Price("AAA", 100.0, T0), Price("ES", 5_000.0, T0)])
    e.on_snapshot(Snapshot("B1", T0, {"USD": 10_000.0}, {"AAA": 100.0, "ES": 2.0}))
    e.flush()
    return e


def breaks_of(events: list[Event]) -> list[AlertEvent]:
    out = [e for e in events if isinstance(e, AlertEvent) and e.kind == "RECONCILIATION_BREAK"]
    for e in out:
        validate("drift-alerts", e.to_message(e.event_ts))
    return out


def apply(e: Engine, *fills: Fill) -> None:
    for f in fills:
        e.on_fill(f)
    e.flush()


def snapshot(cash: float, aaa: float, es: float = 2.0, at: int = T0 + 2 * SEC) -> Snapshot:
    return Snapshot("B1", at, {"USD": cash}, {"AAA": aaa, "ES": es})


@pytest.fixture(params=[0, 10_000], ids=["tick0", "tick10ms"])
def tick(request: pytest.FixtureRequest) -> int:
    return request.param


def test_a_clean_snapshot_raises_nothing_and_fills_after_it_are_taken_out(tick):
    # Monitor: BUY 10 AAA @ 100 at 1 s (AAA 110, cash 9,000), BUY 1 ES @ 5,000 at 3 s (after as_of).
    e = engine(tick)
    apply(e, fill("F1", "AAA", "BUY", 10, 100.0, T0 + SEC), fill("F2", "ES", "BUY", 1, 5_000.0, T0 + 3 * SEC))
    out = e.on_snapshot(snapshot(9_000.0, 110.0)) + e.flush()
    assert breaks_of(out) == []
    assert e.status["B1"].open_alerts == 0
    assert e.books["B1"].positions == {"AAA": 110.0, "ES": 3.0}  # F2 still applies after the snapshot
    assert e.books["B1"].cash == {"USD": 9_000.0 - 250_000.0}


def test_a_fill_the_monitor_missed_is_a_break_on_its_instrument_and_cash(tick):
    # The books of record also have BUY 5 ES @ 5,000 (1,250,000 USD) at 1.5 s that never reached the monitor.
    e = engine(tick)
    apply(e, fill("F1", "AAA", "BUY", 10, 100.0, T0 + SEC))
    out = e.on_snapshot(snapshot(9_000.0 - 1_250_000.0, 110.0, es=7.0)) + e.flush()
    [opened] = breaks_of(out)
    assert (opened.state, opened.severity, opened.policy_version, opened.event_ts) == ("OPEN", "BREACH", 3, T0 + 2 * SEC)
    assert opened.actual == 2
    assert opened.reconciliation is not None
    assert opened.reconciliation.breaks == (Break("position", "ES", 2.0, 7.0), Break("cash", "USD", 9_000.0, -1_241_000.0))
    message = opened.to_message(T0)
    assert message["reconciliation"] == {
        "as_of": "2026-11-24T14:00:02.000000Z",
        "positions": [{"instrument_id": "ES", "expected": 2.0, "reported": 7.0, "difference": 5.0}],
        "cash": [{"currency": "USD", "expected": 9_000.0, "reported": -1_241_000.0, "difference": -1_250_000.0}]}
    assert message["reason"] == ("2 difference(s) with the books of record as of 2026-11-24T14:00:02.000000Z: "
                                 "ES expected 2 reported 7; cash USD expected 9,000 reported -1,241,000")
    # It does not block the snapshot: the books of record are in force.
    assert e.books["B1"].positions == {"AAA": 110.0, "ES": 7.0} and e.status["B1"].open_alerts == 1


def test_a_fill_booked_twice_by_the_books_of_record_is_a_break(tick):
    # The monitor sold 30 AAA @ 100 once (70 left, cash 13,000); the books of record booked it twice.
    e = engine(tick)
    apply(e, fill("F1", "AAA", "SELL", 30, 100.0, T0 + SEC), fill("F1", "AAA", "SELL", 30, 100.0, T0 + SEC))
    [opened] = breaks_of(e.on_snapshot(snapshot(16_000.0, 40.0)) + e.flush())
    assert opened.reconciliation is not None
    assert [(b.key, b.expected, b.reported, b.difference) for b in opened.reconciliation.breaks] == [
        ("AAA", 70.0, 40.0, -30.0), ("USD", 13_000.0, 16_000.0, 3_000.0)]


def test_a_cash_difference_alone_is_a_break_beyond_the_cash_tolerance(tick):
    # Positions agree; the books of record charged 250.00 of fees the monitor never heard of.
    e = engine(tick)
    apply(e, fill("F1", "AAA", "BUY", 10, 100.0, T0 + SEC))
    [opened] = breaks_of(e.on_snapshot(snapshot(8_750.0, 110.0)) + e.flush())
    assert opened.reconciliation is not None
    assert opened.reconciliation.breaks == (Break("cash", "USD", 9_000.0, 8_750.0),)
    # Half a cent off is within the default tolerance of 0.01: the next snapshot agrees, and resolves it.
    out = e.on_snapshot(snapshot(8_750.005, 110.0, at=T0 + 4 * SEC)) + e.flush()
    [resolved] = breaks_of(out)
    assert (resolved.state, resolved.alert_id, resolved.opened_ts) == ("RESOLVED", opened.alert_id, T0 + 2 * SEC)
    assert resolved.reason == "the snapshot as of 2026-11-24T14:00:04.000000Z agrees with the monitor"
    assert e.status["B1"].open_alerts == 0


def test_tolerances_come_from_the_policy_and_a_break_on_a_break_replaces_it():
    e = engine(reconciliation_quantity_tolerance=5, reconciliation_cash_tolerance=100)
    assert breaks_of(e.on_snapshot(snapshot(10_050.0, 104.0))) == []  # 4 units, 50 USD: within
    [first] = breaks_of(e.on_snapshot(snapshot(10_050.0, 110.0, at=T0 + 3 * SEC)))  # 6 units off 104
    [resolved, second] = breaks_of(e.on_snapshot(snapshot(9_000.0, 110.0, at=T0 + 4 * SEC)))
    assert (resolved.state, resolved.alert_id) == ("RESOLVED", first.alert_id)
    assert resolved.reason == "superseded by the reconciliation as of 2026-11-24T14:00:04.000000Z"
    assert (second.state, second.alert_id != first.alert_id) == ("OPEN", True)
    assert second.reconciliation is not None and [b.key for b in second.reconciliation.breaks] == ["USD"]
    # The open break survives the watch's changelog form (a restart).
    restored = Watch.from_dict(e.watches["B1"].to_dict())
    assert restored.reconciliation.alert_id == second.alert_id


def test_the_first_snapshot_and_a_restatement_at_the_same_as_of_are_not_reconciled():
    e = engine()
    assert breaks_of(e.on_snapshot(snapshot(1.0, 1.0, at=T0))) == []  # same as_of as the one in force
    fresh = Engine()
    fresh.on_policy(e.policies["B1"])
    assert breaks_of(fresh.on_snapshot(snapshot(1.0, 1.0))) == []  # nothing held before


# -- the pure function, and a property ------------------------------------------------------------


def test_held_as_of_takes_out_only_the_fills_after_it_with_their_multiplier_and_fees():
    fills = [fill("F1", "ES", "BUY", 1, 5_000.0, T0 + SEC, fees=2.5), fill("F2", "ES", "SELL", 3, 5_100.0, T0 + 3 * SEC,
                                                                        fees=7.5)]
    # today: ES 2 + 1 - 3 = 0; cash 10,000 - 250,002.5 + 765,000 - 7.5
    positions, cash = held_as_of({}, {"USD": 10_000.0 - 250_002.5 + 764_992.5}, fills, T0 + 2 * SEC, {"ES": ES}.get)
    assert positions == {"ES": 3.0}
    assert cash == {"USD": pytest.approx(10_000.0 - 250_002.5)}


def test_reconcile_counts_a_missing_line_as_zero():
    found = reconcile({"AAA": 10.0}, {"USD": 5.0}, Snapshot("B1", T0, {"EUR": 3.0}, {"BBB": 1.0}), 0.0, 0.01)
    assert [(b.kind, b.key, b.expected, b.reported) for b in found.breaks] == [
        ("position", "AAA", 10.0, 0.0), ("position", "BBB", 0.0, 1.0),
        ("cash", "EUR", 0.0, 3.0), ("cash", "USD", 5.0, 0.0)]


FILLS = st.lists(st.tuples(st.sampled_from(["AAA", "ES"]), st.sampled_from(["BUY", "SELL"]), st.integers(1, 50),
                           st.floats(1.0, 1_000.0), st.integers(1, 40)), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(FILLS, st.integers(1, 40), st.data())
def test_books_of_record_that_saw_the_same_fills_reconcile_and_a_missed_one_breaks(raw, as_of_s, data):
    """Fills around an as_of: a snapshot computed from every fill up to it agrees with the monitor
    (no break, whatever the fills after it); if the monitor missed one of those fills, the break names
    exactly its instrument and quantity."""
    fills = [fill(f"F{i}", iid, side, qty, px, T0 + ts * SEC // 4) for i, (iid, side, qty, px, ts) in enumerate(raw)]
    as_of = T0 + as_of_s * SEC // 4
    reference = {"AAA": AAA, "ES": ES}
    record_positions = {"AAA": 100.0, "ES": 2.0}
    record_cash = 10_000.0
    for f in fills:
        if f.ts <= as_of:
            record_positions[f.instrument_id] += f.signed_quantity
            notional = f.quantity * f.price * reference[f.instrument_id].multiplier
            record_cash += -notional if f.side == "BUY" else notional
    books_of_record = snapshot(record_cash, record_positions["AAA"], record_positions["ES"], at=as_of)
    included = [i for i, f in enumerate(fills) if f.ts <= as_of]
    missed = data.draw(st.sampled_from([None, *included]))
    e = engine()
    apply(e, *sorted((f for i, f in enumerate(fills) if i != missed), key=lambda f: f.ts))
    found = breaks_of(e.on_snapshot(books_of_record))
    if missed is None:
        assert found == []
    else:
        [opened] = found
        assert opened.reconciliation is not None
        [position] = [b for b in opened.reconciliation.breaks if b.kind == "position"]
        assert (position.key, position.difference) == (fills[missed].instrument_id,
                                                        pytest.approx(fills[missed].signed_quantity))
