"""The read model behind the query API (monitor/engine/views.py) on the pure engine, its answers held
to the API's JSON Schemas; book ownership by partition; health and readiness rules."""

from __future__ import annotations

import copy

import pytest

from monitor.engine import Engine, Price, Snapshot
from monitor.engine import views
from monitor.stream.api import Liveness, book_partition, health, owner_of, readiness
from tests.api_schemas import api_validate, openapi, schema_for
from tests.unit.test_engine import T0, SEC, done, inst, policy, two_asset_engine, weight_limit
from tests.unit.test_signals import drift_up, engine_with

WORKER = {"url": "http://127.0.0.1:9109", "partitions": [0, 1], "peers": []}


def check(name: str, body: dict) -> dict:
    api_validate(name, {"worker": WORKER, **body})
    return body


@pytest.mark.parametrize("tick", [0, 10_000], ids=["tick0", "tick10ms"])
def test_a_breached_book_reads_as_the_engine_judged_it(tick):
    e = two_asset_engine(tick)
    [opened] = done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))  # weight 750 / 1150
    [summary] = check("books", {"books": views.books(e)})["books"]
    usage = (750 / 1150 - 0.60) / 0.05
    assert summary["portfolio_id"] == "B1" and summary["base_currency"] == "USD"
    assert summary["nav"] == pytest.approx(1150.0)
    assert summary["worst_band_usage"] == pytest.approx(usage)
    assert summary["worst_limit"]["limit_id"] == "weight:A" and summary["worst_limit"]["severity"] == "BREACH"
    assert (summary["open_alerts"], summary["pending_signals"]) == (1, 0)
    assert summary["evaluated_ts"] == "2026-11-24T14:00:01.000000Z"

    book = check("book", views.book(e, "B1"))
    [limit] = book["limits"]
    assert limit["alert_id"] == opened.alert_id and limit["alert_state"] == "OPEN"
    assert limit["actual"] == pytest.approx(750 / 1150) and limit["usage"] == pytest.approx(usage)
    assert limit["band"] == {"lower": pytest.approx(0.55), "upper": pytest.approx(0.65)}
    holdings = {h["instrument_id"]: h for h in book["holdings"]}
    assert holdings["A"]["mv"] == pytest.approx(750.0) and holdings["A"]["weight"] == pytest.approx(750 / 1150)
    assert holdings["B"]["price"] == 10.0 and holdings["B"]["quantity"] == 40
    assert book["exposures"]["sector"]["Tech"] == {"net": pytest.approx(1.0), "gross": pytest.approx(1.0),
                                                   "long": pytest.approx(1.0), "short": 0.0}
    assert book["valuation_nav"] == pytest.approx(1150.0)

    [alert] = check("alerts", {"alerts": views.alerts(e)})["alerts"]
    assert (alert["alert_id"], alert["kind"], alert["severity"]) == (opened.alert_id, "LIMIT", "BREACH")
    assert views.book(e, "NOPE") is None


def test_quiet_limits_read_from_the_engines_note_without_changing_the_engine():
    """A limit inside its band is recorded in the evaluation's note, not its state: the view reads the
    note, and leaves the watch as it was (a reader must not move the engine)."""
    e = Engine(10_000)
    for iid in ("A", "B"):
        e.on_instrument(inst(iid))
    e.on_policy(policy([weight_limit("A", 0.60, 0.05), weight_limit("B", 0.40, 0.05)]))
    e.on_snapshot(Snapshot("B1", T0, {"USD": 0.0}, {"A": 60, "B": 40}))
    done(e, e.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)]))
    done(e, e.on_prices([Price("A", 10.5, T0 + SEC)]))  # 630 / 1030, inside: quiet
    watch = e.watches["B1"]
    assert watch.quiet is not None, "the engine no longer notes quiet limits: this test needs another case"
    before = copy.deepcopy(watch.states)
    limits = {lim["limit_id"]: lim for lim in views.book(e, "B1")["limits"]}
    assert watch.quiet is not None and watch.states == before
    assert limits["weight:A"]["actual"] == pytest.approx(630 / 1030)
    assert limits["weight:B"]["actual"] == pytest.approx(400 / 1030)
    settled = copy.deepcopy(watch).limits  # what the engine holds once settled
    assert {k: v["actual"] for k, v in limits.items()} == {k: pytest.approx(s.last_actual) for k, s in settled.items()}
    assert limits["weight:A"]["severity"] is None and limits["weight:A"]["alert_state"] is None


