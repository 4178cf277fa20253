"""The outbox: records handed over at once, their deliveries awaited together by `settle`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitor.stream.outbox import Outbox


class Topic:
    """A topic whose deliveries the test completes by hand (the producer's acknowledgements)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[Any, asyncio.Future[Any]]] = []

    def as_future_message(self, **fields: Any) -> dict[str, Any]:
        return fields

    async def publish_message(self, message: dict[str, Any], wait: bool = True) -> asyncio.Future[Any]:
        assert wait is False  # never one broker round trip a record
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append((message["key"], delivery))
        return delivery


def test_settle_waits_for_every_record_handed_over_by_any_task() -> None:
    async def go() -> list[str]:
        outbox, topic, seen = Outbox(), Topic(), []
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
        outbox, topic = Outbox(), Topic()
        await outbox.send(topic, key=b"a", value=b"1")
        topic.deliveries[0][1].set_exception(RuntimeError("broker refused"))
        for _ in range(2):
            with pytest.raises(RuntimeError, match="broker refused"):
                await outbox.settle()

    asyncio.run(go())
