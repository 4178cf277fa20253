"""What a worker persists, and how it comes back after a restart, a rebalance or a failover.

Three compacted changelogs. Every record of a book is written to the partition its input came
from, whatever its key, so a book's state moves with the book's input partition:

* `policies`: portfolio_id -> the policy document's JSON text;
* `watches`: portfolio_id -> `Watch.to_dict()` (alert lifecycles, peak NAV, signals, clock);
* `book-inputs`: one record per fill and per snapshot read that still matters, key
  `["B1", "fill", "F-1"]` or `["B1", "snapshot", as_of]` as JSON text, value the input as read
  with its Kafka coordinates (`StagedBookEvent.to_record`).

A book's input is recorded before its offset can be committed (a write-ahead log), and its
record is deleted when the engine says the book let it go (`BookChange`: a snapshot took the
fill in). Positions and cash are never written: a restored worker feeds these records back
through the gate, and the engine rebuilds the book from them exactly as it built it live. So a
fill costs one record of a few hundred bytes, however many the book has had, and the largest
record is a snapshot (see the README, "State").

`policies` and `watches` (a record a book) are Faust tables. `book-inputs` (a record a fill) is
read back by the worker itself, with a plain consumer, at each recovery: Faust's table recovery
took ~3,500 records/s (11.4 s for a day's 40,000 fills), a plain read takes a few hundred
thousand a second.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from monitor.engine import Fill, Policy, Snapshot
from monitor.engine.engine import BookChange, Watch
from monitor.engine.model import Micros
from monitor.ops.config import Settings
from monitor.stream.codec import decode_event
from monitor.stream.outbox import Outbox

MAX_RECORD_BYTES = 4 * 1024 * 1024  # the producers' and changelogs' size limit (a record is capped below it)


class Origin(NamedTuple):
    """Where a message was read: what a dead letter names, and the partition a book's state goes to."""

    topic: str  # logical
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
                "timestamp_ms": self.timestamp_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Origin":
        key = d["key"].encode("utf-8") if d["key"] is not None else None
        return cls(d["topic"], d["partition"], d["offset"], key, d["timestamp_ms"])


@dataclass(frozen=True, slots=True)
class StagedBookEvent:
    """A checked fill or snapshot on its way to the engine, with where it came from. `value` is the
    message as read, kept for a dead letter (a fill may still be refused when applied); a snapshot
    is recorded in its compact form instead, so its record stays within the input's size."""

    event: Fill | Snapshot
    origin: Origin
    value: bytes | None

    @property
    def ts(self) -> Micros:
        return self.event.ts if isinstance(self.event, Fill) else self.event.as_of

    @property
    def key(self) -> str:
        """The record's key in `book-inputs`."""
        e = self.event
        pid = e.portfolio_id
        return input_key(pid, "fill", e.fill_id) if isinstance(e, Fill) else input_key(pid, "snapshot", e.as_of)

    def to_record(self) -> dict[str, Any]:
        e = self.event
        if isinstance(e, Fill):
            return {"origin": self.origin.to_dict(), "value": (self.value or b"").decode("utf-8")}
        return {"origin": self.origin.to_dict(),
                "snapshot": {"portfolio_id": e.portfolio_id, "as_of": e.as_of, "cash": dict(e.cash),
                             "positions": dict(e.positions)}}

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "StagedBookEvent":
        origin = Origin.from_dict(d["origin"])
        if "snapshot" in d:
            s = d["snapshot"]
            return cls(Snapshot(s["portfolio_id"], s["as_of"], s["cash"], s["positions"]), origin, None)
        value = d["value"].encode("utf-8")
        return cls(Fill.from_message(orjson.loads(value)), origin, value)  # schema-checked when first read


def input_key(portfolio_id: str, kind: str, ident: str | int) -> str:
    return orjson.dumps([portfolio_id, kind, ident]).decode()


def inputs_topic_name(settings: Settings) -> str:
    return settings.topic(f"{settings.app_id}-book-inputs-changelog")


