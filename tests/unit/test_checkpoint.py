"""The price checkpoint: a restart (or a rebalance) that starts from it emits what an uninterrupted
run emits.

The worker's restart, modelled on the engine: a checkpoint of the market taken at one point of a
simulated log, the books' watches as saved later (at each emission and at the next checkpoint),
a crash later still. The restarted engine gets the reference data, the policies and watches, the
checkpoint's market, and then, in event-time order, the book inputs recorded before the crash and
the prices stamped from the checkpoint's mark less the seek margin; then the rest of the log.
What it emits must equal what the uninterrupted run emitted after the crash, event for event.
"""

from __future__ import annotations

import orjson
import pytest

from monitor.engine import Engine, Fill, Instrument, Policy, Price, RiskModel, Snapshot
from monitor.engine.engine import MarketState, Watch
from monitor.replay import apply_event, read_log
from monitor.simulate import MarketConfig, write_jsonl
from monitor.stream import checkpoint
from monitor.stream.checkpoint import Checkpoint, assemble, choose
from monitor.stream.codec import event_from_doc

TICK = 10_000  # the production window, 10 ms


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list:
    path = tmp_path_factory.mktemp("log") / "events.jsonl"
    write_jsonl(MarketConfig(books=4, instruments=30, seed=11), path, 6_000)
    lines = path.read_bytes().splitlines()
    return [event_from_doc(topic, value, "log", validated=False) for _, topic, value in read_log(lines)]


def _ts(event: object) -> int | None:
    if isinstance(event, (Price, Fill)):
        return event.ts
    if isinstance(event, Snapshot):
        return event.as_of
    return None


def _messages(out: list) -> list[bytes]:
    return [orjson.dumps(e.to_message(e.event_ts)) for e in out]


def _saved(watch: Watch) -> dict:
    """A watch as its changelog record holds it (not sharing the live watch's containers)."""
    return orjson.loads(orjson.dumps(watch.to_dict()))


def _feed(engine: Engine, event: object) -> list:
    return engine.on_prices([event]) if isinstance(event, Price) else apply_event(engine, event)


def _restart(events: list, taken: int, saved: int, crash: int, margin: int, rebalance: bool = False
             ) -> tuple[list[bytes], list[bytes], Engine]:
    """(what the uninterrupted run emitted after `crash`, what the restarted one emitted, the latter).
    `rebalance`: the books come back to an engine that went on with the market up to the crash (a
    worker that lost and regained them, or took them over), not to a fresh one."""
    live = Engine(TICK)
    persisted: dict[str, dict] = {}
    found: Checkpoint | None = None
    after: list = []
    for k, event in enumerate(events):
        if k == taken:
            nxt = _ts(event) or 0
            # Every price before `nxt` is applied; offsets here are the events' indexes in the log, and
            # the first `k` have been read (the worker's `held`).
            found = Checkpoint(nxt, live.market_state(), {0: k})
        if k == saved:
            persisted.update({pid: _saved(w) for pid, w in live.watches.items()})
        out = _feed(live, event)
        if k >= crash:
            after += out
            continue
        for pid in {e.portfolio_id for e in out}:  # the worker saves a book's watch when it emits
            persisted[pid] = _saved(live.watches[pid])
    after += live.flush()
    assert found is not None

    # Through the wire and back, as the worker writes and reads it.
    [found] = assemble(value for _, value in found.records("p0", 0))
    recorded = events[:crash]
    restarted = Engine(TICK)
    if rebalance:
        for event in recorded:
            _feed(restarted, event)
        restarted.drop_books()
    else:
        for event in recorded:
            if isinstance(event, (Instrument, RiskModel)):
                _feed(restarted, event)
    policies = {e.portfolio_id: e for e in recorded if isinstance(e, Policy)}
    watches = {pid: Watch.from_dict(d) for pid, d in persisted.items()}
    for pid in sorted({*policies, *watches}):
        restarted.restore(None, policies.get(pid), watches.get(pid), pid)
    inputs = [e for e in recorded if isinstance(e, (Fill, Snapshot))]
    resume = {pid: w.clock for pid, w in watches.items() if w.clock}
    for e in inputs:
        resume.setdefault(e.portfolio_id, _ts(e))
    assert choose([found], resume) is found, "the checkpoint should be usable: every watch was saved after it"
    restarted.restore_market(found.state)
    # What the seek finds (Kafka timestamps from the mark less the margin), less what the checkpoint
    # covers (read before it and stamped before its mark), as the worker skips them.
    prices = [e for k, e in enumerate(recorded) if isinstance(e, Price) and e.ts >= found.mark - margin
              and not found.covers(0, k, e.ts)]
    # The gate: book inputs first at equal times (a stable sort of inputs, then prices).
    again: list = []
    for event in sorted(inputs + prices, key=lambda e: (_ts(e), isinstance(e, Price))):
        again += _feed(restarted, event)
    restarted.end_warmup()
    for event in events[crash:]:
        again += _feed(restarted, event)
    again += restarted.flush()
    return _messages(after), _messages(again), restarted


