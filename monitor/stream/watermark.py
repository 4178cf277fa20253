"""The event-time gate between the worker's two consumers, and the progress that moves it.

Book events (Faust's consumer) and prices (a broadcast consumer) arrive on separate
consumers, each in event-time order per partition but in no order with respect to
each other, nor across partitions. The engine evaluates per window of event time, so
it needs every event of a window before the window closes. The gate holds what both
consumers have read and releases it in event-time order, below a watermark: the least,
over every input partition, of the newest event time read from it. A partition read
to its end holds nothing back (`AHEAD`), once the broker has said so after the events
waiting were read (`Tail`).

Per partition, events must come in event-time order (each producer writes its own
keys in order); that is the one assumption.

`Gate`, `laggards` and `market_mark` are pure; `Progress` reads the consumers' positions and
high watermarks and keeps, per partition, how far it has been read.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left, bisect_right
from typing import Any, Awaitable, Callable, Generic, Iterable, Mapping, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
import structlog

from monitor.engine.model import Micros
from monitor.ops.config import KafkaSecurity

AHEAD: Micros = 2**62  # "read to the end": holds nothing back
T = TypeVar("T")
log = structlog.get_logger("monitor.watermark")


class Gate(Generic[T]):
    """Held items as runs, each what one `hold_run` brought (one partition's records of a fetch),
    sorted by event time. Releasing takes a prefix of each run and merges them: per price, a list
    slice and a share of one sort, where a heap cost a push and a pop of log(held) compares.

    Items held one by one (`hold`: fills and snapshots) go into one run of their own, kept sorted
    (ties in arrival order) and released ahead of the runs' items of equal event time: a run each
    made every release walk thousands of one-item runs while the market stream was behind, so a
    busy book stream slowed as its backlog grew. Equal event times commute in the engine (they fall
    in one window, judged when it closes), so which goes first changes nothing it emits."""

    def __init__(self) -> None:
        self._runs: list[list] = []  # [ts list, item list, index of the first still held], as they came
        self._runs_oldest: Micros = AHEAD  # the least ts still held in the runs: below it, none to walk
        self._single_ts: list[Micros] = []
        self._single_items: list[T] = []
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def hold(self, ts: Micros, item: T) -> None:
        k = bisect_right(self._single_ts, ts)
        self._single_ts.insert(k, ts)
        self._single_items.insert(k, item)
        self._held += 1

    def hold_run(self, ts: list[Micros], items: list[T]) -> None:
        """Items in the order they came, with their event times (in order or not)."""
        if ts != sorted(ts):
            order = sorted(range(len(ts)), key=ts.__getitem__)  # stable: ties stay as they came
            ts, items = [ts[i] for i in order], [items[i] for i in order]
        self._runs.append([ts, items, 0])
        self._runs_oldest = min(self._runs_oldest, ts[0])
        self._held += len(ts)

    def release(self, watermark: Micros) -> list[T]:
        """Everything held with an event time below the watermark, oldest first: at equal times the
        items held one by one first, then the runs' in the order they came."""
        end = bisect_left(self._single_ts, watermark)
        times: list[Micros] = self._single_ts[:end]
        out: list[T] = self._single_items[:end]
        if end:
            del self._single_ts[:end], self._single_items[:end]
        if watermark <= self._runs_oldest:
            self._held -= len(out)
            return out  # nothing of the runs is due: most releases while prices wait for the book stream
        kept: list[list] = []
        merge = False
        oldest = AHEAD
        for run in self._runs:
            ts, items, start = run
            end = bisect_left(ts, watermark, start)
            if end > start:
                merge = merge or bool(out)
                times += ts[start:end]
                out += items[start:end]
            if end < len(ts):
                run[2] = end
                kept.append(run)
                oldest = min(oldest, ts[end])
        self._runs, self._runs_oldest = kept, oldest
        self._held -= len(out)
        if merge:  # in the order held, so a stable sort keeps ties in that order
            order = sorted(range(len(out)), key=times.__getitem__)
            out = [out[i] for i in order]
        return out

    def oldest(self) -> Micros | None:
        """The least event time held, None when empty."""
        oldest = min([self._runs_oldest, *self._single_ts[:1]])
        return None if oldest == AHEAD else oldest

    def drop_runs(self) -> None:
        """Forget the items held as runs (the market's prices, when it is rewound); at no cost per
        item, as a restore's book inputs may be hundreds of thousands of the singles."""
        self._held -= sum(len(ts) - start for ts, _, start in self._runs)
        self._runs, self._runs_oldest = [], AHEAD

    def drop_singles(self) -> None:
        """Forget the items held one by one (the book events, when a rebalance moves the books)."""
        self._held -= len(self._single_ts)
        self._single_ts, self._single_items = [], []


def laggards(newest: Mapping[int, Micros], unread: Iterable[int], other_mark: Micros) -> set[int]:
    """With the gate full, the partitions of a stream to go on reading so its watermark can move:
    of those not read to their end, the ones whose newest event ts is the least (they hold the
    watermark back). None if the other stream's mark is at or below that: it must catch up first.

    Reading nothing at all while full would never end when the laggard is in this stream.
    """
    unread = list(unread)
    if not unread:
        return set()
    least = min(newest.get(p, 0) for p in unread)
    if other_mark <= least:
        return set()
    return {p for p in unread if newest.get(p, 0) == least}


class Tail:
    """What was held since the broker last confirmed where every input partition ends.

    "Read to its end" comes from each consumer's last fetch answer, which can be older than what
    the other consumer has just read: a fill produced together with a price may not have reached the
    book consumer when the price is read, and releasing the price then judges the fill in a later
    window than a replay of the log does. So when both streams look read to their end, the events
    held since the broker last answered (one ListOffsets request, `Worker._confirm_ends`) wait for
    its next answer: `mark` is the least event time among them. Pure: the worker asks the broker."""

    def __init__(self) -> None:
        self._unconfirmed: Micros | None = None  # least ts held since the last confirmation began
        self._confirming: Micros | None = None  # least ts held before the confirmation under way

    def held(self, ts: Micros) -> None:
        if self._unconfirmed is None or ts < self._unconfirmed:
            self._unconfirmed = ts

    @property
    def pending(self) -> bool:
        """Events wait for a confirmation, and none is under way."""
        return self._unconfirmed is not None and self._confirming is None

    def begin(self) -> None:
        """A confirmation is asked: it covers what was held until now."""
        self._confirming, self._unconfirmed = self._unconfirmed, None

    def end(self) -> None:
        """The broker answered (or could not be asked: the consumers' view stands, as it did before)."""
        self._confirming = None

    def mark(self) -> Micros:
        """Below it, every held event was read before the broker last confirmed the ends."""
        return min([AHEAD, *(ts for ts in (self._unconfirmed, self._confirming) if ts is not None)])


class MarketMark(NamedTuple):
    mark: Micros  # below it, every price has been read (AHEAD: all read to the end)
    progress: Micros  # the least newest price ts read over all price partitions
    unread: set[int]  # price partitions not read to their end


def market_mark(prices: Mapping[int, tuple[Micros, bool]], reference_read: bool) -> MarketMark:
    """The market stream's watermark, from each price partition's (newest ts read, read to its end)
    and whether every reference data partition (instruments, risk models) is read to its end.

    Below `progress` no price can come any more even on a partition read to its end, since each
    partition is in event-time order. Reference data has no event time: while any of it on the
    broker is unread the mark is 0, so nothing is evaluated without it (a worker starting on a
    backlog would otherwise value its first prices before the instruments the log put first).
    """
    mark = progress = AHEAD
    unread: set[int] = set()
    for partition, (newest, read_to_end) in prices.items():
        progress = min(progress, newest)
        if not read_to_end:
            mark = min(mark, newest)
            unread.add(partition)
    return MarketMark(mark if reference_read else 0, progress, unread)


class Progress:
    """How far each input partition has been read, and so the watermark below which the gate may
    release: the least of the book stream's mark (over this worker's book partitions) and the
    market stream's (`market_mark`)."""

    def __init__(self, book_topics: Iterable[str], prices_topic: str) -> None:
        self._book_topics = set(book_topics)
        self._prices_topic = prices_topic
        self.book_read: dict[Any, tuple[int, Micros]] = {}  # book partition -> (last offset, newest ts) read
        self.price_read: dict[int, Micros] = {}  # price partition -> newest price ts read
        self.market = MarketMark(0, 0, set())
        self.book_start: dict[tuple[str, int], int] = {}  # book partition -> offset its reading started at
        self.ends: dict[tuple[str, int], int] = {}  # partition -> end offset as the broker last confirmed it
        self.recovered = False  # the book tables are recovered: the book stream can be judged

    def read_book(self, tp: Any, offset: int, ts: Micros | None) -> None:
        newest = max(ts or 0, self.book_read.get(tp, (0, 0))[1])
        self.book_read[tp] = (offset, newest)

    def read_prices(self, partition: int, newest: Micros) -> None:
        self.price_read[partition] = max(self.price_read.get(partition, 0), newest)

    def book_mark(self, consumer: Any) -> Micros:
        """The ts below which every book event of this worker's partitions has been read."""
        if not self.recovered:
            return 0
        mark = AHEAD
        for tp in consumer.assignment():
            if tp.topic in self._book_topics and not self.book_caught_up(consumer, tp):
                mark = min(mark, self.book_read.get(tp, (0, 0))[1])
        return mark

    def end(self, consumer: Any, tp: Any) -> int | None:
        """A partition's end offset: the later of its consumer's last fetch answer and the broker's
        last confirmation (`Tail`); None before the consumer has fetched it."""
        highwater = consumer.highwater(tp)
        return None if highwater is None else max(highwater, self.ends.get((tp.topic, tp.partition), 0))

    def book_caught_up(self, consumer: Any, tp: Any) -> bool:
        """Whether every message of a book partition up to its highwater has been read."""
        highwater = self.end(consumer, tp)
        if highwater is None:
            return False
        if highwater == 0:
            return True
        read = self.book_read.get(tp)
        if read is not None:
            return read[0] + 1 >= highwater
        # Nothing read in this run: the consumer starts where the group committed (or at the log's
        # start), which `owned_books` asked the broker for when the partition was assigned.
        start = self.book_start.get((tp.topic, tp.partition))
        return start is not None and start >= highwater

    def next_book_offset(self, tp: Any) -> int:
        """The offset of the next message of a book partition this worker has to read."""
        read = self.book_read.get(tp)
        return read[0] + 1 if read is not None else self.book_start.get((tp.topic, tp.partition), 0)

    def owned_books(self, start: Mapping[tuple[str, int], int]) -> None:
        """The book partitions were (re)assigned: each starts at `start` (its committed offset, or
        the log's start offset where the group has none). What was read of a partition still owned
        stands: Faust may have delivered it before this recovery's callback, and reading it again
        is not a given (forgetting it held a restarted worker's gate shut for good)."""
        self.book_read = {tp: read for tp, read in self.book_read.items() if (tp.topic, tp.partition) in start}
        self.book_start = dict(start)

    async def read_market(self, consumer: Any) -> None:
        """The market stream's mark, from what its consumer has read."""
        prices: dict[int, tuple[Micros, bool]] = {}
        reference_read = True
        for tp in consumer.assignment():
            highwater = self.end(consumer, tp)
            read_to_end = highwater is not None and await consumer.position(tp) >= highwater
            if tp.topic == self._prices_topic:
                prices[tp.partition] = (self.price_read.get(tp.partition, 0), read_to_end)
            else:
                reference_read = reference_read and read_to_end
        self.market = market_mark(prices, reference_read)

    def price_partitions_to_read(self, consumer: Any, gate_full: bool, book_consumer: Any) -> bool:
        """Resume every price partition while the gate has room. Once it is full, read only the
        partitions that hold the watermark back (`laggards`), pausing the others; False when none
        is to be read (the book stream is behind)."""
        prices = [tp for tp in consumer.assignment() if tp.topic == self._prices_topic]
        if not gate_full:
            consumer.resume(*prices)
            return True
        read = laggards(self.price_read, self.market.unread, self.book_mark(book_consumer))
        consumer.pause(*(tp for tp in prices if tp.partition not in read))
        consumer.resume(*(tp for tp in prices if tp.partition in read))
        return bool(read)



async def start_offsets(bootstrap_servers: str, group_id: str, tps: Iterable[tuple[str, int]],
                        security: KafkaSecurity | None = None) -> dict[tuple[str, int], int]:
    """Where a group's consumer starts on each partition: its committed offset, or the log's start
    offset where it has none (the worker reads from the earliest). Asked of the broker, not of the
    framework's private fields, which are empty for a partition without a committed offset.
    `security` None: the KAFKA_* settings of the environment (the worker's own)."""
    wanted = [TopicPartition(t, p) for t, p in tps]
    if not wanted:
        return {}
    client_options = (security or KafkaSecurity.from_env()).client_options()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                **client_options)
    await admin.start()
    await consumer.start()
    try:
        committed = await _retrying(lambda: admin.list_consumer_group_offsets(group_id, partitions=wanted))
        earliest = await _retrying(lambda: consumer.beginning_offsets(wanted))
    finally:
        await consumer.stop()
        await admin.close()
    out: dict[tuple[str, int], int] = {}
    for tp in wanted:
        meta = committed.get(tp)
        out[(tp.topic, tp.partition)] = meta.offset if meta is not None and meta.offset >= 0 else earliest[tp]
    return out


async def _retrying(ask: Callable[[], Awaitable[T]], within: float = 60.0) -> T:
    """`ask()`, asked again while the broker answers with a retriable error (a coordinator still
    loading its offsets, a leader being elected), for up to `within` seconds; then the error."""
    deadline = time.monotonic() + within
    pause = 0.1
    while True:
        try:
            return await ask()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() + pause > deadline:
                raise
            log.info("broker not ready: asking again", error=repr(exc), pause_s=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
