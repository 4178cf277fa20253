"""The engine: events in, alert events out. No Kafka, no clock, no I/O.

It owns the state every evaluation needs (reference data, latest prices, risk
models, books, policies, and a `Watch` per book: the lifecycle of every limit, the
peak NAV, and the book's data conditions) and re-evaluates only the books an event
touches, in the event time the event carries.

Evaluation happens per window of event time (`tick`): an event whose ts lies beyond
the open window first closes it, evaluating once every book touched in it (in book
order). So the alerts depend on the events and their times, not on how a consumer
happened to batch them; a replay of a log and the live worker agree. Events without
an event time (reference data, policies, risk models) take effect as they arrive.
With `tick=0` every call evaluates at once (what the unit tests use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from monitor.engine.alerts import AlertEvent, Inputs, LimitState, condition_step, step
from monitor.engine.book import Book
from monitor.engine.model import Fill, Instrument, Micros, Price, Rejected, RiskModel, Snapshot
from monitor.engine.policy import Policy
from monitor.engine.valuation import RiskDecomposition, Valuation, decompose_risk, measure, value_book

STALE_SWEEP: Micros = 1_000_000  # how often (in market event time) books are checked for stale prices
STALE_LIMIT_ID = "book:stale_prices"
NAV_LIMIT_ID = "book:nav"


@dataclass(frozen=True, slots=True)
class BookStatus:
    """The headline numbers of a book after its latest evaluation (for metrics and the API)."""

    nav: float | None
    largest_drift: float | None  # drift of the limit with the largest band usage
    band_usage: float | None  # that limit's |drift| / band half-width; 1.0 = at the edge
    open_alerts: int
    unavailable: str | None
    oldest_input_ts: Micros | None = None  # event ts of the oldest price the valuation rests on


@dataclass
class Watch:
    """What the engine remembers about one book between evaluations; persisted by the shell."""

    limits: dict[str, LimitState] = field(default_factory=dict)
    stale: LimitState = field(default_factory=LimitState)
    nav: LimitState = field(default_factory=LimitState)
    peak_nav: float | None = None
    clock: Micros = 0  # event time of the last evaluation: the state is as of then

    def open_alerts(self) -> int:
        return sum(1 for s in (*self.limits.values(), self.stale, self.nav) if s.alert_id is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"limits": {k: v.to_dict() for k, v in self.limits.items()}, "stale": self.stale.to_dict(),
                "nav": self.nav.to_dict(), "peak_nav": self.peak_nav, "clock": self.clock}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Watch":
        return cls({k: LimitState.from_dict(v) for k, v in d["limits"].items()},
                   LimitState.from_dict(d["stale"]), LimitState.from_dict(d["nav"]), d["peak_nav"], d["clock"])


class Engine:
    def __init__(self, tick: Micros = 0) -> None:
        self.tick = tick
        self._window_end: Micros | None = None  # exclusive end of the open window
        self._dirty: dict[str, Micros] = {}  # books touched in the open window -> newest ts
        self._warming: dict[str, Micros] = {}  # restored books -> the clock they were restored at
        self.instruments: dict[str, Instrument] = {}
        self.prices: dict[str, tuple[float, Micros]] = {}
        self.risk_models: dict[str, RiskModel] = {}
        self.books: dict[str, Book] = {}
        self.policies: dict[str, Policy] = {}
        self.watches: dict[str, Watch] = {}
        self.holders: dict[str, set[str]] = {}  # instrument_id -> ids of books that hold it
        self.clock: dict[str, Micros] = {}  # per-book event time: newest event applied to it
        self.market_clock: Micros = 0  # newest price ts seen
        self._next_sweep: Micros = 0
        self.status: dict[str, BookStatus] = {}

    # -- inputs ------------------------------------------------------------------

    def on_instrument(self, instrument: Instrument) -> list[AlertEvent]:
        """Reference data; applies fills that were held for this instrument."""
        self.instruments[instrument.instrument_id] = instrument
        for pid in sorted(self.books):
            book = self.books[pid]
            if any(f.instrument_id == instrument.instrument_id for f in book.held.values()):
                applied = book.release(instrument)
                if applied:
                    self.holders.setdefault(instrument.instrument_id, set()).add(pid)
                    self._touch(pid, max(f.ts for f in applied))
        for pid in self._books_affected_by(instrument.instrument_id):
            self._touch(pid, self.clock.get(pid, 0))
        return self._settle()

    def on_prices(self, prices: Iterable[Price]) -> list[AlertEvent]:
        """A batch of prices: keep the latest per instrument, re-evaluate the books they touch."""
        out: list[AlertEvent] = []
        for p in prices:
            out += self._advance(p.ts)
            current = self.prices.get(p.instrument_id)
            if current is not None and current[1] > p.ts:
                continue  # an older price than the one we hold: latest value wins
            self.prices[p.instrument_id] = (p.price, p.ts)
            self.market_clock = max(self.market_clock, p.ts)
            for pid in self._books_affected_by(p.instrument_id):
                if p.ts >= self.clock.get(pid, 0):  # older: already judged (e.g. re-read after a restart)
                    self._touch(pid, p.ts)
        return out + self._settle()

    def on_fill(self, fill: Fill) -> list[AlertEvent]:
        if not self.known_book(fill.portfolio_id):
            raise Rejected("unknown_book", f"fill {fill.fill_id} names unknown book {fill.portfolio_id}")
        out = self._advance(fill.ts)
        book = self.books.setdefault(fill.portfolio_id, Book(fill.portfolio_id))
        instrument = self.instruments.get(fill.instrument_id)
        if instrument is None:
            book.hold(fill)
            return out
        if not book.apply_fill(fill, instrument):
            return out
        self.holders.setdefault(fill.instrument_id, set()).add(fill.portfolio_id)
        self._touch(fill.portfolio_id, fill.ts)
        return out + self._settle()

    def on_snapshot(self, snapshot: Snapshot) -> list[AlertEvent]:
        book = self.books.setdefault(snapshot.portfolio_id, Book(snapshot.portfolio_id))
        if book.as_of is not None and snapshot.as_of < book.as_of:
            raise Rejected("impossible_value", f"snapshot as_of is older than the one in force for "
                                               f"{snapshot.portfolio_id}")
        out = self._advance(snapshot.as_of)
        book.apply_snapshot(snapshot, self.instruments.__getitem__)
        self._index(book)
        self._touch(snapshot.portfolio_id, snapshot.as_of)
        return out + self._settle()

    def on_policy(self, policy: Policy) -> list[AlertEvent]:
        """A new policy version takes effect at once; lifecycles of limits it keeps go on, and an
        open alert on a limit it drops is resolved, saying so."""
        pid = policy.portfolio_id
        previous = self.policies.get(pid)
        self.policies[pid] = policy
        watch = self.watches.setdefault(pid, Watch())
        kept = {lim.limit_id for lim in policy.limits}
        out: list[AlertEvent] = []
        old_limits = {lim.limit_id: lim for lim in previous.limits} if previous else {}
        for limit_id in [k for k in watch.limits if k not in kept]:
            state = watch.limits.pop(limit_id)
            old = old_limits.get(limit_id)
            if state.alert_id is not None and old is not None:
                ts = self.clock.get(pid, 0)
                book = self.books.get(pid)
                out.append(AlertEvent(
                    state.alert_id, "RESOLVED", "LIMIT", pid, limit_id, old.metric, None, old.target,
                    old.band.bounds(old.target), state.severity or "BREACH", policy.version, ts,
                    state.opened_ts or ts, Inputs(None, book.last_fill_id if book else None),
                    old.dimension, old.bucket, reason=f"limit removed by policy version {policy.version}"))
        self._touch(pid, self.clock.get(pid, 0))
        return out + self._settle()

    def on_risk_model(self, model: RiskModel) -> list[AlertEvent]:
        self.risk_models[model.model_id] = model
        for pid in self.policies:
            if any(lim.metric == "risk_contribution" for lim in self.policies[pid].limits):
                self._touch(pid, self.clock.get(pid, 0))
        return self._settle()

    def restore(self, book: Book | None, policy: Policy | None, watch: Watch | None, pid: str) -> None:
        """A book's state recovered from the changelog after a restart or a rebalance."""
        if book is not None:
            self.books[pid] = book
            self._index(book)
        if policy is not None:
            self.policies[pid] = policy
        if watch is not None:
            self.watches[pid] = watch
            self.clock[pid] = max(self.clock.get(pid, 0), watch.clock)
            # Judged again only once the market, re-read from its topics, is back at that time.
            self._warming[pid] = self.clock[pid]

    def known_book(self, portfolio_id: str) -> bool:
        return portfolio_id in self.books or portfolio_id in self.policies

    # -- event-time windows ------------------------------------------------------

    def flush(self) -> list[AlertEvent]:
        """Evaluate every book touched since the last evaluation (closes the open window)."""
        dirty, self._dirty = self._dirty, {}
        out: list[AlertEvent] = []
        for pid in sorted(dirty):
            out += self.evaluate(pid, dirty[pid])
        if self.market_clock >= self._next_sweep:
            out += self._sweep_stale(exclude=dirty)
        return out

    def end_warmup(self) -> None:
        """The inputs have been re-read to their end: restored books are judged again from now."""
        for pid, clock in self._warming.items():
            self._dirty[pid] = max(self._dirty.get(pid, 0), clock)
        self._warming.clear()

    def _advance(self, ts: Micros) -> list[AlertEvent]:
        """Before applying an event at `ts`: close the open window if `ts` lies beyond it."""
        if self.tick <= 0:
            return []
        if self._window_end is not None and ts < self._window_end:
            return []
        out = self.flush() if self._window_end is not None else []
        self._window_end = (ts // self.tick + 1) * self.tick
        return out

    def _touch(self, portfolio_id: str, ts: Micros) -> None:
        warm_at = self._warming.get(portfolio_id)
        if warm_at is not None:
            if self.market_clock < warm_at:
                return  # restored, and the prices re-read so far are older than its state
            del self._warming[portfolio_id]
        self._dirty[portfolio_id] = max(self._dirty.get(portfolio_id, 0), ts)

    def _settle(self) -> list[AlertEvent]:
        return self.flush() if self.tick <= 0 else []

    # -- evaluation --------------------------------------------------------------

    def evaluate(self, portfolio_id: str, ts: Micros) -> list[AlertEvent]:
        """Value the book, judge its data, measure every limit, advance each lifecycle."""
        ts = max(ts, self.clock.get(portfolio_id, 0))
        self.clock[portfolio_id] = ts
        book, policy = self.books.get(portfolio_id), self.policies.get(portfolio_id)
        if book is None or policy is None:
            return []
        watch = self.watches.setdefault(portfolio_id, Watch())
        watch.clock = ts
        valuation = value_book(book, policy.base_currency, self.instruments, self.prices)
        inputs = Inputs(valuation.price_ts, book.last_fill_id)
        out = self._judge_data(portfolio_id, policy, watch, valuation, ts, inputs)
        if valuation.ok and valuation.nav is not None and valuation.nav > 0:
            watch.peak_nav = max(watch.peak_nav or 0.0, valuation.nav)
        risk = self._risk(policy, valuation) if any(l.metric == "risk_contribution" for l in policy.limits) else None
        judging = watch.stale.alert_id is None and watch.nav.alert_id is None
        worst: tuple[float, float] | None = None  # (usage, drift)
        for limit in policy.limits:
            actual, _why = measure(limit, valuation, self.instruments, watch.peak_nav, risk)
            if actual is None:
                continue  # unavailable: neither opens nor resolves
            drift = actual - limit.target
            usage = limit.band.usage(drift)
            if worst is None or usage > worst[0]:
                worst = (usage, drift)
            if judging:  # a metric on stale prices neither opens nor resolves
                state = watch.limits.setdefault(limit.limit_id, LimitState())
                event = step(state, portfolio_id, limit, policy.evaluation, policy.version, actual, ts, inputs)
                if event is not None:
                    out.append(event)
        self.status[portfolio_id] = BookStatus(
            nav=valuation.nav,
            largest_drift=worst[1] if worst else None,
            band_usage=worst[0] if worst else None,
            open_alerts=watch.open_alerts(),
            unavailable=valuation.unavailable,
            oldest_input_ts=min(valuation.input_ts.values()) if valuation.input_ts else None,
        )
        return out

    def _judge_data(self, pid: str, policy: Policy, watch: Watch, valuation: Valuation, ts: Micros,
                    inputs: Inputs) -> list[AlertEvent]:
        """The book's data conditions: prices older than the policy allows, NAV <= 0."""
        out: list[AlertEvent] = []
        max_age = policy.evaluation.stale_price
        stale = tuple(sorted(iid for iid, t in valuation.input_ts.items() if ts - t > max_age))
        oldest = max((ts - valuation.input_ts[iid] for iid in stale), default=0) / 1e6

        def stale_event(state: str, alert_id: str, opened: Micros) -> AlertEvent:
            reason = (f"{len(stale)} price(s) older than {max_age / 1e6:g}s (oldest {oldest:.1f}s): "
                      f"{', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}" if stale
                      else "all prices fresh again")
            return AlertEvent(alert_id, state, "DATA_STALE", pid, STALE_LIMIT_ID, "price_age_seconds", oldest, None,
                              (0.0, max_age / 1e6), "BREACH", policy.version, ts, opened, inputs, reason=reason,
                              stale_instruments=stale)

        event = condition_step(watch.stale, pid, "DATA_STALE", bool(stale), ts, stale_event)
        if event is not None:
            out.append(event)
        nav = valuation.nav

        def nav_event(state: str, alert_id: str, opened: Micros) -> AlertEvent:
            reason = (f"NAV is {nav:,.2f} {policy.base_currency} (<= 0): weights are undefined, limits not judged"
                      if state == "OPEN" else f"NAV positive again ({nav:,.2f} {policy.base_currency})")
            return AlertEvent(alert_id, state, "NAV_NON_POSITIVE", pid, NAV_LIMIT_ID, "nav", nav, None, None,
                              "CRITICAL", policy.version, ts, opened, inputs, reason=reason)

        if valuation.ok:  # an unknown NAV neither opens nor resolves this condition
            event = condition_step(watch.nav, pid, "NAV_NON_POSITIVE", nav is not None and nav <= 0, ts, nav_event)
            if event is not None:
                out.append(event)
        return out

    def _risk(self, policy: Policy, valuation: Valuation) -> RiskDecomposition | str:
        if policy.risk_model is not None:
            model = self.risk_models.get(policy.risk_model)
            if model is None:
                return f"risk model {policy.risk_model} not received yet"
        elif len(self.risk_models) == 1:
            model = next(iter(self.risk_models.values()))
        else:
            return f"policy names no risk model and {len(self.risk_models)} are known"
        return decompose_risk(valuation, self.instruments, model)

    def _sweep_stale(self, exclude: dict[str, Micros]) -> list[AlertEvent]:
        """Prices of a book may stop while the market goes on: check every book in market time."""
        self._next_sweep = self.market_clock + STALE_SWEEP
        out: list[AlertEvent] = []
        for pid in sorted(self.status):
            policy, status = self.policies.get(pid), self.status[pid]
            if pid in exclude or policy is None or status.oldest_input_ts is None:
                continue
            watch = self.watches.get(pid)
            if watch is not None and watch.stale.alert_id is None and \
                    self.market_clock - status.oldest_input_ts > policy.evaluation.stale_price:
                out += self.evaluate(pid, self.market_clock)
        return out

    # -- indexes -------------------------------------------------------------------

    def _index(self, book: Book) -> None:
        for iid in book.positions:
            self.holders.setdefault(iid, set()).add(book.portfolio_id)

    def _books_affected_by(self, instrument_id: str) -> Iterable[str]:
        instrument = self.instruments.get(instrument_id)
        if instrument is not None and instrument.asset_class == "fx":
            return list(self.books)  # an FX rate can move any book's base-currency value
        return self.holders.get(instrument_id, ())

    def held_fills(self) -> int:
        return sum(len(b.held) for b in self.books.values())