@pytest.mark.parametrize("rebalance", [False, True], ids=["restart", "rebalance"])
@pytest.mark.parametrize("margin", [0, checkpoint.SEEK_MARGIN])
@pytest.mark.parametrize("cut", [0.3, 0.5, 0.8])
def test_a_restart_from_a_checkpoint_emits_what_the_uninterrupted_run_did(events, cut, margin, rebalance):
    n = len(events)
    taken = int(n * cut)
    saved, crash = taken + 500, taken + 900
    expected, got, restarted = _restart(events, taken, saved, crash, margin, rebalance)
    assert expected, "the run after the crash should emit something, or this proves nothing"
    assert got == expected
    live = Engine(TICK)
    for event in events:
        _feed(live, event)
    live.flush()
    for pid, book in live.books.items():
        assert restarted.books[pid].positions == pytest.approx(book.positions)
        assert restarted.books[pid].cash == pytest.approx(book.cash)


def test_a_checkpoint_ahead_of_a_book_is_not_used():
    state = MarketState({"A": (10.0, 500), "B": (11.0, 900)}, 0, {"B1": 500, "B2": 900})
    found = Checkpoint(400, state)
    assert found.usable({"B1": 500, "B2": 900})
    assert not found.usable({"B1": 499})  # a book restored behind what the checkpoint moved it to
    assert not found.usable({"B3": 800})  # a book it did not know: the newest price (900) is ahead of it
    assert found.usable({"B3": 900})
    older = Checkpoint(100, MarketState({"A": (9.0, 100)}, 0, {}))
    assert choose([found, older], {"B1": 450}) is older
    assert choose([found, older], {"B1": 50}) is None


def test_records_round_trip_in_chunks_and_an_incomplete_checkpoint_is_left_out(monkeypatch):
    monkeypatch.setattr(checkpoint, "CHUNK", 2)
    prices = {f"I{k}": (100.0 + k, 1_000 + k) for k in range(5)}
    written = Checkpoint(1_002, MarketState(prices, 7, {"B1": 1_004}), {0: 40, 3: 12})
    records = written.records("p0", 1)
    assert [key for key, _ in records] == [b"p0/1/0", b"p0/1/1", b"p0/1/2"]
    [back] = assemble(value for _, value in records)
    assert (back.mark, back.state, back.held) == (1_002, MarketState(prices, 7, {"B1": 1_004}), {0: 40, 3: 12})
    # A later checkpoint of fewer chunks overwrote the first two keys: neither is complete.
    later = Checkpoint(2_000, MarketState({"I0": (1.0, 2_000)}, 0, {})).records("p0", 1)
    latest = {key: value for key, value in records + later}
    assert [c.mark for c in assemble(latest.values())] == [2_000]


def test_a_restore_skips_only_prices_read_before_the_checkpoint_and_stamped_before_its_mark():
    """Re-read prices the checkpoint holds are skipped; a price read late (stamped before the mark,
    read after the checkpoint) is applied as the live worker applied it; without `held` (a checkpoint
    written before it existed) nothing is skipped."""
    found = Checkpoint(1_000, MarketState({}, 0, {}), {0: 50})
    assert found.covers(0, 49, 999)
    assert not found.covers(0, 50, 999)  # read after the checkpoint: a late price
    assert not found.covers(0, 10, 1_000)  # stamped at the mark: not in the checkpoint
    assert not found.covers(1, 10, 999)  # a partition not read before it
    [old] = assemble([orjson.dumps({k: v for k, v in orjson.loads(value).items() if k != "held"})
                      for _, value in found.records("p0", 0)])
    assert not old.covers(0, 49, 999)
