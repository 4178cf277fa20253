"""The engine: events in, alert events out. No Kafka, no clock, no I/O.

It owns the state every evaluation needs (reference data, latest prices, books,
policies, the lifecycle of every limit) and re-evaluates only the books an event
touches, in the event time the event carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from monitor.engine.alerts import AlertEvent, Inputs, LimitState, step
from monitor.engine.book import Book
from monitor.engine.model import Fill, Instrument, Micros, Price, Rejected, Snapshot
from monitor.engine.policy import Policy
from monitor.engine.valuation import measure, value_book


@dataclass(frozen=True, slots=True)
class BookStatus:
    """The headline numbers of a book after its latest evaluation (for metrics and the API)."""

    nav: float | None
    largest_drift: float | None  # drift of the limit with the largest band usage
    band_usage: float | None  # that limit's |drift| / band half-width; 1.0 = at the edge
    open_alerts: int
    unavailable: str | None


class Engine:
    def __init__(self) -> None:
        self.instruments: dict[str, Instrument] = {}
        self.prices: dict[str, tuple[float, Micros]] = {}
        self.books: dict[str, Book] = {}
        self.policies: dict[str, Policy] = {}
        self.limit_states: dict[str, dict[str, LimitState]] = {}
        self.held_fills: dict[str, list[Fill]] = {}  # instrument_id -> fills awaiting reference data
        self.holders: dict[str, set[str]] = {}  # instrument_id -> ids of books that hold it
        self.clock: dict[str, Micros] = {}  # per-book event time: newest event applied to it
        self.status: dict[str, BookStatus] = {}

    # -- inputs ------------------------------------------------------------------

    def on_instrument(self, instrument: Instrument) -> list[AlertEvent]:
        """Reference data; releases fills that were held for this instrument."""
        self.instruments[instrument.instrument_id] = instrument
        out: list[AlertEvent] = []
        for fill in self.held_fills.pop(instrument.instrument_id, []):
            out += self.on_fill(fill)
        for pid in sorted(self._books_affected_by(instrument.instrument_id)):
            out += self.evaluate(pid, self.clock.get(pid, 0))
        return out

    def on_prices(self, prices: Iterable[Price]) -> list[AlertEvent]:
        """A batch of prices: keep the latest per instrument, re-evaluate the books they touch."""
        touched: dict[str, Micros] = {}
        for p in prices:
            current = self.prices.get(p.instrument_id)
            if current is not None and current[1] > p.ts:
                continue  # an older price than the one we hold: latest value wins
            self.prices[p.instrument_id] = (p.price, p.ts)
            for pid in self._books_affected_by(p.instrument_id):
                touched[pid] = max(touched.get(pid, 0), p.ts)
        out: list[AlertEvent] = []
        for pid in sorted(touched):
            out += self.evaluate(pid, touched[pid])
        return out

    def on_fill(self, fill: Fill) -> list[AlertEvent]:
        if not self.known_book(fill.portfolio_id):
            raise Rejected("unknown_book", f"fill {fill.fill_id} names unknown book {fill.portfolio_id}")
        instrument = self.instruments.get(fill.instrument_id)
        if instrument is None:
            held = self.held_fills.setdefault(fill.instrument_id, [])
            if all(f.fill_id != fill.fill_id for f in held):
                held.append(fill)
            return []
        book = self.books.setdefault(fill.portfolio_id, Book(fill.portfolio_id))
        if not book.apply_fill(fill, instrument):
            return []
        self.holders.setdefault(fill.instrument_id, set()).add(fill.portfolio_id)
        return self.evaluate(fill.portfolio_id, fill.ts)

    def on_snapshot(self, snapshot: Snapshot) -> list[AlertEvent]:
        book = self.books.setdefault(snapshot.portfolio_id, Book(snapshot.portfolio_id))
        if book.as_of is not None and snapshot.as_of < book.as_of:
            raise Rejected("impossible_value", f"snapshot as_of is older than the one in force for "
                                               f"{snapshot.portfolio_id}")
        book.apply_snapshot(snapshot, self.instruments.__getitem__)
        self._index(book)
        return self.evaluate(snapshot.portfolio_id, snapshot.as_of)

    def on_policy(self, policy: Policy) -> list[AlertEvent]:
        """A new policy version takes effect at once; lifecycles of limits it keeps go on."""
        self.policies[policy.portfolio_id] = policy
        states = self.limit_states.setdefault(policy.portfolio_id, {})
        kept = {lim.limit_id for lim in policy.limits}
        for limit_id in list(states):
            if limit_id not in kept:
                del states[limit_id]
        return self.evaluate(policy.portfolio_id, self.clock.get(policy.portfolio_id, 0))

    def restore_book(self, book: Book) -> None:
        """A book recovered from the changelog after a restart or a rebalance."""
        self.books[book.portfolio_id] = book
        self._index(book)

    def known_book(self, portfolio_id: str) -> bool:
        return portfolio_id in self.books or portfolio_id in self.policies

    # -- evaluation --------------------------------------------------------------

    def evaluate(self, portfolio_id: str, ts: Micros) -> list[AlertEvent]:
        """Value the book, measure every limit of its policy, advance each limit's lifecycle."""
        ts = max(ts, self.clock.get(portfolio_id, 0))
        self.clock[portfolio_id] = ts
        book, policy = self.books.get(portfolio_id), self.policies.get(portfolio_id)
        if book is None or policy is None:
            return []
        valuation = value_book(book, policy.base_currency, self.instruments, self.prices)
        inputs = Inputs(valuation.price_ts, book.last_fill_id)
        states = self.limit_states.setdefault(portfolio_id, {})
        out: list[AlertEvent] = []
        worst: tuple[float, float] | None = None  # (usage, drift)
        for limit in policy.limits:
            actual, _why = measure(limit, valuation, self.instruments)
            if actual is None:
                continue  # unavailable: neither opens nor resolves
            drift = actual - limit.target
            usage = limit.band.usage(drift)
            if worst is None or usage > worst[0]:
                worst = (usage, drift)
            state = states.setdefault(limit.limit_id, LimitState())
            event = step(state, portfolio_id, limit, policy.evaluation, policy.version, actual, ts, inputs)
            if event is not None:
                out.append(event)
        self.status[portfolio_id] = BookStatus(
            nav=valuation.nav,
            largest_drift=worst[1] if worst else None,
            band_usage=worst[0] if worst else None,
            open_alerts=sum(1 for s in states.values() if s.alert_id is not None),
            unavailable=valuation.unavailable,
        )
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