def inputs_topic(settings: Settings) -> NewTopic:
    """The `book-inputs` changelog: compacted, one partition per book input partition."""
    return NewTopic(inputs_topic_name(settings), settings.partitions, settings.replication_factor,
                    topic_configs={"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES)})


class BookTables:
    """The worker's three tables: writes go to the book's input partition through the outbox (so an
    input's offset is committed only after its record is on the broker); reads are the tables'
    content, recovered for the partitions this worker owns."""

    def __init__(self, app: Any, settings: Settings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        partitions = settings.partitions
        config = {"max.message.bytes": str(MAX_RECORD_BYTES)}
        # Each table key's changelog partition: learnt from Faust's recovery (one callback a record
        # read) and from this worker's writes; `recovered` keeps the keys of the partitions owned.
        self._key_partitions: dict[str, dict[str, int]] = {"policies": {}, "watches": {}}
        self.policies = app.Table("policies", key_type=str, partitions=partitions, extra_topic_configs=config,
                                  on_changelog_event=self._recovering("policies"))
        # Watches are written as JSON by orjson and kept as the bytes written (Faust's own JSON codec
        # cost more than the rest of writing one, and its recovery decoded every record).
        self.watches = app.Table("watches", key_type=str, partitions=partitions, extra_topic_configs=config,
                                 value_type=bytes, on_changelog_event=self._recovering("watches"))
        self.inputs: dict[str, bytes] = {}  # book-inputs: key -> record, of the partitions owned
        self.inputs_topic = app.topic(inputs_topic_name(settings), key_serializer="raw", value_serializer="raw")
        self.partition_of: dict[str, int] = {}  # portfolio_id -> its input partition
        self._snapshots: dict[str, set[Micros]] = {}  # portfolio_id -> as_of of each snapshot recorded

    # -- writes ------------------------------------------------------------------

    async def record_input(self, staged: StagedBookEvent) -> bool:
        """Record a fill or snapshot before it waits in the gate; False if it is recorded already
        (a re-delivery after a restart, which must not be applied twice)."""
        key = staged.key
        if key in self.inputs:
            return False
        pid = staged.event.portfolio_id
        if isinstance(staged.event, Snapshot):
            self._snapshots.setdefault(pid, set()).add(staged.event.as_of)
        await self._write_input(key, orjson.dumps(staged.to_record()), staged.origin.partition)
        return True

    def newest_snapshot(self, portfolio_id: str) -> Micros | None:
        """as_of of the newest snapshot recorded for the book (in the gate or in force)."""
        recorded = self._snapshots.get(portfolio_id)
        return max(recorded) if recorded else None

    async def forget(self, change: BookChange) -> None:
        """Delete the records a book let go: the fills its snapshot took in, older snapshots."""
        partition = self.partition_of.get(change.portfolio_id)
        if partition is None:
            return
        keys = [input_key(change.portfolio_id, "fill", fid) for fid in change.forgotten_fills]
        snapshots = self._snapshots.get(change.portfolio_id, set())
        if change.as_of is not None:
            superseded = {as_of for as_of in snapshots if as_of < change.as_of}
            snapshots -= superseded
            keys += [input_key(change.portfolio_id, "snapshot", as_of) for as_of in sorted(superseded)]
        for key in keys:
            if key in self.inputs:
                await self._write_input(key, None, partition)

    async def forget_input(self, staged: StagedBookEvent) -> None:
        """Delete one input's record (it was refused when applied)."""
        if staged.key in self.inputs:
            await self._write_input(staged.key, None, staged.origin.partition)

    async def save_policy(self, portfolio_id: str, text: str, partition: int) -> None:
        await self._write(self.policies, portfolio_id, text, partition)

    async def save_watch(self, portfolio_id: str, watch: Watch) -> None:
        partition = self.partition_of.get(portfolio_id)
        if partition is not None:
            await self._write(self.watches, portfolio_id, orjson.dumps(watch.to_dict()), partition)

    async def _write_input(self, key: str, record: bytes | None, partition: int) -> None:
        """Set (or delete, for None) a book input's record; its key on the changelog is the JSON
        text of the key string, as Faust writes a table's keys."""
        if record is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = record
        await self.outbox.send(self.inputs_topic, key=orjson.dumps(key), value=record, partition=partition)

    async def _write(self, table: Any, key: str, value: Any, partition: int) -> None:
        """Set a Faust table's key and send its changelog record to `partition` (through the outbox:
        delivered by the next `Outbox.settle`).

        `table[key] = value` would send to the partition of the event being processed and leave
        the record in Faust's producer buffer, which stops draining under the gate's write rate
        (faust-streaming 0.15).
        """
        table.data[key] = value
        self._key_partitions[table.name][key] = partition
        await self.outbox.send(table.changelog_topic, key=key, value=value, partition=partition,
                               value_serializer="raw" if isinstance(value, bytes) else None)

    # -- recovery ----------------------------------------------------------------

    def _recovering(self, table: str) -> Callable[[Any], Awaitable[None]]:
        """Faust's callback for each changelog record its recovery reads: the key's partition."""
        partitions = self._key_partitions[table]

        async def read(event: Any) -> None:
            partitions[event.key] = event.message.partition

        return read

    def recovered(self, owned: set[int], inputs: dict[str, bytes]) -> "Recovered":
        """The tables' content after a recovery, of the partitions this worker owns now: what the
        engine is rebuilt from. Faust has recovered policies and watches (the keys of partitions
        not owned, which it may still hold, are dropped here); `inputs` are the book inputs read
        from their changelog (`read_inputs`)."""
        self.partition_of.clear()
        self._snapshots.clear()
        for table in (self.policies, self.watches):
            store, partitions = table.data, self._key_partitions[table.name]
            for key, partition in list(partitions.items()):
                if partition not in owned:
                    store.pop(key, None)
                    del partitions[key]
                    continue
                self.partition_of[key] = partition
        self.inputs = inputs
        staged = sorted((StagedBookEvent.from_record(orjson.loads(v)) for v in self.inputs.values()),
                        key=lambda s: (s.ts, s.origin.partition, s.origin.offset))
        for s in staged:
            self.partition_of[s.event.portfolio_id] = s.origin.partition
            if isinstance(s.event, Snapshot):
                self._snapshots.setdefault(s.event.portfolio_id, set()).add(s.event.as_of)
        policies = {pid: decode_policy(pid, text) for pid, text in self.policies.data.items()}
        watches = {pid: Watch.from_dict(orjson.loads(d)) for pid, d in self.watches.data.items()}
        return Recovered(policies, watches, staged)


async def read_inputs(settings: Settings, partitions: set[int], quiet_s: float = 30.0) -> dict[str, bytes]:
    """The `book-inputs` changelog's partitions read from their start to their end now, one at a
    time (`read_range`): the last record of each key, tombstones deleting."""
    if not partitions:
        return {}
    tps = [TopicPartition(inputs_topic_name(settings), p) for p in sorted(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=MAX_RECORD_BYTES, fetch_max_bytes=4 * MAX_RECORD_BYTES,
                                **settings.kafka_security.client_options())
    await consumer.start()
    try:
        end = await consumer.end_offsets(tps)
        latest: dict[str, bytes] = {}
        for tp in tps:
            async for records in read_range(consumer, tp, None, end[tp], quiet_s):
                for r in records:
                    key = orjson.loads(r.key)
                    if r.value is None:
                        latest.pop(key, None)
                    else:
                        latest[key] = r.value
        return latest
    finally:
        await consumer.stop()


async def read_range(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int | None, end: int,
                     quiet_s: float) -> AsyncIterator[list[Any]]:
    """One partition's records from `start` (None: its beginning) to below `end`, in batches, with
    `consumer` assigned to it alone. Done when the position reaches `end`, or when the broker
    answers a fetch at the position with no records: compaction or transaction markers can leave
    no record below `end`. That answer means "nothing more" only for a fetch of one partition: in a
    fetch of several, the broker leaves a partition empty once the answer is full of the others'
    records. Fails if the broker answers nothing for `quiet_s` (a recovery must not hang)."""
    if end <= (start or 0):
        return  # nothing to read: no seek (a round trip to the broker)
    consumer.assign([tp])
    if start is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, start)
    moved_ms = _now_ms()  # when records were last taken
    heard = time.monotonic()
    while await consumer.position(tp) < end:
        # Asked before taking: a fetch answered by then with records is taken below, so an answer
        # since the last take that leaves nothing to take was empty.
        answered = consumer.last_poll_timestamp(tp)
        records = (await consumer.getmany(tp, timeout_ms=0)).get(tp, [])
        if records:
            moved_ms, heard = _now_ms(), time.monotonic()
            yield [r for r in records if r.offset < end]
        elif answered is not None and answered > moved_ms:
            return
        elif time.monotonic() - heard > quiet_s:
            raise TimeoutError(f"{tp.topic}[{tp.partition}]: nothing delivered for {quiet_s:.0f} s, "
                               f"offsets below {end} not read through")
        else:
            await asyncio.sleep(0.01)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Recovered(NamedTuple):
    policies: dict[str, Policy]
    watches: dict[str, Watch]
    inputs: list[StagedBookEvent]  # every recorded fill and snapshot, in the order to apply them


def decode_policy(portfolio_id: str, text: str) -> Policy:
    policy = decode_event("policies", text.encode("utf-8"), f"changelog:{portfolio_id}")
    assert isinstance(policy, Policy)
    return policy
