"""The pure engine on hand-computed cases: valuation, metrics, books, the alert lifecycle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine import Book, Engine, Fill, Instrument, Price, Rejected, Snapshot, parse_policy, parse_ts
from monitor.engine.engine import Event
from monitor.engine.valuation import fx_rate, measure, value_book

T0 = parse_ts("2026-11-24T14:00:00Z")
SEC = 1_000_000


def inst(iid: str, ccy: str = "USD", asset_class: str = "equity", sector: str = "Tech", multiplier: float = 1.0):
    return Instrument(iid, ccy, asset_class, multiplier, {"sector": sector, "currency": ccy,
                                                           "asset_class": asset_class})


def policy(limits: list[dict], version: int = 1, base: str = "USD", **evaluation: float):
    return parse_policy({"portfolio_id": "B1", "version": version, "base_currency": base,
                         "evaluation": evaluation, "limits": limits}, "test")


def weight_limit(iid: str, target: float, width: float, **kw: object) -> dict:
    return {"metric": "weight", "instrument": iid, "target": target,
            "band": {"type": "absolute", "width": width}, **kw}


def fill(fid: str, iid: str, side: str, qty: float, px: float, ts: int = T0 + SEC, fees: float = 0.0) -> Fill:
    return Fill(fid, "B1", iid, side, qty, px, ts, fees)


# -- valuation -----------------------------------------------------------------------


def test_fx_direct_inverse_and_cross():
    prices = {"EURUSD": (1.10, 1), "USDJPY": (150.0, 2)}
    assert fx_rate("EUR", "USD", prices) == (1.10, 1)
    assert fx_rate("USD", "JPY", prices) == (150.0, 2)
    assert fx_rate("JPY", "USD", prices)[0] == pytest.approx(1 / 150)
    assert fx_rate("EUR", "JPY", prices)[0] == pytest.approx(1.10 * 150)
    assert fx_rate("GBP", "USD", prices) is None


def test_nav_with_fx_multiplier_short_and_cash():
    instruments = {"SAP": inst("SAP", "EUR"), "ES": inst("ES", asset_class="future", multiplier=50),
                   "XOM": inst("XOM", sector="Energy")}
    prices = {"SAP": (200.0, 1), "ES": (5000.0, 2), "XOM": (100.0, 3), "EURUSD": (1.1, 4)}
    book = Book("B1", positions={"SAP": 100, "ES": 2, "XOM": -300}, cash={"USD": 10_000, "EUR": 1_000})
    v = value_book(book, "USD", instruments, prices)
    # SAP 100*200*1.1 = 22,000; ES 2*5000*50 = 500,000; XOM -30,000; cash 10,000 + 1,100
    assert v.mv == {"SAP": pytest.approx(22_000), "ES": pytest.approx(500_000), "XOM": pytest.approx(-30_000)}
    assert v.nav == pytest.approx(503_100)
    assert v.price_ts == 4


def test_missing_fx_makes_valuation_unavailable_not_zero():
    instruments = {"SAP": inst("SAP", "EUR")}
    v = value_book(Book("B1", positions={"SAP": 1}, cash={}), "USD", instruments, {"SAP": (1.0, 1)})
    assert v.nav is None and "FX EURUSD" in (v.unavailable or "")


def test_bucket_and_leverage_metrics():
    instruments = {"A": inst("A", sector="Tech"), "B": inst("B", sector="Tech"), "C": inst("C", sector="Energy")}
    prices = {"A": (10.0, 1), "B": (10.0, 1), "C": (10.0, 1)}
    book = Book("B1", positions={"A": 60, "B": -20, "C": 30}, cash={"USD": 30})  # NAV = 600-200+300+30 = 730
    v = value_book(book, "USD", instruments, prices)
    pol = policy([
        {"metric": m, "dimension": "sector", "bucket": "Tech", "target": 0, "band": {"width": 1}}
        for m in ("net_weight", "gross_weight", "long_weight", "short_weight")
    ] + [{"metric": "gross_leverage", "target": 1, "band": {"width": 1}},
         {"metric": "net_leverage", "target": 1, "band": {"width": 1}}])
    got = [measure(lim, v, instruments)[0] for lim in pol.limits]
    assert got == pytest.approx([400 / 730, 800 / 730, 600 / 730, -200 / 730, 1100 / 730, 700 / 730])


def test_factor_exposure_is_weight_times_loading():
    instruments = {"A": Instrument("A", "USD", "equity", 1.0, {}, factors={"market": 1.2, "value": -0.5}),
                   "B": Instrument("B", "USD", "equity", 1.0, {}, factors={"market": 0.8})}
    # MV A 600, B -200, cash 600: NAV 1000; market = 0.6*1.2 + (-0.2)*0.8 = 0.56; value = 0.6*-0.5 = -0.30
    v = value_book(Book("B1", positions={"A": 60, "B": -20}, cash={"USD": 600}), "USD", instruments,
                   {"A": (10.0, 1), "B": (10.0, 1)})
    pol = policy([{"metric": "exposure", "factor": f, "target": 0, "band": {"width": 1}}
                  for f in ("market", "value", "momentum")])
    assert [measure(lim, v, instruments)[0] for lim in pol.limits] == pytest.approx([0.56, -0.30, 0.0])


def test_non_positive_nav_makes_weights_unavailable():
    instruments = {"A": inst("A")}
    v = value_book(Book("B1", positions={"A": 10}, cash={"USD": -1_000}), "USD", instruments, {"A": (10.0, 1)})
    value, why = measure(policy([weight_limit("A", 0.5, 0.1)]).limits[0], v, instruments)
    assert value is None and "NAV" in (why or "")


# -- books ---------------------------------------------------------------------------


def test_fill_moves_position_and_cash_once():
    es = inst("ES", multiplier=50)
    book = Book("B1")
    assert book.apply_fill(fill("F1", "ES", "BUY", 2, 5000.0, fees=10.0), es)
    assert not book.apply_fill(fill("F1", "ES", "BUY", 2, 5000.0, fees=10.0), es)  # re-delivered
    assert book.positions == {"ES": 2}
    assert book.cash == {"USD": -500_010.0}
    book.apply_fill(fill("F2", "ES", "SELL", 2, 5100.0), es)
    assert book.positions == {}
    assert book.cash["USD"] == pytest.approx(9_990.0)


def test_later_snapshot_replaces_books_and_keeps_fills_after_it():
    a = inst("A")
    book = Book("B1")
    book.apply_snapshot(Snapshot("B1", T0, {"USD": 1000.0}, {"A": 10}), {"A": a}.__getitem__)
    book.apply_fill(fill("F1", "A", "BUY", 5, 10.0, ts=T0 + 1 * SEC), a)
    book.apply_fill(fill("F2", "A", "BUY", 1, 10.0, ts=T0 + 3 * SEC), a)
    # New books of record as of T0+2s include F1 (but not F2): 15 shares, 950 cash.
    book.apply_snapshot(Snapshot("B1", T0 + 2 * SEC, {"USD": 950.0}, {"A": 15}), {"A": a}.__getitem__)
    assert book.positions == {"A": 16}
    assert book.cash == {"USD": 940.0}
    # A late fill that the snapshot already includes is not applied again.
    assert not book.apply_fill(fill("F0", "A", "BUY", 7, 10.0, ts=T0 + 1 * SEC), a)
    assert book.positions == {"A": 16}


def test_book_round_trips_through_its_changelog_form():
    a = inst("A")
    book = Book("B1")
    book.apply_snapshot(Snapshot("B1", T0, {"USD": 1000.0}, {"A": 10}), {"A": a}.__getitem__)
    book.apply_fill(fill("F1", "A", "SELL", 5, 10.0), a)
    assert Book.from_dict(book.to_dict()) == book


# -- engine --------------------------------------------------------------------------


@pytest.fixture(params=[0, 10_000], ids=["tick0", "tick10ms"])
def tick(request: pytest.FixtureRequest) -> int:
    """The engine's lifecycle at tick 0 (every call evaluates at once) and at the worker's 10 ms windows."""
    return request.param


def done(e: Engine, out: list[Event]) -> list[Event]:
    """What a call emits once its window is complete (the worker closes it then; at tick 0 it is)."""
    return out + e.flush()


def two_asset_engine(tick: int = 0, **evaluation: float) -> Engine:
    """60/40 book in A and B at price 10, no cash; A's weight limit 0.60 +/- 0.05."""
    e = Engine(tick)
    e.on_instrument(inst("A"))
    e.on_instrument(inst("B"))
    e.on_policy(policy([weight_limit("A", 0.60, 0.05)], **evaluation))
    e.on_snapshot(Snapshot("B1", T0, {"USD": 0.0}, {"A": 60, "B": 40}))
    assert done(e, e.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)])) == []
    return e


