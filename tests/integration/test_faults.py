"""The fault suite on a real broker: a worker killed with SIGKILL in the middle of a fill burst, and a
held fill across a restart and a failover. Each trial holds the worker to independent
recomputations: NAV and the persisted book state against the snapshots and fills on the topics
(each fill once), alert events against `monitor replay` of the same messages.

`make test` runs a few trials; `make faults` runs more (MONITOR_FAULT_TRIALS) on longer bursts
(MONITOR_FAULT_FILLS fills per book).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitor.engine import format_ts, parse_ts
from monitor.ops.config import Settings
from monitor.ops.processes import free_ports
from monitor.stream.api import book_partition
from monitor.stream.topics import ensure_topics
from tests.conftest import WorkerProcess, produce, running_worker
from tests.faults import (Burst, Supervised, alerts_consistent, alerts_match_replay, changelog_books, explain_books,
                          make_burst, nav, read_topic, recompute_books, replay_alerts, state_partitions, wait_for)

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("MONITOR_FAULT_TRIALS", "2"))
FILLS_PER_BOOK = int(os.environ.get("MONITOR_FAULT_FILLS", "250"))
STRICT_HANDOVER_ALERTS = os.environ.get("MONITOR_FAULT_STRICT_HANDOVER", "") == "1"


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    return for_faults(settings)


def for_faults(settings: Settings, **changes: Any) -> Settings:
    """A short consumer-group session, so a killed worker's partitions move on in seconds, and a short
    stall exit; the topics created first, with the test's partitions (the broker would create
    one-partition topics)."""
    settings = dataclasses.replace(settings, session_timeout_s=6.0, stall_exit_s=15.0, **changes)
    asyncio.run(ensure_topics(settings))
    return settings


def book_navs(worker: WorkerProcess, books: list[str]) -> dict[str, float | None]:
    m = worker.metrics()
    return {b: m.get(("monitor_book_nav", (("portfolio_id", b),))) for b in books}


def navs_wrong(worker: WorkerProcess | Supervised, expected: dict[str, float]) -> str | None:
    """None when every book's NAV gauge equals the recomputation; else what differs."""
    if isinstance(worker, Supervised):
        worker = worker.alive()
    elif worker.proc is not None and worker.proc.poll() is not None:
        raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log()[-3000:]}")
    try:
        got = book_navs(worker, list(expected))
    except OSError as e:  # a restarted worker not serving /metrics yet
        return f"no metrics: {e}"
    wrong = wrong_navs(got, expected)
    return f"NAV (worker, recomputed): {wrong}" if wrong else None


def wrong_navs(got: dict[str, float | None], expected: dict[str, float]) -> dict[str, tuple[float | None, float]]:
    """The books of `expected` whose NAV in `got` is missing or not the recomputed one."""
    return {b: (got.get(b), want) for b, want in expected.items()
            if got.get(b) is None or abs(got[b] - want) > 1e-9 * abs(want)}


def live_alerts(settings: Settings) -> list[dict]:
    return [orjson.loads(v) for _, v in read_topic(settings.bootstrap_servers, settings.topic("drift-alerts"))]


def assert_books_equal_recomputation(settings: Settings, burst: Burst) -> None:
    expected = recompute_books(burst.messages)
    persisted = changelog_books(settings)
    for book in burst.books:
        positions, cash = persisted[book]
        want_positions, want_cash = expected[book]
        assert {i: q for i, q in positions.items() if q} == {i: q for i, q in want_positions.items() if q}, book
        assert cash == pytest.approx(want_cash, rel=1e-12, abs=1e-6), book


def assert_alerts_equal_replay(settings: Settings, burst: Burst, ignore: tuple[str, ...] = ()) -> None:
    live = live_alerts(settings)
    expected = replay_alerts(burst.messages, settings.tick)
    assert expected, "the burst opens no alert: the trial would not test alerts"
    problems = alerts_match_replay(live, expected, ignore)
    assert not problems, f"{len(problems)} problem(s) in {len(live)} live alert events:\n" + "\n".join(problems[:20])


