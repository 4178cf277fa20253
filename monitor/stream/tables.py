"""What a worker persists, and how it comes back after a restart, a rebalance or a failover.

Three changelog-backed Faust tables. Every record of a book is written to the partition its
input came from, whatever its key, so a book's state moves with the book's input partition:

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from monitor.engine import Fill, Policy, Snapshot
from monitor.engine.engine import BookChange, Watch
from monitor.engine.model import Micros
from monitor.stream.codec import decode_event

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


def _parse_key(key: str) -> tuple[str, str, Any]:
    pid, kind, ident = orjson.loads(key)
    return pid, kind, ident


class BookTables:
    """The worker's three tables: writes go to the book's input partition and are awaited (so an
    input's offset is committed only after its record is on the broker); reads are the tables'
    content, which Faust recovers from the changelogs for the partitions this worker owns."""

    def __init__(self, app: Any, partitions: int) -> None:
        config = {"max.message.bytes": str(MAX_RECORD_BYTES)}
        self.policies = app.Table("policies", key_type=str, partitions=partitions, extra_topic_configs=config)
        # Watches and inputs are written as JSON by orjson and kept as the bytes written (Faust's own JSON
        # codec cost more than the rest of recording a fill, and its recovery decoded every record).
        raw = {"value_type": bytes}  # Faust: the "raw" codec
        self.watches = app.Table("watches", key_type=str, partitions=partitions, extra_topic_configs=config, **raw)
        self.inputs = app.Table("book-inputs", key_type=str, partitions=partitions, extra_topic_configs=config, **raw)
        self.partition_of: dict[str, int] = {}  # portfolio_id -> its input partition
        self._snapshots: dict[str, set[Micros]] = {}  # portfolio_id -> as_of of each snapshot recorded

    @property
    def all(self) -> tuple[Any, ...]:
        return self.policies, self.watches, self.inputs

    # -- writes ------------------------------------------------------------------

    async def record_input(self, staged: StagedBookEvent) -> bool:
        """Record a fill or snapshot before it waits in the gate; False if it is recorded already
        (a re-delivery after a restart, which must not be applied twice)."""
        key = staged.key
        if key in self.inputs.data:
            return False
        pid = staged.event.portfolio_id
        if isinstance(staged.event, Snapshot):
            self._snapshots.setdefault(pid, set()).add(staged.event.as_of)
        await self._write(self.inputs, key, orjson.dumps(staged.to_record()), staged.origin.partition)
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
            if key in self.inputs.data:
                await self._write(self.inputs, key, None, partition)

    async def forget_input(self, staged: StagedBookEvent) -> None:
        """Delete one input's record (it was refused when applied)."""
        if staged.key in self.inputs.data:
            await self._write(self.inputs, staged.key, None, staged.origin.partition)

    async def save_policy(self, portfolio_id: str, text: str, partition: int) -> None:
        await self._write(self.policies, portfolio_id, text, partition)

    async def save_watch(self, portfolio_id: str, watch: Watch) -> None:
        partition = self.partition_of.get(portfolio_id)
        if partition is not None:
            await self._write(self.watches, portfolio_id, orjson.dumps(watch.to_dict()), partition)

    async def _write(self, table: Any, key: str, value: Any, partition: int) -> None:
        """Set (or delete, for None) a key and send its changelog record to `partition`, awaited.

        `table[key] = value` would send to the partition of the event being processed and leave
        the record in Faust's producer buffer, which stops draining under the gate's write rate
        (faust-streaming 0.15). The store also learns the key's partition, so that Faust drops the
        key when the partition is revoked.
        """
        store = table.data
        if value is None:
            store.pop(key, None)
            store._key_partition.pop(key, None)
            await table.changelog_topic.send(key=key, value=None, partition=partition, value_serializer="raw",
                                             force=True)
        else:
            store[key] = value
            store._key_partition[key] = partition
            serializer = "raw" if isinstance(value, bytes) else None
            await table.changelog_topic.send(key=key, value=value, partition=partition, value_serializer=serializer,
                                             force=True)

    # -- recovery ----------------------------------------------------------------

    def recovered(self, owned: set[int]) -> "Recovered":
        """The tables' content after Faust's recovery, of the partitions this worker owns now: what
        the engine is rebuilt from. Keys of other partitions are dropped (Faust's memory store drops
        them too, one table at a time)."""
        self.partition_of.clear()
        self._snapshots.clear()
        for table in self.all:
            store = table.data
            for key, partition in list(store._key_partition.items()):
                if partition not in owned:
                    store.pop(key, None)
                    del store._key_partition[key]
                    continue
                self.partition_of[_parse_key(key)[0] if table is self.inputs else key] = partition
        staged = sorted((StagedBookEvent.from_record(orjson.loads(v)) for v in self.inputs.data.values()),
                        key=lambda s: (s.ts, s.origin.partition, s.origin.offset))
        for s in staged:
            if isinstance(s.event, Snapshot):
                self._snapshots.setdefault(s.event.portfolio_id, set()).add(s.event.as_of)
        policies = {pid: decode_policy(pid, text) for pid, text in self.policies.data.items()}
        watches = {pid: Watch.from_dict(orjson.loads(d)) for pid, d in self.watches.data.items()}
        return Recovered(policies, watches, staged)


class Recovered(NamedTuple):
    policies: dict[str, Policy]
    watches: dict[str, Watch]
    inputs: list[StagedBookEvent]  # every recorded fill and snapshot, in the order to apply them


def decode_policy(portfolio_id: str, text: str) -> Policy:
    policy = decode_event("policies", text.encode("utf-8"), f"changelog:{portfolio_id}")
    assert isinstance(policy, Policy)
    return policy
