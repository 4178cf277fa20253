"""What Faust's consumer gets wrong around a rebalance, and how the worker makes up for it: no
offset committed past a message nobody read (`Consumer`), none of a partition's messages left out
(`GapReader`).

During a rebalance Faust skips the messages it fetched before it: while partitions are being
revoked (flow control is off) and, after the assignment, any message of the old generation. It
acknowledges each skipped message as if processed (faust-streaming 0.15, `Stream.__aiter__`).
At a revoke it has also forgotten the partitions' committed offsets, so its next commit takes a
run of skipped offsets for done (`Consumer._new_offset` checks a gap before the first acknowledged
offset only against a committed offset it knows): the offset committed jumps past messages no
agent handled, and the book partition's next owner never reads them. Here an acknowledgement
counts only for a message handed over (`tracked`: marked by a Faust stream when it hands a message
to an agent, by `delivery.BookBatches` when the book loop takes it): a skipped
message leaves a gap the commit stops at, and after the rebalance the consumer reads it again
from the committed offset.

Faust can also leave messages out of what it delivers: its fetch loop drops a message older
than the last one it delivered of the partition, and that mark can move past messages not yet
handed over (a seek at a rebalance, with a fetch of before it still being delivered). The
two-worker fault test on 8 partitions once found a few fills of each of a killed worker's
partitions missing from the book-inputs changelog, with the consumer group's offsets past them.
Whatever the path, the book loop now checks that each message follows the last one read, and
reads any left out with `GapReader` before it (worker.py).
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message

from monitor.ops.config import Settings
from monitor.stream.tables import read_range


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; a message no agent was handed is never acknowledged."""

    def ack(self, message: Message) -> bool:
        if not message.tracked:
            return False  # skipped by a stream during a rebalance: to be read again, not committed
        return super().ack(message)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def use_safe_commits(app: faust.App) -> None:
    """Make `app` consume through `Consumer`; before anything has used its transport."""
    app.transport = Transport(app.conf.broker_consumer, app)



class GapReader:
    """Book messages read by offset with a plain consumer: those a Faust stream's offsets jumped over.

    Faust delivers a partition's messages in order, but around a rebalance it can leave some out
    (skipped, or dropped as already read after a seek). The book loop notices when a message comes
    after one that is not its predecessor, and reads what lies between from the broker itself; nothing
    there (the range held only transaction markers) is nothing to read."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, topic: str, partition: int, start: int, end: int, quiet_s: float = 30.0) -> list[Any]:
        """The records of offsets `start` to `end - 1` that the broker holds (`tables.read_range`)."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self._settings.bootstrap_servers, group_id=None,
                                              enable_auto_commit=False, auto_offset_reset="earliest",
                                              **self._settings.kafka_security.client_options())
            await self._consumer.start()
        records: list[Any] = []
        async for batch in read_range(self._consumer, TopicPartition(topic, partition), start, end, quiet_s):
            records += batch
        return records

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
