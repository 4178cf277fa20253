"""Rebalance signals in the engine: when they are proposed, their approval lifecycle, attribution.

The proposal arithmetic itself is tested by hand in test_rebalance.py; here a 60/40 book
is pushed out of its bands by prices and fills, and the signals it gets are followed
through approval, rejection, expiry, supersession and the cost gate, in event time.
"""

from __future__ import annotations

from typing import Any

import pytest

from monitor.contract import validate
from monitor.engine import AlertEvent, Engine, Fill, Instrument, Price, Rejected, Snapshot, parse_policy, parse_ts
from monitor.engine.engine import Watch
from monitor.engine.rebalance import Proposal, Trade
from monitor.engine.signals import Decision, SignalEvent, SignalLedger

T0 = parse_ts("2026-11-24T14:00:00Z")
SEC = 1_000_000


def instrument(iid: str, **kw: Any) -> Instrument:
    return Instrument(iid, "USD", "equity", 1.0, {"sector": "Tech"}, adv=1_000_000.0, spread_bps=2.0,
                      daily_vol=0.02, **kw)


def book_policy(rebalance: dict[str, Any], version: int = 1) -> Any:
    return parse_policy({
        "portfolio_id": "B1", "version": version, "base_currency": "USD",
        "limits": [{"metric": "weight", "instrument": "AAA", "target": 0.6, "band": {"width": 0.05}},
                   {"metric": "weight", "instrument": "BBB", "target": 0.4, "band": {"width": 0.05}}],
        "rebalance": rebalance}, "test")


def engine_with(rebalance: dict[str, Any]) -> Engine:
    """B1 at 60/40: AAA 600 @ 100, BBB 800 @ 50, no cash; NAV 100,000."""
    engine = Engine()
    engine.on_instrument(instrument("AAA"))
    engine.on_instrument(instrument("BBB"))
    engine.on_policy(book_policy(rebalance))
    engine.on_prices([Price("AAA", 100.0, T0), Price("BBB", 50.0, T0)])
    engine.on_snapshot(Snapshot("B1", T0, {"USD": 0.0}, {"AAA": 600.0, "BBB": 800.0}))
    return engine


def signals(events: list[Any]) -> list[SignalEvent]:
    out = [e for e in events if isinstance(e, SignalEvent)]
    for e in out:
        validate("rebalance-signals", e.to_message(e.event_ts))
    for e in events:
        if isinstance(e, AlertEvent):
            validate("drift-alerts", e.to_message(e.event_ts))
    return out


def drift_up(engine: Engine, price: float = 140.0, at: int = T0 + SEC) -> list[Any]:
    """AAA rallies: at 140, AAA 84,000 / BBB 40,000 of NAV 124,000 is 67.7% / 32.3%."""
    return engine.on_prices([Price("AAA", price, at)])


def decide(signal_id: str, decision: str = "APPROVE", at: int = T0 + 2 * SEC) -> Decision:
    return Decision(signal_id, "B1", decision, "j.smith", "looks right", at)


# -- when a signal is proposed ---------------------------------------------------------


def test_a_breach_gets_one_targeted_signal_for_its_open_alerts():
    engine = engine_with({"trade_to": "target"})
    events = drift_up(engine)
    alerts = [e for e in events if isinstance(e, AlertEvent)]
    [signal] = signals(events)
    assert {a.state for a in alerts} == {"OPEN"} and len(alerts) == 2
    msg = signal.to_message(0)
    assert signal.state == "AUTO_APPROVED" and msg["trigger"] == "alert" and msg["mode"] == "targeted"
    assert msg["alert_ids"] == sorted(a.alert_id for a in alerts)
    # To target at NAV 124,000: AAA 74,400 (sell 9,600 = 68.57 -> 69 shares), BBB 49,600 (buy 9,600 = 192).
    trades = {t["instrument_id"]: (t["side"], t["quantity"]) for t in msg["trades"]}
    assert trades == {"AAA": ("SELL", 69.0), "BBB": ("BUY", 192.0)}
    assert events.index(signal) > max(events.index(a) for a in alerts)  # alerts first, then the answer


def test_an_alert_below_min_severity_or_a_book_without_rebalance_gets_no_signal():
    engine = engine_with({"min_severity": "CRITICAL"})
    assert not signals(drift_up(engine))  # 67.7% is BREACH (usage 1.55), not CRITICAL (> 2)
    assert signals(drift_up(engine, 200.0, T0 + 2 * SEC))  # 75% escalates to CRITICAL (usage 3)
    plain = Engine()
    plain.on_instrument(instrument("AAA"))
    plain.on_instrument(instrument("BBB"))
    plain.on_policy(parse_policy({"portfolio_id": "B1", "version": 1, "base_currency": "USD", "limits": [
        {"metric": "weight", "instrument": "AAA", "target": 0.6, "band": {"width": 0.05}}]}, "test"))
    plain.on_prices([Price("AAA", 100.0, T0), Price("BBB", 50.0, T0)])
    plain.on_snapshot(Snapshot("B1", T0, {}, {"AAA": 600.0, "BBB": 800.0}))
    events = drift_up(plain)
    assert any(isinstance(e, AlertEvent) for e in events) and not signals(events)


