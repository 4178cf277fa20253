"""The Faust worker: app wiring and its two consumer loops. Decode, hand to the engine, emit.

Two consumers, as the README lays out:

* Book events (positions, fills, policies, approvals) are low-rate and must never be lost or
  double-counted: Faust's consumer fetches them (keyed by portfolio_id, so Faust spreads books
  across workers) and hands them to the book loop a fetch at a time (delivery.py). Each is
  recorded in a changelog-backed table before its offset can be committed (tables.py), and a
  restarted or rebalanced worker rebuilds its books from them.
* Market data (instruments, risk models, prices) is a broadcast: every worker reads every
  partition with a plain aiokafka consumer in batches; nothing of it needs to be durable.

Events with an event time (fills, snapshots, prices) go through the gate (watermark.py), which
hands them to the engine in event-time order, so the live worker emits exactly what
`monitor replay` emits for the same log. Events without one (policies, approvals, instruments,
risk models) apply on arrival.

Everything runs on one event loop; `_lock` keeps "apply to the engine, then emit and save" in
one piece, so alerts and signals leave in the order the engine produced them. A loop that fails
stops the process with a non-zero exit (`_fatal`): a supervisor restarts it, and the restarted
worker recovers everything from Kafka. A single message that cannot be handled is dead-lettered
and the worker goes on.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import sys
import time
from typing import Any, Awaitable, Callable, NamedTuple

import faust
from faust.types import TP
import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from monitor.engine import Engine, Fill, Instrument, Policy, Price, Rejected, Snapshot
from monitor.engine.engine import Event, MarketState
from monitor.engine.signals import Decision
from monitor.engine.model import Micros, format_ts
from monitor.ops import metrics
from monitor.ops.config import Settings
from monitor.stream import checkpoint
from monitor.stream.api import QueryServer
from monitor.stream.codec import decode_event, decode_price
from monitor.stream.commits import GapReader
from monitor.stream.delivery import deliver_in_batches
from monitor.stream.emit import Emitter, now_us
from monitor.stream.outbox import BATCH_BYTES, Outbox
from monitor.stream.stall import fetch_state, recovery_state, waiting_tasks
from monitor.stream.tables import MAX_RECORD_BYTES, BookTables, Origin, StagedBookEvent, inputs_topic, read_inputs
from monitor.stream.watermark import AHEAD, Gate, MarketMark, Progress, Tail, start_offsets

log = structlog.get_logger("monitor.worker")

BOOK_TOPICS = ("positions", "fills", "policies", "approvals")
MARKET_TOPICS = ("instruments", "risk-models", "prices")
# Records per getmany. Smaller batches hand the loop back to aiokafka's fetcher and the book loop
# sooner (BENCHMARKS.md: 1,000 against 5,000).
MARKET_BATCH = 1_000
MAX_HELD = 200_000  # stop reading prices while this many events wait in the gate
# At most this many book messages handled per drain of the gate (more when one fetch holds more): a
# batch is what was fetched while the last one was handled (one drain per message cost more than
# the message: BENCHMARKS.md).
BOOK_BATCH = 500
EXIT_FATAL = 70  # EX_SOFTWARE: a loop of the worker failed; restart it
EXIT_STALLED = 75  # EX_TEMPFAIL: the book stream stopped delivering; restart it
RESEEK_AFTER_S = 5.0  # book partitions behind and nothing delivered this long: sought back (`_watch_streams`)
WAKE_RECOVERY_AFTER_S = 2.0  # Faust's recovery ended but not past its wait this long: woken (`_wake_recovery`)
# The broker is asked where the partitions end at most this often (`Tail`): what was read in between
# waits up to this long more; a question not answered in CONFIRM_TIMEOUT_S (an outage) is given up.
CONFIRM_EVERY_S = 0.005
CONFIRM_TIMEOUT_S = 2.0
_PRICE_LAG = metrics.EVENT_LAG.labels("prices")
# The cyclic collector's thresholds (gc.set_threshold). With Python's (700, 10, 10) a full-size day
# (`monitor bench-fills`) spent 11.5 s of the worker's 146 CPU s collecting, 7.1 s of it in full
# collections (37 since the start, a stop of every loop each). With 50,000 the day took 0.7 s (3 full
# collections since the start, none in the day) at the same peak RSS: reference counting frees almost
# all the worker's garbage, and what only the collector frees waits for it about a second at full rate.
GC_THRESHOLDS = (50_000, 10, 10)


def _fatal(loop: str, exc: BaseException, code: int = EXIT_FATAL) -> None:
    """A loop cannot go on: say so and exit non-zero, at once. Nothing is lost: every input is
    recorded before its offset is committed, so a restarted worker takes up where this one was
    (the same guarantee as after kill -9). Restarting the loop in place would crash it again on
    the same message, or leave a worker that looks alive and applies nothing."""
    metrics.LOOP_FAILURES.labels(loop).inc()
    log.critical("worker loop failed: exiting", loop=loop, error=repr(exc), exc_info=exc)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _loud(loop: str, body: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """`body`, which exits the process if it raises (see `_fatal`)."""

    @functools.wraps(body)  # Faust reads the signature to know what to pass
    async def run(*args: Any) -> None:
        try:
            await body(*args)
        except asyncio.CancelledError:
            raise  # the worker is stopping
        except BaseException as exc:  # noqa: BLE001 - anything that ends a loop ends the worker
            _fatal(loop, exc)

    return run


def _freeze_heap(why: str) -> None:
    """Take every object alive now out of the cyclic collector's scans (gc.freeze).

    Reference data, books, and the framework's objects live as long as the worker. With them
    scanned, each full collection stopped the worker for 30-60 ms, which was most of the p99
    of event-to-alert latency (and see GC_THRESHOLDS). Called at the first evaluation and when
    caught up (at start and after each rebalance).
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


