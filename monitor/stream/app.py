"""The Faust worker: decode, hand to the engine, encode what it returns, produce.

Two consumers, as DESIGN.md lays out:

* Book events (positions, fills, policies, approvals) are low-rate and must never be lost or
  double-counted: a Faust agent consumes them (keyed by portfolio_id, so Faust spreads
  books across workers). Each changed book is written to a changelog-backed table, and
  a restarted or rebalanced worker recovers its books from those tables.
* Market data (instruments, risk models, prices) is a broadcast: every worker reads
  every partition with a plain aiokafka consumer in batches; nothing of it needs to
  be durable.

Events with an event time (fills, snapshots, prices) go through a `Gate` (gate.py)
that hands them to the engine in event-time order below a watermark, so the live
worker emits exactly what `monitor replay` emits for the same log. A fill or snapshot
waiting there is also in an `inbox` table, so nothing read is lost if the worker stops
before applying it. Events without an event time (policies, approvals, instruments, risk
models) apply on arrival; while any of them on the broker is still unread, the gate releases
nothing, so a worker never evaluates without the reference data the log put before its prices.

What the engine remembers between evaluations (alert lifecycles, peak NAV, the book's
rebalance signals) is a third table, written whenever an alert or signal event leaves the worker, so a restarted worker goes
on with the same open alerts instead of opening them again.

Everything runs on one event loop; `_lock` keeps "apply to the engine, then emit" in
one piece, so alerts and signals leave in the order the engine produced them.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from typing import Any

import faust
import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer

from monitor.engine import AlertEvent, Book, Engine, Fill, Instrument, Policy, Price, Rejected, Snapshot
from monitor.engine.engine import Event, Watch
from monitor.engine.signals import Decision
from monitor.engine.model import Micros
from monitor.ops import metrics
from monitor.ops.config import Settings
from monitor.stream.codec import dead_letter, decode_event, decode_price, encode
from monitor.stream.gate import AHEAD, Gate, laggards, market_mark

log = structlog.get_logger("monitor.worker")

BOOK_TOPICS = ("positions", "fills", "policies", "approvals")
MARKET_TOPICS = ("instruments", "risk-models", "prices")
# Records per getmany. Smaller batches hand the loop back to aiokafka's fetcher and the book agent
# sooner: against 5,000, a 300k-price drain went from ~34,000 to ~37,000-39,000 events/s and the
# worker's p99 at 20,000 prices/s from 50-84 ms to 29-50 ms (three interleaved runs each).
MARKET_BATCH = 1_000
MAX_HELD = 200_000  # stop reading prices while this many events wait in the gate
_PRICE_LAG = metrics.EVENT_LAG.labels("prices")


def now_us() -> Micros:
    return time.time_ns() // 1_000


def _freeze_heap(why: str) -> None:
    """Take every object alive now out of the cyclic collector's scans (gc.freeze).

    Reference data, books, and the framework's objects live as long as the worker. With them
    scanned, each full collection stopped the worker for 30-60 ms, which was most of the p99
    of event-to-alert latency. Called once at the first evaluation and once when caught up.
    """
    gc.collect()
    gc.freeze()
    log.info("heap frozen", why=why, objects=gc.get_freeze_count())


async def _let_clients_run() -> None:
    """Yield to the event loop a few times, so that aiokafka's background tasks act now rather
    than after the evaluation that follows: the fetcher, woken by a batch just taken, sends the
    next fetch request (its answer arrives while the worker computes); the producer's sender
    ships the events just emitted."""
    for _ in range(3):
        await asyncio.sleep(0)


def _timestamp_ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds else None


@dataclass(frozen=True, slots=True)
class StagedBookEvent:
    """A checked fill or snapshot waiting in the gate, with what a dead letter would need."""

    event: Fill | Snapshot
    topic: str  # logical
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int | None

    @property
    def ts(self) -> Micros:
        return self.event.ts if isinstance(self.event, Fill) else self.event.as_of

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "key": self.key.decode("utf-8") if self.key is not None else None,
                "value": self.value.decode("utf-8"), "partition": self.partition, "offset": self.offset,
                "timestamp_ms": self.timestamp_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StagedBookEvent":
        value = d["value"].encode("utf-8")
        event = decode_event(d["topic"], value, f"inbox:{d['topic']}[{d['partition']}]@{d['offset']}")
        assert isinstance(event, (Fill, Snapshot))
        key = d["key"].encode("utf-8") if d["key"] is not None else None
        return cls(event, d["topic"], key, value, d["partition"], d["offset"], d["timestamp_ms"])


class Worker:
    """One monitor worker: the engine, wrapped in a Faust app."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or Engine(settings.tick)
        self._started = time.monotonic()
        self._first_evaluation = False
        self._caught_up = False
        app = faust.App(
            settings.topic(settings.app_id),
            broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
            store="memory://",
            web_enabled=False,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            datadir=settings.data_dir,
            consumer_auto_offset_reset="earliest",
            # A killed worker's partitions move on after this long without heartbeats (Faust's
            # default is 60 s: a restarted worker would wait that long to get its books back).
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 3),
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.app = app
        self.book_events = app.topic(*(settings.topic(t) for t in BOOK_TOPICS), **raw)
        self.alerts_topic = app.topic(settings.topic("drift-alerts"), **raw)
        self.signals_topic = app.topic(settings.topic("rebalance-signals"), **raw)
        self.dlq_topic = app.topic(settings.topic("monitor-dlq"), **raw)
        # Changelog-backed state, keyed by portfolio_id (written through `_persist`): a book as
        # Book.to_dict(), a policy as its JSON text, a Watch as Watch.to_dict(), and the fills and
        # snapshots read but not yet applied (waiting in the gate) as StagedBookEvent.to_dict().
        self.book_table = app.Table("books", key_type=str, partitions=settings.partitions)
        self.policy_table = app.Table("policies", key_type=str, partitions=settings.partitions)
        self.watch_table = app.Table("watches", key_type=str, partitions=settings.partitions)
        self.inbox_table = app.Table("inbox", key_type=str, partitions=settings.partitions)
        for table in (self.book_table, self.policy_table, self.watch_table, self.inbox_table):
            table.on_recover(self._restore)
        self._persisted_peaks: dict[str, float | None] = {}
        self._published_unreferenced = 0  # engine.unreferenced_prices as last added to its counter

        self.gate: Gate[Price | StagedBookEvent] = Gate()
        self._lock = asyncio.Lock()
        self._recovered = False
        self._book_topic_names = {settings.topic(t) for t in BOOK_TOPICS}
        self._book_read: dict[Any, tuple[int, Micros]] = {}  # book partition -> (last offset, newest ts) read
        self._prices_topic = settings.topic("prices")
        self._price_read: dict[int, Micros] = {}  # price partition -> newest price ts read
        self._market_mark: Micros = 0
        self._market_progress: Micros = 0
        self._prices_unread: set[int] = set()  # price partitions not read to their end

        app.agent(self.book_events, name="book-events")(self._book_agent)
        app.task(self._market_data)
        app.timer(1.0)(self._publish_book_metrics)


    # -- book events -------------------------------------------------------------------

    async def _book_agent(self, stream: Any) -> None:
        async for event in stream.events():
            await self.on_book_event(event.message)

    async def on_book_event(self, msg: Any) -> None:
        """Decode and check; a policy or an approval applies at once, a fill or snapshot waits in
        the gate (and in the inbox table, so that it survives a restart before it is applied)."""
        topic = self.settings.logical(msg.topic)
        metrics.EVENTS_CONSUMED.labels(topic).inc()
        ts: Micros | None = None
        try:
            event = decode_event(topic, msg.value, f"{msg.topic}[{msg.partition}]@{msg.offset}")
            if msg.key is not None and msg.key.decode("utf-8", "replace") != event.portfolio_id:
                raise Rejected("impossible_value",
                               f"message key {msg.key!r} is not its portfolio_id {event.portfolio_id!r}")
            if isinstance(event, Decision):
                async with self._lock:
                    await self._emit(self.engine.on_decision(event))
        except Rejected as rejected:
            await self._dead_letter(topic, msg.key, msg.value, msg.partition, msg.offset,
                                    _timestamp_ms(msg.timestamp), rejected)
        else:
            if isinstance(event, Policy):
                async with self._lock:
                    await self._persist(self.policy_table, event.portfolio_id, msg.value.decode("utf-8"))
                    await self._emit(self.engine.on_policy(event))
            elif not isinstance(event, Decision):
                staged = StagedBookEvent(event, topic, msg.key, msg.value, msg.partition, msg.offset,
                                         _timestamp_ms(msg.timestamp))
                pid = event.portfolio_id
                await self._persist(self.inbox_table, pid, [*self.inbox_table.get(pid, []), staged.to_dict()])
                ts = staged.ts
                self.gate.hold(ts, staged)
                if isinstance(event, Fill):
                    metrics.EVENT_LAG.labels(topic).observe(max(0.0, (now_us() - ts) / 1e6))
        newest = max(ts or 0, self._book_read.get(msg.tp, (0, 0))[1])
        self._book_read[msg.tp] = (msg.offset, newest)
        await self._drain()

    async def _apply_staged(self, staged: StagedBookEvent) -> list[Event]:
        """Into the books (or the dead-letter topic), and out of the inbox."""
        event, pid = staged.event, staged.event.portfolio_id
        alerts: list[Event] = []
        try:
            alerts = self.engine.on_fill(event) if isinstance(event, Fill) else self.engine.on_snapshot(event)
            await self._persist(self.book_table, pid, self.engine.books[pid].to_dict())
        except Rejected as rejected:
            await self._dead_letter(staged.topic, staged.key, staged.value, staged.partition, staged.offset,
                                    staged.timestamp_ms, rejected)
        where = (staged.topic, staged.partition, staged.offset)
        await self._persist(self.inbox_table, pid, [d for d in self.inbox_table.get(pid, [])
                                                    if (d["topic"], d["partition"], d["offset"]) != where])
        return alerts

    async def _restore(self) -> None:
        """After table recovery: the engine's books become exactly the tables' content."""
        async with self._lock:
            engine = self.engine
            engine.books.clear()
            engine.policies.clear()
            engine.watches.clear()
            # What waited in the gate comes back from the inbox of the books we (still) own.
            self.gate.drop(lambda item: isinstance(item, StagedBookEvent))
            self._book_read.clear()
            for staged_list in self.inbox_table.values():
                for d in staged_list:
                    staged = StagedBookEvent.from_dict(d)
                    self.gate.hold(staged.ts, staged)
            for pid in {*self.book_table.keys(), *self.policy_table.keys(), *self.watch_table.keys()}:
                text = self.policy_table.get(pid)
                policy = decode_event("policies", text.encode("utf-8"), f"changelog:{pid}") if text else None
                assert policy is None or isinstance(policy, Policy)
                book, watch = self.book_table.get(pid), self.watch_table.get(pid)
                engine.restore(Book.from_dict(book) if book else None, policy,
                               Watch.from_dict(watch) if watch else None, pid)
            log.info("books restored", books=len(engine.books), policies=len(engine.policies))
            self._recovered = True

    # -- the watermark -----------------------------------------------------------------

    def _book_mark(self) -> Micros:
        """The ts below which every book event of this worker's partitions has been read."""
        if not self._recovered:
            return 0
        consumer = self.app.consumer
        mark = AHEAD
        for tp in consumer.assignment():
            if tp.topic in self._book_topic_names and not self._book_caught_up(consumer, tp):
                mark = min(mark, self._book_read.get(tp, (0, 0))[1])
        return mark

    def _book_caught_up(self, consumer: Any, tp: Any) -> bool:
        """Whether every message of a book partition up to its highwater has been read."""
        highwater = consumer.highwater(tp)
        if highwater is None:
            return False
        if highwater == 0:
            return True
        read = self._book_read.get(tp)
        if read is not None:
            return read[0] + 1 >= highwater
        # Nothing read in this run: Faust's read offset is the committed offset after its
        # seek, until the first message is read (faust.transport.consumer.perform_seek).
        committed = consumer._read_offset.get(tp)
        return committed is not None and committed >= highwater

    async def _read_market_mark(self, consumer: AIOKafkaConsumer) -> tuple[Micros, Micros]:
        """(mark, progress) of the market stream, from what the consumer has read (`market_mark`)."""
        prices: dict[int, tuple[Micros, bool]] = {}
        reference_read = True
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            read_to_end = highwater is not None and await consumer.position(tp) >= highwater
            if tp.topic == self._prices_topic:
                prices[tp.partition] = (self._price_read.get(tp.partition, 0), read_to_end)
            else:
                reference_read = reference_read and read_to_end
        mark, progress, self._prices_unread = market_mark(prices, reference_read)
        return mark, progress

    async def _drain(self) -> None:
        """Apply what the gate releases, in event-time order; emit the alerts in that order."""
        async with self._lock:
            book_mark = self._book_mark()
            watermark = min(self._market_mark, book_mark)
            tick = self.engine.tick
            prices: list[Price] = []
            for item in self.gate.release(watermark):
                if isinstance(item, Price):
                    if prices and tick > 0 and item.ts // tick != prices[-1].ts // tick:
                        # The gate releases in event-time order: the window of `prices` is complete.
                        # Evaluate and emit it now rather than after the rest of the batch.
                        await self._emit(self._apply_prices(prices, until=item.ts))
                        prices = []
                    prices.append(item)
                    continue
                await self._emit(self._apply_prices(prices))
                prices = []
                await self._emit(await self._apply_staged(item))
            alerts = self._apply_prices(prices, until=min(self._market_progress, book_mark))
            if watermark == AHEAD and not len(self.gate):  # both streams read to the end
                self.engine.end_warmup()
                alerts += self.engine.flush()
                if not self._caught_up:
                    self._caught_up = True
                    _freeze_heap("inputs read to the end")
            await self._emit(alerts)
            metrics.GATE_HELD.set(len(self.gate))

    # -- market data -------------------------------------------------------------------

    async def _market_data(self) -> None:
        topics = [self.settings.topic(t) for t in MARKET_TOPICS]
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,  # a broadcast: every worker reads every partition
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        log.info("market data consumer started", topics=topics,
                 seconds_since_start=round(time.monotonic() - self._started, 3))
        try:
            while True:
                if self._read_prices_from(consumer):
                    batch = await consumer.getmany(timeout_ms=20, max_records=MARKET_BATCH)
                else:  # the book stream is behind: let it catch up before reading more prices
                    batch = {}
                    await asyncio.sleep(0.01)
                if batch:
                    await _let_clients_run()
                    await self.on_market_records(batch)
                self._market_mark, self._market_progress = await self._read_market_mark(consumer)
                await self._drain()
        finally:
            await consumer.stop()

    def _read_prices_from(self, consumer: AIOKafkaConsumer) -> bool:
        """Resume every price partition while the gate has room. Once it holds MAX_HELD, read only
        the partitions that hold the watermark back (`laggards`), pausing the others; False when
        none is to be read (the book stream is behind)."""
        prices = [tp for tp in consumer.assignment() if tp.topic == self._prices_topic]
        if len(self.gate) < MAX_HELD:
            consumer.resume(*prices)
            return True
        read = laggards(self._price_read, self._prices_unread, self._book_mark())
        consumer.pause(*(tp for tp in prices if tp.partition not in read))
        consumer.resume(*(tp for tp in prices if tp.partition in read))
        return bool(read)

    async def on_market_records(self, batch: dict[Any, list[Any]]) -> None:
        """One batch (records by partition): reference data goes to the engine at once, then prices
        to the gate, each partition's as one run."""
        now = now_us()
        by_topic: dict[str, list[tuple[Any, list[Any]]]] = {t: [] for t in MARKET_TOPICS}
        for tp, records in batch.items():
            topic = self.settings.logical(tp.topic)
            by_topic[topic].append((tp, records))
            metrics.EVENTS_CONSUMED.labels(topic).inc(len(records))
        for topic in ("instruments", "risk-models"):
            for r in (r for _, records in by_topic[topic] for r in records):
                try:
                    event = decode_event(topic, r.value, f"{r.topic}[{r.partition}]@{r.offset}")
                except Rejected as rejected:
                    await self._dead_letter(topic, r.key, r.value, r.partition, r.offset, r.timestamp, rejected)
                    continue
                async with self._lock:
                    alerts = (self.engine.on_instrument(event) if isinstance(event, Instrument)
                              else self.engine.on_risk_model(event))
                    await self._emit(alerts)
        for tp, records in by_topic["prices"]:
            await self._hold_prices(tp.partition, records, now)

    async def _hold_prices(self, partition: int, records: list[Any], now: Micros) -> None:
        """A partition's prices into the gate; the newest ts read moves the market watermark."""
        times: list[Micros] = []
        prices: list[Price] = []
        for r in records:
            try:
                price = decode_price(r.value)
            except Rejected as rejected:
                await self._dead_letter("prices", r.key, r.value, r.partition, r.offset, r.timestamp, rejected)
                continue
            times.append(price.ts)
            prices.append(price)
        if not prices:
            return
        self.gate.hold_run(times, prices)
        self._price_read[partition] = max(self._price_read.get(partition, 0), max(times))
        lags = (now - np.array(times, dtype=float)) / 1e6
        metrics.observe_many(_PRICE_LAG, np.maximum(lags, 0.0))

    def _apply_prices(self, prices: list[Price], until: Micros | None = None) -> list[Event]:
        """Prices into the engine; then, if every event before `until` has been applied, the open
        window evaluated (Engine.close_window). Timed, when anything was done."""
        started = time.perf_counter()
        out = self.engine.on_prices(prices) if prices else []
        if until is not None:
            out += self.engine.close_window(until)
        if prices or out:
            metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        return out

    # -- state -------------------------------------------------------------------------

    @staticmethod
    async def _persist(table: Any, key: str, value: Any) -> None:
        """Set a table key and write its changelog record, awaiting the send.

        `table[key] = value` would hand the record to Faust's producer buffer, which stops
        draining under the write rate of the gate (faust-streaming 0.15: the buffer stays
        over its limit and the conductor stops feeding the agent). The record is the same:
        keyed by portfolio_id, partitioned like the input topics by the default partitioner.
        """
        table.data[key] = value
        await table.changelog_topic.send(key=key, value=value, force=True)

    # -- output --------------------------------------------------------------------------

    async def _emit(self, events: list[Event]) -> None:
        if not self._first_evaluation and self.engine.status:
            self._first_evaluation = True
            _freeze_heap("first evaluation")
            log.info("first evaluation", seconds_since_start=round(time.monotonic() - self._started, 3))
        now = now_us()
        for event in events:
            # force: not held back until the Faust event being processed is acked (Faust's
            # "attachments"), so events leave in the order the engine produced them.
            key, value = event.portfolio_id.encode(), encode(event.to_message(now))
            if isinstance(event, AlertEvent):
                await self.alerts_topic.send(key=key, value=value, force=True)
                metrics.alert_emitted(event)
                log.info("drift alert", alert_id=event.alert_id, summary=event.summary())
            else:
                await self.signals_topic.send(key=key, value=value, force=True)
                metrics.SIGNALS_EMITTED.labels(event.state).inc()
                log.info("rebalance signal", signal_id=event.signal_id, summary=event.summary())
        for pid in sorted({e.portfolio_id for e in events}):
            await self._persist_watch(pid)
        if events:
            await _let_clients_run()

    async def _persist_watch(self, pid: str) -> None:
        watch = self.engine.watches.get(pid)
        if watch is not None:
            self._persisted_peaks[pid] = watch.peak_nav
            await self._persist(self.watch_table, pid, watch.to_dict())

    async def _dead_letter(self, topic: str, key: bytes | None, value: bytes | None, partition: int,
                           offset: int, timestamp_ms: int | None, rejected: Rejected) -> None:
        metrics.DLQ_MESSAGES.labels(topic, rejected.code).inc()
        log.warning("dead-lettered", topic=topic, partition=partition, offset=offset,
                    reason_code=rejected.code, reason=rejected.reason)
        record = dead_letter(value, key, self.settings.topic(topic), partition, offset, timestamp_ms,
                             rejected, now_us())
        await self.dlq_topic.send(key=key, value=record, force=True)

    async def _publish_book_metrics(self) -> None:
        """Once a second: book gauges, and the peak NAVs that moved (drawdown survives a restart).

        In a rising market every book's peak moves: a watch costs ~0.2 ms to write out and Faust's
        JSON ~0.1 ms more, so the loop yields after each, letting prices be evaluated in between
        instead of behind a stall of every book at once."""
        for pid, status in list(self.engine.status.items()):
            metrics.publish_book(pid, status)
        metrics.HELD_FILLS.set(self.engine.held_fills())
        metrics.UNREFERENCED_PRICES.inc(self.engine.unreferenced_prices - self._published_unreferenced)
        self._published_unreferenced = self.engine.unreferenced_prices
        for pid, watch in list(self.engine.watches.items()):
            if self._persisted_peaks.get(pid) != watch.peak_nav:
                await self._persist_watch(pid)
                await asyncio.sleep(0)


def run(settings: Settings) -> None:
    """Create the topics, serve /metrics, and run the Faust worker until SIGINT/SIGTERM."""
    from monitor.stream.topics import ensure_topics

    loop = asyncio.new_event_loop()
    loop.run_until_complete(ensure_topics(settings))
    loop.close()
    asyncio.set_event_loop(asyncio.new_event_loop())
    metrics.serve(settings.metrics_host, settings.metrics_port)
    log.info("metrics served", url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    worker = Worker(settings)
    faust.Worker(worker.app, loglevel=settings.log_level.upper(), quiet=True,
                 override_logging=False).execute_from_commandline()  # keep our structlog setup
