"""Every book's holdings and linear limits as arrays, valued together per window.

On a price feed nearly every book is touched in every event-time window, and a loop
that values one book and then measures one limit at a time spends its time on Python
per holding and per limit. `Exposures` keeps what valuing needs as flat numpy arrays
over all books (one row per holding: instrument, quantity, multiplier, FX pair; one
row per cash balance), and every linear limit (weight, bucket net/gross/long/short
weight, gross and net leverage, factor exposure) as a column fed by *terms*: (column,
holding, coefficient, kind), kind being which of MV, |MV|, max(MV, 0), min(MV, 0) the
term adds. `value(books)` then values the touched books and measures all their linear
limits in a few vector operations: MV = quantity x price x multiplier x FX-to-base per
holding, NAV per book, each column a weighted sum of its terms (`np.bincount`), and
each limit's band usage. Risk contribution columns are measured the same way, over the
books' factor exposures x = B'w at once: a factor's share x_f (F x)_f, the specific
share sum w^2 D, a bucket's share the sum of its holdings' w_i (B F x)_i + w_i^2 D_i,
each over the book's variance (`valuation.decompose_risk` is the same, book by book).

Nothing is kept between windows but the arrays' layout (rebuilt for a book when its
positions, its policy or reference data change) and the latest prices: every figure
is recomputed from the positions and prices in force, summed in a fixed order, so the
same events give the same floats however they were batched, and after a restart too.
Drawdown needs the peak NAV the engine keeps: it is measured per book (`measure`), on
the `Valuation` a `Row` gives.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from monitor.engine.book import Book
from monitor.engine.model import Instrument, Micros, RiskModel
from monitor.engine.policy import BUCKET_METRICS, FACTOR_METRICS, RISK_METRICS, Limit, Policy
from monitor.engine.valuation import PriceBook, Valuation, fx_rate

NET, GROSS, LONG, SHORT, RISK = range(5)  # a term adds MV, |MV|, max(MV, 0), min(MV, 0), risk part
_KIND = {"weight": NET, "net_weight": NET, "gross_weight": GROSS, "long_weight": LONG, "short_weight": SHORT,
         "net_leverage": NET, "gross_leverage": GROSS, "exposure": NET, "risk_contribution": RISK}
COLUMN_METRICS = frozenset(_KIND)  # measured here; the others (drawdown) by `measure`
_NO_TS = np.iinfo(np.int64).max


class _Lazy(Mapping[str, float]):
    """A mapping built on first use: most evaluations never read a book's MVs one by one."""

    def __init__(self, make: Callable[[], dict]) -> None:
        self._make: Callable[[], dict] | None = make
        self._data: dict = {}

    def _get(self) -> dict:
        if self._make is not None:
            self._data, self._make = self._make(), None
        return self._data

    def __getitem__(self, key: str):
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass(frozen=True)
class _Block:
    """One book under one policy, as arrays (indexes local to the book)."""

    iids: tuple[str, ...]  # holdings, sorted
    inst: np.ndarray  # instrument column of each holding (into the price arrays)
    qty: np.ndarray
    mult: np.ndarray
    pair: np.ndarray  # FX pair (holding currency -> base) of each holding
    cash_pair: np.ndarray
    cash_amt: np.ndarray
    columns: tuple[int | None, ...]  # per policy limit: its column, None if not one of COLUMN_METRICS
    column_limit: tuple[int, ...]  # per column: its limit's index in the policy
    other_limits: frozenset[int]  # the policy's limits that are not columns (measured one by one)
    target: np.ndarray  # per column
    below: np.ndarray
    above: np.ndarray
    risk: np.ndarray  # per column: a risk contribution (a share of variance, not of NAV)
    risk_factor: np.ndarray  # per column: the factor (in Exposures.factors) whose share it is, or -1
    risk_specific: np.ndarray  # per column: the specific share
    load: np.ndarray  # holdings x the model's factors: loadings (None-model: no columns)
    load_factors: np.ndarray  # those factors' indexes in Exposures.factors
    spec: np.ndarray  # per holding: specific variance (nan: the model has none: risk unavailable)
    model: RiskModel | None
    term_col: np.ndarray
    term_hold: np.ndarray
    term_coef: np.ndarray
    term_kind: np.ndarray

    @property
    def n_columns(self) -> int:
        return len(self.target)

    @cached_property
    def row(self) -> dict[str, int]:
        """Each holding's row in the block."""
        return {iid: k for k, iid in enumerate(self.iids)}


