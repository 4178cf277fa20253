"""Market simulator behind `monitor simulate`: reference data, prices and fills on Kafka.

Two layers, like the rest of the project:

* `Market` is a pure, seeded generator (no I/O, no wall clock). The same `MarketConfig`
  always gives the byte-identical event sequence, event times included: the simulated
  clock starts at `config.start` and advances by exactly 1/tick_rate per price tick.
  That makes a simulated session replayable and usable as a test fixture.
* `run` / `write_jsonl` / `simulate_command` are the shell: they pace the events in wall
  time and produce them to Kafka, or write them as JSON Lines (the replay format).
  With `--execute` the shell also executes the monitor's approved rebalance signals as
  paper fills at the simulator's own prices (`monitor.paper`), closing the loop; the
  `Market` does not know about them (its own fills keep leaning towards the snapshot).

Price model (kept simple on purpose). Every tick the *whole* market moves one step of
dt = 1/tick_rate simulated seconds, then one instrument, drawn with liquidity weights so
that every instrument ticks regularly, publishes its current price. The log return of
instrument i over one step is

    r_i = sigma_i * (a_m * beta_i * z_market + a_s * z_sector(i) + a_e * z_i) / norm_i

with standard normal shocks, norm_i making the bracket unit-variance, and
sigma_i = daily_vol_i * vol_scale * sqrt(dt / 23400) (a trading day is 6.5 h = 23,400 s).
So each instrument's realised daily vol is exactly daily_vol * vol_scale, and stocks of one
sector are more correlated than stocks of different sectors. No drift: the demo is about
dispersion, not trend. Futures load on the market factor only; FX rates move on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import click
import numpy as np
import orjson

from monitor.ops.config import Settings
from monitor.stream.topics import ensure_topics

TRADING_SECONDS_PER_DAY = 6.5 * 3600

# vol_scale multiplies every daily vol. At 1.0 the market is realistic, and a 2-point weight
# band would take hours to break. The demo runs ~30 s, so the default compresses time:
# at 150 a stock with daily_vol 2% has a 10-second vol of 0.02 * 150 * sqrt(10 / 23400)
# = 6.2% (median absolute move ~4%); a top holding of 15-45% of NAV then drifts by 1-3
# points in 10 s. Measured on seeds 1-8 with the default 5 books: the first 2-point weight
# breach comes after 1.6-5.6 s, and 1-5 books (median 3) have one within 10 s; at 100 the
# first breach takes 2.4-12 s.
DEMO_VOL_SCALE = 150.0
DEFAULT_START = datetime(2026, 1, 5, 14, 30, tzinfo=timezone.utc)  # a Monday, US open

SECTORS = ("Technology", "Financials", "Healthcare", "Energy",
           "Industrials", "Consumer", "Utilities", "Materials")
# currency -> (region, share of the equities, USD per unit at the start)
CURRENCIES: dict[str, tuple[str, float, float]] = {
    "USD": ("NA", 0.55, 1.0),
    "EUR": ("EU", 0.25, 1.085),
    "GBP": ("EU", 0.10, 1.27),
    "AUD": ("APAC", 0.10, 0.66),
}
FUTURE_LEVELS = {"USD": 4500.0, "EUR": 4800.0, "GBP": 7600.0, "AUD": 7400.0}
FUTURE_MULTIPLIER = 50
FEE_BPS = 0.5
# Factor mix of a stock's shock before normalisation (market scaled by beta, sector, own).
A_MARKET, A_SECTOR, A_IDIO = 0.55, 0.45, 0.70
DEFAULT_EVALUATION: dict[str, float] = {
    "persistence_seconds": 2.0,
    "hysteresis": 0.2,
    "stale_price_seconds": 30.0,
    "warn_fraction": 0.8,
    "critical_multiple": 2.0,
}
# How the simulated books rebalance (the policy's `rebalance` section): breached limits only,
# half way back from the edge, at most 5% of ADV per proposal. A proposal above
# APPROVAL_NAV_FRACTION of the book's NAV waits for a human (in the demo nobody approves: it
# is superseded or expires after APPROVAL_TTL_SECONDS). Measured in a 30 s demo (seed 7):
# proposals were 0.2-5.7% of NAV, median 1.8%, so at 10% they all go through at once; in a
# 90 s demo the first one to wait came after ~45 s (105 auto-approved, 36 pending). At 5% the
# largest waited at once, its book kept drifting, and ever larger proposals superseded it
# (33 of 94 signals pending in 40 s): a pending book does not come back by itself.
DEFAULT_REBALANCE: dict[str, Any] = {
    "mode": "targeted",
    "trade_to": "inner",
    "inner_fraction": 0.5,
    "max_participation": 0.05,
}
APPROVAL_NAV_FRACTION = 0.10
DRAWDOWN_BAND = 0.05  # drawdown limit: alert below 95% of the peak NAV
RISK_SHARE_BAND = 0.15  # absolute band of the market factor's share of a book's variance
RISK_MODEL_ID = "SIM-DAILY"
RISK_FACTORS = ("market", "value", "momentum")
FACTOR_COVARIANCE = ((1.44e-4, -1.0e-5, 5.0e-6), (-1.0e-5, 3.6e-5, -8.0e-6), (5.0e-6, -8.0e-6, 3.6e-5))
SPECIFIC_SHARE = 0.6  # of an instrument's daily variance that is its own
APPROVAL_TTL_SECONDS = 120.0
_BLOCK = 1024  # price steps drawn per numpy call; fixed, so the stream never depends on it


class Event(NamedTuple):
    """One message: logical topic, key and a JSON-ready value following the contract."""

    topic: str
    key: str
    value: dict[str, Any]


def format_ts(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and Z, the contract's timestamp format."""
    moment = moment.astimezone(timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (Z or offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without time zone: {text!r}")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class MarketConfig:
    """Everything that determines a simulated session; equal configs give equal events."""

    books: int = 5
    instruments: int = 50  # tradeable instruments (equities + index futures), FX pairs extra
    seed: int = 7
    tick_rate: float = 200.0  # price messages per simulated second
    fill_rate: float = 2.0  # fills per simulated second, over all books (Poisson)
    vol_scale: float = DEMO_VOL_SCALE
    start: datetime = DEFAULT_START
    weight_band: float = 0.02  # absolute band of the instrument weight limits
    sector_band: float = 0.03  # absolute band of the sector net-weight limits
    leverage_band: float = 0.10  # relative band of the gross-leverage limit
    weight_limits: int = 5  # weight limits on this many of a book's largest holdings
    evaluation: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVALUATION))

    def __post_init__(self) -> None:
        if self.books < 1 or self.instruments < 2:
            raise ValueError("need at least 1 book and 2 instruments")
        if self.tick_rate <= 0 or self.fill_rate < 0 or self.vol_scale < 0:
            raise ValueError("tick_rate must be > 0, fill_rate and vol_scale >= 0")
        start = self.start if self.start.tzinfo else self.start.replace(tzinfo=timezone.utc)
        start = start.astimezone(timezone.utc)
        # the contract's clock has millisecond resolution
        object.__setattr__(self, "start", start.replace(microsecond=start.microsecond // 1000 * 1000))


@dataclass(frozen=True)
class Book:
    """A start-of-day book: what the `positions` snapshot says, plus its base currency."""

    portfolio_id: str
    base_currency: str
    cash: dict[str, float]
    positions: dict[str, int]


def fx_to_base(currency: str, base: str, prices: Mapping[str, float]) -> float:
    """Units of `base` per unit of `currency`, from the CCYUSD pairs (USD per CCY)."""
    def usd_per(ccy: str) -> float:
        return 1.0 if ccy == "USD" else prices[f"{ccy}USD"]
    return usd_per(currency) / usd_per(base)


class Market:
    """Seeded synthetic market: instruments, books, policies, prices and fills."""

    def __init__(self, config: MarketConfig | None = None) -> None:
        self.config = config = config or MarketConfig()
        universe_seed, self._price_seed, self._fill_seed = np.random.SeedSequence(config.seed).spawn(3)
        rng = np.random.default_rng(universe_seed)
        self.instruments: list[dict[str, Any]] = self._make_instruments(rng)
        self.by_id = {inst["instrument_id"]: inst for inst in self.instruments}
        self.initial_prices: dict[str, float] = dict(self._initial_prices)
        self.books: list[Book] = [self._make_book(rng, n) for n in range(config.books)]
        self.risk_model: dict[str, Any] = self._make_risk_model()
        self.policies: list[dict[str, Any]] = [self._make_policy(book) for book in self.books]
        self._setup_process()

    # ----- reference data -------------------------------------------------------------

    def _make_instruments(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Equities, a few index futures, then one FX pair per non-USD currency."""
        cfg = self.config
        n_fut = min(4, cfg.instruments // 25) if cfg.instruments >= 25 else int(cfg.instruments >= 10)
        n_eq = cfg.instruments - n_fut
        # currency quotas (so EUR always exists), then shuffled; sectors balanced the same way
        counts = {c: int(share * n_eq) for c, (_, share, _) in CURRENCIES.items() if c != "USD"}
        counts["EUR"] = max(1, counts["EUR"]) if n_eq > 1 else 0
        ccys = ["USD"] * (n_eq - sum(counts.values())) + [c for c, k in counts.items() for _ in range(k)]
        ccys = [ccys[i] for i in rng.permutation(n_eq)]
        sectors = [SECTORS[i % len(SECTORS)] for i in rng.permutation(n_eq)]
        out: list[dict[str, Any]] = []
        self._initial_prices: dict[str, float] = {}
        self._liquidity: dict[str, float] = {}
        lo, hi = math.log10(1e5), math.log10(5e7)
        for i in range(n_eq):
            iid = f"EQ{i + 1:04d}"
            adv = int(round(float(np.clip(np.exp(rng.normal(math.log(2e6), 1.1)), 1e5, 5e7)), -2))
            liq = (math.log10(adv) - lo) / (hi - lo)  # 0 = least liquid, 1 = most
            spread = float(np.clip(1.0 + 22.0 * (1.0 - liq) ** 1.5 + rng.normal(0, 1.0), 1.0, 30.0))
            out.append({
                "instrument_id": iid, "currency": ccys[i], "asset_class": "equity",
                "sector": sectors[i], "region": CURRENCIES[ccys[i]][0], "multiplier": 1,
                "adv": adv, "spread_bps": round(spread, 1),
                "daily_vol": round(float(rng.uniform(0.01, 0.04)), 4),
                "factors": {
                    "market": round(float(rng.uniform(0.6, 1.4)), 3),
                    "value": round(float(np.clip(rng.normal(0, 0.5), -1.5, 1.5)), 3),
                    "momentum": round(float(np.clip(rng.normal(0, 0.5), -1.5, 1.5)), 3),
                },
            })
            self._initial_prices[iid] = round(float(np.exp(rng.uniform(math.log(5), math.log(500)))), 2)
            self._liquidity[iid] = liq
        for j in range(n_fut):
            iid, ccy = f"FT{j + 1:04d}", list(CURRENCIES)[j % len(CURRENCIES)]
            out.append({
                "instrument_id": iid, "currency": ccy, "asset_class": "future",
                "sector": "Index", "region": CURRENCIES[ccy][0], "multiplier": FUTURE_MULTIPLIER,
                "adv": int(round(float(rng.uniform(2e5, 1.5e6)), -2)), "spread_bps": 1.0,
                "daily_vol": 0.012, "factors": {"market": 1.0, "value": 0.0, "momentum": 0.0},
            })
            self._initial_prices[iid] = round(FUTURE_LEVELS[ccy] * float(rng.uniform(0.95, 1.05)) * 4) / 4
            self._liquidity[iid] = 1.0
        # FX for every non-USD currency that instruments, books or cash can use (EUR always)
        needed = {inst["currency"] for inst in out} | {"EUR"}
        for ccy in (c for c in CURRENCIES if c != "USD" and c in needed):
            iid = f"{ccy}USD"
            out.append({
                "instrument_id": iid, "currency": "USD", "asset_class": "fx", "multiplier": 1,
                "adv": 1_000_000_000, "spread_bps": 1.0, "daily_vol": 0.006, "factors": {},
            })
            self._initial_prices[iid] = round(CURRENCIES[ccy][2] * float(rng.uniform(0.98, 1.02)), 4)
            self._liquidity[iid] = 1.0
        return out

    def _make_book(self, rng: np.random.Generator, n: int) -> Book:
        """A long/short equity book with an index-future hedge and some foreign cash."""
        base = "EUR" if n == 1 else "USD"  # one EUR book exercises FX-to-base
        other = "USD" if base == "EUR" else "EUR"
        prices = self._initial_prices
        equities = [i["instrument_id"] for i in self.instruments if i["asset_class"] == "equity"]
        futures = [i["instrument_id"] for i in self.instruments if i["asset_class"] == "future"]
        nav_target = float(round(np.exp(rng.uniform(math.log(2e7), math.log(2e8))), -6))
        k = min(len(equities), int(rng.integers(10, 41)))
        names = sorted(rng.choice(equities, size=k, replace=False).tolist())
        # lognormal position sizes, ~30% of names short; longs and shorts are scaled to a
        # gross leverage of 1.2-2.4 and a net exposure of 0.2-0.8 (a typical long/short book)
        sizes = np.exp(rng.normal(0.0, 0.7, size=k))
        short = rng.random(k) < 0.3
        short[int(np.argmax(sizes))] = False  # the biggest holding is long
        if k > 1 and not short.any():
            short[int(np.argmin(sizes))] = True
        gross, net = rng.uniform(1.2, 2.4), rng.uniform(0.2, 0.8)
        long_scale = (gross + net) / 2 / sizes[~short].sum()
        short_scale = (gross - net) / 2 / sizes[short].sum() if short.any() else 0.0
        weights = np.where(short, -sizes * short_scale, sizes * long_scale)
        positions: dict[str, int] = {}
        for iid, w in zip(names, weights):
            unit = prices[iid] * self.by_id[iid]["multiplier"] * fx_to_base(self.by_id[iid]["currency"], base, prices)
            positions[iid] = int(round(w * nav_target / unit)) or (1 if w > 0 else -1)
        if futures:  # hedge part of the net equity exposure with a future
            fut = futures[int(rng.integers(len(futures)))]
            unit = prices[fut] * FUTURE_MULTIPLIER * fx_to_base(self.by_id[fut]["currency"], base, prices)
            net = sum(self._mv(iid, q, base, prices) for iid, q in positions.items())
            contracts = max(1, int(round(rng.uniform(0.2, 0.5) * abs(net) / unit)))
            positions[fut] = -contracts if net > 0 else contracts
        other_cash = round(rng.uniform(0.01, 0.05) * nav_target / fx_to_base(other, base, prices), 2)
        invested = sum(self._mv(iid, q, base, prices) for iid, q in positions.items())
        base_cash = round(nav_target - invested - other_cash * fx_to_base(other, base, prices), 2)
        return Book(f"BOOK-{n + 1:03d}", base, {base: base_cash, other: other_cash}, positions)

    def _mv(self, iid: str, quantity: float, base: str, prices: Mapping[str, float]) -> float:
        """Market value in base currency: qty x price x multiplier x FX-to-base."""
        inst = self.by_id[iid]
        return quantity * prices[iid] * inst["multiplier"] * fx_to_base(inst["currency"], base, prices)

    def valuation(self, book: Book, prices: Mapping[str, float] | None = None) -> tuple[float, dict[str, float]]:
        """(NAV, MV per instrument) of a book in its base currency, at `prices` (default: initial)."""
        prices = prices or self._initial_prices
        mv = {iid: self._mv(iid, q, book.base_currency, prices) for iid, q in book.positions.items()}
        cash = sum(amount * fx_to_base(ccy, book.base_currency, prices) for ccy, amount in book.cash.items())
        return cash + sum(mv.values()), mv

    def _make_policy(self, book: Book) -> dict[str, Any]:
        """Targets = the book's initial exposures, so a fresh book starts exactly on target."""
        cfg = self.config
        nav, mv = self.valuation(book)
        weights = {iid: v / nav for iid, v in mv.items()}
        limits: list[dict[str, Any]] = []
        largest = sorted(weights, key=lambda iid: (-abs(weights[iid]), iid))[: cfg.weight_limits]
        for iid in largest:
            limits.append({"id": f"weight:{iid}", "metric": "weight", "instrument": iid,
                           "target": weights[iid], "band": {"type": "absolute", "width": cfg.weight_band}})
        by_sector: dict[str, float] = {}
        for iid, w in weights.items():
            sector = self.by_id[iid]["sector"]
            by_sector[sector] = by_sector.get(sector, 0.0) + w
        for sector in sorted(by_sector):
            limits.append({"id": f"net_weight:sector:{sector}", "metric": "net_weight",
                           "dimension": "sector", "bucket": sector, "target": by_sector[sector],
                           "band": {"type": "absolute", "width": cfg.sector_band}})
        limits.append({"id": "gross_leverage", "metric": "gross_leverage",
                       "target": sum(abs(v) for v in mv.values()) / nav,
                       "band": {"type": "relative", "width": cfg.leverage_band}})
        # every other metric kind once: net leverage, the gross/long/short split of the book's
        # largest region, its market beta, its drawdown and the market factor's share of its risk
        limits.append({"id": "net_leverage", "metric": "net_leverage", "target": sum(mv.values()) / nav,
                       "band": {"type": "absolute", "width": cfg.leverage_band}})
        by_region: dict[str, list[float]] = {}
        for iid, w in weights.items():
            by_region.setdefault(self.by_id[iid]["region"], []).append(w)
        region = max(sorted(by_region), key=lambda r: sum(abs(w) for w in by_region[r]))
        split = {"gross_weight": sum(abs(w) for w in by_region[region]),
                 "long_weight": sum(w for w in by_region[region] if w > 0),
                 "short_weight": sum(w for w in by_region[region] if w < 0)}
        for metric, target in split.items():
            limits.append({"id": f"{metric}:region:{region}", "metric": metric, "dimension": "region",
                           "bucket": region, "target": target,
                           "band": {"type": "absolute", "width": cfg.sector_band}})
        limits.append({"id": "exposure:market", "metric": "exposure", "factor": "market",
                       "target": sum(w * self.by_id[iid]["factors"]["market"] for iid, w in weights.items()),
                       "band": {"type": "absolute", "width": cfg.leverage_band}})
        limits.append({"id": "drawdown", "metric": "drawdown", "target": 0.0,
                       "band": {"type": "absolute", "width": DRAWDOWN_BAND}})
        limits.append({"id": "risk_contribution:factor:market", "metric": "risk_contribution",
                       "dimension": "factor", "bucket": "market", "target": self._market_risk_share(weights),
                       "band": {"type": "absolute", "width": RISK_SHARE_BAND}})
        approval = {"notional_above": round(APPROVAL_NAV_FRACTION * nav, -3), "ttl_seconds": APPROVAL_TTL_SECONDS}
        return {"portfolio_id": book.portfolio_id, "version": 1, "base_currency": book.base_currency,
                "evaluation": dict(cfg.evaluation), "limits": limits, "risk_model": RISK_MODEL_ID,
                "rebalance": {**DEFAULT_REBALANCE, "approval": approval}}

    def _make_risk_model(self) -> dict[str, Any]:
        """The factor risk model the policies' risk_contribution limits use (daily variances):
        the market, value and momentum factors, and each instrument's own variance as the part
        of its daily variance the factors leave."""
        return {"model_id": RISK_MODEL_ID, "as_of": format_ts(self.config.start), "factors": list(RISK_FACTORS),
                "covariance": [list(row) for row in FACTOR_COVARIANCE],
                "specific_var": {i["instrument_id"]: round(SPECIFIC_SHARE * i["daily_vol"] ** 2, 10)
                                 for i in self.instruments if i["asset_class"] != "fx"}}

    def _market_risk_share(self, weights: Mapping[str, float]) -> float:
        """The market factor's Euler share of the book's variance under `risk_model` (the target
        of its risk_contribution limit, so a fresh book starts on target)."""
        model = self.risk_model
        ids = sorted(weights)
        w = np.array([weights[iid] for iid in ids])
        loadings = np.array([[self.by_id[iid]["factors"].get(f, 0.0) for f in RISK_FACTORS] for iid in ids])
        cov = np.array(model["covariance"])
        x = loadings.T @ w
        fx = cov @ x
        total = float(x @ fx) + float(np.sum(w * w * np.array([model["specific_var"][iid] for iid in ids])))
        return float(x[0] * fx[0]) / total

    def reference_events(self) -> list[Event]:
        """Instruments, the risk model, policies, start-of-day snapshots, then one price per
        instrument at `start`."""
        as_of = format_ts(self.config.start)
        events = [Event("instruments", i["instrument_id"], i) for i in self.instruments]
        events.append(Event("risk-models", RISK_MODEL_ID, self.risk_model))
        events += [Event("policies", p["portfolio_id"], p) for p in self.policies]
        events += [Event("positions", b.portfolio_id, {
            "portfolio_id": b.portfolio_id, "as_of": as_of, "cash": dict(b.cash),
            "positions": [{"instrument_id": iid, "quantity": q} for iid, q in b.positions.items()],
        }) for b in self.books]
        events += [Event("prices", iid, {"instrument_id": iid, "price": p, "ts": as_of})
                   for iid, p in self._initial_prices.items()]
        return events

    # ----- the live part: prices and fills --------------------------------------------

    def _setup_process(self) -> None:
        """Per-instrument loadings and per-step vols of the price process (see module doc)."""
        cfg = self.config
        self._ids = [i["instrument_id"] for i in self.instruments]
        self._index = {iid: k for k, iid in enumerate(self._ids)}
        sector_names = sorted({i.get("sector", "") for i in self.instruments} - {"", "Index"})
        n = len(self._ids)
        load = np.zeros((n, 3))  # market, sector, own
        self._sector_col = np.full(n, len(sector_names))  # extra column of zeros = no sector
        for k, inst in enumerate(self.instruments):
            if inst["asset_class"] == "equity":
                load[k] = (A_MARKET * inst["factors"]["market"], A_SECTOR, A_IDIO)
                self._sector_col[k] = sector_names.index(inst["sector"])
            elif inst["asset_class"] == "future":
                load[k] = (1.0, 0.0, 0.15)
            else:  # fx
                load[k] = (0.0, 0.0, 1.0)
        self._load = load / np.linalg.norm(load, axis=1, keepdims=True)
        self._n_sectors = len(sector_names)
        dt_days = (1.0 / cfg.tick_rate) / TRADING_SECONDS_PER_DAY
        vols = np.array([inst["daily_vol"] for inst in self.instruments])
        self._step_vol = vols * cfg.vol_scale * math.sqrt(dt_days)
        weights = np.array([1.0 + self._liquidity[iid] for iid in self._ids])  # 1..2: all tick
        self._tick_p = weights / weights.sum()
        self._log_p0 = np.log(np.array([self._initial_prices[iid] for iid in self._ids]))
        self._start_ms = int(cfg.start.timestamp() * 1000)

    def _ts(self, offset_ms: float) -> str:
        # floor (with a hair of slack for float error) keeps times monotone in the offset
        return format_ts(self.config.start + timedelta(milliseconds=math.floor(offset_ms + 1e-6)))

    def ticks(self) -> Iterator[Event]:
        """Endless prices (one instrument per tick) interleaved with fills, in event time."""
        for _, event in self.timed_ticks():
            yield event

    def timed_ticks(self) -> Iterator[tuple[float, Event]]:
        """Like `ticks`, with each event's offset from `start` in simulated seconds.

        Each call starts afresh from the initial state, so it can be iterated repeatedly.
        Price tick k (k >= 1) happens at k / tick_rate; a fill at time t trades at the last
        price printed for its instrument (what the monitor knows too) and comes before the
        tick at or after t.
        """
        cfg = self.config
        prices_rng = np.random.default_rng(self._price_seed)
        fills_rng = np.random.default_rng(self._fill_seed)
        holdings = {b.portfolio_id: dict(b.positions) for b in self.books}
        n = len(self._ids)
        rows = np.arange(_BLOCK)
        next_fill = fills_rng.exponential(1.0 / cfg.fill_rate) if cfg.fill_rate > 0 else math.inf
        logp, step, fill_seq = self._log_p0.copy(), 0, 0
        last_print = [self._initial_prices[iid] for iid in self._ids]
        while True:
            chosen = prices_rng.choice(n, size=_BLOCK, p=self._tick_p)
            z_market = prices_rng.standard_normal(_BLOCK)
            z_sector = np.zeros((_BLOCK, self._n_sectors + 1))
            z_sector[:, : self._n_sectors] = prices_rng.standard_normal((_BLOCK, self._n_sectors))
            z_own = prices_rng.standard_normal((_BLOCK, n))
            shocks = (self._load[:, 0] * z_market[:, None] + self._load[:, 1] * z_sector[:, self._sector_col]
                      + self._load[:, 2] * z_own)
            paths = logp + np.cumsum(shocks * self._step_vol, axis=0)
            published = np.round(np.exp(paths[rows, chosen]), 4)
            for b in range(_BLOCK):
                step += 1
                t = step / cfg.tick_rate
                while next_fill <= t:
                    fill_seq += 1
                    yield next_fill, self._fill(fills_rng, holdings, last_print, next_fill, fill_seq)
                    next_fill += fills_rng.exponential(1.0 / cfg.fill_rate)
                iid = self._ids[chosen[b]]
                price = last_print[chosen[b]] = max(float(published[b]), 0.0001)
                yield t, Event("prices", iid, {"instrument_id": iid, "price": price,
                                               "ts": self._ts(step * 1000.0 / cfg.tick_rate)})
            logp = paths[-1]

    def _fill(self, rng: np.random.Generator, holdings: dict[str, dict[str, int]],
              last_print: list[float], t: float, seq: int) -> Event:
        """A trade of 1-5% of one holding, leaning back towards the start-of-day quantity."""
        book = self.books[int(rng.integers(len(self.books)))]
        held = holdings[book.portfolio_id]
        iid = list(held)[int(rng.integers(len(held)))]
        qty, start_qty = held[iid], book.positions[iid]
        ratio = abs(qty) / abs(start_qty)
        reduce = ratio > 1.25 or (ratio >= 0.75 and rng.random() < 0.5)
        size = max(1, int(round(abs(qty) * rng.uniform(0.01, 0.05))))
        if reduce:  # never through zero: a fill must not flip a long into a short
            size = min(size, abs(qty) - 1)
            if size < 1:
                reduce, size = False, 1
        direction = -1 if reduce else 1  # relative to the position's sign
        signed = direction * size * (1 if qty > 0 else -1)
        held[iid] = qty + signed
        inst = self.by_id[iid]
        price = last_print[self._index[iid]]
        fees = round(size * price * inst["multiplier"] * FEE_BPS / 1e4, 2)
        stamp = f"{self.config.start:%Y%m%dT%H%M%S}"  # distinct ids for runs with another start
        return Event("fills", book.portfolio_id, {
            "fill_id": f"F-{self.config.seed}-{stamp}-{seq:06d}", "portfolio_id": book.portfolio_id,
            "instrument_id": iid, "side": "BUY" if signed > 0 else "SELL", "quantity": size,
            "price": price, "ts": self._ts(t * 1000.0), "fees": fees,
        })


# ----- the shell: files and Kafka ---------------------------------------------------------


@dataclass
class SimStats:
    """Messages produced per logical topic, and how long it took."""

    counts: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    sim_seconds: float = 0.0
    executing: bool = False  # whether rebalance signals were executed (`--execute`)
    signals_executed: int = 0
    paper_fills: int = 0  # also counted in counts["fills"]

    def summary(self) -> str:
        parts = ", ".join(f"{self.counts[t]} {t}" for t in sorted(self.counts))
        rate = sum(self.counts.values()) / self.wall_seconds if self.wall_seconds > 0 else 0.0
        paper = (f"; executed {self.signals_executed} rebalance signals as {self.paper_fills} paper fills"
                 if self.executing else "")
        return (f"simulate: {parts or 'nothing'}; {self.sim_seconds:.1f} s simulated "
                f"in {self.wall_seconds:.1f} s ({rate:,.0f} msg/s){paper}")


def encode_line(event: Event) -> bytes:
    """One replay-format line (without the newline)."""
    return orjson.dumps({"topic": event.topic, "key": event.key, "value": event.value})


def events_for(market: Market, n_ticks: int) -> Iterator[tuple[float, Event]]:
    """Reference events, then everything up to and including the n-th price tick."""
    for event in market.reference_events():
        yield 0.0, event
    prices = 0
    for offset, event in market.timed_ticks():
        if event.topic == "prices":
            prices += 1
            if prices > n_ticks:
                return
        yield offset, event


def write_jsonl(config: MarketConfig, path: str | Path, n_ticks: int) -> SimStats:
    """Write the session as JSON Lines in the replay format; `-` writes to stdout."""
    began, stats = time.monotonic(), SimStats()
    out = sys.stdout.buffer if str(path) == "-" else open(path, "wb")
    try:
        for offset, event in events_for(Market(config), n_ticks):
            out.write(encode_line(event) + b"\n")
            stats.counts[event.topic] += 1
            stats.sim_seconds = offset
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    stats.wall_seconds = time.monotonic() - began
    return stats


async def run(settings: Settings, config: MarketConfig, duration: float | None,
              realtime: bool = True, stop: asyncio.Event | None = None, execute: bool = False) -> SimStats:
    """Produce the simulated session to Kafka until `duration` wall seconds pass or `stop` is set.

    Reference events go first and are flushed; then ticks are paced so that simulated time
    keeps up with wall time (sent in batches every ~10 ms), or sent flat out when not
    `realtime`. With `execute`, rebalance signals that arrive while it runs are executed
    as paper fills at the simulator's own current prices and clock (`monitor.paper`).
    """
    from aiokafka import AIOKafkaProducer

    await ensure_topics(settings)
    market, stats = Market(config), SimStats(executing=execute)
    loop = asyncio.get_running_loop()
    failures: list[BaseException] = []

    def on_delivery(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            failures.append(future.exception())  # type: ignore[arg-type]

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all",
                                **settings.kafka_security.client_options())
    await producer.start()
    opened = began = loop.time()
    paper: _PaperShell | None = None

    async def send(offset: float, event: Event) -> None:
        if failures:
            raise failures[0]
        future = await producer.send(settings.topic(event.topic), orjson.dumps(event.value),
                                     key=event.key.encode())
        future.add_done_callback(on_delivery)
        stats.counts[event.topic] += 1
        stats.sim_seconds = offset
        if paper is not None and event.topic == "prices":
            paper.on_price(event.value)

    def done(elapsed: float) -> bool:
        if paper is not None:
            paper.check()
        return (duration is not None and elapsed >= duration) or (stop is not None and stop.is_set())

    try:
        if execute:
            paper = await _PaperShell.start(settings)
        for event in market.reference_events():
            await send(0.0, event)
        await producer.flush()
        if paper is not None:
            paper.begin(send, stats)
        began = loop.time()
        ticks = market.timed_ticks()
        offset, event = next(ticks)
        while not done(loop.time() - began):
            if realtime:
                elapsed = loop.time() - began
                while offset <= elapsed:
                    await send(offset, event)
                    offset, event = next(ticks)
                pause = min(max(offset - elapsed, 0.01), 0.25)
                if duration is not None:
                    pause = min(pause, max(duration - elapsed, 0.0))
                await asyncio.sleep(pause)
            else:
                for _ in range(1000):
                    await send(offset, event)
                    offset, event = next(ticks)
                await asyncio.sleep(0)
        if paper is not None:
            await paper.close()
        await producer.flush()
        if failures:
            raise failures[0]
    finally:
        stats.wall_seconds = loop.time() - opened
        if paper is not None:
            await paper.close()
        await producer.stop()
    return stats


class _PaperShell:
    """`--execute`: a PaperTrader on the simulator's own prices, fed signals by a consumer.

    It runs as a task in the simulator's event loop and produces its fills through the
    simulator's `send`, so paper fills are ordered with the simulated ones, and stamped
    with the simulated clock.
    """

    def __init__(self, consumer: Any) -> None:
        from monitor.engine.model import parse_ts as parse_micros
        from monitor.paper import PaperTrader

        self._consumer, self._micros = consumer, parse_micros
        self.trader = PaperTrader()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings) -> "_PaperShell":
        """Subscribe from the current end: only signals about this session are executed."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(settings.topic("rebalance-signals"), bootstrap_servers=settings.bootstrap_servers,
                                    group_id=None, auto_offset_reset="latest", enable_auto_commit=False,
                                    **settings.kafka_security.client_options())
        await consumer.start()
        await consumer.seek_to_end()  # positioned before the session's first event is produced
        return cls(consumer)

    def on_price(self, value: dict[str, Any]) -> None:
        self.trader.on_price(value["instrument_id"], value["price"], self._micros(value["ts"]))

    def begin(self, send: Callable[[float, Event], Awaitable[None]], stats: SimStats) -> None:
        """Start executing signals; fills go out through `send` at the current simulated offset."""
        from monitor.paper import decode_signal, log_execution

        async def execute() -> None:
            while True:
                batch = await self._consumer.getmany(timeout_ms=100)
                for record in (r for part in batch.values() for r in part):
                    doc = decode_signal(record.value)
                    fills = self.trader.on_signal(doc) if doc is not None else []
                    if not fills or doc is None:
                        continue
                    for fill in fills:
                        await send(stats.sim_seconds, Event("fills", fill["portfolio_id"], fill))
                    stats.signals_executed += 1
                    stats.paper_fills += len(fills)
                    log_execution(doc, fills)

        self._task = asyncio.get_running_loop().create_task(execute(), name="paper-trader")

    def check(self) -> None:
        """Raise (once) what made the execution task fail, in the simulator's main loop."""
        task = self._task
        if task is not None and task.done():
            self._task = None
            if not task.cancelled():
                task.result()

    async def close(self) -> None:
        """Stop executing (idempotent); the fills already sent are flushed by the caller."""
        try:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self.check()
        finally:
            await self._consumer.stop()


def _parse_start(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("simulate")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS].")
@click.option("--topic-prefix", default=None, help="Prefix of the physical topic names [env MONITOR_TOPIC_PREFIX].")
@click.option("--partitions", type=int, default=None, help="Partitions of topics it creates [env MONITOR_PARTITIONS].")
@click.option("--books", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--instruments", type=click.IntRange(min=2), default=50, show_default=True,
              help="Tradeable instruments (equities + index futures); FX pairs come on top.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--tick-rate", type=click.FloatRange(min=0, min_open=True), default=200.0, show_default=True,
              help="Price messages per second.")
@click.option("--fill-rate", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Fills per second, over all books.")
@click.option("--vol-scale", type=click.FloatRange(min=0), default=DEMO_VOL_SCALE, show_default=True,
              help="Multiplier of every daily vol; 1 = realistic, the default breaks bands within seconds.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds [default: run until Ctrl-C].")
@click.option("--start", callback=_parse_start, default=None,
              help="Simulated start time, RFC 3339 [default: now, or 2026-01-05T14:30:00Z with --fast/--jsonl].")
@click.option("--fast", is_flag=True, help="Send as fast as possible instead of at --tick-rate.")
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the events as JSON Lines (replay format) to this file instead of Kafka.")
@click.option("--ticks", type=click.IntRange(min=0), default=None,
              help="With --jsonl: number of price ticks to write [default: 10000].")
@click.option("--execute", is_flag=True,
              help="Also execute approved rebalance signals as paper fills at the simulator's current prices.")
def simulate_command(bootstrap: str | None, topic_prefix: str | None, partitions: int | None, books: int,
                     instruments: int, seed: int, tick_rate: float, fill_rate: float, vol_scale: float,
                     duration: float | None, start: datetime | None, fast: bool, jsonl_path: str | None,
                     ticks: int | None, execute: bool) -> None:
    """Simulate a market: instruments, books, policies, then live prices and fills."""
    if ticks is not None and jsonl_path is None:
        raise click.UsageError("--ticks only applies with --jsonl")
    if execute and jsonl_path is not None:
        raise click.UsageError("--execute needs Kafka: it cannot be combined with --jsonl")
    realtime = not fast and jsonl_path is None
    if start is None:
        start = datetime.now(timezone.utc).replace(microsecond=0) if realtime else DEFAULT_START
    config = MarketConfig(books=books, instruments=instruments, seed=seed, tick_rate=tick_rate,
                          fill_rate=fill_rate, vol_scale=vol_scale, start=start)
    if jsonl_path is not None:
        stats = write_jsonl(config, jsonl_path, 10_000 if ticks is None else ticks)
        click.echo(stats.summary(), err=jsonl_path == "-")
        return
    settings = Settings.from_env(bootstrap_servers=bootstrap, topic_prefix=topic_prefix, partitions=partitions)
    if execute:  # each execution is logged
        from monitor.ops.logging import configure

        configure(settings.log_format, settings.log_level)
    stats = asyncio.run(_run_until_signal(settings, config, duration, realtime, execute))
    click.echo(stats.summary())


async def _run_until_signal(settings: Settings, config: MarketConfig, duration: float | None,
                            realtime: bool, execute: bool = False) -> SimStats:
    """`run`, stopped cleanly (flushed, counted) by Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run(settings, config, duration, realtime, stop, execute)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