def test_price_move_opens_then_resolves_with_hand_computed_numbers(tick):
    e = two_asset_engine(tick)
    # A to 12.5: MV A 750, B 400, NAV 1150, weight 0.652174 -> outside 0.55..0.65
    [opened] = done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))
    assert (opened.state, opened.severity) == ("OPEN", "BREACH")
    assert opened.actual == pytest.approx(750 / 1150)
    assert opened.drift == pytest.approx(750 / 1150 - 0.60)
    msg = opened.to_message(T0 + 2 * SEC)
    assert msg["band"] == {"lower": pytest.approx(0.55), "upper": pytest.approx(0.65)}
    assert msg["event_ts"] == "2026-11-24T14:00:01.000000Z"
    assert msg["inputs"]["price_ts"] == "2026-11-24T14:00:01.000000Z"
    # Back to 10: weight 0.60, inside the band shrunk by hysteresis -> RESOLVED, same alert id.
    [resolved] = done(e, e.on_prices([Price("A", 10.0, T0 + 2 * SEC)]))
    assert resolved.state == "RESOLVED" and resolved.alert_id == opened.alert_id


def test_hysteresis_keeps_alert_open_near_the_edge(tick):
    e = two_asset_engine(tick, hysteresis=0.5)
    [opened] = done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))
    # A at 11.3: weight 678/1078 = 0.62894, usage 0.579: back inside, but not past hysteresis: no event.
    assert done(e, e.on_prices([Price("A", 11.3, T0 + 2 * SEC)])) == []
    assert e.watches["B1"].limits["weight:A"].alert_id == opened.alert_id
    # A at 11.0: weight 660/1060 = 0.62264, usage 0.453 <= 0.5: RESOLVED.
    [ev] = done(e, e.on_prices([Price("A", 11.0, T0 + 3 * SEC)]))
    assert (ev.state, ev.severity, ev.alert_id) == ("RESOLVED", "BREACH", opened.alert_id)