def kill(worker: WorkerProcess) -> None:
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_9_during_a_fill_burst_loses_nothing_and_counts_nothing_twice(fault_settings, tmp_path, trial):
    settings = fault_settings
    rng = random.Random(1000 + trial)
    burst = make_burst(seed=trial, fills_per_book=FILLS_PER_BOOK)
    expected = {b: nav(*recompute_books(burst.messages)[b], burst.last_price) for b in burst.books}
    produce(settings, burst.setup)
    with running_worker(settings, tmp_path / "first.log") as first:
        # The flow arrives in chunks while the worker applies it; the kill lands somewhere in it.
        chunks = [burst.flow[i:i + 300] for i in range(0, len(burst.flow), 300)]
        feeder = threading.Thread(target=lambda: [(produce(settings, c), time.sleep(0.1)) for c in chunks])
        feeder.start()
        time.sleep(rng.uniform(1.0, 4.0))
        kill(first)
        feeder.join()
    with Supervised(settings, tmp_path, "second") as second:
        wait_for(lambda: navs_wrong(second, expected), timeout=150)
        time.sleep(1.5)  # anything emitted late would show below
    assert_books_equal_recomputation(settings, burst)
    assert_alerts_equal_replay(settings, burst)


def test_a_held_fill_survives_a_restart_and_a_failover(fault_settings, tmp_path: Path):
    """A fill that arrives before its instrument is held, applied when the instrument comes, and
    still in the book after kill -9 and a restart, and after a failover to another worker."""
    settings = fault_settings
    burst = make_burst(seed=77, books=2, fills_per_book=5)
    book = burst.books[0]
    end = parse_ts(burst.flow[-1][2]["ts"])
    late_fill = {"fill_id": "F-held", "portfolio_id": book, "instrument_id": "C", "side": "BUY", "quantity": 10,
                 "price": 50.0, "ts": format_ts(end + 1)}
    c_ref = ("instruments", "C", {**burst.setup[0][2], "instrument_id": "C", "sector": "S-C"})
    c_price = ("prices", "C", {"instrument_id": "C", "price": 55.0, "ts": late_fill["ts"]})
    recomputed = recompute_books(burst.messages + [("fills", book, late_fill)])
    prices = {**burst.last_price, "C": 55.0}
    expected = {b: nav(*recomputed[b], prices) for b in burst.books}

    produce(settings, burst.messages)
    with running_worker(settings, tmp_path / "first.log") as first:
        produce(settings, [("fills", book, late_fill)])
        wait_for(lambda: None if first.metrics().get(("monitor_held_fills", ())) == 1.0 else "fill not held",
                 timeout=60)
        produce(settings, [c_ref, c_price])
        wait_for(lambda: navs_wrong(first, expected), timeout=60)  # applied: +10 C at 55 for 500 cash
        time.sleep(1.0)
        kill(first)
    with Supervised(settings, tmp_path, "second") as second:
        wait_for(lambda: navs_wrong(second, expected), timeout=150)
        other_port = dataclasses.replace(settings, metrics_port=free_ports()[0])
        with Supervised(other_port, tmp_path, "third") as third:
            time.sleep(3.0)  # the third joins the group: the books are split between the two
            kill(second.alive())
            # The third owns every book after the second's session expires; a new price of C moves
            # the book's NAV by its 10 C only if the held fill came over with the book.
            move = ("prices", "C", {"instrument_id": "C", "price": 60.0, "ts": format_ts(end + 2)})
            produce(settings, [move])
            expected[book] += 10 * 5.0
            wait_for(lambda: navs_wrong(third, expected), timeout=150)
    persisted = changelog_books(settings)
    assert persisted[book][0].get("C") == 10.0


def live(worker: WorkerProcess | Supervised) -> WorkerProcess:
    """The worker's process; a supervised one started again if it exited stalled."""
    return worker.alive() if isinstance(worker, Supervised) else worker


def name(worker: WorkerProcess | Supervised) -> str:
    return worker.name if isinstance(worker, Supervised) else worker.log_path.stem


def exported_books(worker: WorkerProcess | Supervised) -> set[str]:
    """The books whose NAV gauge the worker exports (it owns them)."""
    try:
        m = live(worker).metrics()
    except OSError:
        return set()
    return {dict(labels)["portfolio_id"] for name, labels in m if name == "monitor_book_nav"}