def test_the_scheduled_global_check_moves_every_limit_to_target():
    engine = engine_with({"mode": "hybrid", "schedule_seconds": 60})
    # Inside the bands (AAA 62.6%): no alert, so nothing until the next minute boundary.
    assert not signals(engine.on_prices([Price("AAA", 111.5, T0 + SEC)]))
    [signal] = signals(engine.on_prices([Price("AAA", 111.5, T0 + 60 * SEC)]))
    msg = signal.to_message(0)
    assert (msg["trigger"], msg["mode"], msg["trade_to"], msg["alert_ids"]) == ("schedule", "global", "target", [])
    assert {t["instrument_id"] for t in msg["trades"]} == {"AAA", "BBB"}
    assert not signals(engine.on_prices([Price("AAA", 111.5, T0 + 61 * SEC)]))  # next check at T0 + 120 s


def test_a_schedule_needs_a_mode_that_uses_it():
    with pytest.raises(Exception, match="schedule_seconds"):
        book_policy({"mode": "targeted", "schedule_seconds": 60})
    with pytest.raises(Exception, match="schedule_seconds"):
        book_policy({"mode": "hybrid"})


# -- approval lifecycle -----------------------------------------------------------------


def test_above_the_notional_threshold_a_signal_waits_for_approval_then_is_approved_once():
    engine = engine_with({"trade_to": "target", "approval": {"notional_above": 10_000, "ttl_seconds": 60}})
    [pending] = signals(drift_up(engine))
    msg = pending.to_message(0)
    assert pending.state == "PENDING_APPROVAL" and "above the approval threshold" in (pending.reason or "")
    assert msg["expires_ts"] == "2026-11-24T14:01:01.000000Z"  # created at T0 + 1 s, TTL 60 s
    [approved] = signals(engine.on_decision(decide(pending.signal_id)))
    assert (approved.state, approved.approver, approved.reason) == ("APPROVED", "j.smith", "looks right")
    assert approved.body == pending.body  # the same proposal, a new state
    with pytest.raises(Rejected) as again:
        engine.on_decision(decide(pending.signal_id, "REJECT"))
    assert again.value.code == "signal_decided"
    with pytest.raises(Rejected) as unknown:
        engine.on_decision(decide("no-such-signal"))
    assert unknown.value.code == "unknown_signal"


def test_a_rejected_signal_is_final():
    engine = engine_with({"approval": {"notional_above": 0}})
    [pending] = signals(drift_up(engine))
    [rejected] = signals(engine.on_decision(decide(pending.signal_id, "REJECT")))
    assert rejected.state == "REJECTED"
    with pytest.raises(Rejected, match="already REJECTED"):
        engine.on_decision(decide(pending.signal_id))


def test_an_undecided_signal_expires_at_its_ttl_in_event_time():
    engine = engine_with({"approval": {"notional_above": 0, "ttl_seconds": 30}})
    [pending] = signals(drift_up(engine))
    assert not signals(engine.on_prices([Price("AAA", 140.0, T0 + 30 * SEC)]))  # 29 s after creation
    [expired] = signals(engine.on_prices([Price("AAA", 140.0, T0 + 45 * SEC)]))
    assert expired.state == "EXPIRED" and expired.event_ts == T0 + 31 * SEC
    with pytest.raises(Rejected) as late:
        engine.on_decision(decide(pending.signal_id, at=T0 + 46 * SEC))
    assert late.value.code == "signal_decided" and "EXPIRED" in late.value.reason


def test_a_signal_with_a_shorter_ttl_proposed_later_still_expires_on_time():
    """The ledger remembers when its next expiry can be at the soonest; a newer pending signal that
    expires before the older one must move that bound, or it would be missed."""
    ledger = SignalLedger()
    proposal = Proposal((Trade("AAA", "BUY", 10.0, 100.0, 1_000.0, 1.0, 10.0, None, 0.0, None),), (), 1_000.0,
                        1.0, 10.0, None, (), None)

    def body(signal_id: str, limit_id: str) -> dict[str, Any]:
        return {"signal_id": signal_id, "limits": [{"limit_id": limit_id}], "base_currency": "USD"}

    slow, fast = (book_policy({"approval": {"notional_above": 0, "ttl_seconds": ttl}}).rebalance for ttl in (60, 5))
    [first] = ledger.propose(body("S1", "w_aaa"), proposal, ["BREACH"], slow, T0)
    assert first.state == "PENDING_APPROVAL" and ledger.expire(T0 + SEC) == []
    ledger.propose(body("S2", "w_bbb"), proposal, ["BREACH"], fast, T0 + 2 * SEC)
    [expired] = ledger.expire(T0 + 8 * SEC)
    assert (expired.signal_id, expired.state, expired.event_ts) == ("S2", "EXPIRED", T0 + 7 * SEC)
    assert ledger.expire(T0 + 59 * SEC) == []
    assert [e.signal_id for e in ledger.expire(T0 + 61 * SEC)] == ["S1"]