def test_persistence_in_event_time(tick):
    e = two_asset_engine(tick, persistence_seconds=5)
    assert done(e, e.on_prices([Price("A", 12.5, T0 + 1 * SEC)])) == []
    assert done(e, e.on_prices([Price("A", 12.6, T0 + 4 * SEC)])) == []
    [opened] = done(e, e.on_prices([Price("A", 12.5, T0 + 6 * SEC)]))
    assert opened.state == "OPEN" and opened.opened_ts == T0 + 6 * SEC


def test_escalation_to_critical_and_back_without_flapping(tick):
    e = two_asset_engine(tick)  # hysteresis 0.2, critical at 2 bands
    [opened] = done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))  # usage 1.04
    # A at 16: 960/1360 = 0.70588 -> usage 2.12 > 2 -> CRITICAL
    [esc] = done(e, e.on_prices([Price("A", 16.0, T0 + 2 * SEC)]))
    assert (esc.state, esc.severity, esc.alert_id) == ("ESCALATED", "CRITICAL", opened.alert_id)
    # A at 15.5: 930/1330 = 0.69925 -> usage 1.985: below 2 but not below 1.8: stays CRITICAL
    assert done(e, e.on_prices([Price("A", 15.5, T0 + 3 * SEC)])) == []
    # A at 14.5: 870/1270 = 0.68504 -> usage 1.70 <= 1.8: DEESCALATED to BREACH
    [de] = done(e, e.on_prices([Price("A", 14.5, T0 + 4 * SEC)]))
    assert (de.state, de.severity) == ("DEESCALATED", "BREACH")


def test_fill_for_unknown_book_is_rejected(tick):
    e = two_asset_engine(tick)
    with pytest.raises(Rejected) as info:
        e.on_fill(Fill("F9", "NOPE", "A", "BUY", 1, 10.0, T0))
    assert info.value.code == "unknown_book"


