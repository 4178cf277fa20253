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

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, NamedTuple

from monitor.engine.alerts import AlertEvent, Inputs, LimitState, condition_step, digest, step
from monitor.engine.book import Book
from monitor.engine.exposure import Exposures, Row
from monitor.engine.model import Fill, Instrument, Micros, Price, Rejected, RiskModel, Snapshot, format_ts
from monitor.engine.policy import SEVERITY_RANK, Limit, Policy
from monitor.engine.rebalance import propose
from monitor.engine.reconcile import Reconciliation, held_as_of, reconcile
from monitor.engine.signals import Decision, SignalEvent, SignalLedger, signal_body
from monitor.engine.valuation import RiskDecomposition, Valuation, decompose_risk, measure, value_book

Event = AlertEvent | SignalEvent

STALE_SWEEP: Micros = 1_000_000  # how often (in market event time) books are checked for stale prices
STALE_LIMIT_ID = "book:stale_prices"
NAV_LIMIT_ID = "book:nav"
RECONCILIATION_LIMIT_ID = "book:reconciliation"


class MarketState(NamedTuple):
    """The market as the engine holds it: what a restart starts from instead of the price history.

    `judged` is, per book, the newest event time its state has taken in (its clock, or the newest
    event of the open window that touched it): every price that moves the book and is in `prices`
    is at or before it."""

    prices: dict[str, tuple[float, Micros]]  # instrument_id -> (latest price, its ts)
    next_sweep: Micros
    judged: dict[str, Micros]


class BookStatus(NamedTuple):
    """The headline numbers of a book after its latest evaluation (for metrics and the API).
    Named tuples, here and for `Quiet`: built per book evaluation, a frozen dataclass costs ~3x more."""

    nav: float | None
    largest_drift: float | None  # drift of the limit with the largest band usage
    band_usage: float | None  # that limit's |drift| / band half-width; 1.0 = at the edge
    open_alerts: int
    unavailable: str | None
    oldest_input_ts: Micros | None = None  # event ts of the oldest price the valuation rests on


class BookChange(NamedTuple):
    """What of a book's inputs stopped mattering, for the shell that keeps a record per input:
    the snapshot in force (older ones are superseded) and the fills it took in."""

    portfolio_id: str
    as_of: Micros | None  # the snapshot in force
    forgotten_fills: tuple[str, ...]


class Quiet(NamedTuple):
    """One evaluation's note on the limits it found inside their band with nothing open or pending:
    each was inside at `ts`, measuring its column's actual (what `LimitState.attribute` records).
    Most limits are quiet most of the time; one note per evaluation replaces a write per limit."""

    ts: Micros
    limits: tuple[Limit, ...]  # the policy's
    columns: tuple[int | None, ...]  # per limit: its column in `actuals`, None if not a column
    actuals: list[float]
    judged: frozenset[int]  # limits judged one by one, not quiet

    def write(self, states: dict[str, LimitState], ks: Iterable[int]) -> None:
        """Write the note into the states of those of limits `ks` it holds."""
        for k in ks:
            col = self.columns[k]
            if col is not None and k not in self.judged:
                state = states[self.limits[k].limit_id]
                state.inside_ts, state.from_prices, state.from_fills = self.ts, 0.0, 0.0
                state.last_actual = self.actuals[col]


def _quiet(state: LimitState | None) -> bool:
    return state is not None and state.alert_id is None and state.breach_since is None