def _quantities(book: Book) -> tuple[tuple[str, ...], np.ndarray, list[str], np.ndarray]:
    """What a fill or a snapshot changes in a block: the instruments held (sorted) and their
    quantities, the cash currencies (sorted) and their amounts."""
    iids = tuple(sorted(book.positions))
    cash = sorted(book.cash.items())
    return (iids, np.array([book.positions[iid] for iid in iids], dtype=np.float64), [ccy for ccy, _ in cash],
            np.array([amount for _, amount in cash], dtype=np.float64))


def _terms(limit: Limit, holdings: Sequence[Instrument]) -> list[tuple[int, float, int]]:
    """(holding, coefficient, kind) of what a linear limit sums, before dividing by NAV."""
    kind, metric = _KIND[limit.metric], limit.metric
    if metric == "weight":
        return [(h, 1.0, kind) for h, inst in enumerate(holdings) if inst.instrument_id == limit.instrument]
    if metric in BUCKET_METRICS:
        return [(h, 1.0, kind) for h, inst in enumerate(holdings)
                if inst.attribute(limit.dimension or "") == limit.bucket]
    if metric in FACTOR_METRICS:
        return [(h, beta, kind) for h, inst in enumerate(holdings)
                if (beta := inst.factors.get(limit.factor or "", 0.0))]
    if metric in RISK_METRICS:  # a bucket's share; a factor's or the specific share has no terms
        return [] if limit.dimension in ("factor", "specific") else \
            [(h, 1.0, kind) for h, inst in enumerate(holdings) if inst.attribute(limit.dimension or "") == limit.bucket]
    return [(h, 1.0, kind) for h in range(len(holdings))]  # gross or net leverage


def _segments(book_of: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts: each book's holdings (they come grouped by book), or
    each column's terms; the segments `reduceat` sums."""
    if not len(book_of):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate(([True], book_of[1:] != book_of[:-1])))


class _Terms(NamedTuple):
    """The terms of one kind: their indexes, holdings, columns (non-decreasing: a column's terms
    are consecutive), coefficients (None: all 1), where each column's terms start."""

    kind: int
    terms: np.ndarray
    hold: np.ndarray
    col: np.ndarray
    coef: np.ndarray | None
    starts: np.ndarray