def test_a_breach_within_its_persistence_is_pending_with_its_severity():
    e = two_asset_engine(0, persistence_seconds=5)
    done(e, e.on_prices([Price("A", 12.5, T0 + SEC)]))
    [limit] = views.book(e, "B1")["limits"]
    assert (limit["alert_state"], limit["alert_id"], limit["severity"]) == ("PENDING", None, "BREACH")
    assert views.alerts(e) == []


def test_a_non_positive_nav_is_an_open_condition_of_the_book():
    e = Engine(0)
    for iid in ("A", "B"):
        e.on_instrument(inst(iid))
    e.on_policy(policy([weight_limit("A", 0.60, 0.05)]))
    e.on_snapshot(Snapshot("B1", T0, {"USD": -2000.0}, {"A": 60, "B": 40}))
    e.on_prices([Price("A", 10.0, T0), Price("B", 10.0, T0)])
    [alert] = check("alerts", {"alerts": views.alerts(e)})["alerts"]
    assert (alert["kind"], alert["severity"], alert["limit_id"]) == ("NAV_NON_POSITIVE", "CRITICAL", "book:nav")
    book = check("book", views.book(e, "B1"))
    assert book["open_alerts"] == 1 and book["conditions"] == [alert]
    assert book["valuation_nav"] == pytest.approx(-1000.0) and book["holdings"][0]["weight"] is None


def test_pending_signals_are_listed_in_full_and_filtered_by_state():
    engine = engine_with({"trade_to": "target", "approval": {"notional_above": 10_000, "ttl_seconds": 60}})
    drift_up(engine)
    [pending] = check("signals", {"signals": views.signals(engine, "PENDING_APPROVAL")})["signals"]
    assert pending["state"] == "PENDING_APPROVAL" and pending["portfolio_id"] == "B1"
    assert {t["instrument_id"] for t in pending["trades"]} == {"AAA", "BBB"}
    assert views.signals(engine, "APPROVED") == []
    assert views.books(engine)[0]["pending_signals"] == 1


def test_a_book_without_a_policy_or_snapshot_is_known_but_not_valued():
    e = Engine(0)
    e.on_policy(policy([weight_limit("A", 0.60, 0.05)]))
    book = check("book", views.book(e, "B1"))
    assert book["nav"] is None and book["holdings"] == [] and book["unavailable_valuation"]
    assert book["limits"][0]["actual"] is None and book["worst_band_usage"] is None