def split_wrong(workers: list[WorkerProcess | Supervised], expected: dict[str, float]) -> str | None:
    """None when every book is exported by exactly one worker with the recomputed NAV."""
    owners = {b: [name(w) for w in workers if b in exported_books(w)] for b in expected}
    shared = {b: o for b, o in owners.items() if len(o) != 1}
    if shared:
        return f"books not on exactly one worker: {shared}"
    wrong = [navs_wrong(w, {b: expected[b] for b in expected if owners[b] == [name(w)]}) for w in workers]
    return "; ".join(x for x in wrong if x) or None


def wait_for_split(workers: list[WorkerProcess | Supervised], burst: Burst, expected: dict[str, float],
                   timeout: float) -> None:
    """`split_wrong` comes to None in time; else fail with why each book with a wrong NAV has it."""
    try:
        wait_for(lambda: split_wrong(workers, expected), timeout=timeout)
    except AssertionError as failure:
        why = []
        for w in map(live, workers):
            wrong = sorted(wrong_navs(book_navs(w, list(expected)), {b: expected[b] for b in exported_books(w)}))
            if wrong:
                why.append(f"{w.log_path.stem}:\n{explain_books(w.settings, w.settings.public_api_url, burst, wrong)}")
        raise AssertionError(f"{failure}\n" + "\n".join(why)) from None


def test_two_workers_split_the_books_and_a_kill_moves_them_whole(settings, tmp_path: Path):
    """Two workers on 8 partitions join on a backlog: each book is judged and exported by one of
    them. One is killed while they work through it: the other takes its books with their state; the
    killed one is started again: the books split again, each worker rewinding its market to a
    checkpoint none of its books is behind.
    Throughout, every NAV equals the recomputation and every state record sits on its book's input
    partition; with MONITOR_FAULT_STRICT_HANDOVER=1 (`make faults`) the alerts must equal the replay.

    The flow is on the topics before the workers start: a worker that has read everything releases
    what arrives as it arrives (a partition read to its end holds nothing back), so a flow produced
    while it waits is applied in arrival order, which a replay of the log cannot know."""
    settings = for_faults(settings, partitions=8)
    burst = make_burst(seed=21, books=8, fills_per_book=FILLS_PER_BOOK)  # on 7 of the 8 partitions
    expected = {b: nav(*recompute_books(burst.messages)[b], burst.last_price) for b in burst.books}
    produce(settings, burst.messages)
    first_settings, second_settings = (dataclasses.replace(settings, metrics_port=p) for p in free_ports(2))
    # Each recovery runs under a supervisor: one that exits stalled (Faust's changelog recovery has,
    # rarely, not ended after a failover: README, Loud, never silent) is started again, as in production.
    with Supervised(first_settings, tmp_path, "first") as first, \
            Supervised(second_settings, tmp_path, "second") as second:
        wait_for(lambda: None if exported_books(first) and exported_books(second) else "not split yet", timeout=90)
        kill(first.alive())
        wait_for_split([second], burst, expected, timeout=120)
        with Supervised(first_settings, tmp_path, "first-again") as again:
            wait_for(lambda: None if exported_books(again) else "the restarted worker has no book", timeout=90)
            wait_for_split([second, again], burst, expected, timeout=120)
            time.sleep(1.5)  # anything emitted late would show below
    assert_books_equal_recomputation(settings, burst)
    if STRICT_HANDOVER_ALERTS:
        # Open (issue 15): across handovers, most runs equal the replay alert for alert (the drift
        # attribution's split aside), but some still emit transitions the replay does not. `make
        # faults` holds the alerts to the replay; `make test` holds the books, their ownership and
        # their state's partitions, and that no alert is opened twice nor an event re-emitted changed.
        assert_alerts_equal_replay(settings, burst, ignore=("attribution",))
    else:
        live = live_alerts(settings)
        assert live, "no alert event: the test would not test alerts"
        problems = alerts_consistent(live, ignore=("attribution",))
        assert not problems, f"{len(problems)} problem(s) in {len(live)} alert events:\n" + "\n".join(problems[:20])
    # Every state record of every book sits on the partition of the book's input, in every table.
    for table, records in state_partitions(settings).items():
        assert {pid for pid, _ in records} == set(burst.books), table
        misplaced = {(pid, p) for pid, p in records if p != book_partition(pid, settings.partitions)}
        assert not misplaced, f"{table}: records on another partition than their book's input: {misplaced}"