@dataclass
class _Packed:
    """All blocks concatenated, books in id order."""

    order: list[str]
    at: dict[str, int]  # book -> its position in `order`
    hold_ptr: np.ndarray  # book k's holdings are hold_ptr[k]:hold_ptr[k+1]
    col_ptr: np.ndarray
    cash_ptr: np.ndarray
    hold_book: np.ndarray
    inst: np.ndarray
    qty: np.ndarray
    mult: np.ndarray
    pair: np.ndarray
    cash_book: np.ndarray
    cash_pair: np.ndarray
    cash_amt: np.ndarray
    col_book: np.ndarray
    target: np.ndarray
    below: np.ndarray
    above: np.ndarray
    risk: np.ndarray
    risk_factor: np.ndarray
    risk_specific: np.ndarray
    load: np.ndarray  # holdings x Exposures.factors
    spec: np.ndarray
    models: list[tuple[np.ndarray, np.ndarray]]  # each model's factor covariance, and its books
    term_book: np.ndarray
    term_col: np.ndarray
    term_hold: np.ndarray
    term_coef: np.ndarray
    term_kind: np.ndarray

    @cached_property
    def unit_multipliers(self) -> bool:
        return bool((self.mult == 1.0).all())

    @cached_property
    def hold_pairs(self) -> np.ndarray:
        """The FX pairs the holdings are valued through."""
        return np.unique(self.pair)

    @cached_property
    def terms_by_kind(self) -> list[_Terms]:
        """The terms of each kind present, in order: a column's terms are all of its limit's kind,
        so summing kind by kind sums each column over the same terms, without computing every kind
        for every term."""
        out = []
        for kind in np.unique(self.term_kind).tolist():
            terms = np.flatnonzero(self.term_kind == kind)
            coef, col = self.term_coef[terms], self.term_col[terms]
            out.append(_Terms(kind, terms, self.term_hold[terms], col, None if bool((coef == 1.0).all()) else coef,
                              _segments(col)))
        return out

    @cached_property
    def hold_starts(self) -> np.ndarray:
        """Where each book's holdings start (books without any have none)."""
        return _segments(self.hold_book)

    @classmethod
    def of(cls, blocks: Mapping[str, _Block], factors: Mapping[str, int]) -> "_Packed":
        order = sorted(blocks)
        bs = [blocks[pid] for pid in order]
        n_hold = np.array([len(b.iids) for b in bs], dtype=np.int64)
        n_col = np.array([b.n_columns for b in bs], dtype=np.int64)
        hold_ptr = np.concatenate(([0], np.cumsum(n_hold)))
        col_ptr = np.concatenate(([0], np.cumsum(n_col)))
        n_cash = np.array([len(b.cash_pair) for b in bs], dtype=np.int64)
        cash_ptr = np.concatenate(([0], np.cumsum(n_cash)))
        ks = np.arange(len(bs))
        n_term = np.array([len(b.term_col) for b in bs], dtype=np.int64)

        def cat(name: str, dtype: type = np.float64) -> np.ndarray:
            parts = [getattr(b, name) for b in bs]
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        load = np.zeros((int(hold_ptr[-1]), len(factors)))
        models: dict[int, tuple[np.ndarray, list[int]]] = {}
        for k, b in enumerate(bs):
            load[hold_ptr[k]:hold_ptr[k + 1], b.load_factors] = b.load
            if b.model is not None and id(b.model) not in models:
                cov = np.zeros((len(factors), len(factors)))
                cov[np.ix_(b.load_factors, b.load_factors)] = b.model.covariance
                models[id(b.model)] = (cov, [])
            if b.model is not None:
                models[id(b.model)][1].append(k)
        return cls(
            order, {pid: k for k, pid in enumerate(order)}, hold_ptr, col_ptr, cash_ptr,
            np.repeat(ks, n_hold), cat("inst", np.int64), cat("qty"), cat("mult"), cat("pair", np.int64),
            np.repeat(ks, n_cash), cat("cash_pair", np.int64), cat("cash_amt"),
            np.repeat(ks, n_col), cat("target"), cat("below"), cat("above"), cat("risk", bool),
            cat("risk_factor", np.int64), cat("risk_specific", bool), load, cat("spec"),
            [(cov, np.array(books, dtype=np.int64)) for cov, books in models.values()],
            np.repeat(ks, n_term), cat("term_col", np.int64) + np.repeat(col_ptr[:-1], n_term),
            cat("term_hold", np.int64) + np.repeat(hold_ptr[:-1], n_term), cat("term_coef"),
            cat("term_kind", np.int64))


