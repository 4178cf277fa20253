"""Risk contributions, drawdown, the stale-price guard and NAV <= 0, by hand and by property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine import Book, Engine, Fill, Instrument, Price, RiskModel, Snapshot, parse_policy, parse_ts
from monitor.engine.valuation import decompose_risk, value_book

T0 = parse_ts("2026-11-24T14:00:00Z")
SEC = 1_000_000


def inst(iid: str, sector: str = "Tech", **factors: float) -> Instrument:
    return Instrument(iid, "USD", "equity", 1.0, {"sector": sector, "currency": "USD"}, factors=factors)


def limit(metric: str, target: float, width: float, **kw: str) -> dict:
    return {"metric": metric, "target": target, "band": {"type": "absolute", "width": width}, **kw}


def engine_with(limits: list[dict], positions: dict[str, float], cash: float = 0.0,
                instruments: list[Instrument] | None = None, **evaluation: float) -> Engine:
    e = Engine()
    for i in instruments or [inst("A", mkt=1.0), inst("B", "Energy", mkt=0.5)]:
        e.on_instrument(i)
    e.on_policy(parse_policy({"portfolio_id": "B1", "version": 1, "base_currency": "USD",
                              "evaluation": evaluation, "limits": limits}, "test"))
    e.on_snapshot(Snapshot("B1", T0 - SEC, {"USD": cash}, positions))
    return e


MODEL = RiskModel("m1", T0, ("mkt",), ((0.04,),), {"A": 0.01, "B": 0.02})


def test_risk_contributions_by_hand():
    # w = (0.6, 0.4); x = 0.6*1 + 0.4*0.5 = 0.8; factor var 0.04*0.64 = 0.0256;
    # specific 0.36*0.01 + 0.16*0.02 = 0.0068; total 0.0324.
    # RC_A = 0.6*(1*0.04*0.8) + 0.0036 = 0.0228; RC_B = 0.4*(0.5*0.032) + 0.0032 = 0.0096.
    instruments = {"A": inst("A", mkt=1.0), "B": inst("B", "Energy", mkt=0.5)}
    v = value_book(Book("B1", positions={"A": 60, "B": 40}, cash={}), "USD", instruments,
                   {"A": (10.0, 1), "B": (10.0, 1)})
    risk = decompose_risk(v, instruments, MODEL)
    assert not isinstance(risk, str)
    assert risk.total == pytest.approx(0.0324)
    assert risk.by_instrument == {"A": pytest.approx(0.0228), "B": pytest.approx(0.0096)}
    assert risk.by_factor == {"mkt": pytest.approx(0.0256)}
    assert risk.specific == pytest.approx(0.0068)


def test_risk_contribution_limits_open_on_share_of_variance():
    e = engine_with([limit("risk_contribution", 0.60, 0.05, dimension="sector", bucket="Tech"),
                     limit("risk_contribution", 0.79, 0.05, dimension="factor", bucket="mkt")],
                    {"A": 60, "B": 40})
    assert e.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)]) == []  # no risk model yet: not judged
    [opened] = e.on_risk_model(MODEL)  # Tech's share 0.0228/0.0324 = 0.7037 is outside 0.55..0.65
    assert opened.limit_id == "risk_contribution:sector:Tech" and opened.state == "OPEN"
    assert opened.actual == pytest.approx(0.0228 / 0.0324)
    assert e.on_prices([Price("B", 10.0, T0 + SEC)]) == []  # already open; mkt's 0.7901 is inside 0.74..0.84
    assert e.watches["B1"].limits["risk_contribution:factor:mkt"].alert_id is None
    assert e.status["B1"].band_usage == pytest.approx((0.0228 / 0.0324 - 0.60) / 0.05)


def test_risk_model_missing_specific_variance_makes_metric_unavailable():
    e = engine_with([limit("risk_contribution", 0.5, 0.01, dimension="sector", bucket="Tech")], {"A": 60, "C": 1},
                    instruments=[inst("A", mkt=1.0), inst("C", mkt=1.0)])
    e.on_risk_model(MODEL)
    assert e.on_prices([Price("A", 10.0, T0), Price("C", 10.0, T0)]) == []
    assert e.status["B1"].band_usage is None


def test_drawdown_from_peak_nav():
    e = engine_with([limit("drawdown", 0.0, 0.10)], {"A": 100}, instruments=[inst("A")])
    e.on_prices([Price("A", 10.0, T0)])  # NAV 1000
    e.on_prices([Price("A", 12.0, T0 + SEC)])  # peak 1200
    [opened] = e.on_prices([Price("A", 9.0, T0 + 2 * SEC)])  # 1 - 900/1200 = 0.25
    assert opened.state == "OPEN" and opened.actual == pytest.approx(0.25)
    assert e.watches["B1"].peak_nav == 1200.0


def test_stale_price_neither_opens_nor_resolves_and_says_which():
    e = engine_with([limit("weight", 0.6, 0.05, instrument="A")], {"A": 60, "B": 40}, stale_price_seconds=10)
    assert e.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)]) == []
    # 12 s later only A ticks, and far: B's price is 12 s old, so the breach on A is not judged.
    events = e.on_prices([Price("A", 14.0, T0 + 12 * SEC)])
    assert [(a.kind, a.state) for a in events] == [("DATA_STALE", "OPEN")]
    stale = events[0]
    assert stale.stale_instruments == ("B",) and stale.actual == pytest.approx(12.0)
    msg = stale.to_message(T0)
    assert msg["inputs"]["stale_instruments"] == ["B"] and msg["drift"] is None
    # B ticks: data fresh again (RESOLVED), and now the breach on A is judged (OPEN).
    events = e.on_prices([Price("B", 10.0, T0 + 13 * SEC)])
    assert [(a.kind, a.state) for a in events] == [("DATA_STALE", "RESOLVED"), ("LIMIT", "OPEN")]


def test_a_book_whose_prices_stop_goes_stale_as_the_market_moves_on():
    e = engine_with([limit("weight", 1.0, 0.05, instrument="A")], {"A": 10},
                    instruments=[inst("A"), inst("Z")], stale_price_seconds=5)
    e.on_prices([Price("A", 10.0, T0)])
    assert e.on_prices([Price("Z", 1.0, T0 + 3 * SEC)]) == []
    [stale] = e.on_prices([Price("Z", 1.0, T0 + 7 * SEC)])  # the book's only price is 7 s old
    assert (stale.kind, stale.state, stale.stale_instruments) == ("DATA_STALE", "OPEN", ("A",))


def test_non_positive_nav_says_so_instead_of_dividing_by_zero():
    e = engine_with([limit("weight", 0.6, 0.05, instrument="A")], {"A": 60, "B": 40}, cash=-2_000)
    [nav] = e.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)])  # NAV = 1000 - 2000
    assert (nav.kind, nav.state, nav.severity, nav.actual) == ("NAV_NON_POSITIVE", "OPEN", "CRITICAL", -1000.0)
    assert "NAV is -1,000.00 USD" in (nav.reason or "")
    assert nav.to_message(T0)["band"] is None
    # A to 40: 2400 + 400 - 2000 = 800 > 0: resolved, and A's weight 2400/800 = 3 opens its limit.
    events = e.on_prices([Price("A", 40.0, T0 + SEC)])
    assert [(a.kind, a.state) for a in events] == [("NAV_NON_POSITIVE", "RESOLVED"), ("LIMIT", "OPEN")]


# -- properties ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), st.data())
def test_risk_contributions_sum_to_total_variance(n, k, data):
    floats = st.floats(-2, 2, allow_nan=False)
    positions = {f"I{i}": data.draw(st.floats(-1000, 1000, allow_nan=False).filter(lambda q: abs(q) > 1e-3))
                 for i in range(n)}
    factors = tuple(f"f{j}" for j in range(k))
    instruments = {iid: Instrument(iid, "USD", "equity", 1.0, {"sector": "S"},
                                   factors={f: data.draw(floats) for f in factors}) for iid in positions}
    root = np.array(data.draw(st.lists(floats, min_size=k * k, max_size=k * k))).reshape(k, k)
    cov = root @ root.T  # positive semi-definite
    model = RiskModel("m", 0, factors, tuple(map(tuple, cov.tolist())),
                      {iid: data.draw(st.floats(0, 0.1)) for iid in positions})
    cash = sum(abs(q) for q in positions.values()) * 10 + 1
    v = value_book(Book("B", positions=positions, cash={"USD": cash}), "USD", instruments,
                   {iid: (10.0, 1) for iid in positions})
    risk = decompose_risk(v, instruments, model)
    assert not isinstance(risk, str)
    w = np.array([v.mv[i] for i in sorted(v.mv)]) / v.nav
    b = np.array([[instruments[i].factors[f] for f in factors] for i in sorted(v.mv)])
    expected = w @ (b @ cov @ b.T + np.diag([model.specific_var[i] for i in sorted(v.mv)])) @ w
    assert risk.total == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert sum(risk.by_instrument.values()) == pytest.approx(risk.total, rel=1e-9, abs=1e-15)
    assert sum(risk.by_factor.values()) + risk.specific == pytest.approx(risk.total, rel=1e-9, abs=1e-15)


EVENT = st.one_of(
    st.tuples(st.just("price"), st.sampled_from(["A", "B", "C"]), st.floats(1, 100, allow_nan=False)),
    st.tuples(st.just("fill"), st.sampled_from(["A", "B", "C"]), st.sampled_from(["BUY", "SELL"]),
              st.integers(1, 50), st.floats(1, 100, allow_nan=False)),
    st.tuples(st.just("snapshot"), st.integers(-50, 200), st.integers(-50, 200), st.floats(-1e4, 1e4)),
    # Reference updates move an instrument between buckets; its contract multiplier is fixed
    # (cash moves at the multiplier in force when a fill is applied, as it settles).
    st.tuples(st.just("instrument"), st.sampled_from(["A", "B", "C"]), st.sampled_from(["Tech", "X"])),
)
MULTIPLIER = {"A": 1.0, "B": 10.0, "C": 50.0}


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT, max_size=40), st.randoms(use_true_random=False))
def test_incremental_state_equals_recomputation_and_redelivery_changes_nothing(events, rnd):
    """Random snapshots, fills, prices and reference updates, with some fills re-delivered:
    the engine's NAV and metrics equal a from-scratch valuation of the fills that count."""
    limits = [limit("weight", 0.3, 0.05, instrument="A"),
              limit("net_weight", 0.5, 0.1, dimension="sector", bucket="Tech"),
              limit("gross_leverage", 1.0, 0.2)]

    def run(redeliver: bool) -> tuple[Engine, list, list[Fill], list[Snapshot], dict[str, Instrument]]:
        e = Engine()
        e.on_policy(parse_policy({"portfolio_id": "B1", "version": 1, "base_currency": "USD",
                                  "limits": limits}, "test"))
        out, fills, snaps, refs = [], [], [], {}
        for i, ev in enumerate(events):
            ts = T0 + i * SEC
            if ev[0] == "price":
                out += e.on_prices([Price(ev[1], ev[2], ts)])
            elif ev[0] == "instrument":
                refs[ev[1]] = Instrument(ev[1], "USD", "equity", MULTIPLIER[ev[1]], {"sector": ev[2]})
                out += e.on_instrument(refs[ev[1]])
            elif ev[0] == "snapshot":
                snaps.append(Snapshot("B1", ts, {"USD": ev[3]}, {"A": ev[1], "B": ev[2]}))
                out += e.on_snapshot(snaps[-1])
            else:
                fills.append(Fill(f"F{i}", "B1", ev[1], ev[2], ev[3], ev[4], ts))
                out += e.on_fill(fills[-1])
                if redeliver and rnd.random() < 0.5:
                    out += e.on_fill(rnd.choice(fills))
        return e, out, fills, snaps, refs

    e, alerts, fills, snaps, refs = run(redeliver=False)
    e2, alerts2, *_ = run(redeliver=True)
    assert [a.event_id for a in alerts] == [a.event_id for a in alerts2]
    assert e.books.get("B1") == e2.books.get("B1")

    # From scratch: the last snapshot, plus every fill after it whose instrument is known.
    as_of = snaps[-1].as_of if snaps else None
    positions = dict(snaps[-1].positions) if snaps else {}
    cash = dict(snaps[-1].cash) if snaps else {}
    for f in fills:
        if (as_of is None or f.ts > as_of) and f.instrument_id in refs:
            positions[f.instrument_id] = positions.get(f.instrument_id, 0) + f.signed_quantity
            notional = f.quantity * f.price * refs[f.instrument_id].multiplier
            cash["USD"] = cash.get("USD", 0.0) + (-notional if f.side == "BUY" else notional)
    book = e.books.get("B1")
    if book is None:
        assert not snaps and not fills
        return
    assert {k: v for k, v in positions.items() if v} == pytest.approx(book.positions)
    assert cash.get("USD", 0.0) == pytest.approx(book.cash.get("USD", 0.0), rel=1e-9, abs=1e-6)
    if book.as_of is None:  # fills without a snapshot: its holdings are unknown, so it is never judged
        assert "B1" not in e.status and not any(a.portfolio_id == "B1" for a in alerts)
        return
    fresh = value_book(Book("B1", positions=positions, cash=cash), "USD", e.instruments, e.prices)
    if fresh.ok:
        e.evaluate("B1", e.clock["B1"])
        assert e.status["B1"].nav == pytest.approx(fresh.nav, rel=1e-9, abs=1e-6)
        # Exposures: a new engine given only the end state (one snapshot, the reference data, the
        # latest prices) judges every limit to the same figures.
        scratch = Engine()
        for instrument in e.instruments.values():
            scratch.on_instrument(instrument)
        scratch.on_policy(e.policies["B1"])
        scratch.on_snapshot(Snapshot("B1", e.clock["B1"], cash, positions))
        scratch.prices.update(e.prices)
        scratch.evaluate("B1", e.clock["B1"])
        got, want = e.status["B1"], scratch.status["B1"]
        for field in ("nav", "band_usage", "largest_drift"):
            a, b = getattr(got, field), getattr(want, field)
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12), field
