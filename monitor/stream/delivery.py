"""How book messages reach the worker: each fetch's book messages handed over at once, as a batch.

Faust hands a consumed message to its agents one at a time: its fetch loop starts four tasks a
message (the delivery and three events it races), its conductor puts the message on the agent's
channel, the stream takes it off, and `take_events` collects a batch message by message. At a
day's volume (`monitor bench-fills`) that path was ~29% of the worker's busy main thread, more than
the book messages' own decoding, recording and applying.

Here Faust's consumer still does everything else: the group, the assignment, the fetching in its
own thread, flow control around a rebalance, the offsets it commits, the tables' changelogs (their
messages still go through Faust's path one by one: they are few). Only the messages of the book
topics leave its fetch loop as one list a fetch, on a bounded queue (`BookBatches`), which the
worker's book loop takes whole. The loop keeps what a Faust stream would have kept (`current`: a
message fetched before a rebalance is skipped, as the stream skips it), marks what it takes as
handed over (`take`), and acknowledges each message once its records are on the broker, so the
commits are what `commits.Consumer` makes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message

from monitor.stream.commits import Consumer as SafeAckConsumer

# Book fetches waiting for the book loop at most (the worker caps a fetch at 500 messages with
# Faust's `broker_max_poll_records`): about the 4,096 messages a Faust stream buffers.
QUEUED_FETCHES = 8


class BookBatches:
    """The book topics' fetched messages, a fetch at a time, for the worker's book loop."""

    def __init__(self, app: faust.App, topics: set[str]) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self._fetches: asyncio.Queue[list[Message]] = asyncio.Queue(QUEUED_FETCHES)

    async def put(self, messages: list[Message]) -> None:
        await self._fetches.put(messages)

    async def take(self, most: int) -> list[Message]:
        """The next fetch's messages (waiting for one), with those of the fetches queued behind it
        up to `most`; only those current (`current`), each tracked as handed to an agent."""
        messages = await self._fetches.get()
        while len(messages) < most and not self._fetches.empty():
            messages = messages + self._fetches.get_nowait()
        consumer = self.app.consumer
        taken = [m for m in messages if self.current(m)]
        for m in taken:
            m.tracked = True  # what Faust's stream marks when it hands a message over (commits.py)
            consumer.track_message(m)
        return taken

    def current(self, message: Message) -> bool:
        """Whether a Faust stream would hand the message over now: flow is on (no rebalance under
        way) and it was fetched in the group's current generation."""
        return self.app.flow_control.is_active() and message.generation_id == self.app.consumer_generation_id

    def done(self, messages: list[Message]) -> None:
        """Acknowledge messages handled: their offsets may be committed."""
        consumer = self.app.consumer
        for m in messages:
            consumer.ack(m)


class Consumer(SafeAckConsumer):
    """Faust's consumer, whose fetch loop hands the book topics' messages over a fetch at a time."""

    book_batches: BookBatches | None = None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop, run live
        """Faust's `Consumer._drain_messages` (faust-streaming 0.15) with one change: a fetch's book
        messages go to `book_batches` in one list, after the fetch; every other message goes through
        Faust's callback as before. Kept from Faust: a message older than the last one read of its
        partition is dropped; a jump in offsets is a gap its commits may pass; the wait for a full
        queue gives way to a rebalance (`suspend_flow`); the commit every `broker_commit_every`."""
        callback, getmany, read_offset = self.callback, self.getmany, self._read_offset
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        books = self.book_batches
        book_topics = books.topics if books is not None else frozenset()
        try:
            while not (stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = getmany(timeout=1.0)
                await self.sleep(0)
                batch: list[Message] = []
                if not self.should_stop:
                    async for tp, message in fetched:
                        offset, last = message.offset, read_offset[tp]
                        if last is not None and offset < last:
                            continue  # Faust's "DROPPED MESSAGE": read already
                        if last and offset - last > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, last + 1, offset)
                        if self._commit_every is not None and self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if message.topic in book_topics:
                            batch.append(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
                    if batch and books is not None:
                        await self.wait_first(books.put(batch), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def deliver_in_batches(app: faust.App, topic: faust.TopicT) -> BookBatches:
    """Make `app` consume through `Consumer`, with `topic`'s messages handed over in batches (and
    subscribed to here: no Faust agent iterates them). Before anything has used `app`'s transport."""
    app.transport = Transport(app.conf.broker_consumer, app)
    app.topics.add(topic)
    batches = BookBatches(app, set(topic.topics))
    app.consumer.book_batches = batches
    return batches