def test_fill_for_unknown_instrument_is_held_then_applied(tick):
    e = two_asset_engine(tick)
    assert done(e, e.on_fill(fill("F1", "C", "BUY", 10, 10.0))) == []
    assert done(e, e.on_fill(fill("F1", "C", "BUY", 10, 10.0))) == []  # re-delivered while held: still once
    assert e.books["B1"].positions.get("C") is None and e.held_fills() == 1
    done(e, e.on_instrument(inst("C")))
    assert e.books["B1"].positions["C"] == 10 and e.held_fills() == 0
    assert done(e, e.on_fill(fill("F1", "C", "BUY", 10, 10.0))) == []  # and once after release
    assert e.books["B1"].positions["C"] == 10


def test_a_price_for_an_unknown_instrument_is_kept_counted_and_used_when_the_instrument_arrives(tick):
    e = two_asset_engine(tick)
    assert done(e, e.on_prices([Price("C", 20.0, T0 + SEC), Price("C", 19.0, T0 + 2 * SEC)])) == []
    assert e.unreferenced_prices == 2 and e.prices["C"] == (19.0, T0 + 2 * SEC)
    done(e, e.on_fill(fill("F1", "C", "BUY", 10, 19.0, ts=T0 + 3 * SEC)))  # held: no reference data yet
    done(e, e.on_instrument(inst("C")))
    # The fill applies; C is valued at the price kept before its instrument existed:
    # A 600 + B 400 + C 190 - cash 190 = NAV 1000, and a price of A now counts nothing.
    assert e.status["B1"].nav == pytest.approx(1000.0) and e.books["B1"].positions["C"] == 10
    done(e, e.on_prices([Price("A", 10.0, T0 + 4 * SEC)]))
    assert e.unreferenced_prices == 2


def test_alert_ids_are_deterministic(tick):
    ids = []
    for _ in range(2):
        e = two_asset_engine(tick)
        ids.append([a.event_id for a in done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))])
    assert ids[0] == ids[1] and len(ids[0]) == 1


# -- properties ----------------------------------------------------------------------

fills_strategy = st.lists(
    st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(["BUY", "SELL"]),
              st.integers(1, 100), st.floats(1, 100, allow_nan=False), st.integers(0, 20)),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(fills_strategy, st.integers(0, 20), st.randoms(use_true_random=False))
def test_incremental_book_equals_recomputation_whatever_the_redeliveries(raw_fills, snap_at, rnd):
    """Fills applied in any order, some twice, around a snapshot: positions equal a fresh sum."""
    instruments = {"A": inst("A"), "B": inst("B", multiplier=10)}
    fills = [fill(f"F{i}", iid, side, qty, px, ts=T0 + t * SEC) for i, (iid, side, qty, px, t) in enumerate(raw_fills)]
    deliveries = fills + [f for f in fills if rnd.random() < 0.3]
    rnd.shuffle(deliveries)
    snapshot_as_of = T0 + snap_at * SEC
    book = Book("B1")
    book.apply_snapshot(Snapshot("B1", T0 - SEC, {"USD": 0.0}, {}), instruments.__getitem__)
    half = len(deliveries) // 2
    for f in deliveries[:half]:
        book.apply_fill(f, instruments[f.instrument_id])
    # The books of record as of snapshot_as_of: everything up to then.
    before = [f for f in fills if f.ts <= snapshot_as_of]
    pos: dict[str, float] = {}
    cash = 0.0
    for f in before:
        pos[f.instrument_id] = pos.get(f.instrument_id, 0) + f.signed_quantity
        cash += (-1 if f.side == "BUY" else 1) * f.quantity * f.price * instruments[f.instrument_id].multiplier
    book.apply_snapshot(Snapshot("B1", snapshot_as_of, {"USD": cash}, pos), instruments.__getitem__)
    for f in deliveries[half:]:
        book.apply_fill(f, instruments[f.instrument_id])
    expected_pos: dict[str, float] = {}
    expected_cash = 0.0
    for f in fills:
        expected_pos[f.instrument_id] = expected_pos.get(f.instrument_id, 0) + f.signed_quantity
        expected_cash += (-1 if f.side == "BUY" else 1) * f.quantity * f.price * instruments[f.instrument_id].multiplier
    assert {k: v for k, v in expected_pos.items() if v != 0} == pytest.approx(book.positions)
    assert book.cash.get("USD", 0.0) == pytest.approx(expected_cash, rel=1e-9, abs=1e-6)


