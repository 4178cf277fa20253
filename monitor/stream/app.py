"""The Faust worker: decode, hand to the engine, encode what it returns, produce.

Two paths, as DESIGN.md lays out:

* Book events (positions, fills, policies) are low-rate and must never be lost or
  double-counted: one Faust agent consumes them (keyed by portfolio_id, so Faust
  spreads books across workers) and writes each changed book to a changelog-backed
  table; a restarted or rebalanced worker recovers its books from those tables.
* Market data (instruments, risk models, prices) is a broadcast: every worker reads
  every partition with a plain aiokafka consumer in batches, keeping only the latest
  price per instrument; nothing of it needs to be durable.

What the engine remembers between evaluations (alert lifecycles, peak NAV) is a third
table, written whenever an alert event leaves the worker, so a restarted worker goes
on with the same open alerts instead of opening them again.

Both run on one event loop, so the engine is only ever touched by one coroutine at a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable

import faust
import structlog
from aiokafka import AIOKafkaConsumer

from monitor.engine import AlertEvent, Book, Engine, Fill, Instrument, Policy, Price, Rejected, Snapshot
from monitor.engine.engine import Watch
from monitor.engine.model import Micros, RiskModel
from monitor.ops import metrics
from monitor.ops.config import Settings
from monitor.stream.codec import dead_letter, decode_event, encode

log = structlog.get_logger("monitor.worker")

BOOK_TOPICS = ("positions", "fills", "policies")
MARKET_TOPICS = ("instruments", "risk-models", "prices")
MARKET_BATCH = 5_000


def now_us() -> Micros:
    return time.time_ns() // 1_000


class Worker:
    """One monitor worker: the engine, wrapped in a Faust app."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or Engine()
        self._started = time.monotonic()
        self._first_evaluation = False
        app = faust.App(
            settings.topic(settings.app_id),
            broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
            store="memory://",
            web_enabled=False,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            datadir=settings.data_dir,
            consumer_auto_offset_reset="earliest",
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.app = app
        self.book_events = app.topic(*(settings.topic(t) for t in BOOK_TOPICS), **raw)
        self.alerts_topic = app.topic(settings.topic("drift-alerts"), **raw)
        self.dlq_topic = app.topic(settings.topic("monitor-dlq"), **raw)
        # Changelog-backed state, keyed by portfolio_id: a book as Book.to_dict(), a policy as its JSON text.
        self.book_table = app.Table("books", key_type=str, partitions=settings.partitions)
        self.policy_table = app.Table("policies", key_type=str,
                                      partitions=settings.partitions)
        # Written from the price path too (outside any agent), so partitioned by key like the inputs.
        self.watch_table = app.Table("watches", key_type=str, partitions=settings.partitions, use_partitioner=True)
        for table in (self.book_table, self.policy_table, self.watch_table):
            table.on_recover(self._restore)
        self._persisted_peaks: dict[str, float | None] = {}
        app.agent(self.book_events, name="book-events")(self._book_agent)
        app.task(self._market_data)
        app.timer(1.0)(self._publish_book_metrics)

    # -- book events -------------------------------------------------------------------

    async def _book_agent(self, stream: Any) -> None:
        async for event in stream.events():
            await self.on_book_message(event.message)

    async def on_book_message(self, msg: Any) -> None:
        topic = self.settings.logical(msg.topic)
        metrics.EVENTS_CONSUMED.labels(topic).inc()
        try:
            event = decode_event(topic, msg.value, f"{msg.topic}[{msg.partition}]@{msg.offset}")
            pid = event.portfolio_id
            if msg.key is not None and msg.key.decode("utf-8", "replace") != pid:
                raise Rejected("impossible_value", f"message key {msg.key!r} is not its portfolio_id {pid!r}")
            alerts = self._apply_book_event(event)
        except Rejected as rejected:
            await self._dead_letter(topic, msg.key, msg.value, msg.partition, msg.offset,
                                    int(msg.timestamp * 1000) if msg.timestamp else None, rejected)
            return
        if isinstance(event, Policy):
            self.policy_table[pid] = msg.value.decode("utf-8")
        if pid in self.engine.books:
            self.book_table[pid] = self.engine.books[pid].to_dict()
        if isinstance(event, Fill):
            metrics.EVENT_LAG.labels(topic).observe(max(0.0, (now_us() - event.ts) / 1e6))
        await self._emit(alerts)

    def _apply_book_event(self, event: Fill | Snapshot | Policy) -> list[AlertEvent]:
        if isinstance(event, Fill):
            return self.engine.on_fill(event)
        if isinstance(event, Snapshot):
            return self.engine.on_snapshot(event)
        return self.engine.on_policy(event)

    async def _restore(self) -> None:
        """After table recovery: the engine's books become exactly the tables' content."""
        engine = self.engine
        engine.books.clear()
        engine.policies.clear()
        engine.watches.clear()
        for pid in {*self.book_table.keys(), *self.policy_table.keys(), *self.watch_table.keys()}:
            text = self.policy_table.get(pid)
            policy = decode_event("policies", text.encode("utf-8"), f"changelog:{pid}") if text else None
            assert policy is None or isinstance(policy, Policy)
            book, watch = self.book_table.get(pid), self.watch_table.get(pid)
            engine.restore(Book.from_dict(book) if book else None, policy,
                           Watch.from_dict(watch) if watch else None, pid)
        alerts: list[AlertEvent] = []
        for pid in sorted(engine.books):
            alerts += engine.evaluate(pid, engine.clock.get(pid, 0))
        log.info("books restored", books=len(engine.books), policies=len(engine.policies))
        await self._emit(alerts)

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
                batch = await consumer.getmany(timeout_ms=100, max_records=MARKET_BATCH)
                if batch:
                    records = [r for part in batch.values() for r in part]
                    await self.on_market_records(records)
        finally:
            await consumer.stop()

    async def on_market_records(self, records: Iterable[Any]) -> None:
        """One batch: reference data first (prices in the same batch may need it), then prices."""
        prices: list[Price] = []
        alerts: list[AlertEvent] = []
        now = now_us()
        by_topic: dict[str, list[Any]] = {t: [] for t in MARKET_TOPICS}
        for r in records:
            by_topic[self.settings.logical(r.topic)].append(r)
        for topic, group in by_topic.items():
            if group:
                metrics.EVENTS_CONSUMED.labels(topic).inc(len(group))
            for r in group:
                try:
                    event = decode_event(topic, r.value, f"{r.topic}[{r.partition}]@{r.offset}")
                except Rejected as rejected:
                    await self._dead_letter(topic, r.key, r.value, r.partition, r.offset, r.timestamp, rejected)
                    continue
                if isinstance(event, Instrument):
                    alerts += self.engine.on_instrument(event)
                elif isinstance(event, RiskModel):
                    alerts += self.engine.on_risk_model(event)
                else:
                    prices.append(event)
                    metrics.EVENT_LAG.labels(topic).observe(max(0.0, (now - event.ts) / 1e6))
        if prices:
            with metrics.EVALUATION_SECONDS.time():
                alerts += self.engine.on_prices(prices)
        await self._emit(alerts)

    # -- output --------------------------------------------------------------------------

    async def _emit(self, alerts: list[AlertEvent]) -> None:
        if not self._first_evaluation and self.engine.status:
            self._first_evaluation = True
            log.info("first evaluation", seconds_since_start=round(time.monotonic() - self._started, 3))
        now = now_us()
        for alert in alerts:
            await self.alerts_topic.send(key=alert.portfolio_id.encode(), value=encode(alert.to_message(now)))
            metrics.ALERTS_EMITTED.labels(alert.severity, alert.state).inc()
            log.info("drift alert", alert_id=alert.alert_id, summary=alert.summary())
        for pid in sorted({a.portfolio_id for a in alerts}):
            self._persist_watch(pid)

    def _persist_watch(self, pid: str) -> None:
        watch = self.engine.watches.get(pid)
        if watch is not None:
            self.watch_table[pid] = watch.to_dict()
            self._persisted_peaks[pid] = watch.peak_nav

    async def _dead_letter(self, topic: str, key: bytes | None, value: bytes | None, partition: int,
                           offset: int, timestamp_ms: int | None, rejected: Rejected) -> None:
        metrics.DLQ_MESSAGES.labels(topic, rejected.code).inc()
        log.warning("dead-lettered", topic=topic, partition=partition, offset=offset,
                    reason_code=rejected.code, reason=rejected.reason)
        record = dead_letter(value, key, self.settings.topic(topic), partition, offset, timestamp_ms,
                             rejected, now_us())
        await self.dlq_topic.send(key=key, value=record)

    async def _publish_book_metrics(self) -> None:
        """Once a second: book gauges, and the peak NAVs that moved (drawdown survives a restart)."""
        for pid, status in list(self.engine.status.items()):
            metrics.publish_book(pid, status)
        metrics.HELD_FILLS.set(self.engine.held_fills())
        for pid, watch in list(self.engine.watches.items()):
            if self._persisted_peaks.get(pid) != watch.peak_nav:
                self._persist_watch(pid)


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