def test_an_approval_after_the_ttl_is_refused_even_before_the_expiry_is_seen():
    engine = engine_with({"approval": {"notional_above": 0, "ttl_seconds": 30}})
    [pending] = signals(drift_up(engine))
    with pytest.raises(Rejected, match="expired at"):
        engine.on_decision(decide(pending.signal_id, at=T0 + 31 * SEC))


def test_a_newer_signal_for_the_same_limits_supersedes_the_pending_one():
    engine = engine_with({"approval": {"notional_above": 0}})
    [first] = signals(drift_up(engine))
    events = signals(drift_up(engine, 200.0, T0 + 2 * SEC))  # escalates to CRITICAL: a new proposal
    assert [e.state for e in events] == ["SUPERSEDED", "PENDING_APPROVAL"]
    assert events[0].signal_id == first.signal_id and events[1].signal_id != first.signal_id
    assert events[1].signal_id in (events[0].reason or "")
    with pytest.raises(Rejected, match="already SUPERSEDED"):
        engine.on_decision(decide(first.signal_id))


def test_the_cost_gate_withholds_and_records_a_proposal_worth_less_than_its_cost():
    # Removing drift is worth 1 USD per unit: a few cents per trade. Trading costs more.
    engine = engine_with({"drift_value": 1.0, "approval": {"notional_above": 0}})
    [withheld] = signals(drift_up(engine))
    msg = withheld.to_message(0)
    assert withheld.state == "WITHHELD" and "exceeds the value" in (withheld.reason or "")
    assert msg["value_base"] < msg["total_est_cost_base"]
    with pytest.raises(Rejected, match="already WITHHELD"):
        engine.on_decision(decide(withheld.signal_id))
    worth_it = engine_with({"drift_value": 10_000_000.0})
    assert [s.state for s in signals(drift_up(worth_it))] == ["AUTO_APPROVED"]


def test_the_ledger_survives_a_restart_through_the_watch():
    engine = engine_with({"approval": {"notional_above": 0}})
    [pending] = signals(drift_up(engine))
    restored = Engine()
    restored.restore(engine.books["B1"], engine.policies["B1"], Watch.from_dict(engine.watches["B1"].to_dict()), "B1")
    [approved] = signals(restored.on_decision(decide(pending.signal_id)))
    assert approved.state == "APPROVED" and approved.body == pending.body


# -- drift attribution ------------------------------------------------------------------


def test_drift_from_prices_is_attributed_to_prices():
    engine = engine_with({})
    events = drift_up(engine)
    opened = next(e for e in events if isinstance(e, AlertEvent) and e.limit_id == "weight:AAA")
    a = opened.attribution
    assert a is not None and a.since_ts == T0
    # From 60% at T0 (inside) to 84,000 / 124,000 now, all by the price move.
    assert a.from_prices == pytest.approx(84_000 / 124_000 - 0.6) and a.from_fills == 0.0
    [signal] = signals(events)
    limit = next(lim for lim in signal.to_message(0)["limits"] if lim["limit_id"] == "weight:AAA")
    assert limit["attribution"]["from_prices"] == pytest.approx(a.from_prices)


def test_drift_from_a_fill_is_attributed_to_fills_and_the_parts_add_up():
    engine = engine_with({})
    # A small rally first (inside the band: 61.5% at 106.5), then a fill buys 150 AAA for cash.
    assert not [e for e in engine.on_prices([Price("AAA", 106.5, T0 + SEC)]) if isinstance(e, AlertEvent)]
    events = engine.on_fill(Fill("F1", "B1", "AAA", "BUY", 150.0, 106.5, T0 + 2 * SEC))
    opened = next(e for e in events if isinstance(e, AlertEvent) and e.limit_id == "weight:AAA")
    nav = 600 * 106.5 + 800 * 50  # NAV does not move on a fill at the market price
    a = opened.attribution
    assert a is not None and a.since_ts == T0 + SEC
    assert a.from_prices == pytest.approx(0.0) and a.from_fills == pytest.approx(150 * 106.5 / nav)
    # A price move while outside adds to the price part; the parts add up to the whole move.
    later = engine.on_prices([Price("AAA", 110.0, T0 + 3 * SEC)])
    assert not [e for e in later if isinstance(e, AlertEvent)]  # still open, no new event
    state = engine.watches["B1"].limits["weight:AAA"]
    assert state.from_prices + state.from_fills == pytest.approx(750 * 110 / (750 * 110 + 40_000 - 150 * 106.5)
                                                                 - 600 * 106.5 / nav)
    assert state.from_fills == pytest.approx(150 * 106.5 / nav)