@dataclass
class Watch:
    """What the engine remembers about one book between evaluations; persisted by the shell.

    The limits' states are exact when read (`limits`, `to_dict`): the latest `Quiet` note is
    written into them first."""

    states: dict[str, LimitState] = field(default_factory=dict)  # the engine's; may lag the note
    stale: LimitState = field(default_factory=LimitState)
    nav: LimitState = field(default_factory=LimitState)
    peak_nav: float | None = None
    clock: Micros = 0  # event time of the last evaluation: the state is as of then
    signals: SignalLedger = field(default_factory=SignalLedger)
    reconciliation: LimitState = field(default_factory=LimitState)  # the open RECONCILIATION_BREAK, if any
    quiet: Quiet | None = field(default=None, repr=False, compare=False)
    # Indexes of the policy's limits that are not quiet (or never measured); None: not known yet.
    loud: set[int] | None = field(default=None, repr=False, compare=False)

    @property
    def limits(self) -> dict[str, LimitState]:
        self.settle()
        return self.states

    def open_alerts(self, limits: tuple[Limit, ...]) -> dict[str, LimitState]:
        """The states of the limits with an open alert, by limit id. An open alert is never quiet,
        so only the loud limits are looked at (all, while those are not known)."""
        states, out = self.states, {}
        for k in self.loud if self.loud is not None else range(len(limits)):
            state = states.get(limits[k].limit_id)
            if state is not None and state.alert_id is not None:
                out[limits[k].limit_id] = state
        return out

    def settle(self) -> None:
        """Write the quiet note into the states."""
        if self.quiet is not None:
            self.quiet.write(self.states, range(len(self.quiet.limits)))
            self.quiet = None

    def new_policy(self) -> None:
        """The book's policy changed: the note and `loud` index the old policy's limits."""
        self.settle()
        self.loud = None

    def to_dict(self) -> dict[str, Any]:
        return {"limits": {k: v.to_dict() for k, v in self.limits.items()}, "stale": self.stale.to_dict(),
                "nav": self.nav.to_dict(), "peak_nav": self.peak_nav, "clock": self.clock,
                "signals": self.signals.to_dict(), "reconciliation": self.reconciliation.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Watch":
        return cls({k: LimitState.from_dict(v) for k, v in d["limits"].items()},
                   LimitState.from_dict(d["stale"]), LimitState.from_dict(d["nav"]), d["peak_nav"], d["clock"],
                   SignalLedger.from_dict(d.get("signals")),
                   LimitState.from_dict(d["reconciliation"]) if "reconciliation" in d else LimitState())


class Engine:
    def __init__(self, tick: Micros = 0) -> None:
        self.tick = tick
        self._window_end: Micros | None = None  # exclusive end of the open window
        self._dirty: dict[str, Micros] = {}  # books touched in the open window -> newest ts
        # Instruments priced in the open window -> their newest price ts: their holders are touched
        # once, when the window is judged (`_touch_priced`), not at each price.
        self._priced: dict[str, Micros] = {}
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
        # Prices of an instrument without reference data: kept (a book is valued with it once the
        # instrument arrives) and counted, not refused.
        self.unreferenced_prices = 0
        # Inputs applied after one stamped in a later window (a fill that reached the broker after
        # later prices, a re-sent duplicate): judged in a later window than a replay of the log
        # judges them, so live and replay may differ for them; counted so that it can be seen.
        self.late_inputs: dict[str, int] = {"price": 0, "fill": 0, "snapshot": 0}
        self._newest: Micros = 0  # the newest event time applied since the market was last set
        self._next_sweep: Micros = 0
        self.status: dict[str, BookStatus] = {}
        # Positions and cash of books before the fills of the open window, to split drift into
        # what prices did and what fills did (attribution).
        self._before_fills: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
        # Every book's holdings and linear limits as arrays, valued together per window.
        self.exposures = Exposures()
        self._changed: set[str] = set()  # books whose inputs changed since `changes()`

    # -- inputs ------------------------------------------------------------------

    def on_instrument(self, instrument: Instrument) -> list[Event]:
        """Reference data; applies fills that were held for this instrument."""
        self.instruments[instrument.instrument_id] = instrument
        self.exposures.clear()  # multipliers, currencies, buckets or loadings may have changed
        for pid in sorted(self.books):
            book = self.books[pid]
            if any(f.instrument_id == instrument.instrument_id for f in book.held.values()):
                self._keep_positions(book)
                applied = book.release(instrument)
                if applied:
                    self.holders.setdefault(instrument.instrument_id, set()).add(pid)
                    self._touch(pid, max(f.ts for f in applied))
        for pid in self._books_affected_by(instrument.instrument_id):
            self._touch(pid, self.clock.get(pid, 0))
        return self._settle()

    def on_prices(self, prices: Iterable[Price]) -> list[Event]:
        """A batch of prices: keep the latest per instrument, re-evaluate the books they touch."""
        out: list[Event] = []
        latest, set_price = self.prices, self.exposures.set_price
        instruments = self.instruments
        priced = self._priced
        for iid, price, ts in prices:
            if ts >= self._newest:
                self._newest = ts
            else:
                self._late(ts, "price")
            if self._window_end is None or ts >= self._window_end:  # else _advance has nothing to do
                out += self._advance(ts)
                priced = self._priced
            if iid not in instruments:
                self.unreferenced_prices += 1
            current = latest.get(iid)
            if current is not None and current[1] > ts:
                continue  # an older price than the one we hold: latest value wins
            latest[iid] = (price, ts)
            set_price(iid, price, ts)
            if ts > self.market_clock:
                self.market_clock = ts
            priced[iid] = ts
        return out + self._settle()

    def _touch_priced(self) -> None:
        """Each book holding instruments priced in the open window, at the newest of their prices,
        unless that is older than its clock (already judged, e.g. re-read after a restart): what
        touching it at each price did, since only the newest counts. The newest first, each book
        once: a busy feed's window touches every book, and a touch per price and holder was most of
        a window's time at 50 books x 2,000 holdings (BENCHMARKS.md)."""
        if not self._priced:
            return
        priced, self._priced = self._priced, {}
        clock, touch, books = self.clock, self._touch, self.books
        done: set[str] = set()
        held = 0  # of `done`, the books the engine has (holders can name more)
        for iid, ts in sorted(priced.items(), key=lambda item: item[1], reverse=True):
            for pid in self._books_affected_by(iid):
                if pid in done:
                    continue
                done.add(pid)
                held += pid in books
                if ts >= clock.get(pid, 0):
                    touch(pid, ts)
            if held == len(books):
                return

    def on_fill(self, fill: Fill) -> list[Event]:
        if not self.known_book(fill.portfolio_id):
            raise Rejected("unknown_book", f"fill {fill.fill_id} names unknown book {fill.portfolio_id}")
        if fill.ts > self._warming.get(fill.portfolio_id, -1):  # not one re-applied to a restored book
            self._arrived(fill.ts, "fill")
        out = self._advance(fill.ts)
        book = self.books.get(fill.portfolio_id) or self.books.setdefault(fill.portfolio_id, Book(fill.portfolio_id))
        self._changed.add(fill.portfolio_id)
        instrument = self.instruments.get(fill.instrument_id)
        if instrument is None:
            book.hold(fill)
            return out
        if fill.ts > self._warming.get(fill.portfolio_id, -1):
            # A restored book's fills up to its clock are judged already: nothing to attribute to.
            self._keep_positions(book)
        if not book.apply_fill(fill, instrument):
            return out
        self.holders.setdefault(fill.instrument_id, set()).add(fill.portfolio_id)
        self.exposures.moved(fill.portfolio_id, fill.instrument_id)
        self._touch(fill.portfolio_id, fill.ts)
        return out + self._settle()

    def on_snapshot(self, snapshot: Snapshot) -> list[Event]:
        known = self.books.get(snapshot.portfolio_id)
        if known is not None and known.as_of is not None and snapshot.as_of < known.as_of:
            raise Rejected("impossible_value", f"snapshot as_of is older than the one in force for "
                                               f"{snapshot.portfolio_id}")
        self._arrived(snapshot.as_of, "snapshot")
        out = self._advance(snapshot.as_of)  # the window before it is judged without it
        self._changed.add(snapshot.portfolio_id)
        book = self.books.setdefault(snapshot.portfolio_id, Book(snapshot.portfolio_id))
        out += self._reconcile(book, snapshot)
        self._keep_positions(book)
        book.apply_snapshot(snapshot, self.instruments.__getitem__)
        self.exposures.moved(snapshot.portfolio_id)
        self._index(book)
        self._touch(snapshot.portfolio_id, snapshot.as_of)
        return out + self._settle()

    def on_policy(self, policy: Policy) -> list[Event]:
        """A new policy version takes effect at once; lifecycles of limits it keeps go on, and an
        open alert on a limit it drops is resolved, saying so."""
        pid = policy.portfolio_id
        previous = self.policies.get(pid)
        self.policies[pid] = policy
        self.exposures.drop(pid)  # its columns follow the limits
        watch = self.watches.setdefault(pid, Watch())
        watch.new_policy()
        kept = {lim.limit_id for lim in policy.limits}
        out: list[Event] = []
        old_limits = {lim.limit_id: lim for lim in previous.limits} if previous else {}
        for limit_id in [k for k in watch.states if k not in kept]:
            state = watch.states.pop(limit_id)
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

    def on_risk_model(self, model: RiskModel) -> list[Event]:
        self.risk_models[model.model_id] = model
        self.exposures.clear()  # loadings and variances follow the model
        for pid in self.policies:
            if self.policies[pid].uses_risk:
                self._touch(pid, self.clock.get(pid, 0))
        return self._settle()

    def on_decision(self, decision: Decision) -> list[Event]:
        """An approver's answer to a pending signal; refused (Rejected) for no pending signal."""
        watch = self.watches.get(decision.portfolio_id)
        if watch is None:
            raise Rejected("unknown_signal", f"no signal {decision.signal_id}: book {decision.portfolio_id} "
                                             f"has no signals")
        return [watch.signals.decide(decision)]

    def drop_books(self) -> None:
        """Forget every book, policy and watch (the shell rebuilds them from its tables after a
        rebalance); market data stays."""
        self.books.clear()
        self.policies.clear()
        self.watches.clear()
        self.status.clear()
        self.clock.clear()
        self.holders.clear()
        self._dirty.clear()
        self._priced.clear()
        self._warming.clear()
        self._before_fills.clear()
        self._changed.clear()
        self.exposures.clear()
        self._newest = 0  # the restored books' inputs are re-applied from their start

    def restore(self, book: Book | None, policy: Policy | None, watch: Watch | None, pid: str) -> None:
        """A book's state recovered from the changelog after a restart or a rebalance."""
        self.exposures.drop(pid)
        if book is not None:
            self.books[pid] = book
            self._index(book)
        if policy is not None:
            self.policies[pid] = policy
            if pid in self.watches:
                self.watches[pid].new_policy()
        if watch is not None:
            self.watches[pid] = watch
            self.clock[pid] = max(self.clock.get(pid, 0), watch.clock)
            # Judged again only once the market, re-read from its topics, is back at that time.
            self._warming[pid] = self.clock[pid]

    def market_state(self) -> MarketState:
        self._touch_priced()
        judged = {pid: max(self.clock.get(pid, 0), self._dirty.get(pid, 0))
                  for pid in self.books.keys() | self.policies.keys()}
        return MarketState(dict(self.prices), self._next_sweep, judged)

    def restore_market(self, state: MarketState) -> None:
        """The latest prices (and the stale sweep's schedule) become those of a `market_state` taken
        earlier; prices read afterwards update them as ever (one older than the price held is ignored)."""
        self.prices.clear()
        self.exposures.forget_prices()
        self.market_clock = 0
        self._window_end = None  # the market starts again at the state's time: so do the windows
        self._newest = 0  # the inputs re-read from here on are in order again
        self._dirty.clear()
        self._priced.clear()
        for iid, (price, ts) in state.prices.items():
            self.prices[iid] = (price, ts)
            self.exposures.set_price(iid, price, ts)
            self.market_clock = max(self.market_clock, ts)
        self._next_sweep = state.next_sweep

    def changes(self) -> list[BookChange]:
        """The books whose snapshot or fills changed since the last call, and what they let go."""
        changed, self._changed = self._changed, set()
        return [BookChange(pid, book.as_of, tuple(book.forget()))
                for pid in sorted(changed) if (book := self.books.get(pid)) is not None]

    def known_book(self, portfolio_id: str) -> bool:
        return portfolio_id in self.books or portfolio_id in self.policies

    # -- event-time windows ------------------------------------------------------

    def flush(self) -> list[Event]:
        """Evaluate every book touched since the last evaluation (closes the open window)."""
        self._touch_priced()
        dirty, self._dirty = self._dirty, {}
        out: list[Event] = []
        pids = sorted(dirty)
        rows = self._value(pids)
        for pid in pids:
            out += self._evaluate(pid, dirty[pid], rows.get(pid))
        # Positions kept for attribution belong to this window: a book touched but not judged in it
        # (restored and still behind its clock, or without a snapshot or policy) starts afresh.
        self._before_fills.clear()
        if self.market_clock >= self._next_sweep:
            out += self._sweep_stale(exclude=dirty)
            for pid in sorted(self.watches):  # pending signals expire even while their book is quiet
                out += self.watches[pid].signals.expire(self.market_clock)
        return out

    def close_window(self, until: Micros) -> list[Event]:
        """Every event before `until` has been applied: evaluate the open window now if it ends by
        then, instead of when the first event beyond it arrives. The window's content is complete,
        so the result is the same; it only comes sooner (the live worker's price feed is read in
        batches, and its last window would otherwise wait for the next batch)."""
        if self.tick <= 0 or self._window_end is None or self._window_end > until:
            return []
        return self.flush()

    def end_warmup(self, before: Micros | None = None) -> None:
        """The inputs have been re-read to their end: restored books are judged again from now. With
        `before` (the oldest event still waiting to be applied), only the books restored at an
        earlier clock: judging a book at its clock before every input up to it is applied would
        emit its last events again, on other inputs."""
        self._touch_priced()
        ended = [pid for pid, clock in self._warming.items() if before is None or clock < before]
        for pid in ended:
            self._dirty[pid] = max(self._dirty.get(pid, 0), self._warming.pop(pid))

    def _arrived(self, ts: Micros, kind: str) -> None:
        if ts >= self._newest:
            self._newest = ts
        else:
            self._late(ts, kind)

    def _late(self, ts: Micros, kind: str) -> None:
        """An input older than the newest applied: late if it belongs to an earlier window (inputs of
        one window commute, `flush`)."""
        if self.tick <= 0 or ts // self.tick < self._newest // self.tick:
            self.late_inputs[kind] += 1

    def _advance(self, ts: Micros) -> list[Event]:
        """Before applying an event at `ts`: close the open window if `ts` lies beyond it."""
        if self.tick <= 0:
            return []
        if self._window_end is not None and ts < self._window_end:
            return []
        out = self.flush() if self._window_end is not None else []
        self._window_end = (ts // self.tick + 1) * self.tick
        return out

    def _touch(self, portfolio_id: str, ts: Micros) -> None:
        if self._warming and portfolio_id in self._warming:
            if ts <= self._warming[portfolio_id]:
                return  # restored: its state is as of this event already (judging it again would
                # count the window's fills twice in the drift attribution)
            del self._warming[portfolio_id]  # a new event: every input before it has been re-read
        if self._dirty.get(portfolio_id, -1) < ts:
            self._dirty[portfolio_id] = ts

    def _settle(self) -> list[Event]:
        return self.flush() if self.tick <= 0 else []

    # -- evaluation --------------------------------------------------------------

    def evaluate(self, portfolio_id: str, ts: Micros) -> list[Event]:
        """Value the book, judge its data, measure every limit, advance each lifecycle."""
        return self._evaluate(portfolio_id, ts, self._value([portfolio_id]).get(portfolio_id))

    def _value(self, pids: list[str]) -> dict[str, Row]:
        """The books with a policy, valued together, their linear limits measured."""
        books = []
        for pid in pids:
            book, policy = self.books.get(pid), self.policies.get(pid)
            if book is not None and book.as_of is not None and policy is not None:
                model = self._risk_model(policy) if policy.uses_risk else None
                books.append((book, policy, model if isinstance(model, RiskModel) else None))
        return self.exposures.value(books, self.instruments, self.prices)

    def _evaluate(self, portfolio_id: str, ts: Micros, row: Row | None) -> list[Event]:
        book, policy = self.books.get(portfolio_id), self.policies.get(portfolio_id)
        # Never before the snapshot in force: a book touched by a policy, reference data or a risk
        # model before anything with an event time has no clock yet (0, 1970).
        as_of = book.as_of if book is not None and book.as_of is not None else 0
        ts = max(ts, self.clock.get(portfolio_id, 0), as_of)
        self.clock[portfolio_id] = ts
        if book is None or book.as_of is None or policy is None:
            return []  # without a snapshot its holdings are unknown (fills alone are not a book)
        watch = self.watches.get(portfolio_id) or self.watches.setdefault(portfolio_id, Watch())
        watch.clock = ts
        if row is not None and not row.ok:
            row = None  # something is missing: value_book says what
        valuation = row.valuation() if row is not None else \
            value_book(book, policy.base_currency, self.instruments, self.prices)
        inputs = Inputs(valuation.price_ts, book.last_fill_id)
        out: list[Event] = list(self._judge_data(portfolio_id, policy, watch, valuation, ts, inputs))
        nav = valuation.nav if valuation.nav is not None else 0.0
        if valuation.ok and nav > 0:
            watch.peak_nav = max(watch.peak_nav or 0.0, nav)
        uses_risk = policy.uses_risk
        risk = self._risk(policy, valuation) if uses_risk and row is None else None  # else: in the row
        # The same book before this window's fills, at today's prices, splits a drift into what prices
        # and what fills did (attribution). Only a limit outside its band keeps a split (inside, it
        # restarts), so the book is valued that way only once such a limit asks (`_held_actual`).
        before = self._before_fills.pop(portfolio_id, None)
        held: list[Any] = []  # [valuation, risk] of `before`, once built
        judging = watch.stale.alert_id is None and watch.nav.alert_id is None
        measured = row is not None and nav > 0
        limits, states = policy.limits, watch.states
        worst: tuple[float, int, float] | None = None  # (usage, limit, drift) of the largest usage
        if measured and judging:
            # The common case: column limits come measured from the Exposures, and those inside their
            # band with nothing open or pending (most of them) are noted at once; the rest are judged.
            assert row is not None
            judge = self._to_judge(watch, limits, row)
            if watch.quiet is not None:
                watch.quiet.write(states, judge)  # what the last note held of the limits judged now
            watch.quiet = Quiet(ts, limits, row.block.columns, row.actuals, frozenset(judge))
            if row.worst is not None:
                usage, k = row.worst
                worst = (usage, k, row.actuals[row.block.columns[k]] - limits[k].target)  # type: ignore[index]
        else:
            watch.settle()
            watch.loud = set()  # every limit is judged: found again below
            judge = range(len(limits))
        columns = row.block.columns if measured else ()  # type: ignore[union-attr]
        triggered = False
        for k in judge:
            limit = limits[k]
            col = columns[k] if measured else None
            if col is not None:
                actual, usage = row.actuals[col], row.usages[col]  # type: ignore[union-attr]
                if actual != actual:
                    continue  # nan: no risk model, a variance missing, or zero variance
            else:
                measure_ = measure(limit, valuation, self.instruments, watch.peak_nav, risk)[0]
                if measure_ is None:
                    continue  # unavailable: neither opens nor resolves
                actual, usage = measure_, limit.band.usage(measure_ - limit.target)
            if worst is None or usage > worst[0] or (usage == worst[0] and k < worst[1]):
                worst = (usage, k, actual - limit.target)
            state = states.get(limit.limit_id)
            if state is None:
                state = states[limit.limit_id] = LimitState()
            inside = usage <= 1.0
            held_actual = None if inside or before is None else \
                self._held_actual(limit, policy, before, held, watch.peak_nav)
            state.attribute(actual, held_actual, inside, ts)
            if judging:  # a metric on stale prices neither opens nor resolves
                event = step(state, portfolio_id, limit, policy.evaluation, policy.version, actual, ts, inputs)
                if event is not None:
                    out.append(replace(event, attribution=state.attribution()))
                    triggered |= self._triggers(policy, event)
        loud = watch.loud
        assert loud is not None
        for k in judge:
            (loud.discard if _quiet(states.get(limits[k].limit_id)) else loud.add)(k)
        if policy.rebalance is not None and judging and valuation.ok and nav > 0:
            out += self._rebalance(policy, book, valuation, watch, ts, triggered)
        open_alerts = len(watch.open_alerts(limits)) + (watch.stale.alert_id is not None) + \
            (watch.nav.alert_id is not None) + (watch.reconciliation.alert_id is not None)
        self.status[portfolio_id] = BookStatus(
            nav=valuation.nav,
            largest_drift=worst[2] if worst else None,
            band_usage=worst[0] if worst else None,
            open_alerts=open_alerts,
            unavailable=valuation.unavailable,
            oldest_input_ts=valuation.oldest_ts,
        )
        return out

    def _held_actual(self, limit: Limit, policy: Policy, before: tuple[dict[str, float], dict[str, float]],
                     held: list[Any], peak_nav: float | None) -> float | None:
        """The limit's metric for the positions and cash held before this window's fills, at today's
        prices; `held` caches that book's valuation and risk for the book's other limits."""
        if not held:
            valuation = value_book(Book(policy.portfolio_id, positions=before[0], cash=before[1]),
                                   policy.base_currency, self.instruments, self.prices)
            held += [valuation, self._risk(policy, valuation) if policy.uses_risk else None]
        return measure(limit, held[0], self.instruments, peak_nav, held[1])[0]

    @staticmethod
    def _to_judge(watch: Watch, limits: tuple[Limit, ...], row: Row) -> list[int]:
        """The limits to judge one by one: those not quiet, not columns, or outside their band now."""
        if watch.loud is None:
            watch.loud = {k for k, lim in enumerate(limits) if not _quiet(watch.states.get(lim.limit_id))}
        return sorted(watch.loud.union(row.outside, row.block.other_limits))

    def _judge_data(self, pid: str, policy: Policy, watch: Watch, valuation: Valuation, ts: Micros,
                    inputs: Inputs) -> list[Event]:
        """The book's data conditions: prices older than the policy allows, NAV <= 0."""
        out: list[Event] = []
        max_age = policy.evaluation.stale_price
        fresh = valuation.oldest_ts is None or ts - valuation.oldest_ts <= max_age
        nav = valuation.nav
        non_positive = valuation.ok and nav is not None and nav <= 0  # an unknown NAV is neither
        if fresh and not non_positive and watch.stale.alert_id is None and watch.nav.alert_id is None:
            return out  # nearly always: neither condition holds, and neither is open
        stale = () if fresh else tuple(sorted(iid for iid, t in valuation.input_ts.items() if ts - t > max_age))
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

        def nav_event(state: str, alert_id: str, opened: Micros) -> AlertEvent:
            reason = (f"NAV is {nav:,.2f} {policy.base_currency} (<= 0): weights are undefined, limits not judged"
                      if state == "OPEN" else f"NAV positive again ({nav:,.2f} {policy.base_currency})")
            return AlertEvent(alert_id, state, "NAV_NON_POSITIVE", pid, NAV_LIMIT_ID, "nav", nav, None, None,
                              "CRITICAL", policy.version, ts, opened, inputs, reason=reason)

        if valuation.ok:  # an unknown NAV neither opens nor resolves this condition
            event = condition_step(watch.nav, pid, "NAV_NON_POSITIVE", non_positive, ts, nav_event)
            if event is not None:
                out.append(event)
        return out

    def _risk(self, policy: Policy, valuation: Valuation) -> RiskDecomposition | str:
        model = self._risk_model(policy)
        return model if isinstance(model, str) else decompose_risk(valuation, self.instruments, model)

    def _risk_model(self, policy: Policy) -> RiskModel | str:
        """The policy's risk model, or why there is none."""
        if policy.risk_model is not None:
            model = self.risk_models.get(policy.risk_model)
            return model if model is not None else f"risk model {policy.risk_model} not received yet"
        if len(self.risk_models) == 1:
            return next(iter(self.risk_models.values()))
        return f"policy names no risk model and {len(self.risk_models)} are known"

    # -- reconciliation ---------------------------------------------------------------

    def _reconcile(self, book: Book, snapshot: Snapshot) -> list[Event]:
        """A snapshot against what the book held as of its as_of: a RECONCILIATION_BREAK opens when they
        differ and resolves at the next snapshot that agrees (a break on a break resolves the old and
        opens the new). It never holds the snapshot back. Only a snapshot later than the one in force
        (the first has nothing to compare with; one at the same as_of restates or re-delivers the books
        in force), of a book with a policy (the tolerances and the version are the policy's)."""
        pid, policy = book.portfolio_id, self.policies.get(book.portfolio_id)
        if policy is None or book.as_of is None or snapshot.as_of <= book.as_of:
            return []
        positions, cash = held_as_of(book.positions, book.cash, book.fills.values(), snapshot.as_of,
                                     self.instruments.__getitem__)
        found = reconcile(positions, cash, snapshot, policy.evaluation.reconciliation_quantity,
                          policy.evaluation.reconciliation_cash)
        state = (self.watches.get(pid) or self.watches.setdefault(pid, Watch())).reconciliation
        out: list[Event] = []
        if state.alert_id is not None:
            reason = (f"superseded by the reconciliation as of {format_ts(snapshot.as_of)}" if found.breaks
                      else f"the snapshot as of {format_ts(snapshot.as_of)} agrees with the monitor")
            out.append(self._reconciliation_event(state, "RESOLVED", book, policy, Reconciliation(snapshot.as_of, ()),
                                                  reason))
            state.alert_id = state.opened_ts = None
        if found.breaks:
            state.alert_id, state.opened_ts = digest(pid, "RECONCILIATION_BREAK", snapshot.as_of), snapshot.as_of
            out.append(self._reconciliation_event(state, "OPEN", book, policy, found, found.describe()))
        return out

    @staticmethod
    def _reconciliation_event(state: LimitState, name: str, book: Book, policy: Policy, found: Reconciliation,
                              reason: str) -> AlertEvent:
        assert state.alert_id is not None and state.opened_ts is not None
        return AlertEvent(alert_id=state.alert_id, state=name, kind="RECONCILIATION_BREAK",
                          portfolio_id=book.portfolio_id, limit_id=RECONCILIATION_LIMIT_ID,
                          metric="reconciliation_breaks", actual=float(len(found.breaks)), target=None, band=None,
                          severity="BREACH", policy_version=policy.version, event_ts=found.as_of,
                          opened_ts=state.opened_ts, inputs=Inputs(None, book.last_fill_id), reason=reason,
                          reconciliation=found)

    # -- rebalance signals -----------------------------------------------------------

    @staticmethod
    def _triggers(policy: Policy, event: AlertEvent) -> bool:
        """An alert that opens or escalates at the policy's min_severity asks for a proposal."""
        rb = policy.rebalance
        return (rb is not None and event.state in ("OPEN", "ESCALATED")
                and SEVERITY_RANK[event.severity] >= SEVERITY_RANK[rb.min_severity])

    def _rebalance(self, policy: Policy, book: Book, valuation: Valuation, watch: Watch, ts: Micros,
                   triggered: bool) -> list[Event]:
        """Expire, settle, and propose: on an alert that asks for it, or on the global schedule."""
        rb = policy.rebalance
        assert rb is not None
        ledger = watch.signals
        out: list[Event] = list(ledger.expire(ts))
        due = False
        if rb.schedule is not None:
            due = ledger.next_check is not None and ts >= ledger.next_check
            if ledger.next_check is None or due:
                ledger.next_check = (ts // rb.schedule + 1) * rb.schedule
        if ledger.awaiting():
            ledger.settle(set(watch.open_alerts(policy.limits)))
        if not (triggered or due):
            return out  # nearly every evaluation: nothing to propose
        open_states = watch.open_alerts(policy.limits)
        all_ids = [lim.limit_id for lim in policy.limits]
        if triggered and rb.mode == "global":
            trigger, mode, ids = "alert", "global", all_ids
        elif triggered:
            trigger, mode = "alert", "targeted"
            ids = [lid for lid in all_ids if lid in open_states
                   and SEVERITY_RANK[open_states[lid].severity or "BREACH"] >= SEVERITY_RANK[rb.min_severity]]
        else:
            trigger, mode, ids = "schedule", "global", all_ids
        model = self._risk_model(policy)
        proposal = propose(policy, ids, mode == "global", book, valuation, self.instruments, self.prices,
                           watch.peak_nav, None if isinstance(model, str) else model)
        if trigger == "schedule" and not any(t.quantity > 0 for t in proposal.trades):
            return out  # the scheduled check found nothing to do
        behind = [open_states[lid] for lid in ids if lid in open_states]
        attribution = {lid: st.attribution() for lid, st in watch.limits.items()}
        body = signal_body(policy, proposal, trigger, mode, [st.alert_id for st in behind if st.alert_id],
                           attribution, ts)
        return out + ledger.propose(body, proposal, [st.severity or "BREACH" for st in behind], rb, ts)

    def _sweep_stale(self, exclude: dict[str, Micros]) -> list[Event]:
        """Prices of a book may stop while the market goes on: check every book in market time."""
        self._next_sweep = self.market_clock + STALE_SWEEP
        out: list[Event] = []
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

    def _keep_positions(self, book: Book) -> None:
        """Before the first change of a book's positions in a window: remember what it held."""
        if book.portfolio_id not in self._before_fills:
            self._before_fills[book.portfolio_id] = (dict(book.positions), dict(book.cash))

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