async def _seek(consumer: Any, offsets: dict[TP, int]) -> None:
    """Move Faust's book consumer to these offsets. Faust's `seek` runs aiokafka's on this thread,
    against the consumer that Faust's consumer thread is fetching with: it once took a partition's
    records from under the fetcher (KeyError in `fetched_records`, the worker dead). `seek_wait`
    seeks in the consumer's own thread; it raises IllegalStateError for a partition no longer
    assigned, as aiokafka's seek does."""
    if offsets:
        await consumer.seek_wait(offsets)


class _Prefetch(NamedTuple):
    """What a recovery reads besides Faust's tables, started at its assignment (`Worker._reads`)."""

    rebalance: int  # the rebalance it belongs to (`Worker._rebalances`)
    owned: list[tuple[str, int]]  # the book partitions it reads
    reads: asyncio.Future[tuple[dict[str, bytes], dict[Any, int]]]


class _Fetched(NamedTuple):
    """A book message read by `GapReader`, shaped as the Faust message the stream would have given."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float  # seconds, as Faust's
    tp: Any


LATE_INPUT_TOPICS = {"price": "prices", "fill": "fills", "snapshot": "positions"}  # engine.late_inputs' kinds


def _timestamp_ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds else None


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
            web_enabled=False,  # the HTTP API is ours (api.py); Faust only announces its URL to the group
            canonical_url=settings.public_api_url,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            datadir=settings.data_dir,
            consumer_auto_offset_reset="earliest",
            # A fetch handed to the book loop holds at most a batch (delivery.py): without a cap a
            # fetch takes all aiokafka has buffered, thousands of messages a partition in a catch-up.
            broker_max_poll_records=BOOK_BATCH,
            producer_max_request_size=MAX_RECORD_BYTES,
            # The outbox hands a batch's records over at once: a 2 ms linger lets a produce request
            # carry many of them (the sender's requests were ~10% of a fill burst's profile), at up to
            # 2 ms on an alert's latency. Not measured on its own (BENCHMARKS.md, 2026-11-30 17:58).
            producer_linger=0.002,
            producer_max_batch_size=BATCH_BYTES,
            # A killed worker's partitions move on after this long without heartbeats (Faust's
            # default is 60 s: a restarted worker would wait that long to get its books back).
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 3),
            # Static membership: a worker restarted under the same name gets its partitions back at
            # once, instead of after the dead member's session has expired.
            consumer_group_instance_id=settings.instance_id,
            **settings.kafka_security.faust_options(),
        )
        self.app = app
        self.book_events = app.topic(*(settings.topic(t) for t in BOOK_TOPICS),
                                     key_serializer="raw", value_serializer="raw")
        # Subscribed and read by `_book_loop` a fetch at a time, with no offset committed past a
        # message skipped in a rebalance (delivery.py, commits.py).
        self.book_batches = deliver_in_batches(app, self.book_events)
        # Every record written: handed over at once, delivery awaited by `settle` (outbox.py). Its
        # batches go to Faust's aiokafka producer, which Faust does not expose otherwise.
        self.outbox = Outbox(lambda: app.producer._ensure_producer())
        self._gaps = GapReader(settings)  # book messages the stream left out, read from the broker (commits.py)
        self.emit = Emitter(app, settings, self.outbox)
        self.tables = BookTables(app, settings, self.outbox)
        # Faust recovers policies and watches, then calls each table's callbacks: one callback, which
        # also reads the book inputs (tables.py), is enough.
        # Faust runs the callbacks in tasks whose exceptions it never reads: a failed recovery would
        # leave a worker that reads its books and judges none of them, so it exits instead.
        self.tables.watches.on_recover(_loud("recovery", self._restore))
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        self._assigned_at = time.monotonic()  # the last assignment's: its recovery's start
        self._recovering = False  # from a rebalance's start to its recovery: no book is judged
        self._rebalances = 0  # rebalances begun: a recovery overtaken by the next one is abandoned
        self._persisted: dict[str, tuple[float | None, Micros]] = {}  # pid -> (peak NAV, clock) as last saved
        # Books whose events are handed over and not known delivered: their watches wait (`_record`).
        self._unrecorded: set[str] = set()
        self.checkpoints = app.topic(checkpoint.topic_name(settings), key_serializer="raw", value_serializer="raw")
        # Set by each recovery (start, rebalance, failover): the market is to be rewound to a checkpoint
        # none of the books is behind (`_rewind_market`), and nothing is released until it is.
        self._rewind = asyncio.Event()
        self._resume: dict[str, Micros] = {}  # per owned book: the event time it is judged again from
        self._checkpoints: asyncio.Future[list[checkpoint.Checkpoint]]  # read by each recovery
        self._prefetched: _Prefetch | None = None  # started at an assignment, for its recovery
        self._settled: Micros = 0  # every price stamped before it has been read and applied
        # Per price partition, the offset below which every record has been held (gate or engine); as
        # it stood when `_settled` last moved (a checkpoint's `held`); the restored checkpoint's.
        self._held_through: dict[int, int] = {}
        self._held_at_settle: dict[int, int] = {}
        self._restored_from: checkpoint.Checkpoint | None = None
        self._checkpoints_written = 0
        self._exported: set[str] = set()  # books whose gauges this worker exports
        self._published_unreferenced = 0  # engine.unreferenced_prices as last added to its counter
        self._published_late: dict[str, int] = {}  # engine.late_inputs as last added to the counter

        self.gate: Gate[Price | StagedBookEvent] = Gate()
        self.tail = Tail()  # what waits for the broker to confirm the partitions' ends (`_confirm_ends`)
        self._confirmed_at = 0.0  # when the last confirmation was asked (monotonic)
        self._confirmation: asyncio.Future[None] | None = None
        self._market_consumer: AIOKafkaConsumer | None = None
        self._ends_consumer: AIOKafkaConsumer | None = None
        self.progress = Progress({settings.topic(t) for t in BOOK_TOPICS}, settings.topic("prices"))
        self._lock = asyncio.Lock()
        self._released = self._released_seen = 0  # events the gate has released (for `_watch_streams`)
        self._stalled_since = time.monotonic()
        self._book_events = self._book_events_seen = 0  # book messages read (for `_watch_streams`)
        self._book_quiet_since = time.monotonic()
        self._resought = False  # the quiet book partitions were sought back (`_watch_streams`)
        self._recovery_ended_since: float | None = None  # Faust's recovery seen ended, yet waiting (`_wake_recovery`)

        app.task(_loud("book-events", self._book_loop))
        app.task(_loud("market-data", self._market_data))
        app.timer(1.0)(_loud("book-metrics", self._publish_book_metrics))
        app.timer(settings.checkpoint_s)(_loud("price-checkpoint", self._checkpoint_prices))
        self.api = QueryServer(self)  # /health, /ready and the query API, read under `_lock`
        app.task(_loud("http", self.api.serve))

    # -- book events -------------------------------------------------------------------

    async def _book_loop(self) -> None:
        """Book messages in batches (what was fetched since the last batch, delivery.py): each
        recorded as it comes, then what the gate can release applied once per batch; the batch is
        acknowledged (its offsets can be committed) once its records are on the broker."""
        try:
            while True:
                batch = await self.book_batches.take(BOOK_BATCH)
                for message in batch:
                    await self.on_book_message(message)
                await self._drain()
                await self.outbox.settle()
                self.book_batches.done(batch)
        finally:
            await self._gaps.close()

    async def on_book_message(self, msg: Any) -> None:
        """One book message, after those before it on its partition: Faust's stream may have left
        some out (commits.py), and they are read from the broker first. A message older than the
        last one read is a re-delivery: its record (tables.py) says whether it was handled."""
        if self.progress.recovered and not self._recovering:
            expected = self.progress.next_book_offset(msg.tp)
            if msg.offset > expected:
                await self._read_gap(msg.tp, expected, msg.offset)
        await self._on_book_record(msg)

    async def _read_gap(self, tp: Any, start: int, end: int) -> None:
        records = await self._gaps.read(tp.topic, tp.partition, start, end)
        if records:
            metrics.BOOK_GAP_RECORDS.inc(len(records))
            log.warning("book messages not delivered by the stream: read from the broker",
                        partition=f"{tp.topic}[{tp.partition}]", offsets=f"{start}..{end - 1}", read=len(records))
        for r in records:
            await self._on_book_record(_Fetched(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp / 1e3, tp))

    async def _on_book_record(self, msg: Any) -> None:
        """Decode and check; a policy or an approval applies at once, a fill or snapshot is recorded
        (tables.py) and waits in the gate."""
        topic = self.settings.logical(msg.topic)
        metrics.EVENTS_CONSUMED.labels(topic).inc()
        self._book_events += 1
        origin = Origin(topic, msg.partition, msg.offset, msg.key, _timestamp_ms(msg.timestamp))
        ts: Micros | None = None
        try:
            ts = await self._accept(origin, msg.value)
        except Rejected as rejected:
            await self.emit.dead_letter(origin, msg.value, rejected)
        except KafkaError:
            raise  # the broker, not the message: the loop fails loudly
        except Exception as exc:  # noqa: BLE001 - one message must not stop the worker
            await self._internal_error(origin, msg.value, exc)
        self.progress.read_book(msg.tp, msg.offset, ts)

    async def _accept(self, origin: Origin, value: bytes | None) -> Micros | None:
        """One book message into the engine or the gate; the event time it waits at, if any."""
        event = decode_event(origin.topic, value, f"{origin.topic}[{origin.partition}]@{origin.offset}",
                             not_after=self._not_after(now_us()))
        assert isinstance(event, (Fill, Snapshot, Policy, Decision))
        pid = event.portfolio_id
        if origin.key is None or origin.key.decode("utf-8", "replace") != pid:
            raise Rejected("impossible_value", f"message key {origin.key!r} is not its portfolio_id {pid!r}")
        self.tables.partition_of[pid] = origin.partition
        if isinstance(event, Decision):
            async with self._lock:
                await self._publish(self.engine.on_decision(event))
                await self._record()
            return None
        if isinstance(event, Policy):
            async with self._lock:
                await self.tables.save_policy(pid, (value or b"").decode("utf-8"), origin.partition)
                await self._publish(self.engine.on_policy(event))
                await self._record()
            return None
        if isinstance(event, Snapshot):
            newest = self.tables.newest_snapshot(pid)
            if newest is not None and event.as_of < newest:
                raise Rejected("impossible_value", f"snapshot as_of is older than the one in force for {pid}")
        staged = StagedBookEvent(event, origin, value if isinstance(event, Fill) else None)
        if not await self.tables.record_input(staged):
            metrics.DUPLICATES.labels(origin.topic).inc()
            return None  # recorded already: a re-delivery
        self.gate.hold(staged.ts, staged)
        self.tail.held(staged.ts)
        if isinstance(event, Fill):
            metrics.EVENT_LAG.labels(origin.topic).observe(max(0.0, (now_us() - staged.ts) / 1e6))
        return staged.ts

    def _not_after(self, now: Micros) -> Micros:
        """The latest event time live input may carry: the wall clock plus the allowed skew."""
        return now + round(self.settings.max_clock_skew_s * 1_000_000)

    async def _internal_error(self, origin: Origin, value: bytes | None, exc: Exception) -> None:
        """A message the worker failed on (a bug): dead-lettered as internal_error, logged with its
        traceback, counted; the worker goes on with the next one."""
        log.error("message failed: dead-lettered as internal_error", topic=origin.topic,
                  partition=origin.partition, offset=origin.offset, exc_info=exc)
        await self.emit.dead_letter(origin, value, Rejected("internal_error", f"{type(exc).__name__}: {exc}"))

    async def _apply_staged(self, staged: StagedBookEvent) -> list[Event]:
        """A recorded fill or snapshot into the engine; refused, it is dead-lettered and forgotten."""
        event = staged.event
        try:
            return self.engine.on_fill(event) if isinstance(event, Fill) else self.engine.on_snapshot(event)
        except Rejected as rejected:
            await self.emit.dead_letter(staged.origin, staged.value, rejected)
        except KafkaError:
            raise
        except Exception as exc:  # noqa: BLE001
            await self._internal_error(staged.origin, staged.value, exc)
        await self.tables.forget_input(staged)
        return []

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        """A rebalance began: the books of the revoked partitions are another worker's from now on, and
        the new assignment is not recovered yet. Judge nothing until `_restore` has run (a worker
        that went on judging a book it had lost emitted transitions its new owner did not). Nor is the
        worker caught up any more: its new books' inputs are still to be read (/ready, the gauge)."""
        self._recovering = True
        self._rebalances += 1
        self._caught_up = False
        metrics.INPUTS_CAUGHT_UP.set(0)

    async def _on_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        """What a recovery reads besides Faust's tables is read from now, while Faust recovers them
        (`_reads`): at a full-size restart that took ~2 s."""
        self._assigned_at = time.monotonic()
        owned = self._owned_book_partitions()
        self._prefetched = _Prefetch(self._rebalances, owned, self._reads(owned))
        log.info("partitions assigned: recovering", book_partitions=sorted(
            f"{tp.topic}[{tp.partition}]" for tp in assigned if self.settings.logical(tp.topic) in BOOK_TOPICS))

    def _owned_book_partitions(self) -> list[tuple[str, int]]:
        return sorted((tp.topic, tp.partition) for tp in self.app.assignor.assigned_actives()
                      if self.settings.logical(tp.topic) in BOOK_TOPICS)

    def _reads(self, owned: list[tuple[str, int]]) -> asyncio.Future[tuple[dict[str, bytes], dict[Any, int]]]:
        """The recorded book inputs of the owned partitions and the group's offsets there, read at
        once, each with its own client; and the price checkpoints (for `_rewind_market`). Nothing
        writes book inputs between an assignment and its recovery: Faust delivers no book message
        and the gate releases nothing until `_restore` has run."""
        self._checkpoints = asyncio.ensure_future(checkpoint.read_all(self.settings))
        return asyncio.ensure_future(asyncio.gather(
            read_inputs(self.settings, {p for _, p in owned}),
            start_offsets(self.settings.bootstrap_servers, self.app.conf.id, owned, self.settings.kafka_security)))

    async def _restore(self) -> None:
        """After table recovery: the engine's books become exactly what the tables hold. Policies and
        watches go in as they are; every recorded fill and snapshot goes back through the gate, so
        the engine rebuilds each book as it built it live (judging it again only from its clock)."""
        began = time.monotonic()
        rebalance = self._rebalances
        async with self._lock:
            owned_tps = self._owned_book_partitions()
            prefetched, self._prefetched = self._prefetched, None
            if prefetched is not None and (prefetched.rebalance, prefetched.owned) == (rebalance, owned_tps):
                reads = prefetched.reads
            else:  # not read at the assignment (or for another one): now
                reads = self._reads(owned_tps)
            inputs, start = await reads
            recovered = self.tables.recovered({p for _, p in owned_tps}, inputs)
            try:
                if self._rebalances == rebalance:
                    # Faust seeks only partitions with a committed offset; after a worker killed before
                    # its first commit, the others were left where nothing more was delivered.
                    await _seek(self.app.consumer, {TP(topic, partition): offset
                                                    for (topic, partition), offset in start.items()})
            except IllegalStateError:
                if self._rebalances == rebalance:
                    raise
            if self._rebalances != rebalance:
                # The next rebalance began meanwhile: these partitions may be gone (seeking one
                # raises), and Faust recovers the new assignment and calls this again.
                log.info("recovery overtaken by a new rebalance: abandoned")
                return
            self.progress.owned_books(start)
            self.engine.drop_books()
            for pid in sorted({*recovered.policies, *recovered.watches}):
                self.engine.restore(None, recovered.policies.get(pid), recovered.watches.get(pid), pid)
            self.gate.drop_singles()
            owned_books = {*recovered.policies, *recovered.watches, *(s.event.portfolio_id for s in recovered.inputs)}
            for pid in self._exported - owned_books:
                metrics.forget_book(pid)
            self._exported &= owned_books
            for staged in recovered.inputs:
                self.gate.hold(staged.ts, staged)
            self.progress.recovered = True
            self._resume = _resume_times(recovered)
            self._rewind.set()
            self._recovering = False
            metrics.RECOVERIES.inc()
            log.info("books restored", books=len({s.event.portfolio_id for s in recovered.inputs}),
                     changelogs_read_s=round(began - self._assigned_at, 3), restore_s=round(time.monotonic() - began, 3),
                     seconds_since_start=round(time.monotonic() - self._started, 3),
                     policies=len(recovered.policies), inputs=len(recovered.inputs))

    # -- the watermark -----------------------------------------------------------------

    async def _drain(self) -> None:
        """Apply what the gate releases, in event-time order; emit the alerts in that order."""
        if self._recovering or self._rewind.is_set():
            return  # a rebalance is under way, or the market is about to be rewound for its books
        async with self._lock:
            book_mark = self.progress.book_mark(self.app.consumer)
            market = self.progress.market
            streams = min(market.mark, book_mark)
            tail = self.tail.mark()
            if tail < streams:
                self._ask_ends()
            watermark = min(streams, tail)
            if self.progress.price_read:
                settled = min(watermark, *self.progress.price_read.values())
                if settled >= self._settled:  # every price held by now and stamped before it is released below
                    self._settled, self._held_at_settle = settled, dict(self._held_through)
            tick = self.engine.tick
            prices: list[Price] = []
            events: list[Event] = []  # the engine's, in its order, published once a window is complete
            released = self.gate.release(watermark)
            self._released += len(released)
            for item in released:
                if isinstance(item, Price):
                    if prices and tick > 0 and item.ts // tick != prices[-1].ts // tick:
                        # The gate releases in event-time order: the window of `prices` is complete.
                        # Evaluate and emit it now rather than after the rest of the batch.
                        await self._publish(events + self._apply_prices(prices, until=item.ts))
                        prices, events = [], []
                    prices.append(item)
                    continue
                if prices:
                    events += self._apply_prices(prices)
                    prices = []
                events += await self._apply_staged(item)
            alerts = events + self._apply_prices(prices, until=min(market.progress, book_mark, tail))
            if streams == AHEAD:  # both streams read to their end: what the gate holds waits for the broker
                self.engine.end_warmup(before=self.gate.oldest())
                if not len(self.gate):
                    alerts += self.engine.flush()
                if not self._caught_up:
                    self._caught_up = True
                    metrics.INPUTS_CAUGHT_UP.set(1)
                    _freeze_heap("inputs read to the end")
                    log.info("caught up", seconds_since_start=round(time.monotonic() - self._started, 3))
            await self._publish(alerts)
            await self._record()
            metrics.GATE_HELD.set(len(self.gate))
        await self.outbox.settle()

    def _ask_ends(self) -> None:
        """Ask the broker where every input partition ends (`Tail`), unless a question is under way
        or was asked less than CONFIRM_EVERY_S ago (the market loop drains again within 20 ms)."""
        now = time.monotonic()
        market, ends = self._market_consumer, self._ends_consumer
        if not self.tail.pending or market is None or ends is None or now - self._confirmed_at < CONFIRM_EVERY_S:
            return
        self._confirmed_at = now
        self._confirmation = asyncio.ensure_future(_loud("partition-ends", self._confirm_ends)(market, ends))

    async def _confirm_ends(self, market: AIOKafkaConsumer, client: AIOKafkaConsumer) -> None:
        """One ListOffsets request (`client`) for this worker's book partitions and every market
        partition; then the market's mark again, and a drain. Unanswered within CONFIRM_TIMEOUT_S
        (a broker outage), the consumers' own view stands: the held events are not kept waiting."""
        self.tail.begin()
        books = [TopicPartition(tp.topic, tp.partition) for tp in self.app.consumer.assignment()
                 if self.settings.logical(tp.topic) in BOOK_TOPICS]
        try:
            ends = await asyncio.wait_for(client.end_offsets(books + list(market.assignment())), CONFIRM_TIMEOUT_S)
            self.progress.ends.update({(tp.topic, tp.partition): offset for tp, offset in ends.items()})
            await self.progress.read_market(market)
        except (KafkaError, asyncio.TimeoutError) as exc:
            metrics.UNCONFIRMED_ENDS.inc()
            log.warning("partition ends not confirmed: released on the consumers' view", error=repr(exc))
        finally:
            self.tail.end()
        await self._drain()

    # -- market data -------------------------------------------------------------------

    async def _market_data(self) -> None:
        topics = [self.settings.topic(t) for t in MARKET_TOPICS]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,  # a broadcast: every worker reads every partition
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **self.settings.kafka_security.client_options(),
        )
        # Where the partitions end (`_confirm_ends`), asked of a client of its own: one with an
        # assignment keeps metadata for its own topics only, and answered for the book partitions
        # in ~0.5 s each time, against ~2 ms.
        ends = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, **self.settings.kafka_security.client_options())
        await asyncio.gather(consumer.start(), ends.start())
        try:
            tps = await checkpoint.partitions(self.settings, topics)
            consumer.assign(tps)
            self._market_consumer, self._ends_consumer = consumer, ends
            await self._rewind.wait()  # the books' first recovery says from when each is judged
            while True:
                if self._rewind.is_set():
                    await self._rewind_market(consumer, [tp for tp in tps if tp.topic == self.settings.topic("prices")])
                gate_full = len(self.gate) >= MAX_HELD
                if self.progress.price_partitions_to_read(consumer, gate_full, self.app.consumer):
                    batch = await consumer.getmany(timeout_ms=20, max_records=MARKET_BATCH)
                else:  # the book stream is behind: let it catch up before reading more prices
                    batch = {}
                    await asyncio.sleep(0.01)
                if batch:
                    await _let_clients_run()
                    await self.on_market_records(batch)
                await self.progress.read_market(consumer)
                await self._drain()
        finally:
            self._market_consumer = self._ends_consumer = None
            await asyncio.gather(consumer.stop(), ends.stop())

    async def _rewind_market(self, consumer: AIOKafkaConsumer, prices: list[Any]) -> None:
        """After a recovery: the engine's market becomes the newest checkpoint no owned book is behind
        (checkpoint.py), and the price partitions are read again from its mark; without one, from
        their start. So a book restored at its clock, at a start or moved by a rebalance, is judged
        again on the prices the live worker had, not on a market already ahead of it."""
        self._rewind.clear()
        resume = self._resume
        found = checkpoint.choose(await self._checkpoints, resume)
        async with self._lock:
            self.gate.drop_runs()
            self.progress.price_read.clear()
            self.progress.market = MarketMark(0, 0, set())  # nothing is released before prices are read again
            self._settled = 0
            self._restored_from = found
            self._held_through.clear()
            self._held_at_settle.clear()
            if found is None:
                self.engine.restore_market(MarketState({}, 0, {}))
                await consumer.seek_to_beginning(*prices)
                log.info("no usable price checkpoint: prices read from the start of the topic", books=len(resume))
            else:
                self.engine.restore_market(found.state)
                await checkpoint.seek_prices(consumer, prices, found.mark)
                log.info("prices restored from a checkpoint", mark=format_ts(found.mark),
                         instruments=len(found.state.prices), books=len(resume))
        log.info("market data consumer started", seconds_since_start=round(time.monotonic() - self._started, 3))

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
                origin = Origin(topic, r.partition, r.offset, r.key, r.timestamp)
                try:
                    event = decode_event(topic, r.value, f"{r.topic}[{r.partition}]@{r.offset}", key=r.key)
                    async with self._lock:
                        alerts = (self.engine.on_instrument(event) if isinstance(event, Instrument)
                                  else self.engine.on_risk_model(event))
                        await self._publish(alerts)
                        await self._record()
                except Rejected as rejected:
                    await self.emit.dead_letter(origin, r.value, rejected)
                except KafkaError:
                    raise  # the broker, not the message: the loop fails loudly
                except Exception as exc:  # noqa: BLE001 - one message must not stop the worker
                    await self._internal_error(origin, r.value, exc)
        for tp, records in by_topic["prices"]:
            await self._hold_prices(tp.partition, records, now)

    async def _hold_prices(self, partition: int, records: list[Any], now: Micros) -> None:
        """A partition's prices into the gate; the newest ts read moves the market watermark."""
        times: list[Micros] = []
        prices: list[Price] = []
        not_after = self._not_after(now)
        newest = 0
        restored = self._restored_from
        for r in records:
            try:
                price = decode_price(r.value, r.key, not_after)
            except Rejected as rejected:
                await self.emit.dead_letter(Origin("prices", r.partition, r.offset, r.key, r.timestamp),
                                            r.value, rejected)
                continue
            except Exception as exc:  # noqa: BLE001 - one message must not stop the worker
                await self._internal_error(Origin("prices", r.partition, r.offset, r.key, r.timestamp), r.value, exc)
                continue
            if restored is not None and restored.covers(partition, r.offset, price.ts):
                newest = max(newest, price.ts)  # re-read after a restore: in the restored market already
                continue
            times.append(price.ts)
            prices.append(price)
        if newest:
            self.progress.read_prices(partition, newest)
        if records:
            self._held_through[partition] = records[-1].offset + 1
        if not prices:
            return
        self.gate.hold_run(times, prices)
        self.tail.held(min(times))
        self.progress.read_prices(partition, max(times))
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

    # -- output and state ----------------------------------------------------------------

    async def _publish(self, events: list[Event]) -> None:
        """After the engine acted: hand its events over. Their books' watches are saved by `_record`,
        once the events are delivered: `_drain` publishes each window's events as the window closes
        and records them all once at its end, not a broker round trip a window."""
        if not self._first_evaluation and self.engine.status:
            self._first_evaluation = True
            _freeze_heap("first evaluation")
            log.info("first evaluation", seconds_since_start=round(time.monotonic() - self._started, 3))
        await self.emit.events(events)
        if events:
            self._unrecorded.update(e.portfolio_id for e in events)
            await _let_clients_run()

    async def _record(self) -> None:
        """Save what the engine changed: the watches of the books that emitted, after their events
        are on the broker (an event is never lost behind the watch that records it); the book inputs
        it let go."""
        if self._unrecorded:
            await self.outbox.settle()
            emitted, self._unrecorded = sorted(self._unrecorded), set()
            for pid in emitted:
                await self._save_watch(pid)
        for change in self.engine.changes():
            await self.tables.forget(change)

    async def _watch_streams(self) -> None:
        """Every second. A book partition the broker holds more of than this worker has read, while
        no book message at all has come for `RESEEK_AFTER_S`, is sought back to the offset after the
        last one read: Faust skips a message fetched before a rebalance that it hands over after it
        (its offset stays uncommitted, commits.py), and when no later one comes, the gap is never
        seen. Nothing delivered for `stall_exit_s` even so ends the process (EXIT_STALLED), for a
        supervisor's restart. Every 10 s that events wait in the gate and none is released, the log
        says what holds them."""
        now = time.monotonic()
        self._wake_recovery(now)
        consumer = self.app.consumer
        behind = [tp for tp in consumer.assignment() if self.settings.logical(tp.topic) in BOOK_TOPICS
                  and not self.progress.book_caught_up(consumer, tp)] if self.progress.recovered else []
        if self._book_events != self._book_events_seen or not behind:
            self._book_events_seen, self._book_quiet_since = self._book_events, now
            self._resought = False
        elif now - self._book_quiet_since >= RESEEK_AFTER_S and not self._resought and not self._recovering:
            self._resought = True
            to = {tp: self.progress.next_book_offset(tp) for tp in behind}
            await _seek(consumer, to)
            metrics.BOOK_RESEEKS.inc(len(to))
            log.warning("book partitions behind and nothing delivered: sought back to what was read",
                        quiet_s=round(now - self._book_quiet_since, 1),
                        partitions={f"{tp.topic}[{tp.partition}]": (offset, consumer.highwater(tp))
                                    for tp, offset in to.items()})
        elif now - self._book_quiet_since >= self.settings.stall_exit_s:
            log.error("stalled: what each task waits at", tasks=waiting_tasks(
                asyncio.get_running_loop(), getattr(getattr(consumer, "_thread", None), "thread_loop", None)),
                partitions=fetch_state(consumer), recovery=recovery_state(self.app.tables.recovery))
            _fatal("book-events", RuntimeError(
                f"no book event delivered for {now - self._book_quiet_since:.0f} s while the broker holds "
                f"unread ones" + (" (a rebalance's recovery under way)" if self._recovering else "")),
                code=EXIT_STALLED)
        if not len(self.gate) or self._released != self._released_seen:
            self._released_seen, self._stalled_since = self._released, now
        elif now - self._stalled_since >= 10.0:
            self._stalled_since = now
            consumer = self.app.consumer
            log.warning("gate not moving", held=len(self.gate), market_mark=self.progress.market.mark,
                        book_mark=self.progress.book_mark(consumer),
                        unread_book_partitions=sorted(
                            f"{tp.topic}[{tp.partition}]" for tp in consumer.assignment()
                            if self.settings.logical(tp.topic) in BOOK_TOPICS
                            and not self.progress.book_caught_up(consumer, tp)))

    def _wake_recovery(self, now: float) -> None:
        """Faust's changelog recovery can miss its own end. `_slurp_changelogs` sets the event
        `signal_recovery_end` when every changelog is read to its highwater, and clears it again at
        its next turn; if `_restart_recovery` was not yet waiting on it, it waits for good (exit 75
        after MONITOR_STALL_EXIT_S). The stall seen in about 1 of 30 two-worker failovers fits: every
        changelog read to its highwater, `_restart_recovery` waiting on that event. Once Faust has said
        it has ended (every changelog read, its buffers applied) while a waiter of that event has
        waited WAKE_RECOVERY_AFTER_S, the event is set and cleared at once: that wakes the waiter, and
        leaves nothing set for the next recovery to find."""
        recovery = self.app.tables.recovery
        waiting = bool(recovery.signal_recovery_end._waiters)  # asyncio.Event's: no public way to ask
        if not (self._recovering and waiting) or recovery.in_recovery or recovery.need_recovery():
            self._recovery_ended_since = None
            return
        if self._recovery_ended_since is None:
            self._recovery_ended_since = now
        elif now - self._recovery_ended_since >= WAKE_RECOVERY_AFTER_S:
            self._recovery_ended_since = None
            metrics.RECOVERY_WAKEUPS.inc()
            log.warning("Faust's recovery read its changelogs and did not go on: woken",
                        recovery=recovery_state(recovery))
            recovery.signal_recovery_end.set()
            recovery.signal_recovery_end.clear()

    async def _save_watch(self, pid: str) -> None:
        """A book's watch as it stands, unless events it records may still be on their way (the
        timers save watches without the lock, while a drain waits for its events)."""
        watch = self.engine.watches.get(pid)
        if watch is not None and pid not in self._unrecorded:
            self._persisted[pid] = (watch.peak_nav, watch.clock)
            await self.tables.save_watch(pid, watch)

    async def _checkpoint_prices(self) -> None:
        """Every `checkpoint_s`: the watches whose clock moved (a later restart resumes them from
        there), then the engine's market state (checkpoint.py). Not before anything is settled."""
        if not self.progress.recovered or not self._settled:
            return
        for pid, watch in list(self.engine.watches.items()):
            if self._persisted.get(pid, (None, None))[1] != watch.clock:
                await self._save_watch(pid)
                await asyncio.sleep(0)
        async with self._lock:
            found = checkpoint.Checkpoint(self._settled, self.engine.market_state(), self._held_at_settle)
        partitions = {p for _, p in self.progress.book_start}
        writer = f"p{min(partitions)}" if partitions else "none"
        await self.outbox.settle()  # the watches are on the broker before the checkpoint that relies on them
        for key, value in found.records(writer, self._checkpoints_written % checkpoint.SLOTS):
            await self.outbox.send(self.checkpoints, key=key, value=value)
        await self.outbox.settle()
        self._checkpoints_written += 1

    async def _publish_book_metrics(self) -> None:
        """Once a second: book gauges, and the peak NAVs that moved (drawdown survives a restart).

        In a rising market every book's peak moves: a watch costs ~0.2 ms to write out and Faust's
        JSON ~0.1 ms more, so the loop yields after each, letting prices be evaluated in between
        instead of behind a stall of every book at once."""
        for pid, status in list(self.engine.status.items()):
            metrics.publish_book(pid, status)
            self._exported.add(pid)
        metrics.HELD_FILLS.set(self.engine.held_fills())
        metrics.UNREFERENCED_PRICES.inc(self.engine.unreferenced_prices - self._published_unreferenced)
        self._published_unreferenced = self.engine.unreferenced_prices
        self._publish_late_inputs()
        await self._watch_streams()
        oldest = self.gate.oldest()
        metrics.GATE_OLDEST_AGE.set(max(0.0, (now_us() - oldest) / 1e6) if oldest is not None else 0.0)
        for pid, watch in list(self.engine.watches.items()):
            if self._persisted.get(pid, (None, None))[0] != watch.peak_nav:
                await self._save_watch(pid)
                await asyncio.sleep(0)
        await self.outbox.settle()

    def _publish_late_inputs(self) -> None:
        """The engine's late inputs since the last second, counted and logged once: where they are,
        the live alerts may differ from `monitor replay`'s (README, Replay = live)."""
        late = {kind: n - self._published_late.get(kind, 0) for kind, n in self.engine.late_inputs.items()}
        self._published_late = dict(self.engine.late_inputs)
        late = {LATE_INPUT_TOPICS[kind]: n for kind, n in late.items() if n > 0}
        for topic, n in late.items():
            metrics.LATE_INPUTS.labels(topic).inc(n)
        if late:
            log.warning("inputs applied after later ones: judged in a later window than a replay would", **late)


