"""Valuation of a book in its base currency, and the metrics a limit measures.

MV = quantity x price x multiplier x FX-to-base; NAV = cash in base + sum of MV.
A needed price or FX rate that is missing makes the valuation unavailable and says
which one: a metric is never computed on a made-up zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from monitor.engine.book import Book
from monitor.engine.model import Instrument, Micros, RiskModel
from monitor.engine.policy import BUCKET_METRICS, Limit

PriceBook = Mapping[str, tuple[float, Micros]]  # instrument_id -> (latest price, its event ts)
USD = "USD"


def fx_rate(ccy: str, base: str, prices: PriceBook) -> tuple[float, Micros] | None:
    """Units of `base` per unit of `ccy`, from FX pairs quoted on the price feed.

    `EURUSD` is USD per EUR. Tries the direct pair, the inverse, then a cross via USD.
    """
    if ccy == base:
        return 1.0, 0
    if (direct := prices.get(ccy + base)) is not None:
        return direct
    if (inverse := prices.get(base + ccy)) is not None:
        return 1.0 / inverse[0], inverse[1]
    if USD not in (ccy, base):
        leg1, leg2 = fx_rate(ccy, USD, prices), fx_rate(USD, base, prices)
        if leg1 is not None and leg2 is not None:
            return leg1[0] * leg2[0], max(leg1[1], leg2[1])
    return None


@dataclass(slots=True)  # not frozen: built per book evaluation, and a frozen one costs ~4x more
class Valuation:
    """A book valued at the latest prices; `unavailable` says why when it cannot be."""

    nav: float | None
    mv: Mapping[str, float] = field(default_factory=dict)
    price_ts: Micros | None = None
    unavailable: str | None = None
    # Per holding, the event ts of the oldest input its MV rests on (its price or its FX rate).
    input_ts: Mapping[str, Micros] = field(default_factory=dict)
    oldest_ts: Micros | None = None  # min of input_ts (None: no holdings), kept so no pass is needed
    _groups: dict[str, dict[str | None, list[str]]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.unavailable is None

    def members(self, instruments: Mapping[str, Instrument], dimension: str, bucket: str | None) -> list[str]:
        """Ids of the holdings in a bucket, in holding order. Holdings are grouped once per
        dimension and valuation, so a policy with many bucket limits scans its book once per
        dimension, and a solver that changes MVs (not which instruments are held) keeps the groups."""
        groups = self._groups.get(dimension)
        if groups is None:
            groups = {}
            for iid in self.mv:
                groups.setdefault(instruments[iid].attribute(dimension), []).append(iid)
            self._groups[dimension] = groups
        return groups.get(bucket, [])

    def in_bucket(self, instruments: Mapping[str, Instrument], dimension: str, bucket: str | None) -> list[float]:
        """MVs of the holdings in a bucket, in holding order."""
        mv = self.mv
        return [mv[iid] for iid in self.members(instruments, dimension, bucket)]

    def regroup(self) -> None:
        """The set of holdings changed: group them again when next asked."""
        self._groups.clear()


def value_book(book: Book, base: str, instruments: Mapping[str, Instrument], prices: PriceBook) -> Valuation:
    missing: list[str] = []
    newest = 0
    mv: dict[str, float] = {}
    input_ts: dict[str, Micros] = {}
    for iid, qty in book.positions.items():
        inst, px = instruments.get(iid), prices.get(iid)
        if inst is None or px is None:
            missing.append(f"price of {iid}")
            continue
        fx = fx_rate(inst.currency, base, prices)
        if fx is None:
            missing.append(f"FX {inst.currency}{base}")
            continue
        mv[iid] = qty * px[0] * inst.multiplier * fx[0]
        newest = max(newest, px[1], fx[1])
        input_ts[iid] = min(px[1], fx[1]) if fx[1] else px[1]
    cash = 0.0
    for ccy, amount in book.cash.items():
        fx = fx_rate(ccy, base, prices)
        if fx is None:
            missing.append(f"FX {ccy}{base}")
            continue
        cash += amount * fx[0]
        newest = max(newest, fx[1])
    oldest = min(input_ts.values()) if input_ts else None
    if missing:
        return Valuation(None, mv, newest or None, "missing " + ", ".join(sorted(set(missing))), input_ts,
                         oldest_ts=oldest)
    return Valuation(cash + sum(mv.values()), mv, newest or None, None, input_ts, oldest_ts=oldest)


@dataclass(frozen=True, slots=True)
class RiskDecomposition:
    """Portfolio variance w'(B F B' + D)w and its Euler allocation (the parts add up to `total`)."""

    total: float
    by_instrument: Mapping[str, float]  # w_i (B F B' w)_i + w_i^2 D_i
    by_factor: Mapping[str, float]  # x_f (F x)_f with x = B'w
    specific: float  # sum w_i^2 D_i


def decompose_risk(valuation: Valuation, instruments: Mapping[str, Instrument],
                   model: RiskModel) -> RiskDecomposition | str:
    """The risk decomposition of a valued book, or why it cannot be computed."""
    if not valuation.ok or valuation.nav is None or valuation.nav <= 0:
        return valuation.unavailable or "NAV <= 0"
    ids = sorted(valuation.mv)
    missing = [iid for iid in ids if iid not in model.specific_var]
    if missing:
        return f"risk model {model.model_id} has no specific variance for {', '.join(missing)}"
    w = np.array([valuation.mv[iid] for iid in ids]) / valuation.nav
    loadings = np.array([[instruments[iid].factors.get(f, 0.0) for f in model.factors] for iid in ids])
    loadings = loadings.reshape(len(ids), len(model.factors))
    cov = np.array(model.covariance, dtype=float).reshape(len(model.factors), len(model.factors))
    d = np.array([model.specific_var[iid] for iid in ids])
    x = loadings.T @ w  # factor exposures
    fx = cov @ x
    by_instrument = w * (loadings @ fx) + w * w * d
    by_factor = x * fx
    specific = float(np.sum(w * w * d))
    return RiskDecomposition(
        total=float(x @ fx) + specific,
        by_instrument=dict(zip(ids, by_instrument.tolist())),
        by_factor=dict(zip(model.factors, by_factor.tolist())),
        specific=specific,
    )


def measure(
    limit: Limit,
    valuation: Valuation,
    instruments: Mapping[str, Instrument],
    peak_nav: float | None = None,
    risk: RiskDecomposition | str | None = None,
) -> tuple[float | None, str | None]:
    """The limit's metric on a valuation: (value, None) or (None, why it is unavailable).

    `peak_nav` feeds `drawdown`; `risk` (a decomposition, or why there is none) feeds
    `risk_contribution`.
    """
    if not valuation.ok:
        return None, valuation.unavailable
    nav = valuation.nav
    assert nav is not None
    if nav <= 0:
        return None, f"NAV is {nav:.2f} (<= 0): weights are undefined"
    mv = valuation.mv
    metric = limit.metric
    if metric == "weight":
        return mv.get(limit.instrument or "", 0.0) / nav, None
    if metric in BUCKET_METRICS:
        values = valuation.in_bucket(instruments, limit.dimension or "", limit.bucket)
        if metric == "net_weight":
            total = sum(values)
        elif metric == "gross_weight":
            total = sum(abs(v) for v in values)
        elif metric == "long_weight":
            total = sum(v for v in values if v > 0)
        else:  # short_weight: negative, so that long + short = net
            total = sum(v for v in values if v < 0)
        return total / nav, None
    if metric == "gross_leverage":
        return sum(abs(v) for v in mv.values()) / nav, None
    if metric == "net_leverage":
        return sum(mv.values()) / nav, None
    if metric == "exposure":
        factor = limit.factor or ""
        return sum(v * instruments[iid].factors.get(factor, 0.0) for iid, v in mv.items()) / nav, None
    if metric == "drawdown":
        if peak_nav is None or peak_nav <= 0:
            return None, "no positive peak NAV yet"
        return 1.0 - nav / peak_nav, None
    if metric == "risk_contribution":
        if risk is None:
            return None, "no risk model"
        if isinstance(risk, str):
            return None, risk
        if risk.total <= 0:
            return None, "portfolio variance is zero"
        if limit.dimension == "factor":
            part = risk.by_factor.get(limit.bucket or "", 0.0)
        elif limit.dimension == "specific":
            part = risk.specific
        else:
            part = sum(rc for iid, rc in risk.by_instrument.items()
                       if instruments[iid].attribute(limit.dimension or "") == limit.bucket)
        return part / risk.total, None
    return None, f"metric {metric} is not evaluated by this version"
