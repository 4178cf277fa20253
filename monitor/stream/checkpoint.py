"""The latest price of every instrument, checkpointed, so that a restart reads seconds of the price
topic instead of its history.

Every few seconds a worker writes what its engine holds of the market (`MarketState`: the latest
price and its ts per instrument, the stale sweep's schedule, each book's judged-through time) with
the checkpoint's `mark`: every price stamped before it had been read and applied. A restarted
worker takes the newest checkpoint that is not ahead of any of its books, loads it into the engine,
and reads the price topic from the records stamped `SEEK_MARGIN` before the mark (Kafka's offsets
for times) instead of from the beginning; of those, the records the writer had read before it
settled the mark and that are stamped before the mark are skipped (`covers`): the checkpoint holds
them already. A price read late (stamped before the mark, read after) is applied as live.

Why replay = live still holds. A restored book is judged again only from its clock (its watch's),
and a checkpoint is taken only if, for every book, nothing in it moves the book later than that
clock (`usable`): the book's judged-through time when written, or the newest price in it for a book
it did not know. So when a book is next judged, the engine holds the checkpoint's prices, all at or
before that time, plus every price read since, which is every price stamped from the mark on: the
prices the live worker held at that time. The rule a feed must keep: a price's Kafka timestamp is
not earlier than its event ts less `SEEK_MARGIN` (true of producer create times and log append
times when event times are the feed's clock).

A checkpoint is a few records of up to `CHUNK` prices (~45 bytes each) on a compacted topic, keyed
by writer and slot: `SLOTS` checkpoints per writer are kept, so the one before the newest is there
while the newest waits for the watches it needs. Its size follows the instruments, not the day.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any, Iterable, Mapping

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from monitor.engine.engine import MarketState
from monitor.engine.model import Micros
from monitor.ops.config import Settings
from monitor.stream.tables import MAX_RECORD_BYTES
from monitor.stream.topics import admin_client

log = structlog.get_logger("monitor.checkpoint")

SLOTS = 6
CHUNK = 20_000
SEEK_MARGIN: Micros = 10_000_000  # prices re-read from Kafka timestamps this long before the mark


def topic_name(settings: Settings) -> str:
    return settings.topic(f"{settings.app_id}-price-checkpoints")


class Checkpoint:
    """A `MarketState` with its mark, as written and as read back."""

    def __init__(self, mark: Micros, state: MarketState, held: Mapping[int, int] | None = None) -> None:
        self.mark = mark
        self.state = state
        # Per price partition: the offset below which every record had been read before the mark was
        # settled. A record below it stamped before the mark is in `state` already (applied, or
        # older than what is); a restart skips it. Empty (older checkpoints): skip nothing.
        self.held: dict[int, int] = dict(held or {})

    def covers(self, partition: int, offset: int, ts: Micros) -> bool:
        """Whether a price record re-read after a restore from this checkpoint is in it already."""
        return ts < self.mark and offset < self.held.get(partition, 0)

    @property
    def newest(self) -> Micros:
        return max((ts for _, ts in self.state.prices.values()), default=0)

    def usable(self, resume: Mapping[str, Micros]) -> bool:
        """Whether no book would be judged with a price from its future: for each book (with the
        time it is judged again from: its restored clock, or its first recorded input), nothing in
        the checkpoint moves it after that time."""
        newest, judged = self.newest, self.state.judged
        return all(at >= judged.get(pid, newest) for pid, at in resume.items())

    def records(self, writer: str, slot: int) -> list[tuple[bytes, bytes]]:
        ident = uuid.uuid4().hex
        items = [[iid, price, ts] for iid, (price, ts) in self.state.prices.items()]
        chunks = [items[k:k + CHUNK] for k in range(0, len(items), CHUNK)] or [[]]
        head = {"id": ident, "mark": self.mark, "chunks": len(chunks), "next_sweep": self.state.next_sweep,
                "judged": self.state.judged, "held": {str(p): o for p, o in self.held.items()},
                "written_ms": int(time.time() * 1000)}
        return [(f"{writer}/{slot}/{k}".encode(), orjson.dumps({**head, "chunk": k, "prices": chunk}))
                for k, chunk in enumerate(chunks)]


def assemble(values: Iterable[bytes]) -> list[Checkpoint]:
    """The complete checkpoints among records read back (latest value per key), newest mark first.
    A checkpoint whose chunks were partly overwritten by a later one is incomplete and left out."""
    parts: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for value in values:
        doc = orjson.loads(value)
        parts[doc["id"]][doc["chunk"]] = doc
    out = []
    for chunks in parts.values():
        head = next(iter(chunks.values()))
        if len(chunks) != head["chunks"]:
            continue
        prices = {iid: (price, ts) for k in range(head["chunks"]) for iid, price, ts in chunks[k]["prices"]}
        held = {int(p): o for p, o in head.get("held", {}).items()}
        out.append(Checkpoint(head["mark"], MarketState(prices, head["next_sweep"], head["judged"]), held))
    return sorted(out, key=lambda c: c.mark, reverse=True)


def new_topic(settings: Settings) -> NewTopic:
    """The checkpoint topic: compacted, one partition, rolled often so that it stays a few checkpoints long."""
    config = {"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES), "segment.ms": "60000",
              "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": "60000"}
    return NewTopic(topic_name(settings), 1, settings.replication_factor, topic_configs=config)


async def read_all(settings: Settings) -> list[Checkpoint]:
    """Every complete checkpoint on the topic, newest mark first."""
    tp = TopicPartition(topic_name(settings), 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, max_partition_fetch_bytes=MAX_RECORD_BYTES,
                                **settings.kafka_security.client_options())
    await consumer.start()
    latest: dict[bytes, bytes] = {}
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for r in records:
                    if r.value is None:
                        latest.pop(r.key, None)
                    else:
                        latest[r.key] = r.value
    finally:
        await consumer.stop()
    return assemble(latest.values())


def choose(checkpoints: list[Checkpoint], resume: Mapping[str, Micros]) -> Checkpoint | None:
    """The newest checkpoint no book is behind (`Checkpoint.usable`), if any."""
    return next((c for c in checkpoints if c.usable(resume)), None)


async def partitions(settings: Settings, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the topics, from the broker's metadata."""
    admin = admin_client(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return sorted(TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"])


async def seek_prices(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], mark: Micros) -> None:
    """Each price partition from its first record stamped at or after mark - SEEK_MARGIN (its end if none)."""
    at_ms = max(0, (mark - SEEK_MARGIN) // 1000)
    found = await consumer.offsets_for_times({tp: at_ms for tp in partitions})
    ends = await consumer.end_offsets(partitions)
    for tp in partitions:
        hit = found.get(tp)
        consumer.seek(tp, hit.offset if hit is not None else ends[tp])