def _resume_times(recovered: Any) -> dict[str, Micros]:
    """Per book with a snapshot, the event time it is judged again from after a restart: its watch's
    clock, or for a book not judged yet, its first recorded input. (A book without a snapshot is not
    judged: nothing of the market can be ahead of it.)"""
    first: dict[str, Micros] = {}
    valued: set[str] = set()
    for staged in recovered.inputs:  # in event-time order
        first.setdefault(staged.event.portfolio_id, staged.ts)
        if isinstance(staged.event, Snapshot):
            valued.add(staged.event.portfolio_id)
    watches = recovered.watches
    return {pid: watches[pid].clock if pid in watches and watches[pid].clock else first[pid] for pid in valued}


def run(settings: Settings) -> None:
    """Create the topics, serve /metrics, and run the Faust worker until SIGINT/SIGTERM."""
    from monitor.stream.topics import create_missing, ensure_topics

    loop = asyncio.new_event_loop()
    loop.run_until_complete(ensure_topics(settings))
    # The worker's own state topics (Faust creates its tables' changelogs itself).
    loop.run_until_complete(create_missing(settings, [inputs_topic(settings), checkpoint.new_topic(settings)]))
    loop.close()
    asyncio.set_event_loop(asyncio.new_event_loop())
    from monitor.ops.logging import REPEATS

    REPEATS.count = lambda library: metrics.CLIENT_LOG_ERRORS.labels(library).inc()
    metrics.serve(settings.metrics_host, settings.metrics_port)
    metrics.time_gc_pauses()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("metrics served", url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    worker = Worker(settings)
    asyncio.get_event_loop().run_until_complete(worker.api.start())  # on the loop Faust runs next
    faust.Worker(worker.app, loglevel=settings.log_level.upper(), quiet=True,
                 override_logging=False).execute_from_commandline()  # keep our structlog setup
