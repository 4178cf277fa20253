"""Faust's Kafka consumer, without one way to commit an offset past a message nobody read.

During a rebalance Faust skips the messages it fetched before it: while partitions are being
revoked (flow control is off) and, after the assignment, any message of the old generation. It
acknowledges each skipped message as if processed (faust-streaming 0.15, `Stream.__aiter__`).
At a revoke it has also forgotten the partitions' committed offsets, so its next commit takes a
run of skipped offsets for done (`Consumer._new_offset` checks a gap before the first acknowledged
offset only against a committed offset it knows): the offset committed jumps past messages no
agent handled, and the book partition's next owner never reads them: the likely cause of two
books' NAVs off the recomputation after a handover, in one run of the two-worker fault test.

Here an acknowledgement counts only for a message a stream handed to an agent (Faust marks it
`tracked` then). A skipped message leaves a gap the commit stops at, and it is read again: after
every rebalance the consumer starts each partition at its committed offset.
"""

from __future__ import annotations

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message


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