def test_a_book_partition_is_kafkas_default_partitioner_on_the_raw_key():
    # Kafka's own murmur2 test vectors (the Java client's UtilsTest): "21" -> -973932308, "foobar" -> -790332482
    assert book_partition("21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert book_partition("foobar", 4) == (-790332482 & 0x7FFFFFFF) % 4
    distribution = {"http://w1:9109": {"positions": [0, 2], "fills": [0, 2]}, "http://w2:9109": {"positions": [1, 3]}}
    assert owner_of("foobar", "positions", distribution, 4) == (2, "http://w1:9109")
    assert owner_of("BOOK-002", "positions", distribution, 4) == (3, "http://w2:9109")
    assert owner_of("21", "positions", {}, 4)[1] is None  # no assignment yet


def test_health_fails_on_a_loop_without_progress_and_readiness_waits_for_recovery_and_catch_up():
    assert health(Liveness(0.5, 0.0, 0.0, 0.01), stall_s=30) == (True, [])
    ok, reasons = health(Liveness(31.0, 0.0, 45.0, 0.0), stall_s=30)
    assert not ok and reasons == ["the market data loop has made no progress for 31 s",
                                  "the event-time gate has made no progress for 45 s"]
    assert readiness(True, True, False) == (True, [])
    assert readiness(False, False, False) == (False, ["book tables not recovered yet", "inputs not read to their end yet"])
    assert readiness(True, True, True) == (False, ["rebalancing: book tables are being recovered"])


def test_every_path_of_the_openapi_description_names_a_schema_that_exists():
    paths = openapi()["paths"]
    assert set(paths) == {"/health", "/ready", "/api/v1/books", "/api/v1/books/{portfolio_id}", "/api/v1/alerts",
                          "/api/v1/signals"}
    for path, item in paths.items():
        for status in item["get"]["responses"]:
            api_validate(schema_for(path, int(status)), _minimal[schema_for(path, int(status))])


_minimal = {"health": {"ok": True, "reasons": [], "checks": {}}, "books": {"worker": WORKER, "books": []},
            "alerts": {"worker": WORKER, "alerts": []}, "signals": {"worker": WORKER, "signals": []},
            "error": {"error": "unknown book X", "portfolio_id": "X", "owner": None},
            "book": {"worker": WORKER, **views.book(two_asset_engine(), "B1")}}


def test_liveness_counts_the_time_a_loop_has_not_moved_while_it_had_work(monkeypatch):
    """The server's sampling over a worker's progress marks (the worker's attributes, set by hand)."""
    import monitor.stream.api as api
    from types import SimpleNamespace

    from monitor.ops.config import Settings
    from monitor.stream.watermark import Gate

    clock = [100.0]
    monkeypatch.setattr(api.time, "monotonic", lambda: clock[0])
    w = SimpleNamespace(settings=Settings(stall_exit_s=20), progress=SimpleNamespace(market=object(), recovered=False),
                        gate=Gate(), _released=0, _book_quiet_since=1.0)
    server = api.QueryServer(w)  # type: ignore[arg-type]
    stall = w.settings.stall_exit_s / 2

    def at(t: float) -> Liveness:
        clock[0] = t
        return server._sample()

    assert at(100) == Liveness(0, 0, 0, 0)
    assert at(130).market_idle_s == 0 and at(130).book_idle_s == 0  # not recovered: nothing is owed yet
    w.progress.recovered = True
    live = at(142)  # the market mark and the book stream's quiet mark have not moved since the sample at 130
    assert (live.market_idle_s, live.book_idle_s) == (12, 12) and not health(live, stall)[0]
    w.progress.market, w._book_quiet_since = object(), 142.0
    assert at(143) == Liveness(0, 0, 0, 0) and health(at(143), stall)[0]
    w.gate.hold(5, "held")  # events held from now on, none released
    w.progress.market, w._book_quiet_since = object(), 155.0  # those two keep moving
    assert at(155).gate_idle_s == 12 and health(at(155), stall)[1] == [
        "the event-time gate has made no progress for 12 s"]
    w._released += 1
    assert at(156).gate_idle_s == 0


def test_a_rebalance_takes_back_caught_up_until_the_new_books_are_read(tmp_path):
    """A worker caught up before a rebalance is not caught up after it: /ready and the gauge say so
    until the books it brings have been read to their end (the bench and operators wait on them)."""
    import asyncio

    from monitor.ops.config import Settings
    from monitor.ops import metrics
    from monitor.stream.worker import Worker

    worker = Worker(Settings(data_dir=str(tmp_path)))
    worker._caught_up = True
    metrics.INPUTS_CAUGHT_UP.set(1)
    asyncio.run(worker._on_revoked(None, set()))
    assert not worker._caught_up and metrics.INPUTS_CAUGHT_UP._value.get() == 0
    assert readiness(True, worker._caught_up, False) == (False, ["inputs not read to their end yet"])


def test_a_book_partition_behind_with_nothing_delivered_is_sought_back_to_what_was_read(tmp_path, monkeypatch):
    """Faust may skip (and acknowledge) a message fetched before a rebalance and handed over after
    it; when the next never comes, the partition is sought back to the message after the last one
    read, once per quiet spell, and only the partitions behind."""
    import asyncio

    from faust.types import TP

    from monitor.ops import metrics
    from monitor.ops.config import Settings
    from monitor.stream import worker as worker_module
    from monitor.stream.worker import RESEEK_AFTER_S, Worker

    settings = Settings(data_dir=str(tmp_path))
    worker = Worker(settings)
    behind, done, fresh = (TP(settings.topic(t), p) for t, p in (("fills", 0), ("fills", 1), ("positions", 0)))
    highwater = {behind: 10, done: 4, fresh: 3}

    class Consumer:
        sought: list[tuple[TP, int]] = []

        def assignment(self) -> set[TP]:
            return set(highwater)

        def highwater(self, tp: TP) -> int:
            return highwater[tp]

        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            self.sought.extend(offsets.items())

    consumer = Consumer()
    monkeypatch.setattr(type(worker.app), "consumer", property(lambda _: consumer))
    worker.progress.recovered = True
    worker.progress.owned_books({(tp.topic, tp.partition): 0 for tp in highwater})
    worker.progress.read_book(behind, 6, 1)  # 7..9 unread
    worker.progress.read_book(done, 3, 1)  # read to the end
    clock = [worker._book_quiet_since]  # the quiet spell starts with the worker
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    before = metrics.BOOK_RESEEKS._value.get()

    clock[0] += RESEEK_AFTER_S - 0.5
    asyncio.run(worker._watch_streams())
    assert consumer.sought == []
    clock[0] += 1.0
    asyncio.run(worker._watch_streams())
    assert sorted(consumer.sought) == sorted([(behind, 7), (fresh, 0)])
    assert metrics.BOOK_RESEEKS._value.get() - before == 2
    clock[0] += 1.0
    asyncio.run(worker._watch_streams())  # once per quiet spell
    assert len(consumer.sought) == 2
    worker._book_events += 1  # a message came: the spell ends
    asyncio.run(worker._watch_streams())
    assert not worker._resought


def test_book_messages_the_stream_left_out_are_read_from_the_broker_before_the_next(tmp_path):
    """A book message that does not follow the last one read of its partition: what lies between is
    read from the broker first (an offset it does not hold, a transaction marker, is simply not
    there); a message at or before the next offset (a re-delivery) and one handled while a
    rebalance is being recovered are not checked."""
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from monitor.ops import metrics
    from monitor.ops.config import Settings
    from monitor.stream.worker import Worker

    settings = Settings(data_dir=str(tmp_path))
    worker = Worker(settings)
    fills = TP(settings.topic("fills"), 0)
    asked: list[tuple[int, int]] = []
    handled: list[int] = []

    class Broker:  # offsets 5..8 of the partition, 7 a transaction marker
        async def read(self, topic: str, partition: int, start: int, end: int) -> list[SimpleNamespace]:
            asked.append((start, end))
            return [SimpleNamespace(topic=topic, partition=partition, offset=o, key=b"B1", value=b"{}", timestamp=1e3)
                    for o in (5, 6, 8) if start <= o < end]

    async def on_book_record(msg) -> None:
        handled.append(msg.offset)
        worker.progress.read_book(msg.tp, msg.offset, None)

    worker._gaps = Broker()
    worker._on_book_record = on_book_record
    worker.progress.recovered = True
    worker.progress.owned_books({(fills.topic, fills.partition): 0})
    worker.progress.read_book(fills, 4, None)
    before = metrics.BOOK_GAP_RECORDS._value.get()

    def message(offset: int) -> SimpleNamespace:
        return SimpleNamespace(topic=fills.topic, partition=0, offset=offset, key=b"B1", value=b"{}", timestamp=1.0,
                               tp=fills)

    asyncio.run(worker.on_book_message(message(9)))
    assert asked == [(5, 9)] and handled == [5, 6, 8, 9]
    assert metrics.BOOK_GAP_RECORDS._value.get() - before == 3
    asyncio.run(worker.on_book_message(message(10)))  # the next one
    asyncio.run(worker.on_book_message(message(3)))  # a re-delivery
    asyncio.run(worker.on_book_message(message(4)))
    assert asked == [(5, 9)] and handled == [5, 6, 8, 9, 10, 3, 4]
    worker._recovering = True
    asyncio.run(worker.on_book_message(message(12)))  # before the books are restored: not checked
    assert asked == [(5, 9)] and handled[-1] == 12


def test_a_recovery_overtaken_by_the_next_rebalance_is_abandoned_not_fatal(tmp_path, monkeypatch):
    """A rebalance that begins while a recovery reads the tables can take away the partitions it was
    about to seek (aiokafka raises IllegalStateError). The recovery gives way: nothing of it is
    applied, the worker stays recovering until Faust recovers the new assignment and calls it again.
    The same error without a new rebalance is a real failure and is raised."""
    import asyncio

    import pytest
    from aiokafka.errors import IllegalStateError
    from faust.types import TP

    from monitor.ops.config import Settings
    from monitor.stream import worker as worker_module
    from monitor.stream.worker import Worker

    settings = Settings(data_dir=str(tmp_path))
    worker = Worker(settings)
    owned = [TP(settings.topic("fills"), 0), TP(settings.topic("fills"), 1)]

    class Consumer:
        def __init__(self, seek: str = "ok") -> None:  # or "rebalance", "overtaken", or "lost" (no rebalance)
            self.seek, self.sought = seek, []

        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            if self.seek in ("rebalance", "overtaken"):  # it begins while the consumer's thread seeks
                await worker._on_revoked(None, set())
            if self.seek in ("rebalance", "lost"):
                raise IllegalStateError(f"No current assignment for partition {owned[-1]}")
            self.sought.extend(offsets)

    async def start_offsets(*_: object) -> dict[tuple[str, int], int]:
        return {(tp.topic, tp.partition): 0 for tp in owned}

    async def no_checkpoints(_: Settings) -> list:
        return []

    revoke_while_reading = [False]

    async def read_inputs(*_: object) -> dict[str, bytes]:
        if revoke_while_reading[0]:
            await worker._on_revoked(None, set())
        return {}

    monkeypatch.setattr(type(worker.app.assignor), "assigned_actives", lambda _: set(owned))
    monkeypatch.setattr(worker_module, "start_offsets", start_offsets)
    monkeypatch.setattr(worker_module.checkpoint, "read_all", no_checkpoints)
    monkeypatch.setattr(worker_module, "read_inputs", read_inputs)

    async def restore(consumer: Consumer) -> None:
        monkeypatch.setattr(type(worker.app), "consumer", property(lambda _: consumer))
        await worker._on_revoked(None, set())
        await worker._restore()

    asyncio.run(restore(Consumer("rebalance")))  # the next rebalance begins during the seeks
    assert worker._recovering and not worker.progress.recovered and not worker._rewind.is_set()
    asyncio.run(restore(Consumer("overtaken")))  # ... and the seeks succeed even so
    assert worker._recovering and not worker.progress.recovered and not worker._rewind.is_set()
    revoke_while_reading[0] = True
    consumer = Consumer()
    asyncio.run(restore(consumer))  # it began while the tables were read: no partition is sought
    assert consumer.sought == [] and worker._recovering and not worker.progress.recovered
    revoke_while_reading[0] = False
    with pytest.raises(IllegalStateError):
        asyncio.run(restore(Consumer("lost")))
    consumer = Consumer()
    asyncio.run(restore(consumer))  # no rebalance meanwhile: recovered
    assert consumer.sought == owned and not worker._recovering and worker.progress.recovered


def test_a_recovery_uses_what_its_assignment_began_reading_and_only_that(tmp_path, monkeypatch):
    """The book inputs and the group's offsets are read from the assignment on, while Faust recovers
    its tables; the recovery of that assignment uses that read, and one of a later rebalance (or for
    other partitions) reads again."""
    import asyncio

    from faust.types import TP

    from monitor.ops.config import Settings
    from monitor.stream import worker as worker_module
    from monitor.stream.worker import Worker

    settings = Settings(data_dir=str(tmp_path))
    worker = Worker(settings)
    owned = {TP(settings.topic("fills"), 0)}
    reads: list[int] = []

    class Consumer:
        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            pass

    async def read_inputs(_: Settings, partitions: set[int]) -> dict[str, bytes]:
        reads.append(len(reads))
        return {}

    async def start_offsets(*_: object) -> dict[tuple[str, int], int]:
        return {(tp.topic, tp.partition): 0 for tp in owned}

    async def no_checkpoints(_: Settings) -> list:
        return []

    monkeypatch.setattr(type(worker.app.assignor), "assigned_actives", lambda _: set(owned))
    monkeypatch.setattr(type(worker.app), "consumer", property(lambda _: Consumer()))
    monkeypatch.setattr(worker_module, "read_inputs", read_inputs)
    monkeypatch.setattr(worker_module, "start_offsets", start_offsets)
    monkeypatch.setattr(worker_module.checkpoint, "read_all", no_checkpoints)

    async def rebalance(restore_after: str) -> None:
        await worker._on_revoked(None, set())
        await worker._on_assigned(None, set())
        if restore_after == "another rebalance":
            await worker._on_revoked(None, set())
        await worker._restore()

    asyncio.run(rebalance("assignment"))
    assert reads == [0] and worker.progress.recovered  # read once, at the assignment
    asyncio.run(rebalance("another rebalance"))
    assert reads == [0, 1, 2]  # the assignment's read belongs to an older rebalance: read again


def test_a_stalled_worker_names_the_line_each_task_waits_at():
    """What the stall exit logs: every task of the loops given, with the coroutines it awaits
    through and the line of the innermost one (not the task's outer frame, where every Faust
    service task sits)."""
    import asyncio

    from monitor.stream.stall import waiting_tasks

    async def waiting_for(event: asyncio.Event) -> None:
        await event.wait()

    async def stuck_on(event: asyncio.Event) -> None:
        await waiting_for(event)

    async def ticks(event: asyncio.Event):  # a stream, as Faust's: the agent waits on it through `async for`
        await event.wait()
        yield 1

    async def reads(event: asyncio.Event) -> None:
        async for _ in ticks(event):
            pass

    async def main() -> list[str]:
        event = asyncio.Event()
        task = asyncio.create_task(stuck_on(event), name="book-agent")
        stream = asyncio.create_task(reads(event), name="stream-reader")
        await asyncio.sleep(0)
        waiting = waiting_tasks(asyncio.get_running_loop(), None)
        event.set()
        await asyncio.gather(task, stream)
        return waiting

    waiting = asyncio.run(main())
    agent = [w for w in waiting if w.startswith("book-agent ")]
    assert len(agent) == 1, waiting
    assert agent[0].startswith("book-agent test_a_stalled_worker_names_the_line_each_task_waits_at.<locals>.stuck_on > "
                               "test_a_stalled_worker_names_the_line_each_task_waits_at.<locals>.waiting_for > "
                               "Event.wait at asyncio/locks.py:"), agent
    assert any(".main at unit/test_query.py:" in w for w in waiting), waiting
    reader = [w for w in waiting if w.startswith("stream-reader ")]
    assert len(reader) == 1 and reader[0].startswith(
        "stream-reader test_a_stalled_worker_names_the_line_each_task_waits_at.<locals>.reads > "
        "test_a_stalled_worker_names_the_line_each_task_waits_at.<locals>.ticks > Event.wait at asyncio/locks.py:"), reader


def test_a_stall_report_never_raises(monkeypatch: pytest.MonkeyPatch):
    """Reading another thread's loop can fail while that loop runs on (its task set changes under
    the read): the report says so for that loop and the worker still exits as a stalled one."""
    import asyncio

    from monitor.stream import stall

    def changing(loop: object) -> set:
        raise RuntimeError("Set changed size during iteration")

    monkeypatch.setattr(stall.asyncio, "all_tasks", changing)
    loop = asyncio.new_event_loop()
    try:
        waiting = stall.waiting_tasks(loop, None)
    finally:
        loop.close()
    assert len(waiting) == 1 and "not read: RuntimeError('Set changed size" in waiting[0], waiting


def test_a_stalled_worker_says_how_each_partition_is_fetched():
    """With the tasks, the stall report gives each assigned partition as Faust's consumer and the
    aiokafka consumer under it see it: a partition paused, or not let through, or with records
    buffered and not taken, is what a stalled recovery would be waiting on. Read from aiokafka's
    own subscription state, so a change in its internals shows here, not only at a stall."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition

    from monitor.stream.stall import fetch_state

    fills, changelog = TopicPartition("fills", 0), TopicPartition("watches-changelog", 3)

    async def seen() -> dict[str, str]:  # aiokafka's state objects are made in its loop
        subscription = SubscriptionState()
        subscription.assign_from_user({fills, changelog})
        subscription.seek(changelog, 5)
        subscription.subscription.assignment.state_value(changelog).highwater = 26
        subscription.pause(fills)
        client = SimpleNamespace(_subscription=subscription, _fetcher=SimpleNamespace(_records={changelog: []}))
        return fetch_state(SimpleNamespace(_get_active_partitions=lambda: {changelog}, flow_active=True,
                                            _thread=SimpleNamespace(_consumer=client)))

    assert asyncio.run(seen()) == {"flow": "active", "fills[0]": "?/None inactive paused",
                                   "watches-changelog[3]": "5/26 active buffered"}
    assert list(fetch_state(SimpleNamespace())) == ["not read"]


def test_a_drains_events_go_out_as_each_window_closes_and_their_watches_after_one_wait(tmp_path):
    """`_drain` publishes each window's events as the window closes and records them once at its
    end: every event is handed over first, then one wait for all of them, then the watch of each
    book that emitted (an event is never behind the watch that records it; not a broker round trip
    a window). A timer saving watches meanwhile leaves those books' watches alone."""
    import asyncio
    from types import SimpleNamespace

    from monitor.ops.config import Settings
    from monitor.stream.worker import Worker

    worker = Worker(Settings(data_dir=str(tmp_path)))
    done: list[tuple[str, ...]] = []

    async def events(events: list) -> None:
        done.extend(("event", e.portfolio_id) for e in events)

    async def settle() -> None:
        done.append(("settle",))

    async def save_watch(pid: str, watch: object) -> None:
        done.append(("watch", pid))

    worker.emit = SimpleNamespace(events=events)
    worker.outbox = SimpleNamespace(settle=settle)
    worker.tables = SimpleNamespace(save_watch=save_watch)
    worker.engine = SimpleNamespace(status={}, changes=lambda: [],
                                    watches={pid: SimpleNamespace(peak_nav=1.0, clock=1) for pid in ("B1", "B2", "B3")})
    worker._first_evaluation = True

    async def drain() -> None:
        await worker._publish([SimpleNamespace(portfolio_id="B1")])  # a window closes
        await worker._publish([SimpleNamespace(portfolio_id="B2"), SimpleNamespace(portfolio_id="B1")])  # the next
        for pid in ("B1", "B3"):  # a timer, while the drain waits
            await worker._save_watch(pid)
        await worker._record()

    asyncio.run(drain())
    assert done == [("event", "B1"), ("event", "B2"), ("event", "B1"), ("watch", "B3"),
                    ("settle",), ("watch", "B1"), ("watch", "B2")]
    assert not worker._unrecorded


def test_a_recovery_that_read_every_changelog_but_missed_its_end_is_woken(tmp_path):
    """Faust's `_slurp_changelogs` can set and clear `signal_recovery_end` before
    `_restart_recovery` waits on it: the recovery has read everything and waits for good. Once
    Faust says it has ended while a waiter has waited WAKE_RECOVERY_AFTER_S, the worker pulses
    the event: the waiter goes on, the event is left clear, and the metric counts it. Not while
    anything is left to read, nor with no waiter, nor outside a rebalance's recovery."""
    import asyncio

    from faust.types import TP

    from monitor.ops import metrics
    from monitor.ops.config import Settings
    from monitor.stream.worker import WAKE_RECOVERY_AFTER_S, Worker

    worker = Worker(Settings(data_dir=str(tmp_path)))
    recovery = worker.app.tables.recovery
    changelog = TP("watches-changelog", 0)

    async def scenario() -> list[bool]:
        woken: list[bool] = []
        waiter = asyncio.ensure_future(recovery.signal_recovery_end.wait())
        await asyncio.sleep(0)
        before = metrics.RECOVERY_WAKEUPS._value.get()
        worker._recovering, recovery.in_recovery = True, False
        recovery.active_highwaters[changelog], recovery.active_offsets[changelog] = 5, 3  # 2 left to read
        for t in (0.0, WAKE_RECOVERY_AFTER_S + 1):
            worker._wake_recovery(100.0 + t)
        await asyncio.sleep(0)
        woken.append(waiter.done())
        recovery.active_offsets[changelog] = 5  # read to the end, and Faust's recovery has ended
        worker._recovering = False  # not recovering: not this worker's business
        for t in (10.0, 10.0 + WAKE_RECOVERY_AFTER_S + 1):
            worker._wake_recovery(100.0 + t)
        await asyncio.sleep(0)
        woken.append(waiter.done())
        worker._recovering = True
        worker._wake_recovery(120.0)
        worker._wake_recovery(120.0 + WAKE_RECOVERY_AFTER_S / 2)  # not long enough yet
        await asyncio.sleep(0)
        woken.append(waiter.done())
        worker._wake_recovery(120.0 + WAKE_RECOVERY_AFTER_S)
        await asyncio.sleep(0)
        woken.append(waiter.done())
        woken.append(recovery.signal_recovery_end.is_set())
        woken.append(metrics.RECOVERY_WAKEUPS._value.get() - before == 1)
        worker._wake_recovery(130.0)  # no waiter any more: nothing to wake
        worker._wake_recovery(130.0 + WAKE_RECOVERY_AFTER_S + 1)
        woken.append(metrics.RECOVERY_WAKEUPS._value.get() - before == 1)
        return woken

    assert asyncio.run(scenario()) == [False, False, False, True, False, True, True]
