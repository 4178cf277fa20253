"""The event-time gate between the worker's two consumers.

Book events (a Faust agent) and prices (a broadcast consumer) arrive on separate
consumers, each in event-time order per partition but in no order with respect to
each other, nor across partitions. The engine evaluates per window of event time, so
it needs every event of a window before the window closes. The gate holds what both
consumers have read and releases it in event-time order, below a watermark: the least,
over every input partition, of the newest event time read from it. A partition read
to its end holds nothing back (`AHEAD`).

Per partition, events must come in event-time order (each producer writes its own
keys in order); that is the one assumption.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Generic, Iterable, Mapping, NamedTuple, TypeVar

from monitor.engine.model import Micros

AHEAD: Micros = 2**62  # "read to the end": holds nothing back
T = TypeVar("T")


class Gate(Generic[T]):
    """Held items as runs, each what one `hold_run` brought (one partition's records of a fetch),
    sorted by event time. Releasing takes a prefix of each run and merges them: per price, a list
    slice and a share of one sort, where a heap cost a push and a pop of log(held) compares."""

    def __init__(self) -> None:
        self._runs: list[list] = []  # [ts list, item list, index of the first still held], as they came
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def hold(self, ts: Micros, item: T) -> None:
        self.hold_run([ts], [item])

    def hold_run(self, ts: list[Micros], items: list[T]) -> None:
        """Items in the order they came, with their event times (in order or not)."""
        if ts != sorted(ts):
            order = sorted(range(len(ts)), key=ts.__getitem__)  # stable: ties stay as they came
            ts, items = [ts[i] for i in order], [items[i] for i in order]
        self._runs.append([ts, items, 0])
        self._held += len(ts)

    def release(self, watermark: Micros) -> list[T]:
        """Everything held with an event time below the watermark, oldest first, ties in the order
        they came."""
        times: list[Micros] = []
        out: list[T] = []
        kept: list[list] = []
        merge = False
        for run in self._runs:
            ts, items, start = run
            end = bisect_left(ts, watermark, start)
            if end > start:
                merge = bool(out)
                times += ts[start:end]
                out += items[start:end]
            if end < len(ts):
                run[2] = end
                kept.append(run)
        self._runs = kept
        self._held -= len(out)
        if merge:  # runs in the order they came, so a stable sort keeps ties in that order
            order = sorted(range(len(out)), key=times.__getitem__)
            out = [out[i] for i in order]
        return out

    def drop(self, unwanted: Callable[[T], bool]) -> None:
        """Forget held items (e.g. book events of partitions this worker no longer owns)."""
        runs = self._runs
        self._runs, self._held = [], 0
        for ts, items, start in runs:
            keep = [k for k in range(start, len(ts)) if not unwanted(items[k])]
            if keep:
                self.hold_run([ts[k] for k in keep], [items[k] for k in keep])


def laggards(newest: Mapping[int, Micros], unread: Iterable[int], other_mark: Micros) -> set[int]:
    """With the gate full, the partitions of a stream to go on reading so its watermark can move:
    of those not read to their end, the ones whose newest event ts is the least (they hold the
    watermark back). None if the other stream's mark is at or below that: it must catch up first.

    Reading nothing at all while full would never end when the laggard is in this stream.
    """
    unread = list(unread)
    if not unread:
        return set()
    least = min(newest.get(p, 0) for p in unread)
    if other_mark <= least:
        return set()
    return {p for p in unread if newest.get(p, 0) == least}


class MarketMark(NamedTuple):
    mark: Micros  # below it, every price has been read (AHEAD: all read to the end)
    progress: Micros  # the least newest price ts read over all price partitions
    unread: set[int]  # price partitions not read to their end


def market_mark(prices: Mapping[int, tuple[Micros, bool]], reference_read: bool) -> MarketMark:
    """The market stream's watermark, from each price partition's (newest ts read, read to its end)
    and whether every reference data partition (instruments, risk models) is read to its end.

    Below `progress` no price can come any more even on a partition read to its end, since each
    partition is in event-time order. Reference data has no event time: while any of it on the
    broker is unread the mark is 0, so nothing is evaluated without it (a worker starting on a
    backlog would otherwise value its first prices before the instruments the log put first).
    """
    mark = progress = AHEAD
    unread: set[int] = set()
    for partition, (newest, read_to_end) in prices.items():
        progress = min(progress, newest)
        if not read_to_end:
            mark = min(mark, newest)
            unread.add(partition)
    return MarketMark(mark if reference_read else 0, progress, unread)
