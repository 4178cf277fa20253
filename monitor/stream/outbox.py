"""The outbox every record the worker writes goes through.

A record is handed to the producer at once (not held back until the Faust event being processed
is acknowledged, Faust's "attachments"), and its delivery is awaited later, all together, by
`Outbox.settle`: before a batch of book messages is acknowledged (so no offset is committed before
the records of what it read, and a dead letter is on the broker before the offset of what it
replaces), and before a checkpoint. The producer keeps the order of records sent to one
partition. Waiting for each record's acknowledgement in turn capped the worker at one broker
round trip a fill (~850 fills/s; BENCHMARKS.md).

A record that must not reach the broker before the ones sent ahead of it (a watch after the
alert events it records: an event is never lost behind its watch) goes by `Outbox.send_after`: it
is handed over once those are delivered, by a task of its own, so the loop that sent it goes on
instead of waiting a broker round trip under the worker's lock (at 20,000 prices/s those waits
held the price loop ~1 s behind the feed).
"""

from __future__ import annotations

import asyncio
from typing import Any


class Outbox:
    """Records sent without waiting, and the wait for all of them (see the module's docstring)."""

    def __init__(self) -> None:
        # Until delivered; a failed delivery stays, so that every later `settle` raises it.
        self._pending: set[asyncio.Future[Any]] = set()

    async def send(self, topic: Any, *, key: Any, value: Any, partition: int | None = None,
                   value_serializer: str | None = None) -> None:
        """Hand one record to the producer (Faust serialises key and value as `topic` says)."""
        self._track(await self._hand_over(topic, key, value, partition, value_serializer))

    def send_after(self, topic: Any, *, key: Any, value: Any, partition: int | None = None,
                   value_serializer: str | None = None) -> None:
        """Hand one record to the producer once every record handed over before it (by `send` or
        `send_after`, from any task) is on the broker; return at once. `settle` counts it as pending
        until it is delivered; if one of those before it fails, it is never sent and `settle` raises.
        Records sent after one another this way reach the broker in that order."""
        ahead = list(self._pending)

        async def deliver() -> None:
            if ahead:
                await asyncio.gather(*ahead)
            await (await self._hand_over(topic, key, value, partition, value_serializer))

        self._track(asyncio.ensure_future(deliver()))

    @staticmethod
    async def _hand_over(topic: Any, key: Any, value: Any, partition: int | None,
                         value_serializer: str | None) -> asyncio.Future[Any]:
        message = topic.as_future_message(key=key, value=value, partition=partition,
                                          value_serializer=value_serializer)
        return await topic.publish_message(message, wait=False)

    def _track(self, delivery: asyncio.Future[Any]) -> None:
        self._pending.add(delivery)
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            self._pending.discard(delivery)

    async def settle(self) -> None:
        """Wait until every record handed over so far, by any task, is on the broker; raise if one
        is not (the caller's loop then fails loudly)."""
        if self._pending:
            await asyncio.gather(*self._pending)

    def __len__(self) -> int:
        """Records handed over and not yet known to be delivered."""
        return len(self._pending)

