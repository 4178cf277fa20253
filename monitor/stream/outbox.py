"""The outbox every record the worker writes goes through.

A record is handed over at once (not held back until the Faust event being processed is
acknowledged, Faust's "attachments"), and its delivery is awaited later, all together, by
`Outbox.settle`: before a batch of book messages is acknowledged (so no offset is committed before
the records of what it read, and a dead letter is on the broker before the offset of what it
replaces), and before a watch is saved after the events it records (an event is never lost
behind its watch). Waiting for each record's acknowledgement in turn capped the worker at one
broker round trip a fill (~850 fills/s; BENCHMARKS.md).

A record for a given partition (the state records: book inputs, policies, watches) is appended to
that partition's open batch, and `settle` ships the open batches first: one producer call and one
delivery to wait for a batch, where a record each cost ~80 us of Faust's and aiokafka's send path
and its own delivery future (a fill writes one). A record without a partition (alerts, signals,
dead letters, checkpoints: partitioned by key) goes to the producer on its own. Either way the
order of records sent to one partition is kept: a partition's batches are shipped in the order
they were opened, and nothing else writes to the partitions batches go to.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

# The producer's batch size (Faust's `producer_max_batch_size`, 16 KB by default): a batch of book
# messages writes ~400 B a fill, so a partition's records of a 500-message batch ship as one.
BATCH_BYTES = 1 << 20


class Outbox:
    """Records sent without waiting, and the wait for all of them (see the module's docstring)."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer  # the started aiokafka producer (create_batch, send_batch)
        self._open: dict[tuple[str, int], Any] = {}  # (topic, partition) -> batch not shipped yet
        self._shipping = asyncio.Lock()  # a partition's batches reach the producer in the order opened
        # Until delivered; a failed delivery stays, so that every later `settle` raises it.
        self._pending: set[asyncio.Future[Any]] = set()

    async def send(self, topic: Any, *, key: Any, value: Any, partition: int | None = None,
                   value_serializer: str | None = None) -> None:
        """Hand one record over (Faust serialises key and value as `topic` says): to its partition's
        open batch, or, without a partition, to the producer."""
        if partition is None:
            message = topic.as_future_message(key=key, value=value, value_serializer=value_serializer)
            self._track(await topic.publish_message(message, wait=False))
            return
        key_bytes, _ = topic.prepare_key(key, None)
        value_bytes, _ = topic.prepare_value(value, value_serializer)
        where = (topic.get_topic_name(), partition)
        while True:  # round twice at most (a batch takes its first record whatever its size), unless other tasks fill it
            batch = self._open.get(where)
            if batch is None:
                batch = self._open[where] = self._producer().create_batch()
            if batch.append(key=key_bytes, value=value_bytes, timestamp=None) is not None:
                return
            del self._open[where]  # full: shipped, and the record goes into the partition's next batch,
            await self._ship(where, batch)  # which another task may have opened meanwhile

    async def _ship(self, where: tuple[str, int], batch: Any) -> None:
        topic, partition = where
        batch.close()  # complete: the sender takes it at once, without the producer's linger
        async with self._shipping:
            self._track(await self._producer().send_batch(batch, topic, partition=partition))

    def _track(self, delivery: asyncio.Future[Any]) -> None:
        self._pending.add(delivery)
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            self._pending.discard(delivery)

    async def settle(self) -> None:
        """Ship the open batches, then wait until every record handed over so far, by any task, is
        on the broker; raise if one is not (the caller's loop then fails loudly)."""
        while self._open:
            where = next(iter(self._open))
            await self._ship(where, self._open.pop(where))
        if self._pending:
            await asyncio.gather(*self._pending)
