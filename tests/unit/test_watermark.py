"""The gate between the worker's two streams: release in event-time order, and who to read when full."""

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.stream.watermark import AHEAD, Gate, laggards, market_mark


def test_releases_below_the_watermark_in_event_time_order_ties_as_they_came():
    gate: Gate[str] = Gate()
    for ts, item in [(30, "c"), (10, "a1"), (20, "b"), (10, "a2"), (40, "d")]:
        gate.hold(ts, item)
    assert gate.release(31) == ["a1", "a2", "b", "c"]
    assert len(gate) == 1 and gate.release(AHEAD) == ["d"]


def test_when_full_it_reads_the_partitions_that_hold_the_watermark_back():
    newest = {0: 500, 1: 120, 2: 900, 3: 120}
    # Partitions 1 and 3 are the least read; the book stream is further ahead: read them.
    assert laggards(newest, unread={0, 1, 2, 3}, other_mark=1_000) == {1, 3}
    # A partition never read yet (newest 0) holds everything back: it alone is read.
    assert laggards({0: 500, 1: 120}, unread={0, 1, 2}, other_mark=AHEAD) == {2}
    # A partition read to its end holds nothing back, whatever its newest ts.
    assert laggards(newest, unread={0, 2}, other_mark=AHEAD) == {0}


def test_when_full_and_the_other_stream_is_behind_it_reads_nothing():
    assert laggards({0: 500, 1: 700}, unread={0, 1}, other_mark=400) == set()
    assert laggards({0: 500, 1: 700}, unread={0, 1}, other_mark=500) == set()
    assert laggards({0: 500}, unread=set(), other_mark=AHEAD) == set()


def test_the_market_mark_is_the_least_newest_ts_of_the_price_partitions_not_read_to_their_end():
    prices = {0: (500, False), 1: (300, True), 2: (700, False)}
    assert market_mark(prices, reference_read=True) == (500, 300, {0, 2})
    assert market_mark({0: (500, True), 1: (300, True)}, reference_read=True) == (AHEAD, 300, set())


def test_unread_reference_data_holds_the_market_mark_at_zero():
    # the instruments of a backlog not yet read: no price may be released, however far they are read
    assert market_mark({0: (500, True), 1: (300, True)}, reference_read=False) == (0, 300, set())
    assert market_mark({0: (500, False)}, reference_read=False).mark == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("hold"), st.lists(st.integers(0, 50), min_size=1, max_size=8)),
    st.tuples(st.just("release"), st.integers(0, 60)),
    st.tuples(st.just("drop"), st.sampled_from(["runs", "singles"])),
), max_size=40))
def test_releases_what_a_sort_by_event_time_then_arrival_releases(steps):
    """Runs and single items held in any order and any ts order, released and dropped in any
    sequence: what leaves is what sorting everything held by (ts, single before run, order of
    arrival) and cutting at the watermark gives."""
    gate: Gate[int] = Gate()
    held: list[tuple[int, int, int]] = []  # (ts, 0 single / 1 run, arrival number): the reference
    arrived = 0
    for step, arg in steps:
        if step == "hold":
            numbers = list(range(arrived, arrived + len(arg)))
            arrived += len(arg)
            gate.hold_run(list(arg), numbers) if len(arg) > 1 else gate.hold(arg[0], numbers[0])
            held += [(ts, int(len(arg) > 1), n) for ts, n in zip(arg, numbers)]
        elif step == "release":
            expected = [n for ts, _, n in sorted(held) if ts < arg]
            assert gate.release(arg) == expected
            held = [h for h in held if h[0] >= arg]
        else:
            getattr(gate, f"drop_{arg}")()
            held = [h for h in held if h[1] != (arg == "runs")]
        assert len(gate) == len(held)
        assert gate.oldest() == (min(h[0] for h in held) if held else None)
    assert gate.release(AHEAD) == [n for _, _, n in sorted(held)]


def test_the_tail_holds_what_was_read_since_the_broker_last_confirmed_the_ends():
    """Events held after a confirmation began wait for the next one; those held before it are
    free once it is answered; with nothing unconfirmed the tail holds nothing back."""
    from monitor.stream.watermark import Tail

    tail = Tail()
    assert tail.mark() == AHEAD and not tail.pending
    tail.held(50)
    tail.held(30)
    assert tail.mark() == 30 and tail.pending
    tail.begin()  # the question covers 30 and 50
    assert tail.mark() == 30 and not tail.pending  # one under way: no second one
    tail.held(70)
    assert tail.mark() == 30
    tail.end()
    assert tail.mark() == 70 and tail.pending
    tail.begin()
    tail.end()
    assert tail.mark() == AHEAD and not tail.pending


def test_a_partition_is_read_to_its_end_only_up_to_the_end_the_broker_last_confirmed():
    """The consumer's highwater comes from its last fetch answer; a fresher end from the broker
    (the tail's confirmation) makes a partition that looked read to its end unread again."""
    import asyncio

    from monitor.stream.watermark import Progress, TopicPartition

    fills, prices = TopicPartition("fills", 0), TopicPartition("prices", 0)

    class Consumer:
        def __init__(self, tp: TopicPartition) -> None:
            self.tp = tp

        def assignment(self) -> set[TopicPartition]:
            return {self.tp}

        def highwater(self, tp: TopicPartition) -> int:
            return 10

        async def position(self, tp: TopicPartition) -> int:
            return 10

    progress = Progress({"fills"}, "prices")
    progress.recovered = True
    progress.owned_books({("fills", 0): 0})
    progress.read_book(fills, 9, 1_000)
    progress.read_prices(0, 2_000)
    asyncio.run(progress.read_market(Consumer(prices)))
    assert progress.book_mark(Consumer(fills)) == AHEAD and progress.market.mark == AHEAD
    progress.ends.update({("fills", 0): 12, ("prices", 0): 11})
    asyncio.run(progress.read_market(Consumer(prices)))
    assert progress.book_mark(Consumer(fills)) == 1_000 and progress.market.mark == 2_000
