"""The closed loop in the engine: breach -> AUTO_APPROVED signal -> its trades executed in full at
the proposal's prices (by the paper trader) -> every alert behind the signal RESOLVED at the next
evaluation, whatever `trade_to`, with lot rounding, at tick 0 and at the worker's 10 ms.

The book: AAA 600 @ 100, BBB 800 @ 50, no cash (60/40 of NAV 100,000), weight limits 60% and 40%
+/- 5 points, hysteresis 0.2 (an alert resolves at |drift| <= 4 points). AAA rallies 50% to 150:
90,000 / 40,000 of NAV 130,000 is 69.2% / 30.8%, both outside.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from monitor.engine import AlertEvent, Engine, Fill, Instrument, Price, Snapshot, parse_policy, parse_ts
from monitor.engine.engine import Event
from monitor.engine.signals import SignalEvent
from monitor.paper import PaperTrader

T0 = parse_ts("2026-11-24T14:00:00Z")
SEC = 1_000_000
LIMITS = [{"metric": "weight", "instrument": "AAA", "target": 0.6, "band": {"width": 0.05}},
          {"metric": "weight", "instrument": "BBB", "target": 0.4, "band": {"width": 0.05}}]


def sixty_forty(tick: int, lot: float, hysteresis: float = 0.2, **rebalance: Any) -> Engine:
    engine = Engine(tick)
    for iid in ("AAA", "BBB"):
        engine.on_instrument(Instrument(iid, "USD", "equity", 1.0, {"sector": "Tech"}, adv=1e9, spread_bps=2.0,
                                        daily_vol=0.02, lot_size=lot))
    engine.on_policy(parse_policy({"portfolio_id": "B1", "version": 1, "base_currency": "USD", "limits": LIMITS,
                                   "evaluation": {"hysteresis": hysteresis}, "rebalance": rebalance}, "test"))
    engine.on_snapshot(Snapshot("B1", T0, {"USD": 0.0}, {"AAA": 600.0, "BBB": 800.0}))
    assert engine.on_prices([Price("AAA", 100.0, T0), Price("BBB", 50.0, T0)]) + engine.flush() == []
    return engine


def execute(engine: Engine, signal: SignalEvent, at: int) -> list[Event]:
    """The paper trader fills every trade of the signal at the prices it saw (the proposal's)."""
    trader = PaperTrader()
    for iid, (price, _) in engine.prices.items():
        trader.on_price(iid, price, at)
    out: list[Event] = []
    for doc in trader.on_signal(signal.to_message(signal.event_ts)):
        out += engine.on_fill(Fill.from_message(doc))
    return out + engine.flush()


def breach_and_execute(engine: Engine, price: float) -> tuple[dict[str, str], SignalEvent, dict[str, str]]:
    """AAA moves to `price`; the signal it gets is executed 1 s later. (opened, signal, resolved),
    alerts by limit id."""
    out = engine.on_prices([Price("AAA", price, T0 + SEC)]) + engine.flush()
    opened = {e.limit_id: e.alert_id for e in out if isinstance(e, AlertEvent) and e.state == "OPEN"}
    [signal] = [e for e in out if isinstance(e, SignalEvent)]
    after = execute(engine, signal, T0 + 2 * SEC)
    resolved = {e.limit_id: e.alert_id for e in after if isinstance(e, AlertEvent) and e.state == "RESOLVED"}
    return opened, signal, resolved


@pytest.mark.parametrize("tick", [0, 10_000], ids=["tick0", "tick10ms"])
@pytest.mark.parametrize("trade_to, lot, sells, buys", [
    # edge: 64% / 36% is where the alerts resolve: AAA 83,200 -> SELL 45.33, BBB 46,800 -> BUY 136
    ("edge", 1, 46, 136),
    ("edge", 7, 49, 140),  # lots rounded up, never short of the goal: 6.5 -> 7 lots, 19.4 -> 20
    # inner (rail halfway from the band edge): 62.5% / 37.5%: SELL 58.33 AAA, BUY 175 BBB
    ("inner", 1, 59, 175),
    ("inner", 25, 75, 175),
    # target: SELL 80 AAA, BUY 240 BBB; to the nearest lot (3.2 -> 3 lots of 25, 9.6 -> 10)
    ("target", 1, 80, 240),
    ("target", 25, 75, 250),
])
def test_an_executed_signal_resolves_every_alert_it_was_made_for(tick, trade_to, lot, sells, buys):
    engine = sixty_forty(tick, lot, trade_to=trade_to)
    opened, signal, resolved = breach_and_execute(engine, 150.0)
    assert set(opened) == {"weight:AAA", "weight:BBB"}
    assert signal.state == "AUTO_APPROVED" and sorted(signal.body["alert_ids"]) == sorted(opened.values())
    assert [(t["instrument_id"], t["side"], t["quantity"]) for t in signal.body["trades"]] == [
        ("AAA", "SELL", sells), ("BBB", "BUY", buys)]
    assert signal.body["warnings"] == []
    assert resolved == opened
    assert engine.status["B1"].open_alerts == 0 and not engine.watches["B1"].signals.live


def test_before_issue_16_an_edge_proposal_left_its_alert_open():
    """What the old `edge` (the band edge itself) did, at hysteresis 0.2: the book lands at usage ~1.0,
    above the 0.8 an alert resolves at. With hysteresis 0 the two edges coincide and it resolves."""
    engine = sixty_forty(0, 1.0, hysteresis=0.0, trade_to="edge")
    opened, signal, resolved = breach_and_execute(engine, 150.0)
    # band edge 65% / 35%: AAA 84,500 -> SELL 36.67 -> 37; BBB 45,500 -> BUY 110
    assert [t["quantity"] for t in signal.body["trades"]] == [37, 110]
    assert resolved == opened


@settings(max_examples=120, deadline=None)
@given(st.sampled_from([0, 10_000]), st.sampled_from(["edge", "inner", "target"]),
       st.sampled_from([1.0, 3.0, 10.0, 25.0]), st.floats(0.0, 0.6), st.floats(0.05, 0.95),
       st.one_of(st.floats(1.12, 3.0), st.floats(0.3, 0.85)))
def test_a_signal_without_warnings_executed_in_full_resolves_its_alerts(tick, trade_to, lot, hysteresis,
                                                                        inner_fraction, move):
    """Any shock, lot size, hysteresis and inner rail: a signal that warns of nothing (nothing deferred,
    dropped, pushed out or left open), once executed at its prices, leaves none of its alerts open."""
    engine = sixty_forty(tick, lot, hysteresis=hysteresis, trade_to=trade_to, inner_fraction=inner_fraction)
    out = engine.on_prices([Price("AAA", 100.0 * move, T0 + SEC)]) + engine.flush()
    signals = [e for e in out if isinstance(e, SignalEvent)]
    assume(signals)  # the move opened an alert
    [signal] = signals
    assume(not signal.body["warnings"])
    execute(engine, signal, T0 + 2 * SEC)
    still_open = set(engine.watches["B1"].open_alerts(engine.policies["B1"].limits))
    assert not still_open & {lim["limit_id"] for lim in signal.body["limits"]}