def restarted_from(live: Engine, tick: int) -> Engine:
    """A new engine with the reference data and B1 restored from `live`'s changelog forms."""
    restarted = Engine(tick)
    restarted.on_instrument(inst("A"))
    restarted.on_instrument(inst("B"))
    restarted.restore(Book.from_dict(live.books["B1"].to_dict()), live.policies["B1"],
                      type(live.watches["B1"]).from_dict(live.watches["B1"].to_dict()), "B1")
    return restarted


def test_a_restored_book_is_not_judged_on_prices_older_than_its_state(tick):
    """After a restart the prices are re-read from the topic: history must not re-open or resolve."""
    live = two_asset_engine(tick)
    [opened] = done(live, live.on_prices([Price("A", 12.5, T0 + 2 * SEC)]))
    restarted = restarted_from(live, tick)
    # The price history again, from the start: inside the band at T0, then the move.
    assert done(restarted, restarted.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)])) == []
    assert done(restarted, restarted.on_prices([Price("A", 12.5, T0 + 2 * SEC)])) == []
    restarted.end_warmup()
    assert restarted.flush() == []  # same state, same time: nothing new
    [resolved] = done(restarted, restarted.on_prices([Price("A", 10.0, T0 + 3 * SEC)]))
    assert (resolved.state, resolved.alert_id) == ("RESOLVED", opened.alert_id)


def test_a_restored_book_is_judged_again_only_once_every_input_up_to_its_clock_is_applied(tick):
    """The worker ends a restart's warm-up while the newest inputs still wait in its gate (for the
    broker to confirm the partition ends): a book whose clock is not before the oldest of them is
    still warming, or it would be judged at its clock on older prices (a RESOLVED that never was)."""
    live = two_asset_engine(tick)
    [opened] = done(live, live.on_prices([Price("A", 12.5, T0 + 2 * SEC)]))
    restarted = restarted_from(live, tick)
    assert done(restarted, restarted.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)])) == []
    restarted.end_warmup(before=T0 + 2 * SEC)  # A at 12.5 still waits
    assert restarted.flush() == []
    assert done(restarted, restarted.on_prices([Price("A", 12.5, T0 + 2 * SEC)])) == []
    restarted.end_warmup(before=None)
    assert restarted.flush() == []
    [resolved] = done(restarted, restarted.on_prices([Price("A", 10.0, T0 + 3 * SEC)]))
    assert (resolved.state, resolved.alert_id) == ("RESOLVED", opened.alert_id)


def test_an_open_alert_on_a_limit_the_new_policy_drops_is_resolved_saying_so(tick):
    e = two_asset_engine(tick)
    [opened] = done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))
    [resolved] = e.on_policy(policy([weight_limit("B", 0.35, 0.05)], version=2))  # B: 400/1150, inside
    assert (resolved.state, resolved.alert_id, resolved.policy_version) == ("RESOLVED", opened.alert_id, 2)
    assert resolved.actual is None and resolved.reason == "limit removed by policy version 2"
    from monitor.contract import validate
    validate("drift-alerts", resolved.to_message(T0))


# -- onboarding a book: no judgement before its first snapshot ---------------------------------

ONBOARD_POLICY = {"portfolio_id": "B1", "version": 1, "base_currency": "USD",
                  "limits": [weight_limit("A", 0.5, 0.05)]}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([0, 1_000, 10_000, 1_000_000]), st.integers(-2_000, 2_000), st.booleans(),
       st.permutations(["instrument", "policy", "timed"]), st.randoms(use_true_random=False))
