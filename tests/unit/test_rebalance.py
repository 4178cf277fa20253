"""Rebalance proposals on hand-computed books, then properties.

Every book below has NAV 100,000 USD unless said otherwise, so a weight moves by
notional / 100,000 and the arithmetic in the comments can be checked by hand.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine import Book, Instrument, RiskModel, parse_policy
from monitor.engine.policy import Band, Limit, Policy
from monitor.engine.rebalance import Proposal, Trade, goal, propose
from monitor.engine.valuation import PriceBook, measure, value_book

BIG_ADV = 1e12


def inst(iid: str, ccy: str = "USD", sector: str = "Tech", multiplier: float = 1.0, adv: float | None = BIG_ADV,
         spread_bps: float | None = 0.0, daily_vol: float | None = 0.0, factors: Mapping[str, float] | None = None,
         lot_size: float = 1.0, asset_class: str = "equity") -> Instrument:
    return Instrument(iid, ccy, asset_class, multiplier, {"sector": sector}, adv=adv, spread_bps=spread_bps,
                      daily_vol=daily_vol, factors=dict(factors or {}), lot_size=lot_size)


def weight(iid: str, target: float, width: float) -> dict[str, Any]:
    return {"metric": "weight", "instrument": iid, "target": target, "band": {"width": width}}


def policy(limits: list[dict[str, Any]], hysteresis: float = 0.0, **rebalance: Any) -> Policy:
    """Hysteresis 0 unless said: `edge` is then the band edge itself, as the hand arithmetic below
    assumes (with hysteresis h it is h of the band further in, tested on its own)."""
    return parse_policy({"portfolio_id": "B1", "version": 1, "base_currency": "USD", "limits": limits,
                         "evaluation": {"hysteresis": hysteresis}, "rebalance": rebalance}, "test")


def run(pol: Policy, instruments: Mapping[str, Instrument], prices: PriceBook, positions: Mapping[str, float],
        cash: float, limit_ids: list[str] | None = None, to_target: bool = False, **kw: Any) -> Proposal:
    book = Book("B1", positions=dict(positions), cash={"USD": cash})
    valuation = value_book(book, "USD", instruments, prices)
    ids = [lim.limit_id for lim in pol.limits] if limit_ids is None else limit_ids
    return propose(pol, ids, to_target, book, valuation, instruments, prices, **kw)


def by_id(p: Proposal) -> dict[str, Trade]:
    return {t.instrument_id: t for t in p.trades}


def drifts(p: Proposal) -> dict[str, tuple[float, float | None]]:
    return {e.limit.limit_id: (e.drift_before, e.drift_after) for e in p.limits}


# -- goal --------------------------------------------------------------------------


def test_goal_edge_inner_target_and_asymmetric_bands():
    lim = Limit("w", "weight", 0.60, Band(0.05, 0.05), instrument="A")  # band [0.55, 0.65]
    assert goal(lim, 0.66, "edge", 0.5, 0.0) == pytest.approx(0.65)
    assert goal(lim, 0.54, "edge", 0.5, 0.0) == pytest.approx(0.55)
    assert goal(lim, 0.62, "edge", 0.5, 0.0) == 0.62  # inside: no trade
    assert goal(lim, 0.66, "inner", 0.5, 0.0) == pytest.approx(0.625)  # rail 0.65 + 0.5 * (0.60 - 0.65)
    assert goal(lim, 0.63, "inner", 0.5, 0.0) == pytest.approx(0.625)  # inside the band but beyond the rail
    assert goal(lim, 0.61, "inner", 0.5, 0.0) == 0.61
    assert goal(lim, 0.54, "inner", 0.2, 0.0) == pytest.approx(0.56)  # 0.55 + 0.2 * 0.05
    assert goal(lim, 0.66, "target", 0.5, 0.2) == 0.60
    skew = Limit("s", "weight", 0.60, Band(0.02, 0.08), instrument="A")  # band [0.58, 0.68]
    assert goal(skew, 0.70, "edge", 0.5, 0.0) == pytest.approx(0.68)
    assert goal(skew, 0.57, "edge", 0.5, 0.0) == pytest.approx(0.58)
    assert goal(skew, 0.57, "inner", 0.5, 0.0) == pytest.approx(0.59)


def test_edge_is_where_the_alert_resolves_and_inner_is_never_short_of_it():
    lim = Limit("w", "weight", 0.60, Band(0.05, 0.05), instrument="A")  # band [0.55, 0.65]
    # hysteresis 0.2: an alert resolves at |drift| <= 0.8 x 0.05 = 0.04, so edge is 0.64 / 0.56.
    assert goal(lim, 0.66, "edge", 0.5, 0.2) == pytest.approx(0.64)
    assert goal(lim, 0.54, "edge", 0.5, 0.2) == pytest.approx(0.56)
    assert goal(lim, 0.645, "edge", 0.5, 0.2) == pytest.approx(0.64)  # inside the band, still open
    assert goal(lim, 0.635, "edge", 0.5, 0.2) == 0.635  # would resolve as it is
    assert goal(lim, 0.66, "inner", 0.5, 0.2) == pytest.approx(0.625)  # the rail is further in
    assert goal(lim, 0.66, "inner", 0.1, 0.2) == pytest.approx(0.64)  # rail 0.645 is short of 0.64
    skew = Limit("s", "weight", 0.60, Band(0.02, 0.08), instrument="A")  # band [0.58, 0.68]
    assert goal(skew, 0.70, "edge", 0.5, 0.25) == pytest.approx(0.66)  # 0.60 + 0.75 x 0.08
    assert goal(skew, 0.57, "edge", 0.5, 0.25) == pytest.approx(0.585)  # 0.60 - 0.75 x 0.02


# -- 1. a 60/40 book drifted to 66/34 ------------------------------------------------------

TWO = {"AAA": inst("AAA"), "BBB": inst("BBB")}
TWO_PX = {"AAA": (100.0, 1), "BBB": (50.0, 1)}
TWO_POS = {"AAA": 660, "BBB": 680}  # AAA 66,000 + BBB 34,000 = NAV 100,000 (no cash)
SIXTY_FORTY = [weight("AAA", 0.60, 0.05), weight("BBB", 0.40, 0.05)]  # bands [0.55, 0.65], [0.35, 0.45]


@pytest.mark.parametrize("trade_to, sell_aaa, buy_bbb, after", [
    ("edge", 10, 20, 0.05),  # 0.66 -> 0.65: 1,000 / 100 = 10 AAA; 0.34 -> 0.35: 1,000 / 50 = 20 BBB
    ("inner", 35, 70, 0.025),  # rails 0.625 and 0.375: 3,500 each way -> 35 AAA, 70 BBB
    ("target", 60, 120, 0.0),  # 0.60 / 0.40: 6,000 each way -> 60 AAA, 120 BBB
])
def test_sixty_forty(trade_to: str, sell_aaa: float, buy_bbb: float, after: float):
    p = run(policy(SIXTY_FORTY, trade_to=trade_to), TWO, TWO_PX, TWO_POS, 0.0)
    t = by_id(p)
    assert (t["AAA"].side, t["AAA"].quantity, t["AAA"].price) == ("SELL", sell_aaa, 100.0)
    assert (t["BBB"].side, t["BBB"].quantity, t["BBB"].price) == ("BUY", buy_bbb, 50.0)
    assert t["AAA"].notional_base == pytest.approx(sell_aaa * 100)
    assert t["BBB"].notional_base == pytest.approx(buy_bbb * 50)
    assert t["AAA"].note is None and t["AAA"].deferred_quantity == 0
    d = drifts(p)
    assert d["weight:AAA"] == pytest.approx((0.06, after), abs=1e-9)
    assert d["weight:BBB"] == pytest.approx((-0.06, -after), abs=1e-9)
    assert all(e.inside_after for e in p.limits)
    assert p.total_notional_base == pytest.approx(2 * sell_aaa * 100)
    assert p.warnings == () and p.value_base is None and p.withheld is None


def test_global_mode_goes_to_target_whatever_trade_to():
    p = run(policy(SIXTY_FORTY, trade_to="edge"), TWO, TWO_PX, TWO_POS, 0.0, to_target=True)
    assert [(t.side, t.quantity) for t in p.trades] == [("SELL", 60), ("BUY", 120)]


def test_only_the_named_limits_move():
    # Only AAA is named: SELL 10 AAA goes to cash, so BBB's weight (34,000 / NAV) does not move.
    p = run(policy(SIXTY_FORTY), TWO, TWO_PX, TWO_POS, 0.0, limit_ids=["weight:AAA"])
    assert [(t.instrument_id, t.quantity) for t in p.trades] == [("AAA", 10)]
    assert [e.limit.limit_id for e in p.limits] == ["weight:AAA"]


def test_lot_rounding_never_stops_short_of_the_goal_and_is_noted():
    # inner: need SELL 35 AAA in lots of 25 -> 1.4 lots -> up to 2 = 50; BUY 70 BBB in lots of 100 -> 100.
    # After: AAA 610 * 100 = 61,000 (0.61); BBB 780 * 50 = 39,000 (0.39): both past their 0.625 / 0.375 rails.
    instruments = {"AAA": inst("AAA", lot_size=25), "BBB": inst("BBB", lot_size=100)}
    p = run(policy(SIXTY_FORTY, trade_to="inner"), instruments, TWO_PX, TWO_POS, 0.0)
    t = by_id(p)
    assert (t["AAA"].quantity, t["AAA"].note) == (50, "rounded to lots of 25 from 35")
    assert (t["BBB"].quantity, t["BBB"].note) == (100, "rounded to lots of 100 from 70")
    assert drifts(p)["weight:AAA"][1] == pytest.approx(0.01)
    assert drifts(p)["weight:BBB"][1] == pytest.approx(-0.01)


def test_lot_rounding_to_target_is_to_the_nearest_lot():
    # target: SELL 60 AAA in lots of 25 -> 2.4 lots -> 2 = 50; BUY 120 BBB in lots of 100 -> 1.2 -> 100.
    instruments = {"AAA": inst("AAA", lot_size=25), "BBB": inst("BBB", lot_size=100)}
    p = run(policy(SIXTY_FORTY, trade_to="target"), instruments, TWO_PX, TWO_POS, 0.0)
    assert [(t.instrument_id, t.quantity) for t in p.trades] == [("AAA", 50), ("BBB", 100)]
    assert drifts(p)["weight:AAA"][1] == pytest.approx(0.01)


def test_a_targeted_proposal_that_would_leave_an_alert_open_says_so():
    # AAA 0.66, hysteresis 0.2, edge 0.64 -> SELL 20; with ADV 100 only 10 now: AAA ends at 0.65,
    # inside its band but at usage 1.0 > 0.8, so its alert would not resolve.
    instruments = {"AAA": inst("AAA", adv=100), "BBB": inst("BBB")}
    p = run(policy(SIXTY_FORTY, hysteresis=0.2), instruments, TWO_PX, TWO_POS, 0.0, limit_ids=["weight:AAA"])
    assert [(t.instrument_id, t.quantity, t.deferred_quantity) for t in p.trades] == [("AAA", 10, 10)]
    assert p.warnings == ("weight:AAA would stay open after the trades: band usage 1, resolves at 0.8; "
                          "some quantity is deferred",)


# -- 2. a sector net_weight limit ----------------------------------------------------------

ENERGY = {"XOM": inst("XOM", sector="Energy"), "CVX": inst("CVX", sector="Energy"),
          "OXY": inst("OXY", sector="Energy"), "AAPL": inst("AAPL"), "XLE": inst("XLE", sector="Energy")}
ENERGY_PX = {"XOM": (100.0, 1), "CVX": (50.0, 1), "OXY": (50.0, 1), "AAPL": (100.0, 1), "XLE": (50.0, 1)}
# XOM 30,000 + CVX 18,000 + OXY -12,000 = Energy net 36,000 (0.36); AAPL 40,000; cash 24,000 -> NAV 100,000
ENERGY_POS = {"XOM": 300, "CVX": 360, "OXY": -240, "AAPL": 400}
NET_ENERGY = {"metric": "net_weight", "dimension": "sector", "bucket": "Energy", "target": 0.25,
              "band": {"width": 0.05}}  # band [0.20, 0.30]


def test_net_weight_pro_rata_to_absolute_mv():
    # edge 0.30: need -6,000, split by |MV| / 60,000: XOM -3,000 (30), CVX -1,800 (36), OXY -1,200 (24,
    # the short grows). After: 27,000 + 16,200 - 13,200 = 30,000 -> 0.30. AAPL's weight limit does not move.
    pol = policy([NET_ENERGY, weight("AAPL", 0.40, 0.05)])
    p = run(pol, ENERGY, ENERGY_PX, ENERGY_POS, 24_000.0, limit_ids=["net_weight:sector:Energy"])
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [
        ("CVX", "SELL", 36), ("OXY", "SELL", 24), ("XOM", "SELL", 30)]
    assert drifts(p) == {"net_weight:sector:Energy": pytest.approx((0.11, 0.05))}
    assert p.warnings == ()


def test_net_weight_through_a_bucket_hedge():
    # XLE (Energy, 50, not held) takes the whole -6,000: SELL 120.
    pol = policy([NET_ENERGY], bucket_hedges={"net_weight:sector:Energy": "XLE"})
    p = run(pol, ENERGY, ENERGY_PX, ENERGY_POS, 24_000.0)
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [("XLE", "SELL", 120)]
    assert drifts(p)["net_weight:sector:Energy"][1] == pytest.approx(0.05)


def test_overlapping_limits_converge_over_passes():
    # To target: weight XOM 0.30 -> 0.20 (SELL 100 XOM) takes Energy from 0.36 to 0.26; Energy's last
    # 1,000 to 0.25 is then spread pro rata over XOM, CVX, OXY, which moves XOM again, and so on. The passes
    # converge to XOM 20,000 and the other 1,000 from CVX (~3/5 -> SELL 12) and OXY (~2/5 -> SELL 8):
    # 20,000 + 348 x 50 - 248 x 50 = 25,000 -> both limits exactly on target.
    pol = policy([weight("XOM", 0.20, 0.02), NET_ENERGY])
    p = run(pol, ENERGY, ENERGY_PX, ENERGY_POS, 24_000.0, to_target=True)
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [
        ("CVX", "SELL", 12), ("OXY", "SELL", 8), ("XOM", "SELL", 100)]
    assert drifts(p) == {"weight:XOM": pytest.approx((0.10, 0.0), abs=1e-12),
                         "net_weight:sector:Energy": pytest.approx((0.11, 0.0), abs=1e-12)}
    assert p.warnings == ()


def test_bucket_hedge_outside_the_bucket_cannot_move_it():
    instruments = {**ENERGY, "XLE": inst("XLE", sector="Index")}
    pol = policy([NET_ENERGY], bucket_hedges={"net_weight:sector:Energy": "XLE"})
    p = run(pol, instruments, ENERGY_PX, ENERGY_POS, 24_000.0)
    assert p.trades == ()
    assert any("hedge XLE is not in sector Energy" in w for w in p.warnings)
    assert any("still outside its band" in w for w in p.warnings)


def test_min_notional_drops_small_trades():
    # As the pro-rata case with min_notional 1,500: OXY's 1,200 is dropped (not deferred), so the bucket
    # ends at 27,000 + 16,200 - 12,000 = 31,200 -> 0.312, still above 0.30.
    p = run(policy([NET_ENERGY], min_notional=1_500), ENERGY, ENERGY_PX, ENERGY_POS, 24_000.0)
    assert [(t.instrument_id, t.quantity, t.deferred_quantity, t.dropped_quantity) for t in p.trades] == [
        ("CVX", 36, 0, 0), ("OXY", 0, 0, 24), ("XOM", 30, 0, 0)]
    oxy = by_id(p)["OXY"]
    assert (oxy.side, oxy.notional_base, oxy.est_cost_base, oxy.note) == ("SELL", 0, 0, "24 below min_notional, dropped")
    assert "OXY: SELL 24 dropped, notional 1,200.00 below min_notional 1,500.00" in p.warnings
    assert drifts(p)["net_weight:sector:Energy"][1] == pytest.approx(0.062)
    assert any(w.startswith("net_weight:sector:Energy still outside its band") for w in p.warnings)


def test_capped_then_dropped_reports_traded_deferred_and_dropped_exactly():
    # Issue 16's case: a need of 4,550 AAA (to target from 0.3455 at NAV 1,000,000: SELL 4,550 @ 10),
    # ADV 2,000 x 10% = 200 now and 4,350 deferred; 200 @ 10 = 2,000 is under min_notional 5,000, so
    # those 200 are dropped: 0 traded, 4,350 deferred, 200 dropped; nothing moves the book.
    instruments = {"AAA": inst("AAA", adv=2_000), "BBB": inst("BBB")}
    pol = policy([weight("AAA", 0.30, 0.02)], min_notional=5_000)
    p = run(pol, instruments, {"AAA": (10.0, 1), "BBB": (10.0, 1)}, {"AAA": 34_550, "BBB": 65_450}, 0.0,
            to_target=True)
    [t] = p.trades
    assert (t.side, t.quantity, t.deferred_quantity, t.dropped_quantity) == ("SELL", 0, 4_350, 200)
    assert t.quantity + t.deferred_quantity + t.dropped_quantity == 4_550
    assert (t.notional_base, t.est_cost_base) == (0, 0)
    assert t.note == "capped at 10% of ADV 2,000: 4,350 deferred; 200 below min_notional, dropped"
    assert "AAA: SELL 200 dropped, notional 2,000.00 below min_notional 5,000.00" in p.warnings
    assert drifts(p) == {"weight:AAA": pytest.approx((0.0455, 0.0455))}  # what is proposed: nothing
    assert p.total_notional_base == 0


# -- 3. a factor exposure limit --------------------------------------------------------------

FACTOR = {"AAA": inst("AAA", factors={"market": 1.0}), "BBB": inst("BBB", factors={"market": 0.5}),
          # an EUR future: 800 x 10 x 1.25 = 10,000 USD a contract, loading 0.75
          "FUT": inst("FUT", ccy="EUR", multiplier=10, factors={"market": 0.75}, asset_class="future"),
          "FUT1": inst("FUT1", multiplier=10, factors={"market": 1.0}, asset_class="future")}
FACTOR_PX = {"AAA": (100.0, 1), "BBB": (50.0, 1), "FUT": (800.0, 1), "FUT1": (1_000.0, 1), "EURUSD": (1.25, 1)}
# AAA 60,000 x 1.0 + BBB 20,000 x 0.5 = 70,000 -> exposure 0.70; cash 20,000 -> NAV 100,000
FACTOR_POS = {"AAA": 600, "BBB": 400}
MARKET = {"metric": "exposure", "factor": "market", "target": 0.30, "band": {"width": 0.10}}  # [0.20, 0.40]


def test_exposure_through_a_factor_hedge_future():
    # edge 0.40: need -30,000 of exposure; v = -30,000 / 0.75 = -40,000 -> 40,000 / 10,000 = SELL 4 FUT.
    p = run(policy([MARKET], factor_hedges={"market": "FUT"}), FACTOR, FACTOR_PX, FACTOR_POS, 20_000.0)
    (t,) = p.trades
    assert (t.instrument_id, t.side, t.quantity, t.price) == ("FUT", "SELL", 4, 800.0)
    assert t.notional_base == pytest.approx(40_000)
    assert drifts(p)["exposure:market"] == pytest.approx((0.40, 0.10))


def test_exposure_without_a_hedge_pro_rata_to_loadings():
    # sum beta^2 = 1.0 + 0.25 = 1.25; AAA -30,000 x 1.0 / 1.25 = -24,000 (240 @ 100);
    # BBB -30,000 x 0.5 / 1.25 = -12,000 (240 @ 50). After: 36,000 + 8,000 x 0.5 = 40,000 -> 0.40.
    p = run(policy([MARKET]), FACTOR, FACTOR_PX, FACTOR_POS, 20_000.0)
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [("AAA", "SELL", 240), ("BBB", "SELL", 240)]
    assert drifts(p)["exposure:market"] == pytest.approx((0.40, 0.10))


def test_later_limits_move_earlier_ones_so_passes_repeat():
    # Policy order: exposure (hedged with FUT1, 10,000 a contract, beta 1.0), then weight AAA [0.30, 0.50].
    # Pass 1: hedge -30,000 (0.70 -> 0.40); SELL 100 AAA (0.60 -> 0.50) drops exposure to 0.30.
    # Pass 2: hedge back +10,000. Net: SELL 2 FUT1, SELL 100 AAA; exposure 50,000 + 10,000 - 20,000 = 0.40.
    pol = policy([MARKET, weight("AAA", 0.40, 0.10)], factor_hedges={"market": "FUT1"})
    p = run(pol, FACTOR, FACTOR_PX, FACTOR_POS, 20_000.0)
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [("AAA", "SELL", 100), ("FUT1", "SELL", 2)]
    assert drifts(p) == {"exposure:market": pytest.approx((0.40, 0.10)), "weight:AAA": pytest.approx((0.20, 0.10))}


def test_hedge_without_a_price_is_no_trade_and_a_warning():
    prices = {k: v for k, v in FACTOR_PX.items() if k != "FUT"}
    p = run(policy([MARKET], factor_hedges={"market": "FUT"}), FACTOR, prices, FACTOR_POS, 20_000.0)
    assert p.trades == ()
    assert "exposure:market: no price for FUT" in p.warnings


# -- 4. liquidity: participation cap, no ADV -----------------------------------------------------


def test_participation_cap_defers_the_rest_and_no_adv_is_skipped():
    # to target: need SELL 60 AAA, ADV 300 x 10% = 30 now, 30 deferred (AAA 63,000 -> drift 0.03).
    # BBB has no ADV and the policy skips it: all 120 deferred, BBB stays at 0.34.
    instruments = {"AAA": inst("AAA", adv=300), "BBB": inst("BBB", adv=None)}
    p = run(policy(SIXTY_FORTY), instruments, TWO_PX, TWO_POS, 0.0, to_target=True)
    t = by_id(p)
    assert (t["AAA"].quantity, t["AAA"].deferred_quantity, t["AAA"].participation) == (30, 30, pytest.approx(0.1))
    assert t["AAA"].note == "capped at 10% of ADV 300: 30 deferred"
    assert (t["BBB"].side, t["BBB"].quantity, t["BBB"].deferred_quantity, t["BBB"].participation) == \
        ("BUY", 0, 120, None)
    assert t["BBB"].note == "no ADV, skipped: 120 deferred"
    assert t["BBB"].notional_base == 0 and t["BBB"].est_cost_base == 0
    assert drifts(p) == {"weight:AAA": pytest.approx((0.06, 0.03)), "weight:BBB": pytest.approx((-0.06, -0.06))}
    # AAA at 0.63 is back inside its band; BBB is not, because of what was deferred.
    assert p.warnings == ("weight:BBB still outside its band after the trades: 0.34, band [0.35, 0.45]; "
                          "some quantity is deferred",)


def test_no_adv_capped_at_a_notional():
    # cap 2,500 / 50 = 50 BBB now, 70 deferred; no ADV also means no impact estimate.
    instruments = {"AAA": inst("AAA"), "BBB": inst("BBB", adv=None)}
    pol = policy(SIXTY_FORTY, without_adv="cap", without_adv_cap_notional=2_500)
    t = by_id(run(pol, instruments, TWO_PX, TWO_POS, 0.0, to_target=True))
    assert (t["BBB"].quantity, t["BBB"].deferred_quantity) == (50, 70)
    assert t["BBB"].note == "no ADV, capped at notional 2,500 (base ccy): 70 deferred"


# -- 5. costs and the cost-benefit gate -------------------------------------------------------


def costly(spread_a: float, vol_a: float, spread_b: float, vol_b: float) -> dict[str, Instrument]:
    return {"AAA": inst("AAA", adv=6_000, spread_bps=spread_a, daily_vol=vol_a),
            "BBB": inst("BBB", adv=3_000, spread_bps=spread_b, daily_vol=vol_b)}


def test_costs_spread_plus_square_root_impact():
    # to target: SELL 60 AAA (6,000), BUY 120 BBB (6,000).
    # AAA: spread 6,000 x 10/2/1e4 = 3; impact 6,000 x 1.0 x 0.02 x sqrt(60/6,000 = 0.01) = 12 -> 15 (25 bps)
    # BBB: spread 6,000 x 20/2/1e4 = 6; impact 6,000 x 0.03 x sqrt(120/3,000 = 0.04) = 36 -> 42 (70 bps)
    p = run(policy(SIXTY_FORTY), costly(10, 0.02, 20, 0.03), TWO_PX, TWO_POS, 0.0, to_target=True)
    t = by_id(p)
    assert (t["AAA"].est_cost_base, t["AAA"].est_cost_bps) == (pytest.approx(15), pytest.approx(25))
    assert (t["BBB"].est_cost_base, t["BBB"].est_cost_bps) == (pytest.approx(42), pytest.approx(70))
    assert t["AAA"].participation == pytest.approx(0.01) and t["BBB"].participation == pytest.approx(0.04)
    assert p.total_est_cost_base == pytest.approx(57)
    assert p.total_est_cost_bps == pytest.approx(47.5)  # 57 / 12,000
    p = run(policy(SIXTY_FORTY, impact_coefficient=0.5), costly(10, 0.02, 20, 0.03), TWO_PX, TWO_POS, 0.0,
            to_target=True)
    assert p.total_est_cost_base == pytest.approx(3 + 6 + (12 + 36) / 2)


def test_missing_cost_data_is_warned_as_understated():
    instruments = {"AAA": inst("AAA", spread_bps=None), "BBB": inst("BBB", daily_vol=None)}
    p = run(policy(SIXTY_FORTY), instruments, TWO_PX, TWO_POS, 0.0)
    assert "AAA: estimated cost understated, no spread_bps" in p.warnings
    assert "BBB: estimated cost understated, no daily_vol" in p.warnings


def test_cost_gate_withholds_when_cost_exceeds_value():
    # Drift removed: 0.06 on each limit = 0.12; at 400 per unit that is worth 48 < cost 57: withheld.
    p = run(policy(SIXTY_FORTY, drift_value=400), costly(10, 0.02, 20, 0.03), TWO_PX, TWO_POS, 0.0, to_target=True)
    assert p.value_base == pytest.approx(48)
    assert p.withheld == "estimated cost 57.00 exceeds the value of the drift removed 48.00 (base ccy)"
    # Cheaper to trade: AAA 0.6 + 6,000 x 0.01 x 0.1 = 6.6; BBB 1.2 + 6,000 x 0.01 x 0.2 = 13.2; 19.8 <= 48.
    p = run(policy(SIXTY_FORTY, drift_value=400), costly(2, 0.01, 4, 0.01), TWO_PX, TWO_POS, 0.0, to_target=True)
    assert p.total_est_cost_base == pytest.approx(19.8)
    assert (p.value_base, p.withheld) == (pytest.approx(48), None)
    # A per-limit value overrides: AAA 0.06 x 1,000 = 60, BBB 0.06 x 0 = 0 -> 60 >= 57: sent.
    pol = policy(SIXTY_FORTY, drift_value=0, drift_value_by_limit={"weight:AAA": 1_000})
    p = run(pol, costly(10, 0.02, 20, 0.03), TWO_PX, TWO_POS, 0.0, to_target=True)
    assert (p.value_base, p.withheld) == (pytest.approx(60), None)


# -- 6. leverage, side effects, metrics without a rule ---------------------------------------------

LEV = {"AAA": inst("AAA"), "BBB": inst("BBB")}
LEV_POS = {"AAA": 1_000, "BBB": -1_000}  # 100,000 long, 50,000 short, cash 50,000 -> NAV 100,000
GROSS = {"metric": "gross_leverage", "target": 1.0, "band": {"width": 0.2}}  # 1.5 now, band [0.8, 1.2]
NET = {"metric": "net_leverage", "target": 0.5, "band": {"width": 0.05}}  # 0.5 now, band [0.45, 0.55]


def test_leverage_scales_every_holding_and_warns_of_the_side_effect():
    # k = 1.2 / 1.5 = 0.8: AAA -20,000 (SELL 200), BBB +10,000 (BUY 200 to cover).
    # Gross 80,000 + 40,000 = 1.2; net 40,000 -> 0.40, below 0.45: net_leverage is pushed out of its band.
    p = run(policy([GROSS, NET]), LEV, TWO_PX, LEV_POS, 50_000.0, limit_ids=["gross_leverage"])
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [("AAA", "SELL", 200), ("BBB", "BUY", 200)]
    assert drifts(p) == {"gross_leverage": pytest.approx((0.5, 0.2)), "net_leverage": pytest.approx((0.0, -0.1))}
    assert [e.inside_after for e in p.limits] == [True, False]
    assert p.warnings == ("would push net_leverage out of its band: 0.5 -> 0.4, band [0.45, 0.55]",)


def test_drawdown_has_no_trade_rule():
    # NAV 100,000 against a peak of 125,000: drawdown 0.20, band [0, 0.10] around target 0.05.
    dd = {"metric": "drawdown", "target": 0.05, "band": {"width": 0.05}}
    p = run(policy([dd]), LEV, TWO_PX, LEV_POS, 50_000.0, peak_nav=125_000.0)
    assert p.trades == ()
    assert "drawdown: no trade rule for metric drawdown" in p.warnings
    assert drifts(p) == {"drawdown": pytest.approx((0.15, 0.15))}
    assert not p.limits[0].inside_after


def test_risk_contribution_has_no_rule_but_is_re_measured_with_a_risk_model():
    # Weights AAA 0.6 (beta 1), BBB 0.2 (beta 0.5); factor variance 0.04, specific 0.01 and 0.02.
    # Before: x = 0.7, factor part 0.04 x 0.49 = 0.0196, specific 0.36 x 0.01 + 0.04 x 0.02 = 0.0044,
    # share 0.0196 / 0.024 = 0.81667. Edge of weight AAA (0.45, SELL 150): x = 0.55, factor 0.0121,
    # specific 0.2025 x 0.01 + 0.0008 = 0.002825, share 0.0121 / 0.014925 = 0.81072.
    model = RiskModel("m", 0, ("market",), ((0.04,),), {"AAA": 0.01, "BBB": 0.02})
    rc = {"metric": "risk_contribution", "dimension": "factor", "bucket": "market", "target": 0.5,
          "band": {"width": 0.05}}
    pol = policy([weight("AAA", 0.40, 0.05), rc])
    p = run(pol, FACTOR, FACTOR_PX, FACTOR_POS, 20_000.0, risk_model=model)
    assert [(t.instrument_id, t.side, t.quantity) for t in p.trades] == [("AAA", "SELL", 150)]
    assert drifts(p)["risk_contribution:factor:market"] == pytest.approx((0.0196 / 0.024 - 0.5,
                                                                          0.0121 / 0.014925 - 0.5))
    assert "risk_contribution:factor:market: no trade rule for metric risk_contribution" in p.warnings
    # Without a risk model it cannot be measured at all: warned, not reported; the weight still trades.
    p = run(pol, FACTOR, FACTOR_PX, FACTOR_POS, 20_000.0)
    assert [e.limit.limit_id for e in p.limits] == ["weight:AAA"]
    assert "risk_contribution:factor:market: cannot measure: no risk model" in p.warnings


def test_unavailable_valuation_proposes_nothing():
    p = run(policy(SIXTY_FORTY), TWO, {"AAA": (100.0, 1)}, TWO_POS, 0.0)
    assert (p.trades, p.limits) == ((), ())
    assert p.warnings == ("cannot propose: missing price of BBB",)


# -- properties ----------------------------------------------------------------------------------

IDS = ("A", "B", "C")
prices_st = st.tuples(*[st.floats(1.0, 1_000.0) for _ in IDS])
positions_st = st.tuples(*[st.integers(0, 10_000) for _ in IDS])
targets_st = st.tuples(*[st.floats(0.0, 0.3) for _ in IDS])


def _book(prices: tuple[float, ...], positions: tuple[int, ...], cash: float, **kw: Any):
    instruments = {iid: inst(iid, **kw) for iid in IDS}
    px = {iid: (p, 1) for iid, p in zip(IDS, prices)}
    return instruments, px, dict(zip(IDS, positions)), cash


def _half_lot_weight(lot: float, prices: tuple[float, ...], nav: float) -> float:
    """The most that rounding to the nearest lot can move a weight away from its goal."""
    return lot * max(prices) / nav


@settings(max_examples=60, deadline=None)
@given(prices_st, positions_st, targets_st, st.floats(1_000.0, 1e6))
def test_to_target_lands_on_target(prices, positions, targets, cash):
    instruments, px, pos, cash = _book(prices, positions, cash, lot_size=1e-6)
    pol = policy([weight(iid, t, 0.01) for iid, t in zip(IDS, targets)], max_participation=1.0)
    p = run(pol, instruments, px, pos, cash, to_target=True)
    nav = cash + sum(q * x for q, x in zip(positions, prices))
    for e in p.limits:
        assert e.drift_after == pytest.approx(0.0, abs=_half_lot_weight(1e-6, prices, nav) + 1e-12)
    assert all(t.deferred_quantity == 0 for t in p.trades)


@settings(max_examples=60, deadline=None)
@given(prices_st, positions_st, targets_st, st.floats(0.0, 1e6), st.floats(1.0, 1e5), st.floats(0.01, 1.0),
       st.sampled_from([1.0, 10.0, 100.0]), st.floats(0.0, 100.0), st.floats(0.0, 0.1),
       st.sampled_from(["edge", "inner", "target"]))
def test_never_above_the_participation_cap_and_costs_are_not_negative(
        prices, positions, targets, cash, adv, max_participation, lot, spread, vol, trade_to):
    instruments, px, pos, cash = _book(prices, positions, cash + 1.0, adv=adv, lot_size=lot,
                                       spread_bps=spread, daily_vol=vol)
    pol = policy([weight(iid, t, 0.02) for iid, t in zip(IDS, targets)], max_participation=max_participation,
                 trade_to=trade_to)
    p = run(pol, instruments, px, pos, cash)
    for t in p.trades:
        assert t.quantity <= max_participation * adv + 1e-9
        assert t.participation is not None and t.participation <= max_participation + 1e-12
        assert t.quantity / lot == pytest.approx(round(t.quantity / lot), abs=1e-6)
        assert t.est_cost_base >= 0 and t.est_cost_bps >= 0 and t.quantity >= 0 and t.deferred_quantity >= 0
    assert p.total_est_cost_base >= 0 and p.total_est_cost_bps >= 0


@settings(max_examples=60, deadline=None)
@given(prices_st, positions_st, targets_st, st.floats(1_000.0, 1e6), st.floats(0.005, 0.1))
def test_edge_lands_inside_the_band_when_nothing_is_capped(prices, positions, targets, cash, width):
    instruments, px, pos, cash = _book(prices, positions, cash, lot_size=1e-6)
    pol = policy([weight(iid, t, width) for iid, t in zip(IDS, targets)], max_participation=1.0)
    p = run(pol, instruments, px, pos, cash)
    nav = cash + sum(q * x for q, x in zip(positions, prices))
    slack = _half_lot_weight(1e-6, prices, nav) + 1e-12
    for e in p.limits:
        assert e.drift_after is not None
        assert -width - slack <= e.drift_after <= width + slack
        if abs(e.drift_before) <= width:  # inside already: not traded
            assert e.limit.instrument not in {t.instrument_id for t in p.trades}


@settings(max_examples=80, deadline=None)
@given(prices_st, positions_st, targets_st, st.floats(1_000.0, 1e6), st.floats(1.0, 1e5),
       st.sampled_from([1.0, 10.0, 100.0]), st.floats(0.0, 50_000.0), st.sampled_from(["edge", "inner", "target"]))
def test_after_estimates_are_what_the_proposed_quantities_do(prices, positions, targets, cash, adv, lot,
                                                             min_notional, trade_to):
    """Re-valuing the book with exactly the proposed quantities (not the deferred, not the dropped)
    gives each limit's drift_after_est; a dropped quantity is never also traded, and was under
    min_notional."""
    instruments, px, pos, cash = _book(prices, positions, cash, adv=adv, lot_size=lot)
    pol = policy([weight(iid, t, 0.02) for iid, t in zip(IDS, targets)], min_notional=min_notional,
                 trade_to=trade_to)
    p = run(pol, instruments, px, pos, cash)
    after = dict(pos)
    cash_after = cash
    for t in p.trades:
        signed = t.quantity if t.side == "BUY" else -t.quantity
        after[t.instrument_id] = after.get(t.instrument_id, 0) + signed
        cash_after -= signed * px[t.instrument_id][0]
        if t.dropped_quantity:
            assert t.quantity == 0 and t.dropped_quantity * px[t.instrument_id][0] < min_notional
    valuation = value_book(Book("B1", positions=after, cash={"USD": cash_after}), "USD", instruments, px)
    for e in p.limits:
        assert e.drift_after == pytest.approx(measure(e.limit, valuation, instruments)[0] - e.limit.target,
                                              rel=1e-9, abs=1e-9)
