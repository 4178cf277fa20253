"""The Exposures' vectorised valuation equals a book-by-book revaluation, whatever prices and FX
rates do, and a book's figures do not depend on which other books are valued with it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine import Book, Instrument, parse_policy
from monitor.engine.exposure import COLUMN_METRICS, Exposures
from monitor.engine.model import RiskModel
from monitor.engine.valuation import decompose_risk, measure, value_book

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
        {"metric": "risk_contribution", "dimension": "factor", "bucket": "market", "target": 0.5,
         "band": {"width": 0.2}},
        {"metric": "risk_contribution", "dimension": "factor", "bucket": "size", "target": 0.1, "band": {"width": 0.2}},
        {"metric": "risk_contribution", "dimension": "specific", "bucket": "specific", "target": 0.3,
         "band": {"width": 0.2}},
        {"metric": "risk_contribution", "dimension": "sector", "bucket": "Tech", "target": 0.5, "band": {"width": 0.2}},
        {"metric": "drawdown", "target": 0.0, "band": {"width": 0.1}},
    ]}, "test")
MODEL = RiskModel("M", 0, ("market", "value"), ((4e-4, -1e-4), (-1e-4, 9e-4)),
                  {f"I{i}": 1e-4 * (i + 1) for i in range(6)})

prices_st = st.floats(min_value=0.5, max_value=500.0)
moves = st.lists(st.tuples(st.sampled_from([f"I{i}" for i in range(6)] + ["EURUSD", "GBPUSD"]), prices_st),
                 min_size=1, max_size=8)


quantities_st = st.lists(st.floats(min_value=-1_000, max_value=1_000).filter(lambda q: q != 0), min_size=6, max_size=6)


@given(books=st.lists(quantities_st, min_size=1, max_size=4),
       start=st.lists(prices_st, min_size=8, max_size=8),
       windows=st.lists(moves, min_size=1, max_size=12),
       subset=st.integers(min_value=0, max_value=15))
@settings(max_examples=200, deadline=None)
def test_vectorised_valuation_equals_book_by_book(books, start, windows, subset):
    instruments = universe(6)
    held = [Book(f"B{n}", positions={f"I{i}": q for i, q in enumerate(qs) if n % 2 == 0 or i % 2},
                 cash={"USD": 50_000.0, "EUR": -10_000.0, "GBP": 5_000.0 * n}) for n, qs in enumerate(books)]
    pairs = [(book, POLICY, MODEL if n % 3 != 2 else None) for n, book in enumerate(held)]
    ids = [f"I{i}" for i in range(6)] + ["EURUSD", "GBPUSD"]
    ts = 1
    prices = {iid: (px, ts) for iid, px in zip(ids, start)}
    exposures = Exposures()
    for window in windows:
        ts += 1
        for iid, px in window:
            prices[iid] = (px, ts)
            exposures.set_price(iid, px, ts)
        rows = exposures.value(pairs, instruments, prices)
        for book, _, model in pairs:
            row, full = rows[book.portfolio_id], value_book(book, "EUR", instruments, prices)
            risk = decompose_risk(full, instruments, model) if model else "no model"
            kept = row.valuation()
            # Summed in another order: rounding relative to NAV grows as NAV shrinks against the gross.
            rel = 1e-9 * max(1.0, sum(abs(v) for v in full.mv.values()) / abs(full.nav or 1.0))
            assert kept.nav == pytest.approx(full.nav, rel=1e-9, abs=1e-6)
            assert dict(kept.mv) == pytest.approx(dict(full.mv), rel=1e-12)
            assert (kept.price_ts, dict(kept.input_ts), kept.oldest_ts) == \
                (full.price_ts, dict(full.input_ts), full.oldest_ts)
            for limit, col in zip(POLICY.limits, row.block.columns):
                assert (col is not None) == (limit.metric in COLUMN_METRICS)
                if col is None:  # drawdown: the engine measures it from its peak NAV
                    continue
                want = measure(limit, full, instruments, None, risk)
                if want[0] is None:  # NAV <= 0 (not judged), or no risk model (nan: not judged)
                    assert (full.nav is not None and full.nav <= 0) or row.actuals[col] != row.actuals[col]
                    continue
                assert row.actuals[col] == pytest.approx(want[0], rel=rel, abs=1e-9), limit.limit_id
                assert row.usages[col] == pytest.approx(limit.band.usage(want[0] - limit.target), rel=1e-6,
                                                        abs=1e-9)
        # valued with fewer books, a book's figures are the same floats
        some = [pair for n, pair in enumerate(pairs) if subset >> n & 1] or pairs[:1]
        for pid, row in exposures.value(some, instruments, prices).items():
            assert row.nav == rows[pid].nav
            for mine, theirs in ((row.actuals, rows[pid].actuals), (row.usages, rows[pid].usages)):
                assert np.array_equal(mine, theirs, equal_nan=True)


def test_a_missing_price_or_rate_makes_the_row_unusable_and_unknown_reference_data_gives_none():
    instruments = universe(2)
    book = Book("B1", positions={"I0": 10.0, "I1": 5.0}, cash={})
    prices = {"I0": (100.0, 1), "EURUSD": (1.1, 1), "GBPUSD": (1.3, 1)}
    exposures = Exposures()
    assert not exposures.value([(book, POLICY, None)], instruments, prices)["B1"].ok  # no price for I1
    prices["I1"] = (50.0, 1)
    exposures.set_price("I1", 50.0, 1)
    no_eur = {k: v for k, v in prices.items() if k != "EURUSD"}
    assert not exposures.value([(book, POLICY, None)], instruments, no_eur)["B1"].ok  # USD in EUR needs EURUSD
    row = exposures.value([(book, POLICY, None)], instruments, prices)["B1"]
    assert row.ok and row.nav == pytest.approx(10 * 100.0 / 1.1 + 5 * 50.0 * 10)  # I0 in USD, I1 in EUR
    stranger = Book("B2", positions={"NOPE": 1.0})
    assert "B2" not in exposures.value([(stranger, POLICY, None)], instruments, prices)


changes_st = st.lists(st.tuples(st.integers(0, 2), st.sampled_from([f"I{i}" for i in range(6)] + ["EUR", "GBP"]),
                                st.floats(min_value=-1_000, max_value=1_000)), min_size=1, max_size=10)


@given(books=st.lists(quantities_st, min_size=1, max_size=3), start=st.lists(prices_st, min_size=8, max_size=8),
       changes=changes_st, by_fill=st.booleans(), every=st.integers(1, 3))
@settings(max_examples=150, deadline=None)
def test_positions_moved_in_place_value_as_if_built_afresh(books, start, changes, by_fill, every):
    """A fill or snapshot writes a book's new quantities into the arrays in place (same instruments
    and currencies; a fill only its instrument's row) or rebuilds its layout (a holding or a
    currency comes or goes): either way the book values to the same floats as in an Exposures built
    from nothing, valued after every change or after a few."""
    instruments = universe(6)
    held = [Book(f"B{n}", positions={f"I{i}": q for i, q in enumerate(qs) if i % 3 != n % 3},
                 cash={"USD": 50_000.0, "EUR": -10_000.0}) for n, qs in enumerate(books)]
    pairs = [(book, POLICY, MODEL) for book in held]
    ids = [f"I{i}" for i in range(6)] + ["EURUSD", "GBPUSD"]
    prices = {iid: (px, 1) for iid, px in zip(ids, start)}
    exposures = Exposures()
    exposures.value(pairs, instruments, prices)
    for step, (n, what, amount) in enumerate(changes):
        book = held[n % len(held)]
        where = book.cash if what in ("EUR", "GBP") else book.positions
        if amount == 0:
            where.pop(what, None)  # a position closed, or a currency gone
        else:
            where[what] = amount  # a quantity changed, or a new holding
        # A fill names its instrument (its cash moves too); a snapshot names none.
        exposures.moved(book.portfolio_id, ("I0" if what in ("EUR", "GBP") else what) if by_fill else None)
        if step % every:
            continue
        moved = exposures.value(pairs, instruments, prices)
        fresh = Exposures().value(pairs, instruments, prices)
        for pid, row in fresh.items():
            assert (moved[pid].nav == row.nav) or (row.nav != row.nav and moved[pid].nav != moved[pid].nav)
            assert np.array_equal(moved[pid].actuals, row.actuals, equal_nan=True), pid
            assert np.array_equal(moved[pid]._mv, row._mv), pid


def test_a_large_books_figures_do_not_depend_on_which_books_are_valued_with_it() -> None:
    """Sums a book at a time (reduceat) are pairwise over thousands of holdings: the same floats
    wherever the book's holdings sit in the arrays, valued alone or among the others."""
    rng = np.random.default_rng(11)
    n = 2_000
    instruments = universe(n)
    model = RiskModel("M", 0, ("market", "value"), ((4e-4, -1e-4), (-1e-4, 9e-4)),
                      {f"I{i}": 1e-4 * (1 + i % 7) for i in range(n)})
    books = [Book(f"B{k}", positions={f"I{i}": float(q) for i, q in enumerate(rng.normal(0, 500, n))
                                      if rng.random() < 0.3 + 0.2 * k},
                  cash={"USD": 50_000.0, "EUR": -10_000.0}) for k in range(4)]
    pairs = [(book, POLICY, model) for book in books]
    prices = {iid: (float(px), 1) for iid, px in zip(instruments, rng.uniform(1, 500, n + 2))}
    exposures = Exposures()
    for iid, (px, ts) in prices.items():
        exposures.set_price(iid, px, ts)
    together = exposures.value(pairs, instruments, prices)
    for pair in pairs:
        (alone,) = exposures.value([pair], instruments, prices).values()
        mine = together[pair[0].portfolio_id]
        assert alone.nav == mine.nav and alone.nav == alone.nav
        assert np.array_equal(alone.actuals, mine.actuals, equal_nan=True)
        assert np.array_equal(alone.usages, mine.usages, equal_nan=True)
        assert sum(a == a for a in mine.actuals) > 10  # measured, not nan
