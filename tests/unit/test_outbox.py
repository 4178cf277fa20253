"""The outbox: records handed over at once, their deliveries awaited together by `settle`; records for
a partition shipped as batches, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitor.stream.outbox import Outbox


class Topic:
    """A topic whose deliveries the test completes by hand (the producer's acknowledgements)."""

    def __init__(self, name: str = "t") -> None:
        self.name = name
        self.deliveries: list[tuple[Any, asyncio.Future[Any]]] = []

    def get_topic_name(self) -> str:
        return self.name

    def prepare_key(self, key: Any, serializer: Any) -> tuple[bytes, None]:
        return key if isinstance(key, bytes) else str(key).encode(), None

    def prepare_value(self, value: Any, serializer: Any) -> tuple[bytes | None, None]:
        return value if value is None or isinstance(value, bytes) else str(value).encode(), None

    def as_future_message(self, **fields: Any) -> dict[str, Any]:
        return fields

    async def publish_message(self, message: dict[str, Any], wait: bool = True) -> asyncio.Future[Any]:
        assert wait is False  # never one broker round trip a record
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append((message["key"], delivery))
        return delivery


def test_settle_waits_for_every_record_handed_over_by_any_task() -> None:
    async def go() -> list[str]:
        outbox, topic, seen = Outbox(lambda: None), Topic(), []
        await outbox.send(topic, key=b"a", value=b"1")
        await outbox.send(topic, key=b"b", value=b"2")
        other = asyncio.create_task(outbox.settle())  # another loop settles first: it takes nothing away
        mine = asyncio.create_task(outbox.settle())
        await asyncio.sleep(0)
        seen.append(f"settled before any delivery: {mine.done() or other.done()}")
        topic.deliveries[0][1].set_result("ok")
        await asyncio.sleep(0)
        seen.append(f"settled after one of two: {mine.done()}")
        topic.deliveries[1][1].set_result("ok")
        await asyncio.wait_for(asyncio.gather(mine, other), 1.0)
        await asyncio.wait_for(outbox.settle(), 1.0)  # nothing pending: returns at once
        return seen

    assert asyncio.run(go()) == ["settled before any delivery: False", "settled after one of two: False"]


def test_a_failed_delivery_fails_every_later_settle() -> None:
    async def go() -> None:
        outbox, topic = Outbox(lambda: None), Topic()
        await outbox.send(topic, key=b"a", value=b"1")
        topic.deliveries[0][1].set_exception(RuntimeError("broker refused"))
        for _ in range(2):
            with pytest.raises(RuntimeError, match="broker refused"):
                await outbox.settle()

    asyncio.run(go())


class Batch:
    def __init__(self, capacity: int) -> None:
        self.capacity, self.records, self.closed = capacity, [], False

    def close(self) -> None:
        self.closed = True

    def append(self, *, key: bytes, value: bytes | None, timestamp: None) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class Producer:
    """aiokafka's batch calls, with the batches shipped and their deliveries kept for the test."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.shipped: list[tuple[str, int, list[tuple[bytes, bytes | None]], asyncio.Future[Any]]] = []

    def create_batch(self) -> Batch:
        return Batch(self.capacity)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert batch.closed  # else the producer lingers before sending it
        await asyncio.sleep(0)  # the producer may make the caller wait (metadata, a batch not yet drained)
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.shipped.append((topic, partition, batch.records, delivery))
        return delivery


def test_a_partitions_records_ship_as_batches_in_order_at_settle() -> None:
    async def go() -> tuple[list[Any], list[Any], bool]:
        producer = Producer(capacity=3)
        outbox, inputs, watches = Outbox(lambda: producer), Topic("inputs"), Topic("watches")
        for k in range(4):
            await outbox.send(inputs, key=b"k%d" % k, value=b"v%d" % k, partition=1)
        await outbox.send(watches, key=b"w", value=b"x", partition=1)
        await outbox.send(inputs, key=b"gone", value=None, partition=0)  # a tombstone
        before = [(t, p, [k for k, _ in r]) for t, p, r, _ in producer.shipped]  # only the full batch
        settling = asyncio.create_task(outbox.settle())
        await asyncio.sleep(0.01)
        waited = not settling.done()  # shipped, not delivered
        for *_, delivery in producer.shipped:
            delivery.set_result(None)
        await asyncio.wait_for(settling, 1.0)
        after = [(t, p, [k for k, _ in r]) for t, p, r, _ in producer.shipped]
        return before, after, waited

    before, after, waited = asyncio.run(go())
    assert before == [("inputs", 1, [b"k0", b"k1", b"k2"])]
    assert after == [("inputs", 1, [b"k0", b"k1", b"k2"]), ("inputs", 1, [b"k3"]), ("watches", 1, [b"w"]),
                     ("inputs", 0, [b"gone"])]
    assert waited


def test_a_failed_batch_fails_every_later_settle() -> None:
    async def go() -> None:
        producer = Producer(capacity=10)
        outbox = Outbox(lambda: producer)
        await outbox.send(Topic(), key=b"a", value=b"1", partition=0)
        settling = asyncio.create_task(outbox.settle())
        await asyncio.sleep(0.01)
        producer.shipped[0][3].set_exception(RuntimeError("record too large"))
        with pytest.raises(RuntimeError, match="record too large"):
            await settling
        with pytest.raises(RuntimeError, match="record too large"):
            await outbox.settle()  # and every settle after it

    asyncio.run(go())


def test_a_record_sent_while_a_full_batch_ships_is_not_lost() -> None:
    """One task's record fills the partition's batch and waits while it ships; another task's record
    for the partition meanwhile opens the next batch: both records reach the producer."""

    async def go() -> list[bytes]:
        producer = Producer(capacity=1)
        outbox, topic = Outbox(lambda: producer), Topic("inputs")
        await outbox.send(topic, key=b"a", value=b"1", partition=0)
        first = asyncio.create_task(outbox.send(topic, key=b"b", value=b"2", partition=0))  # "a" full: ships
        await asyncio.sleep(0)
        await outbox.send(topic, key=b"c", value=b"3", partition=0)  # while "a" ships
        await first
        settling = asyncio.create_task(outbox.settle())
        await asyncio.sleep(0.01)
        for *_, delivery in producer.shipped:
            delivery.set_result(None)
        await asyncio.wait_for(settling, 1.0)
        return [key for _, _, records, _ in producer.shipped for key, _ in records]

    assert sorted(asyncio.run(go())) == [b"a", b"b", b"c"]
