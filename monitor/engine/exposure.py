"""A book's valuation kept current by deltas, for the price path.

`value_book` revalues every holding of a book and every limit then re-sums its
bucket; on a price feed that is most of the engine's time, and nearly all of it is
spent on holdings whose price did not move. An `Exposure` keeps each holding's MV and
the sums limits read (per bucket: net, gross, long, short; per factor: sum of MV x
loading; gross and net over the book) and moves them by the deltas of the holdings
whose price, or whose currency's FX rate, changed since the last evaluation.

It is a cache, never the record: it is rebuilt from the book (`Exposure.build`)
whenever positions, reference data or the policy change, when a needed price or rate
is missing, and every `REBUILD_EVERY` updates so rounding from the deltas cannot
accumulate. Updates run in instrument order, so the same events always give the same
floats (replay equals live).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from monitor.engine.book import Book
from monitor.engine.model import Instrument, Micros
from monitor.engine.policy import BUCKET_METRICS, FACTOR_METRICS, Policy
from monitor.engine.valuation import PriceBook, Valuation, fx_rate

REBUILD_EVERY = 500  # updates between full revaluations (bounds rounding drift from the deltas)
BucketKey = tuple[str, str | None]  # (dimension, bucket)


@dataclass
class Sums:
    """What the linear metrics of a policy read, in base currency."""

    gross: float = 0.0  # sum |MV|
    net: float = 0.0  # sum MV
    buckets: dict[BucketKey, list[float]] = field(default_factory=dict)  # [net, gross, long, short]
    factors: dict[str, float] = field(default_factory=dict)  # sum MV x loading

    def move(self, old: float, new: float, buckets: tuple[list[float], ...],
             loadings: tuple[tuple[str, float], ...]) -> None:
        """One holding's MV goes from `old` to `new`; `buckets` are the sums of its buckets."""
        d, dabs = new - old, abs(new) - abs(old)
        self.net += d
        self.gross += dabs
        dlong, dshort = max(new, 0.0) - max(old, 0.0), min(new, 0.0) - min(old, 0.0)
        for b in buckets:
            b[0] += d
            b[1] += dabs
            b[2] += dlong
            b[3] += dshort
        for factor, beta in loadings:
            self.factors[factor] += d * beta


@dataclass(frozen=True, slots=True)
class Holding:
    """What revaluing one position needs, looked up once per build."""

    quantity: float
    multiplier: float
    currency: str
    buckets: tuple[list[float], ...]  # the Sums.buckets entries it feeds
    loadings: tuple[tuple[str, float], ...]  # (factor, loading) of the factors limits read


class Exposure:
    """One book, valued at the latest prices, updated by deltas. Build it with `build`."""

    def __init__(self, book: Book, policy: Policy, instruments: Mapping[str, Instrument]) -> None:
        self.base = policy.base_currency
        self.positions = dict(book.positions)
        self.cash = dict(book.cash)
        dims = {lim.dimension or "" for lim in policy.limits if lim.metric in BUCKET_METRICS}
        buckets = {(lim.dimension or "", lim.bucket) for lim in policy.limits if lim.metric in BUCKET_METRICS}
        factors = {lim.factor or "" for lim in policy.limits if lim.metric in FACTOR_METRICS}
        self.sums = Sums(buckets={key: [0.0, 0.0, 0.0, 0.0] for key in buckets},
                         factors=dict.fromkeys(factors, 0.0))
        self.holdings: dict[str, Holding] = {}
        self.by_currency: dict[str, list[str]] = {}
        for iid in sorted(self.positions):
            inst = instruments[iid]
            keys = [k for d in sorted(dims) if (k := (d, inst.attribute(d))) in buckets]
            self.holdings[iid] = Holding(
                self.positions[iid], inst.multiplier, inst.currency, tuple(self.sums.buckets[k] for k in keys),
                tuple((f, inst.factors[f]) for f in sorted(factors) if inst.factors.get(f)))
            self.by_currency.setdefault(inst.currency, []).append(iid)
        self.mv: dict[str, float] = {}
        self.input_ts: dict[str, Micros] = {}
        self.rates: dict[str, tuple[float, Micros]] = {}
        self.cash_base = 0.0
        self.newest: Micros = 0
        self.oldest: Micros | None = None  # min of input_ts; None: to be recomputed
        self.updates = 0

    @classmethod
    def build(cls, book: Book, policy: Policy, instruments: Mapping[str, Instrument],
              prices: PriceBook) -> "Exposure | None":
        """A full valuation; None when a price, rate or reference datum is missing (then
        `value_book` says which)."""
        if any(iid not in instruments for iid in book.positions):
            return None
        exposure = cls(book, policy, instruments)
        if not exposure._refresh_rates(prices):
            return None
        for iid in sorted(exposure.positions):
            if not exposure._revalue(iid, prices):
                return None
        return exposure

    def update(self, moved: Iterable[str], prices: PriceBook) -> bool:
        """Apply the prices that moved since the last update; False if the cache must be rebuilt."""
        self.updates += 1
        if self.updates >= REBUILD_EVERY:
            return False
        changed = {iid for iid in moved if iid in self.positions}
        if any(iid not in self.positions for iid in moved):  # maybe an FX rate
            before = dict(self.rates)
            if not self._refresh_rates(prices):
                return False
            for ccy, rate in self.rates.items():
                if before.get(ccy) != rate:
                    changed.update(self.by_currency.get(ccy, ()))
        return all(self._revalue(iid, prices) for iid in sorted(changed))

    def valuation(self) -> Valuation:
        """The current valuation (shares this cache's MVs: use it before the next update)."""
        if self.oldest is None and self.input_ts:
            self.oldest = min(self.input_ts.values())
        return Valuation(self.cash_base + self.sums.net, self.mv, self.newest or None, None, self.input_ts,
                         sums=self.sums, oldest_ts=self.oldest)

    def _refresh_rates(self, prices: PriceBook) -> bool:
        rates: dict[str, tuple[float, Micros]] = {}
        for ccy in sorted({*self.by_currency, *self.cash}):
            rate = fx_rate(ccy, self.base, prices)
            if rate is None:
                return False
            rates[ccy] = rate
            self.newest = max(self.newest, rate[1])
        self.rates = rates
        self.cash_base = sum(amount * rates[ccy][0] for ccy, amount in self.cash.items())
        return True

    def _revalue(self, iid: str, prices: PriceBook) -> bool:
        px = prices.get(iid)
        if px is None:
            return False
        price, ts = px
        h = self.holdings[iid]
        rate, rate_ts = self.rates[h.currency]
        new = h.quantity * price * h.multiplier * rate
        self.sums.move(self.mv.get(iid, 0.0), new, h.buckets, h.loadings)
        self.mv[iid] = new
        if self.input_ts.get(iid) == self.oldest:
            self.oldest = None  # the oldest input may have moved on
        self.input_ts[iid] = min(ts, rate_ts) if rate_ts else ts
        if ts > self.newest:
            self.newest = ts
        return True
