"""Book messages reach the book loop a fetch at a time (delivery.py): what a batch holds, which
messages it skips as a Faust stream would, and that acknowledging it lets the commit advance.

Like test_commits.py, this reaches into Faust's consumer bookkeeping (no broker: nothing is fetched
or committed, the consumer's offsets are asked what it would commit)."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from monitor.stream.delivery import BookBatches, Consumer, deliver_in_batches

FILLS = TP("fills", 0)


def _app() -> tuple[faust.App, BookBatches]:
    app = faust.App("delivery-test", broker="kafka://127.0.0.1:9")
    batches = deliver_in_batches(app, app.topic(FILLS.topic))
    app.topics._acking_topics.add(FILLS.topic)  # as the conductor marks a subscribed topic with acks
    app.flow_control.resume()
    return app, batches


def _message(app: faust.App, offset: int, generation: int | None = None) -> ConsumerMessage:
    return ConsumerMessage(FILLS.topic, FILLS.partition, offset, 0.0, 0, None, b"B1", b"{}", None, tp=FILLS,
                           generation_id=app.consumer_generation_id if generation is None else generation)


def test_a_batch_is_the_queued_fetches_up_to_its_size() -> None:
    async def go() -> list[list[int]]:
        app, batches = _app()
        assert isinstance(app.consumer, Consumer) and app.consumer.book_batches is batches
        for first in (0, 3, 6, 9):
            await batches.put([_message(app, o) for o in range(first, first + 3)])
        taken = [[m.offset for m in await batches.take(5)], [m.offset for m in await batches.take(100)]]
        assert all(m.tracked for m in app.consumer.unacked)
        return taken

    # a fetch is never split: the first batch is two fetches (6 >= 5), the second the other two
    assert asyncio.run(go()) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]


def test_messages_of_an_old_generation_or_while_flow_is_off_are_skipped_and_never_acknowledged() -> None:
    async def go() -> tuple[list[int], list[int]]:
        app, batches = _app()
        old = app.consumer_generation_id - 1
        await batches.put([_message(app, 0), _message(app, 1), _message(app, 2, generation=old)])
        live = [m.offset for m in await batches.take(100)]
        app.flow_control.suspend()
        await batches.put([_message(app, 3)])
        during_rebalance = [m.offset for m in await batches.take(100)]
        return live, during_rebalance

    live, during_rebalance = asyncio.run(go())
    assert live == [0, 1] and during_rebalance == []


def test_the_commit_advances_only_over_acknowledged_messages() -> None:
    async def go() -> tuple[int | None, int | None]:
        app, batches = _app()
        await batches.put([_message(app, o) for o in range(0, 10)])
        batch = await batches.take(100)
        before = app.consumer._new_offset(FILLS)
        batches.done(batch[:4])
        return before, app.consumer._new_offset(FILLS)

    before, after = asyncio.run(go())
    assert before is None  # taken, not yet acknowledged: nothing to commit
    assert after == 4  # offsets 0..3 acknowledged: the next to read is 4