@dataclass
class Row:
    """One book as valued in a window: NAV, its inputs' times, its linear limits measured."""

    block: _Block
    nav: float  # nan: a price or FX rate is missing (then the engine asks `value_book` which)
    newest: Micros  # event ts of the newest input (0: none)
    oldest: Micros | None  # event ts of the oldest price or rate a holding rests on
    actuals: list[float]  # per column of the block
    usages: list[float]  # |drift| / band half-width on its side
    outside: list[int]  # the limits (indexes in the policy) whose column is outside its band or unmeasured
    worst: tuple[float, int] | None  # the largest usage of a measured column, and its limit (the first one)
    _mv: np.ndarray  # per holding of the block
    _input_ts: np.ndarray

    @property
    def ok(self) -> bool:
        return self.nav == self.nav  # not nan

    def valuation(self) -> Valuation:
        """The book as a Valuation (MVs built only if read: drawdown needs NAV alone)."""
        iids = self.block.iids
        return Valuation(self.nav, _Lazy(lambda: dict(zip(iids, self._mv.tolist()))), self.newest or None, None,
                         _Lazy(lambda: dict(zip(iids, self._input_ts.tolist()))), oldest_ts=self.oldest)


class Exposures:
    """The books' holdings and linear limits as arrays, and the latest price per instrument."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}  # instrument_id -> column in px / px_ts
        self.px = np.full(256, np.nan)
        self.px_ts = np.zeros(256, dtype=np.int64)
        self.pairs: dict[tuple[str, str], int] = {}  # (currency, base) -> FX pair column
        self.factors: dict[str, int] = {}  # risk factor -> column in the loadings
        self._blocks: dict[str, _Block] = {}
        # Books whose positions or cash changed since their block was built: the instruments a fill
        # moved, None for anything (a snapshot).
        self._moved: dict[str, set[str] | None] = {}
        self._packed: _Packed | None = None

    def set_price(self, instrument_id: str, price: float, ts: Micros) -> None:
        j = self.index.get(instrument_id)
        if j is not None:
            self.px[j] = price
            self.px_ts[j] = ts

    def forget_prices(self) -> None:
        self.px[:] = np.nan
        self.px_ts[:] = 0

    def drop(self, portfolio_id: str) -> None:
        """The book's policy changed (or the book was restored): its arrays are rebuilt when next valued."""
        self._moved.pop(portfolio_id, None)
        if self._blocks.pop(portfolio_id, None) is not None:
            self._packed = None

    def moved(self, portfolio_id: str, instrument_id: str | None = None) -> None:
        """The book's positions or cash changed: a fill of `instrument_id`, or anything (None: a
        snapshot). When next valued, the new quantities are written into the arrays in place if it
        holds the same instruments and currencies as before (only the rows of the instruments its
        fills moved, when that is all that changed); else its arrays are rebuilt (and all repacked)."""
        if portfolio_id not in self._blocks:
            return
        if instrument_id is None:
            self._moved[portfolio_id] = None
        elif (moved := self._moved.setdefault(portfolio_id, set())) is not None:
            moved.add(instrument_id)

    def clear(self) -> None:
        """Reference data or a risk model changed (multipliers, currencies, buckets, loadings,
        variances): rebuild all."""
        self._blocks.clear()
        self._moved.clear()
        self._packed = None

    def _requantify(self, book: Book, base: str) -> None:
        """A moved book: its new quantities and cash into its block, and into the packed arrays."""
        moved = self._moved.pop(book.portfolio_id)
        block = self._blocks[book.portfolio_id]
        positions, rows = book.positions, block.row
        cash = sorted(book.cash.items())
        if [self._pair(ccy, base) for ccy, _ in cash] != block.cash_pair.tolist():
            self.drop(book.portfolio_id)
            return
        if moved is not None and len(positions) == len(rows) and all(iid in rows for iid in moved):
            # The same holdings (a fill that opens or closes one changes their set, and is in `moved`):
            # a 40,000th fill costs what the first did, whatever the book holds.
            changed = np.array([rows[iid] for iid in moved], dtype=np.int64)
            block.qty[changed] = [positions[iid] for iid in moved]
        else:
            iids, qty, _, _ = _quantities(book)
            if iids != block.iids:
                self.drop(book.portfolio_id)
                return
            changed = np.arange(len(iids))
            block.qty[:] = qty
        block.cash_amt[:] = [amount for _, amount in cash]
        p = self._packed
        if p is not None:
            k = p.at[book.portfolio_id]
            p.qty[p.hold_ptr[k] + changed] = block.qty[changed]
            p.cash_amt[p.cash_ptr[k]:p.cash_ptr[k + 1]] = block.cash_amt

    def value(self, books: Sequence[tuple[Book, Policy, RiskModel | None]], instruments: Mapping[str, Instrument],
              prices: PriceBook) -> dict[str, Row]:
        """Value books (each with the risk model its policy uses, if any) and measure their
        column limits; a book some holding's reference data is missing for has no row (the
        engine's `value_book` says what is missing)."""
        for book, policy, model in books:
            if book.portfolio_id in self._moved:
                self._requantify(book, policy.base_currency)
            if book.portfolio_id not in self._blocks:
                block = self._block(book, policy, model, instruments, prices)
                if block is not None:
                    self._blocks[book.portfolio_id] = block
                    self._packed = None
        if self._packed is None:
            self._packed = _Packed.of(self._blocks, self.factors)
        p = self._packed
        ks = sorted(p.at[b.portfolio_id] for b, _, _ in books if b.portfolio_id in p.at)
        if not ks:
            return {}
        n = len(p.order)
        rate, rate_ts = self._rates(prices)
        if len(ks) == n:  # every book (the usual window of a busy feed): whole arrays, nothing gathered
            hs = cs = cols = ts_ = slice(None)
        else:
            touched = np.zeros(n, dtype=bool)
            touched[ks] = True
            hs, cs = np.flatnonzero(touched[p.hold_book]), np.flatnonzero(touched[p.cash_book])
            cols, ts_ = np.flatnonzero(touched[p.col_book]), np.flatnonzero(touched[p.term_book])
        inst, book_of = p.inst[hs], p.hold_book[hs]
        pts = self.px_ts[inst]
        mv = p.qty[hs] * self.px[inst]
        if not p.unit_multipliers:
            mv *= p.mult[hs]
        # Every holding in the base currency (a rate of 1, no quote time): nothing to multiply by
        # (x 1.0 is exact) or to take the time of; else each holding's FX rate and quote time.
        if (rate[p.hold_pairs] == 1.0).all() and not rate_ts[p.hold_pairs].any():
            input_ts = newest_ts = pts
        else:
            pair = p.pair[hs]
            rts = rate_ts[pair]
            mv *= rate[pair]
            input_ts, newest_ts = np.where(rts > 0, np.minimum(pts, rts), pts), np.maximum(pts, rts)
        cash_book = p.cash_book[cs]
        # Each book's holdings are consecutive: summed, and their newest and oldest times taken, a
        # segment a book (a book's sum depends on its holdings alone, not on which books are valued).
        held = np.zeros(n)
        newest = np.zeros(n, dtype=np.int64)
        oldest = np.full(n, _NO_TS, dtype=np.int64)
        starts = p.hold_starts if isinstance(hs, slice) else _segments(book_of)
        first = book_of[starts]
        if len(starts):
            held[first] = np.add.reduceat(mv, starts)
            newest[first] = np.maximum.reduceat(newest_ts, starts)
            oldest[first] = np.minimum.reduceat(input_ts, starts)
        nav = np.bincount(cash_book, p.cash_amt[cs] * rate[p.cash_pair[cs]], minlength=n) + held
        np.maximum.at(newest, cash_book, rate_ts[p.cash_pair[cs]])
        col_book = p.col_book[cols]
        with np.errstate(divide="ignore", invalid="ignore"):  # NAV <= 0 or unknown: not judged
            risky = p.risk[cols]
            part = np.zeros(len(mv))
            if risky.any():
                part, variance, factor_part, specific = self._risk(p, hs, book_of, starts, mv / nav[book_of], n)
            sums = self._column_sums(p, hs, ts_, mv, part)[cols]
            denominator = nav[col_book]
            if risky.any():
                factor = p.risk_factor[cols]
                named = factor >= 0
                sums[named] = factor_part[col_book[named], factor[named]]
                spec = p.risk_specific[cols]
                sums[spec] = specific[col_book[spec]]
                total = variance[col_book]
                denominator = np.where(risky, np.where(total > 0, total, np.nan), denominator)
            actual = sums / denominator
            drift = actual - p.target[cols]
            usage = np.where(drift >= 0, drift / p.above[cols], -drift / p.below[cols])
            outside = np.flatnonzero(~(usage <= 1.0))  # nan too
            ranked = np.where(usage == usage, usage, -1.0).tolist()  # usage >= 0; -1: unmeasured
        actual_l, usage_l = actual.tolist(), usage.tolist()
        nav_l, newest_l, oldest_l = nav.tolist(), newest.tolist(), oldest.tolist()
        outside_l, o0 = outside.tolist(), 0
        rows: dict[str, Row] = {}
        h0 = c0 = 0
        for k in ks:
            pid = p.order[k]
            block = self._blocks[pid]
            h1, c1 = h0 + len(block.iids), c0 + block.n_columns
            o1 = bisect_left(outside_l, c1, o0)
            top = max(ranked[c0:c1]) if c1 > c0 else -1.0
            rows[pid] = Row(block, nav_l[k], newest_l[k], None if oldest_l[k] == _NO_TS else oldest_l[k],
                            actual_l[c0:c1], usage_l[c0:c1],
                            [block.column_limit[c - c0] for c in outside_l[o0:o1]],
                            (top, block.column_limit[ranked.index(top, c0, c1) - c0]) if top >= 0 else None,
                            mv[h0:h1], input_ts[h0:h1])
            h0, c0, o0 = h1, c1, o1
        return rows

    @staticmethod
    def _column_sums(p: _Packed, hs: np.ndarray | slice, ts_: np.ndarray | slice, mv: np.ndarray,
                     part: np.ndarray) -> np.ndarray:
        """Per column, the sum of its terms over the touched books (`hs`: their holdings, `ts_`:
        their terms): each term's holding's MV, |MV|, long or short part, or risk part, x its coefficient."""
        if isinstance(hs, slice):  # every book: the holdings' arrays are indexed like the terms' holdings
            by_holding = (mv, part)
        else:
            by_holding = (np.zeros(len(p.hold_book)), np.zeros(len(p.hold_book)))
            by_holding[0][hs], by_holding[1][hs] = mv, part
            touched = np.zeros(len(p.term_kind), dtype=bool)
            touched[ts_] = True
        sums = np.zeros(len(p.col_book))
        for kind, terms, hold, col, coef, starts in p.terms_by_kind:
            if not isinstance(hs, slice):
                keep = touched[terms]
                hold, col, coef = hold[keep], col[keep], None if coef is None else coef[keep]
                if not len(col):
                    continue
                starts = _segments(col)
            x = by_holding[kind == RISK][hold]
            if kind == GROSS:
                x = np.abs(x)
            elif kind == LONG:
                x = np.maximum(x, 0.0)
            elif kind == SHORT:
                x = np.minimum(x, 0.0)
            # a column's terms are consecutive: one segment a column (its sum depends on its terms alone)
            sums[col[starts]] = np.add.reduceat(x if coef is None else x * coef, starts)
        return sums

    @staticmethod
    def _risk(p: _Packed, hs: np.ndarray | slice, book_of: np.ndarray, starts: np.ndarray, w: np.ndarray,
              n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Euler risk decomposition of the touched books at once, from weights w per holding (`starts`:
        where each book's begin): each holding's part w_i (B F x)_i + w_i^2 D_i, each book's variance,
        each factor's part x_f (F x)_f and the specific part (nan for a book without a model or
        variances)."""
        load = p.load[hs]
        # x = B'w per book: one reduceat sums every factor
        exposure = np.zeros((n, load.shape[1]))
        own = w * w * p.spec[hs]
        specific = np.zeros(n)
        if len(starts):
            exposure[book_of[starts]] = np.add.reduceat(w[:, None] * load, starts, axis=0)
            specific[book_of[starts]] = np.add.reduceat(own, starts)
        covaried = np.full_like(exposure, np.nan)
        for cov, books in p.models:
            covaried[books] = exposure[books] @ cov
        factor_part = exposure * covaried
        part = w * np.einsum("hk,hk->h", load, covaried[book_of]) + own
        return part, factor_part.sum(axis=1) + specific, factor_part, specific

    def _rates(self, prices: PriceBook) -> tuple[np.ndarray, np.ndarray]:
        """Each FX pair's rate and its event ts (nan: not quoted; ts 0: a currency to itself)."""
        rate, ts = np.full(len(self.pairs), np.nan), np.zeros(len(self.pairs), dtype=np.int64)
        for (ccy, base), k in self.pairs.items():
            quote = fx_rate(ccy, base, prices)
            if quote is not None:
                rate[k], ts[k] = quote
        return rate, ts

    def _column(self, instrument_id: str, prices: PriceBook) -> int:
        j = self.index.get(instrument_id)
        if j is None:
            j = self.index[instrument_id] = len(self.index)
            if j >= len(self.px):
                self.px = np.concatenate((self.px, np.full(len(self.px), np.nan)))
                self.px_ts = np.concatenate((self.px_ts, np.zeros(len(self.px_ts), dtype=np.int64)))
            quote = prices.get(instrument_id)
            if quote is not None:
                self.px[j], self.px_ts[j] = quote
        return j

    def _pair(self, ccy: str, base: str) -> int:
        return self.pairs.setdefault((ccy, base), len(self.pairs))

    def _block(self, book: Book, policy: Policy, model: RiskModel | None, instruments: Mapping[str, Instrument],
               prices: PriceBook) -> _Block | None:
        if any(iid not in instruments for iid in book.positions):
            return None
        iids, qty, currencies, amt = _quantities(book)
        held = [instruments[iid] for iid in iids]
        base = policy.base_currency
        columns: list[int | None] = []
        measured: list[Limit] = []
        terms: list[tuple[int, int, float, int]] = []
        for limit in policy.limits:
            if limit.metric not in COLUMN_METRICS:
                columns.append(None)
                continue
            columns.append(len(measured))
            terms += [(len(measured), h, coef, kind) for h, coef, kind in _terms(limit, held)]
            measured.append(limit)
        model_factors = model.factors if model is not None else ()
        load_factors = [self.factors.setdefault(f, len(self.factors)) for f in model_factors]
        risky = [lim.metric in RISK_METRICS for lim in measured]

        def ints(values: Sequence[int]) -> np.ndarray:
            return np.array(values, dtype=np.int64)

        def floats(values: Sequence[float]) -> np.ndarray:
            return np.array(values, dtype=np.float64)

        return _Block(
            iids, ints([self._column(iid, prices) for iid in iids]), qty,
            floats([inst.multiplier for inst in held]), ints([self._pair(inst.currency, base) for inst in held]),
            ints([self._pair(ccy, base) for ccy in currencies]), amt,
            tuple(columns), tuple(k for k, c in enumerate(columns) if c is not None),
            frozenset(k for k, c in enumerate(columns) if c is None), floats([lim.target for lim in measured]),
            floats([lim.band.below for lim in measured]), floats([lim.band.above for lim in measured]),
            np.array(risky, dtype=bool),
            ints([self.factors[lim.bucket or ""] if r and lim.dimension == "factor" and lim.bucket in model_factors
                  else -1 for lim, r in zip(measured, risky)]),
            np.array([r and lim.dimension == "specific" for lim, r in zip(measured, risky)], dtype=bool),
            floats([[inst.factors.get(f, 0.0) for f in model_factors] for inst in held]).reshape(
                len(held), len(model_factors)),
            ints(load_factors),
            floats([model.specific_var.get(iid, np.nan) if model is not None else np.nan for iid in iids]),
            model,
            ints([t[0] for t in terms]), ints([t[1] for t in terms]), floats([t[2] for t in terms]),
            ints([t[3] for t in terms]))
