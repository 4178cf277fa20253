"""The consumer's commits never pass a message no agent was handed (commits.py).

This reaches into Faust's consumer (its acknowledgement bookkeeping), which is what the module
corrects: the scenario is a revoke, after which Faust knows no committed offset, with an agent
still finishing the batch it was handed and the stream skipping what was fetched behind it."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from monitor.stream.commits import Consumer, use_safe_commits

FILLS = TP("fills", 0)


def offset_to_commit(safe: bool) -> int | None:
    """Offsets 41..60 handed to the agent and done, 61..100 skipped by the stream: the offset Faust
    would commit next for the partition."""

    async def go() -> int | None:
        app = faust.App("commits-test", broker="kafka://127.0.0.1:9")
        if safe:
            use_safe_commits(app)
        consumer = app.consumer
        assert isinstance(consumer, Consumer) == safe
        app.topics._acking_topics.add(FILLS.topic)  # a topic an agent consumes with acks

        def message(offset: int, handed_to_agent: bool) -> ConsumerMessage:
            m = ConsumerMessage(FILLS.topic, FILLS.partition, offset, 0.0, 0, None, b"B1", b"{}", None, tp=FILLS)
            m.tracked = handed_to_agent  # what Faust's stream sets when it yields the message
            return m

        for offset in range(61, 101):
            message(offset, handed_to_agent=False).ack(consumer)
        for offset in range(41, 61):
            message(offset, handed_to_agent=True).ack(consumer)
        return consumer._new_offset(FILLS)

    return asyncio.run(go())


def test_a_skipped_message_stops_the_commit_until_it_is_read_again() -> None:
    assert offset_to_commit(safe=True) == 61


def test_faust_alone_commits_past_the_skipped_messages() -> None:
    """The defect the module corrects, so that this test notices if a Faust release changes it."""
    assert offset_to_commit(safe=False) == 101
