"""The Exposure cache equals a full revaluation, whatever prices and FX rates do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine import Book, Instrument, parse_policy
from monitor.engine.exposure import REBUILD_EVERY, Exposure
from monitor.engine.valuation import measure, value_book

CURRENCIES = ("USD", "EUR", "GBP")
SECTORS = ("Tech", "Energy")


def universe(n: int) -> dict[str, Instrument]:
    out = {f"I{i}": Instrument(f"I{i}", CURRENCIES[i % 3], "equity", 1.0 + (i % 2) * 9,
                               {"sector": SECTORS[i % 2], "currency": CURRENCIES[i % 3]},
                               factors={"market": 0.5 + 0.1 * i, "value": -0.2 * (i % 3)})
           for i in range(n)}
    for pair in ("EURUSD", "GBPUSD"):
        out[pair] = Instrument(pair, "USD", "fx", 1.0, {})
    return out


POLICY = parse_policy({
    "portfolio_id": "B1", "version": 1, "base_currency": "EUR",
    "limits": [
        {"metric": "weight", "instrument": "I0", "target": 0.1, "band": {"width": 0.05}},
        *({"metric": m, "dimension": "sector", "bucket": b, "target": 0.1, "band": {"width": 0.05}}
          for m in ("net_weight", "gross_weight", "long_weight", "short_weight") for b in SECTORS),
        {"metric": "net_weight", "dimension": "currency", "bucket": "GBP", "target": 0.1, "band": {"width": 0.05}},
        {"metric": "gross_leverage", "target": 1.0, "band": {"width": 0.5}},
        {"metric": "net_leverage", "target": 1.0, "band": {"width": 0.5}},
        {"metric": "exposure", "factor": "market", "target": 1.0, "band": {"width": 0.5}},
        {"metric": "exposure", "factor": "value", "target": 0.0, "band": {"width": 0.5}},
    ]}, "test")

prices_st = st.floats(min_value=0.5, max_value=500.0)
moves = st.lists(st.tuples(st.sampled_from([f"I{i}" for i in range(6)] + ["EURUSD", "GBPUSD"]), prices_st),
                 min_size=1, max_size=8)


@given(quantities=st.lists(st.floats(min_value=-1_000, max_value=1_000).filter(lambda q: q != 0),
                           min_size=6, max_size=6),
       start=st.lists(prices_st, min_size=8, max_size=8),
       windows=st.lists(moves, min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_deltas_equal_a_full_revaluation(quantities, start, windows):
    instruments = universe(6)
    book = Book("B1", positions={f"I{i}": q for i, q in enumerate(quantities)},
                cash={"USD": 50_000.0, "EUR": -10_000.0, "GBP": 5_000.0})
    ids = [f"I{i}" for i in range(6)] + ["EURUSD", "GBPUSD"]
    ts = 1
    prices = {iid: (px, ts) for iid, px in zip(ids, start)}
    exposure = Exposure.build(book, POLICY, instruments, prices)
    assert exposure is not None
    peak_gross = sum(abs(v) for v in exposure.valuation().mv.values())
    for window in windows:
        ts += 1
        for iid, px in window:
            prices[iid] = (px, ts)
        assert exposure.update({iid for iid, _ in window}, prices)
        kept, full = exposure.valuation(), value_book(book, "EUR", instruments, prices)
        peak_gross = max(peak_gross, sum(abs(v) for v in full.mv.values()))
        assert kept.nav == pytest.approx(full.nav, rel=1e-9, abs=1e-6)
        assert kept.mv == pytest.approx(dict(full.mv), rel=1e-12)
        assert (kept.price_ts, dict(kept.input_ts)) == (full.price_ts, dict(full.input_ts))
        for limit in POLICY.limits:
            got, want = measure(limit, kept, instruments), measure(limit, full, instruments)
            if want[0] is None:  # NAV <= 0: both say weights are undefined
                assert got[0] is None and got[1] == want[1]
            else:
                # Deltas leave rounding of the order of the largest MVs the sums have held, not of
                # their net; a metric divides it by NAV, which can be far smaller (a near-flat book).
                leverage = max(1.0, peak_gross / abs(full.nav or 1.0))
                assert got[0] == pytest.approx(want[0], rel=1e-9, abs=1e-9 * leverage), limit.limit_id


def test_a_missing_price_or_rate_means_no_cache_and_a_periodic_rebuild_is_asked_for():
    instruments = universe(2)
    book = Book("B1", positions={"I0": 10.0, "I1": 5.0}, cash={})
    prices = {"I0": (100.0, 1), "EURUSD": (1.1, 1), "GBPUSD": (1.3, 1)}
    assert Exposure.build(book, POLICY, instruments, prices) is None  # no price for I1
    prices["I1"] = (50.0, 1)
    exposure = Exposure.build(book, POLICY, instruments, {k: v for k, v in prices.items() if k != "EURUSD"})
    assert exposure is None  # USD holdings cannot be valued in EUR without EURUSD
    exposure = Exposure.build(book, POLICY, instruments, prices)
    assert exposure is not None
    for _ in range(REBUILD_EVERY - 1):
        assert exposure.update({"I0"}, prices)
    assert not exposure.update({"I0"}, prices)  # time for a full revaluation
