"""The policy lab: rebalancing policies run over a daily price history by the engine, with a desk.

Each date's closes go through the engine exactly as `monitor replay` feeds a log (the same
typed events, the same `Engine`, an event-time window of one UTC day), so one evaluation
per date, at `EVALUATION_TIME` UTC (after the US close). What the lab feeds is itself a
replay log (`write_log`): `monitor replay --tick-ms 86400000` of it gives the lab's alerts
and signals.

- A book starts at its targets at the first date's closes: each instrument `weight` limit's
  target x NAV, the rest in base-currency cash. A policy without instrument weights starts
  all in cash (its other limits measure an empty book).
- The desk executes AUTO_APPROVED (and APPROVED) signals: each trade's proposed quantity at
  the next date's close (`fill="next"`) or at the signal's own close (`fill="same"`), booked
  into the next date's window either way, so every date is still evaluated once. A fill pays
  the engine's own estimate (the trade's est_cost_bps: half spread + impact) in cash, as fees.
  Deferred quantities are worked on the following dates, each date at most the policy's
  max_participation x ADV, until done or the signal is superseded, expired or rejected.
- Reference data: an instrument whose document carries `adv_usd` gets `adv` (shares) =
  adv_usd / close, re-published on the first date of each month (split-adjusted closes make
  a fixed share ADV meaningless across decades).
- Measured at each date's close, after the evaluation: NAV (the engine's status) and every
  limit's actual (the engine's own measure, `LimitState.last_actual`).

Engine behaviour the lab reflects rather than hides: an alert resolves only once the limit is
back inside its band shrunk by the hysteresis, and a trade to the band edge does not resolve it
(issue 16 changes that); an open alert asks for no new proposal unless it escalates. The
baselines therefore use hysteresis 0 (see baselines.py).
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import orjson
import pandas as pd

from monitor.engine import AlertEvent, Engine, Price
from monitor.engine.model import Micros, format_ts
from monitor.engine.policy import Policy, parse_policy
from monitor.engine.signals import APPROVED, AUTO_APPROVED, EXPIRED, REJECTED, SUPERSEDED, SignalEvent
from monitor.engine.valuation import fx_rate
from monitor.replay import apply_event
from monitor.stream.codec import event_from_doc

DAY: Micros = 86_400_000_000
TICK_MS = DAY // 1000  # `monitor replay --tick-ms` that reproduces the lab
EVALUATION_TIME = timedelta(hours=21)  # UTC: after the US close
SNAPSHOT_LEAD: Micros = 1_000_000  # the opening snapshot is taken a second before the first evaluation
TRADEABLE = frozenset({AUTO_APPROVED, APPROVED})
CANCELLED = frozenset({SUPERSEDED, EXPIRED, REJECTED})
CHUNKS_PER_JOB = 2
Record = tuple[str, str, dict[str, Any]]  # (topic, key, document): one line of a replay log


@dataclass(frozen=True)
class Market:
    """Closes (dates x instruments, in each instrument's currency) and reference documents."""

    closes: pd.DataFrame
    instruments: tuple[dict[str, Any], ...]

    def __post_init__(self) -> None:
        missing = [d["instrument_id"] for d in self.instruments if d["instrument_id"] not in self.closes.columns]
        if missing:
            raise ValueError(f"no closes for instrument(s) {', '.join(missing)}")

    def between(self, start: str | None, end: str | None) -> "Market":
        """The same market on the dates from `start` to `end` (inclusive)."""
        return Market(self.closes.loc[start:end], self.instruments)  # type: ignore[misc]


def prepare_closes(closes: pd.DataFrame) -> pd.DataFrame:
    """Dates ascending, gaps carried forward (a holiday in one market is not a stale price), and the
    leading dates before every instrument has a close dropped."""
    closes = closes.sort_index().ffill().dropna()
    if closes.empty:
        raise ValueError("no date on which every instrument has a close")
    if (closes <= 0).any().any():
        raise ValueError("closes must be > 0")
    return closes


@dataclass(frozen=True)
class LabPolicy:
    """A policy to run: its name (the lab's book id) and its document, portfolio_id set to the name."""

    name: str
    doc: dict[str, Any]

    @classmethod
    def named(cls, name: str, doc: Mapping[str, Any]) -> "LabPolicy":
        return cls(name, {**doc, "portfolio_id": name})

    def parsed(self) -> Policy:
        return parse_policy(self.doc, self.name)


def evaluation_ts(date: pd.Timestamp) -> Micros:
    """The event time of a date's evaluation."""
    moment = date.normalize() + EVALUATION_TIME
    return int(moment.tz_localize("UTC").value // 1000) if moment.tzinfo is None else int(moment.value // 1000)


def window_end(ts: Micros) -> Micros:
    return (ts // DAY + 1) * DAY


def _price_book(ids: Sequence[str], row: np.ndarray) -> dict[str, tuple[float, Micros]]:
    return {iid: (float(px), 0) for iid, px in zip(ids, row)}


def opening_snapshot(policy: Policy, instruments: Mapping[str, Mapping[str, Any]], ids: Sequence[str],
                     row: np.ndarray, nav: float, as_of: Micros) -> dict[str, Any]:
    """The book at its targets: target weight x NAV in each instrument with a weight limit, the rest
    in base-currency cash (fractional quantities, so it starts exactly on target)."""
    prices = _price_book(ids, row)
    positions, invested = [], 0.0
    for limit in policy.limits:
        if limit.metric != "weight" or not limit.target:
            continue
        iid = limit.instrument or ""
        doc = instruments.get(iid)
        if doc is None or iid not in prices:
            raise ValueError(f"{policy.portfolio_id}: no reference data or closes for {iid}")
        fx = fx_rate(doc["currency"], policy.base_currency, prices)
        if fx is None:
            raise ValueError(f"{policy.portfolio_id}: no FX close for {doc['currency']}{policy.base_currency}")
        unit = prices[iid][0] * float(doc.get("multiplier", 1.0)) * fx[0]
        positions.append({"instrument_id": iid, "quantity": limit.target * nav / unit})
        invested += limit.target * nav
    return {"portfolio_id": policy.portfolio_id, "as_of": format_ts(as_of),
            "cash": {policy.base_currency: nav - invested}, "positions": positions}


def reference_update(market: Market, k: int, dates: pd.DatetimeIndex, row: np.ndarray) -> list[Record]:
    """Instrument documents to publish on date k: all on the first date, then on the first date of each
    month those whose ADV follows the closes (`adv_usd`)."""
    first = k == 0
    if not first and dates.month[k] == dates.month[k - 1]:
        return []
    column = {iid: j for j, iid in enumerate(market.closes.columns)}
    out: list[Record] = []
    for doc in market.instruments:
        if not first and "adv_usd" not in doc:
            continue
        published = {key: v for key, v in doc.items() if key != "adv_usd"}
        if "adv_usd" in doc:
            published["adv"] = float(doc["adv_usd"]) / float(row[column[doc["instrument_id"]]])
        out.append(("instruments", doc["instrument_id"], published))
    return out


# ----- the desk -----------------------------------------------------------------------------


@dataclass
class Order:
    portfolio_id: str
    signal_id: str
    instrument_id: str
    side: str
    quantity: float  # units still to execute
    cost_bps: float  # the engine's estimate for the trade, paid on every part of it
    capped: bool  # a deferred remainder: at most max_participation x ADV per date
    fills: int = 0


@dataclass
class Desk:
    """Executes tradeable signals as fills; works deferred quantities within the participation cap."""

    fill: str = "next"  # next | same (close)
    participation: dict[str, float] = field(default_factory=dict)  # book -> max_participation
    orders: list[Order] = field(default_factory=list)
    waiting: list[Order] = field(default_factory=list)  # deferred parts: worked from the date after the first fill

    def on_signal(self, event: SignalEvent) -> None:
        if event.state in CANCELLED:
            sid = event.signal_id
            self.orders = [o for o in self.orders if o.signal_id != sid]
            self.waiting = [o for o in self.waiting if o.signal_id != sid]
            return
        if event.state not in TRADEABLE:
            return
        for trade in event.body["trades"]:
            common = {"portfolio_id": event.portfolio_id, "signal_id": event.signal_id,
                      "instrument_id": trade["instrument_id"], "side": trade["side"],
                      "cost_bps": trade["est_cost_bps"]}
            if trade["quantity"] > 0:
                self.orders.append(Order(quantity=trade["quantity"], capped=False, **common))
            if trade["deferred_quantity"] > 0:
                self.waiting.append(Order(quantity=trade["deferred_quantity"], capped=True, **common))

    def execute(self, ts: Micros, prices: Mapping[str, float], instruments: Mapping[str, Mapping[str, Any]],
                adv: Mapping[str, float]) -> list[dict[str, Any]]:
        """Fill documents for this date; `prices` are the closes the desk executes at."""
        fills: list[dict[str, Any]] = []
        for order in self.orders:
            quantity = order.quantity
            if order.capped:
                doc = instruments[order.instrument_id]
                lot = float(doc.get("lot_size", 1.0)) or 1.0
                cap = self.participation.get(order.portfolio_id, 0.1) * adv.get(order.instrument_id, math.inf)
                quantity = min(quantity, math.floor(round(cap / lot, 9)) * lot)
            if quantity <= 0:
                continue
            fills.append(self._fill(order, quantity, prices[order.instrument_id], ts, instruments))
            order.quantity -= quantity
            order.fills += 1
        self.orders = [o for o in self.orders if o.quantity > 1e-9] + self.waiting
        self.waiting = []
        return fills

    @staticmethod
    def _fill(order: Order, quantity: float, price: float, ts: Micros,
              instruments: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        multiplier = float(instruments[order.instrument_id].get("multiplier", 1.0))
        fees = order.cost_bps / 1e4 * quantity * price * multiplier
        suffix = f"-{order.fills}" if order.fills else ""
        return {"fill_id": f"lab-{order.signal_id}-{order.instrument_id}{'-d' if order.capped else ''}{suffix}",
                "portfolio_id": order.portfolio_id, "instrument_id": order.instrument_id, "side": order.side,
                "quantity": quantity, "price": price, "ts": format_ts(ts), "fees": fees}


# ----- one run: books of several policies in one engine -------------------------------------


@dataclass
class BookRecord:
    """What one policy's book did, date by date (picklable: runs come back from worker processes)."""

    name: str
    limits: pd.DataFrame  # limit_id, metric, target, lower, upper
    nav: np.ndarray  # per date
    actuals: np.ndarray  # dates x limits
    traded: np.ndarray  # one-way notional traded per date, base currency
    fees: np.ndarray  # per date, base currency
    fills: np.ndarray  # count per date
    alerts: list[tuple[str, int, int | None]] = field(default_factory=list)  # (alert_id, opened, resolved)
    signals: Counter[str] = field(default_factory=Counter)  # births by state
    inputs: list[tuple[int, Record]] = field(default_factory=list)  # (date, record) the lab fed for this book
    outputs: list[dict[str, Any]] = field(default_factory=list)  # alert and signal messages, if kept

    @classmethod
    def empty(cls, name: str, policy: Policy, dates: int) -> "BookRecord":
        return cls(name=name, limits=_limits_table(policy), nav=np.full(dates, np.nan),
                   actuals=np.full((dates, len(policy.limits)), np.nan), traded=np.zeros(dates),
                   fees=np.zeros(dates), fills=np.zeros(dates, dtype=int))


def _limits_table(policy: Policy) -> pd.DataFrame:
    rows = [{"limit_id": lim.limit_id, "metric": lim.metric, "target": lim.target,
             "lower": lim.band.bounds(lim.target)[0], "upper": lim.band.bounds(lim.target)[1]}
            for lim in policy.limits]
    return pd.DataFrame(rows, columns=["limit_id", "metric", "target", "lower", "upper"])


class LabRun:
    """Several policies' books in one engine over the market's dates, with one desk."""

    def __init__(self, market: Market, policies: Sequence[LabPolicy], nav: float = 100e6, fill: str = "next",
                 keep_outputs: bool = False) -> None:
        self.market = market
        self.policies = sorted(policies, key=lambda p: p.name)
        self.parsed = {p.name: p.parsed() for p in self.policies}
        self.nav0 = nav
        self.keep_outputs = keep_outputs
        self.engine = Engine(tick=DAY)
        self.desk = Desk(fill, {name: (pol.rebalance.max_participation if pol.rebalance else 0.1)
                                for name, pol in self.parsed.items()})
        self.reference = {d["instrument_id"]: d for d in market.instruments}
        self.adv: dict[str, float] = {}
        n = len(market.closes)
        self.records = {p.name: BookRecord.empty(p.name, self.parsed[p.name], n) for p in self.policies}
        self.limit_ids = {p.name: [lim.limit_id for lim in self.parsed[p.name].limits] for p in self.policies}
        self._open: dict[str, tuple[str, int]] = {}  # alert_id -> (book, date opened)

    def run(self) -> dict[str, BookRecord]:
        closes = self.market.closes
        ids, values, dates = list(closes.columns), closes.to_numpy(dtype=float), closes.index
        for k in range(len(dates)):
            self.step(k, dates, ids, values)
        for alert_id, (name, opened) in self._open.items():
            self.records[name].alerts.append((alert_id, opened, None))
        return self.records

    def step(self, k: int, dates: pd.DatetimeIndex, ids: list[str], values: np.ndarray) -> None:
        ts = evaluation_ts(dates[k])
        row = values[k]
        market_records = reference_update(self.market, k, dates, row)
        for _, _, doc in market_records:
            if "adv" in doc:
                self.adv[doc["instrument_id"]] = doc["adv"]
        first, later = (market_records, []) if k == 0 else ([], market_records)
        for rec in first + self._book_inputs(k, ts, ids, values):
            # the desk's fills are built to the contract: only the rest is schema-checked, as replay does
            apply_event(self.engine, event_from_doc(rec[0], rec[2], rec[1], validated=rec[0] == "fills"))
        self.engine.on_prices([Price(iid, float(px), ts) for iid, px in zip(ids, row)])
        for rec in later:  # after a timestamped event: inside this date's window, as a replay applies it
            # checked on the first date; since then only `adv` changed
            apply_event(self.engine, event_from_doc(rec[0], rec[2], rec[1], validated=True))
        out = self.engine.close_window(window_end(ts))
        self._route(k, out)
        self._measure(k)

    def _book_inputs(self, k: int, ts: Micros, ids: list[str], values: np.ndarray) -> list[Record]:
        """Policies and opening snapshots on the first date; the desk's fills after that."""
        out: list[Record] = []
        if k == 0:
            for p in self.policies:
                snap = opening_snapshot(self.parsed[p.name], self.reference, ids, values[0], self.nav0,
                                        ts - SNAPSHOT_LEAD)
                out += [("policies", p.name, p.doc), ("positions", p.name, snap)]
        else:
            row = values[k] if self.desk.fill == "next" else values[k - 1]
            fills = self.desk.execute(ts, dict(zip(ids, map(float, row))), self.reference, self.adv)
            fills.sort(key=lambda f: f["portfolio_id"])
            out += [("fills", f["portfolio_id"], f) for f in fills]
            fx_row = _price_book(ids, row)
            for f in fills:
                rec = self.records[f["portfolio_id"]]
                notional = f["quantity"] * f["price"] * float(self.reference[f["instrument_id"]].get("multiplier", 1.0))
                fx = fx_rate(self.reference[f["instrument_id"]]["currency"],
                             self.parsed[f["portfolio_id"]].base_currency, fx_row)
                rate = fx[0] if fx else 1.0
                rec.traded[k] += notional * rate
                rec.fees[k] += f["fees"] * rate
                rec.fills[k] += 1
        for rec in out:
            self.records[rec[1]].inputs.append((k, rec))
        return out

    def _route(self, k: int, events: Iterable[AlertEvent | SignalEvent]) -> None:
        for event in events:
            rec = self.records.get(event.portfolio_id)
            if rec is None:
                continue
            if self.keep_outputs:
                rec.outputs.append(event.to_message(event.event_ts))
            if isinstance(event, SignalEvent):
                self.desk.on_signal(event)
                if event.state not in CANCELLED and event.state != APPROVED:
                    rec.signals[event.state] += 1
            elif event.state == "OPEN":
                self._open[event.alert_id] = (event.portfolio_id, k)
            elif event.state == "RESOLVED" and event.alert_id in self._open:
                name, opened = self._open.pop(event.alert_id)
                rec.alerts.append((event.alert_id, opened, k))

    def _measure(self, k: int) -> None:
        for name, rec in self.records.items():
            status = self.engine.status.get(name)
            rec.nav[k] = np.nan if status is None or status.nav is None else status.nav
            watch = self.engine.watches.get(name)
            if watch is None:
                continue
            states = watch.limits
            for j, limit_id in enumerate(self.limit_ids[name]):
                state = states.get(limit_id)
                if state is not None and state.last_actual is not None:
                    rec.actuals[k, j] = state.last_actual


def _run_chunk(args: tuple[Market, list[LabPolicy], float, str, bool]) -> dict[str, BookRecord]:
    market, policies, nav, fill, keep = args
    return LabRun(market, policies, nav, fill, keep).run()


def run_lab(market: Market, policies: Sequence[LabPolicy], nav: float = 100e6, fill: str = "next",
            jobs: int = 1, keep_outputs: bool = False) -> dict[str, BookRecord]:
    """Every policy's record. With jobs > 1, the policies are dealt round-robin into CHUNKS_PER_JOB x jobs
    engines run by a pool of that many processes: a book is evaluated alone, so this changes nothing
    but the time. Books sharing an engine are valued together (~2.5x cheaper a book than one engine
    each); more chunks than processes keep both busy to the end, as policies differ widely in cost."""
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError("policy names must be unique")
    if jobs <= 1 or len(policies) <= 1:
        return LabRun(market, policies, nav, fill, keep_outputs).run()
    n = min(len(policies), jobs * CHUNKS_PER_JOB)
    chunks = [list(policies[i::n]) for i in range(n)]
    out: dict[str, BookRecord] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, n)) as pool:
        for part in pool.map(_run_chunk, [(market, c, nav, fill, keep_outputs) for c in chunks]):
            out.update(part)
    return out


# ----- the log the lab fed the engine ---------------------------------------------------------


def log_records(market: Market, records: Mapping[str, BookRecord]) -> Iterator[Record]:
    """The lab's input as one replay log, date by date: each book's policy, snapshot and fills (books in
    name order, as one run feeds them), then the closes; reference data first on the first date, after
    the closes on the others (it has no event time: it joins the window open when it arrives)."""
    closes = market.closes
    ids, values, dates = list(closes.columns), closes.to_numpy(dtype=float), closes.index
    per_date: dict[int, list[Record]] = {}
    for name in sorted(records):
        for k, rec in records[name].inputs:
            per_date.setdefault(k, []).append(rec)
    for k in range(len(dates)):
        ts = format_ts(evaluation_ts(dates[k]))
        reference = reference_update(market, k, dates, values[k])
        yield from reference if k == 0 else []
        yield from per_date.get(k, [])
        for iid, px in zip(ids, values[k]):
            yield "prices", iid, {"instrument_id": iid, "price": float(px), "ts": ts}
        yield from reference if k else []  # events without a time apply to the window open when they come


def write_log(market: Market, records: Mapping[str, BookRecord], out: IO[bytes]) -> int:
    """Write the lab's input as JSON Lines (the `monitor replay` format); the number of lines."""
    n = 0
    for topic, key, value in log_records(market, records):
        out.write(orjson.dumps({"topic": topic, "key": key, "value": value}) + b"\n")
        n += 1
    return n