def late_inputs(worker: WorkerProcess) -> float:
    return sum(v for (name, _), v in worker.metrics().items() if name == "monitor_late_inputs_total")


OUTAGE_S = float(os.environ.get("MONITOR_FAULT_OUTAGE_S", "10"))


class Feeder(threading.Thread):
    """Produces the flow in chunks, as a producer that retries a chunk the broker refused would;
    `resent` lists the chunks sent again (their messages that did get through come twice, the second
    time after later ones: inputs the worker rightly applies late)."""

    def __init__(self, settings: Settings, flow: list, chunk: int = 200) -> None:
        super().__init__()
        self.settings, self.flow, self.chunk = settings, flow, chunk
        self.resent: list[int] = []

    def run(self) -> None:
        for i in range(0, len(self.flow), self.chunk):
            for attempt in range(60):
                try:
                    produce(self.settings, self.flow[i:i + self.chunk])  # duplicates count once
                    break
                except Exception:  # noqa: BLE001 - the broker is down: try again
                    if not attempt:
                        self.resent.append(i // self.chunk)
                    time.sleep(1.0)
            time.sleep(0.1)


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_a_broker_stopped_or_paused_under_load_costs_latency_not_data(tmp_path, fault):
    """Its own broker, stopped (SIGTERM, restarted on the same port and data dir after OUTAGE_S) or
    paused (SIGSTOP for OUTAGE_S, then SIGCONT) while fills and prices flow: afterwards every book
    equals the recomputation; the worker never exits. The alerts equal the replay unless the worker
    counted inputs applied late: the feed re-sends a refused chunk, and a chunk half written when
    the broker went away has its fills reach the worker after later prices (README, Replay = live).
    Then they are still consistent: no alert opened twice, a re-emitted event unchanged."""
    from monitor.ops.broker import LocalKafka

    with LocalKafka() as kafka:
        settings = Settings(bootstrap_servers=kafka.bootstrap_servers, topic_prefix="outage-", partitions=2,
                            metrics_port=free_ports()[0], data_dir=str(tmp_path / "worker-data"),
                            session_timeout_s=10.0, stall_exit_s=120.0)
        asyncio.run(ensure_topics(settings))
        burst = make_burst(seed=50 + (fault == "paused"), fills_per_book=FILLS_PER_BOOK)
        expected = {b: nav(*recompute_books(burst.messages)[b], burst.last_price) for b in burst.books}
        produce(settings, burst.setup)
        with running_worker(settings, tmp_path / "worker.log") as worker:
            feeder = Feeder(settings, burst.flow)
            feeder.start()
            wait_for(lambda: None if any(book_navs(worker, burst.books).values()) else "no book valued yet", 60)
            time.sleep(1.0)  # the flow is going through the worker
            # Up to now a steady feed: the gate waits for the broker to confirm the ends (README, The live
            # tail), unless the feeder had to send a chunk again (a fresh broker can refuse the first).
            assert feeder.resent or late_inputs(worker) == 0, "inputs applied late before any fault"
            print(f"before the fault: {late_inputs(worker):.0f} late inputs, chunks sent again: {feeder.resent}")
            if fault == "stopped":
                kafka.restart(down_for=OUTAGE_S)
            else:
                kafka.pause()
                time.sleep(OUTAGE_S)
                kafka.resume()
            feeder.join()
            wait_for(lambda: navs_wrong(worker, expected), timeout=180)
            time.sleep(1.5)
            # Quiet during the outage: each repeated client error at most once per 10 s, all counted.
            errors = worker.log().count("[error")
            counted = worker.metrics().get(("monitor_client_log_errors_total", (("library", "aiokafka"),)), 0.0)
            assert errors < 100 and (fault == "paused" or counted > errors), (errors, counted)
            late = late_inputs(worker)
        assert_books_equal_recomputation(settings, burst)
        if not late:
            assert_alerts_equal_replay(settings, burst)
        else:
            live = live_alerts(settings)
            problems = alerts_consistent(live)
            assert not problems, f"{len(problems)} problem(s) in {len(live)} alert events:\n" + "\n".join(problems[:20])
            print(f"{late:.0f} inputs applied late: the alerts are checked for consistency, not against the replay")