def test_onboarding_a_book_in_any_order_raises_no_alert_at_any_tick(tick, price_ms, fill_first, order, rnd):
    """Reference data, a policy, a price and the first snapshot (NAV 20,000, A on its 50% target), in
    any order the gate can release them (timed events in event-time order, the others anywhere), with
    or without a fill before the snapshot that the snapshot already includes: no alert at any tick,
    and the book is valued at 20,000 once everything is in."""
    snapshot_ts = T0 + 10 * SEC
    timed: list[tuple[int, object]] = [(snapshot_ts + price_ms * 1_000, Price("A", 100.0, snapshot_ts + price_ms * 1_000)),
                                       (snapshot_ts, Snapshot("B1", snapshot_ts, {"USD": 10_000.0}, {"A": 100}))]
    if fill_first:
        timed.append((snapshot_ts - SEC, fill("F0", "A", "BUY", 100, 100.0, ts=snapshot_ts - SEC)))
    timed.sort(key=lambda pair: pair[0])
    e, out = Engine(tick), []
    for step in order:
        if step == "instrument":
            out += e.on_instrument(inst("A"))
        elif step == "policy":
            out += e.on_policy(parse_policy(ONBOARD_POLICY, "test"))
        else:
            for _, event in timed:
                if isinstance(event, Price):
                    out += e.on_prices([event])
                elif isinstance(event, Snapshot):
                    out += e.on_snapshot(event)
                elif e.known_book("B1"):
                    out += e.on_fill(event)  # type: ignore[arg-type]
    out += e.flush()
    assert out == []
    assert e.status["B1"].nav == pytest.approx(20_000.0)
    assert e.watches["B1"].clock >= snapshot_ts


def test_a_fill_before_the_first_snapshot_is_not_judged_as_a_book():
    """Policy and a fill, no snapshot yet: cash -10,000 and 100 A is not the book (NAV would read 0)."""
    e = Engine(10_000)
    e.on_instrument(inst("A"))
    e.on_policy(parse_policy(ONBOARD_POLICY, "test"))
    out = e.on_prices([Price("A", 100.0, T0)]) + e.on_fill(fill("F0", "A", "BUY", 100, 100.0, ts=T0 + SEC))
    out += e.on_prices([Price("A", 100.0, T0 + 2 * SEC)]) + e.flush()
    assert out == [] and "B1" not in e.status


@given(events=st.lists(st.tuples(st.sampled_from(["price", "fill"]), st.integers(0, 50)), min_size=1, max_size=40),
       tick=st.sampled_from([0, 10_000]))
@settings(max_examples=200, deadline=None)
def test_inputs_applied_after_one_of_a_later_window_are_counted_late(events, tick):
    """An input stamped in an earlier window than one already applied (at tick 0: stamped earlier)
    is judged in a later window than a replay of the ordered log judges it: the engine counts it,
    by kind. Inputs of one window in any order are not late (they commute)."""
    e = Engine(tick)
    e.on_instrument(inst("A"))
    e.on_policy(policy([weight_limit("A", 0.60, 0.05)]))
    e.on_snapshot(Snapshot("B1", T0, {"USD": 0.0}, {"A": 60}))
    expected = {"price": 0, "fill": 0, "snapshot": 0}
    newest = T0
    for n, (kind, ms) in enumerate(events):
        ts = T0 + ms * 1_000
        if ts < newest and (tick == 0 or ts // tick < newest // tick):
            expected[kind] += 1
        newest = max(newest, ts)
        if kind == "price":
            e.on_prices([Price("A", 10.0 + n % 3, ts)])
        else:
            e.on_fill(Fill(f"F{n}", "B1", "A", "BUY", 1.0, 10.0, ts))
    assert e.late_inputs == expected


def test_a_restored_books_fills_re_applied_up_to_its_clock_are_not_late(tick):
    """After a restore the shell re-applies the book's recorded fills; those the book was judged
    through are not late, nor is the first input after the market was set again."""
    e = two_asset_engine(tick)
    done(e, e.on_fill(fill("F1", "A", "BUY", 1, 10.0, ts=T0 + SEC)))
    done(e, e.on_prices([Price("A", 10.5, T0 + 3 * SEC)]))
    state, watch, policy_ = e.market_state(), e.watches["B1"], e.policies["B1"]
    e.drop_books()
    e.restore(None, policy_, watch, "B1")
    e.restore_market(state)
    done(e, e.on_snapshot(Snapshot("B1", T0, {"USD": 0.0}, {"A": 60, "B": 40})))
    done(e, e.on_fill(fill("F1", "A", "BUY", 1, 10.0, ts=T0 + SEC)))
    assert e.late_inputs == {"price": 0, "fill": 0, "snapshot": 0}
    done(e, e.on_prices([Price("A", 10.4, T0 + 4 * SEC)]))
    done(e, e.on_fill(fill("F2", "A", "BUY", 1, 10.0, ts=T0 + 2 * SEC)))  # after a price of a later window
    assert e.late_inputs == {"price": 0, "fill": 1, "snapshot": 0}
