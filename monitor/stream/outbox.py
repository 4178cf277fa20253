"""The outbox every record the worker writes goes through.

A record is handed to the producer at once (not held back until the Faust event being processed
is acknowledged, Faust's "attachments"), and its delivery is awaited later, all together, by
`Outbox.settle`: before a batch of book messages is acknowledged (so no offset is committed before
the records of what it read, and a dead letter is on the broker before the offset of what it
replaces), and before a watch is saved after the events it records (an event is never lost
behind its watch). The producer keeps the order of records sent to one partition. Waiting for
each record's acknowledgement in turn capped the worker at one broker round trip a fill
(~850 fills/s; BENCHMARKS.md).
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
        message = topic.as_future_message(key=key, value=value, partition=partition,
                                          value_serializer=value_serializer)
        delivery = await topic.publish_message(message, wait=False)
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
