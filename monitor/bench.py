"""`monitor bench`: what the monitor costs, against the Python client's own limit.

On a real broker, in one run: preload the topics with a seeded market, then drain the
same price topic with (a) a raw aiokafka consumer decoding every message into a dict,
(b) a naive Faust agent writing every price to a Table, (c) the monitor worker with the
full engine; then measure event-to-alert latency at a steady produce rate; then the
monitor's drain rate over a grid of market sizes (books at a fixed instrument count,
instruments at a fixed book count), each on fresh topics. Each consumer runs in its
own process: events/s from its first record to its last, its CPU seconds and peak RSS
(the whole process, start-up included). The figures are printed and written as a
markdown table to BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from monitor.ops.config import KafkaSecurity, Settings
from monitor.ops.metrics import scrape
from monitor.ops.processes import free_ports, spawn, terminate
from monitor.simulate import Market, MarketConfig, format_ts
from monitor.stream.topics import ensure_topics


@dataclass
class Drain:
    """One consumer's run over the preloaded prices."""

    name: str
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    first_evaluation_s: float | None = None  # monitor only: process start to its first evaluation

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


# -- the consumers (each runs as `python -m monitor.bench CLIENT ...`) -------------------


async def _raw_drain(bootstrap: str, topic: str, count: int) -> tuple[int, float]:
    """The Python client's limit: getmany + orjson into a dict, nothing else."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
                                **KafkaSecurity.from_env().client_options())
    await consumer.start()
    n, began = 0, None
    try:
        while n < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if began is None and batch:
                began = time.perf_counter()
            for records in batch.values():
                for r in records:
                    orjson.loads(r.value)
                n += len(records)
    finally:
        await consumer.stop()
    return n, time.perf_counter() - (began or time.perf_counter())


def _naive_faust(bootstrap: str, topic: str, count: int, cap_seconds: float, partitions: int) -> None:
    """A per-event Faust agent that writes each price to a changelog-backed Table."""
    import faust

    app = faust.App(f"bench-naive-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", store="memory://",
                    web_enabled=False, consumer_auto_offset_reset="earliest",
                    **KafkaSecurity.from_env().faust_options())
    prices = app.topic(topic, value_serializer="raw", key_serializer="raw")
    table = app.Table("latest-price", key_type=str, partitions=partitions)  # co-partitioned with the prices
    state = {"n": 0, "began": 0.0}

    @app.agent(prices)
    async def latest(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            if state["n"] == 0:
                state["began"] = time.perf_counter()
            doc = orjson.loads(value)
            table[doc["instrument_id"]] = doc["price"]
            state["n"] += 1
            if state["n"] >= count or time.perf_counter() - state["began"] > cap_seconds:
                result = {"events": state["n"], "seconds": time.perf_counter() - state["began"], **_own_usage()}
                os.write(1, orjson.dumps(result) + b"\n")  # fd 1: Faust redirects print() into its logs
                os._exit(0)

    faust.Worker(app, loglevel="ERROR", quiet=True).execute_from_commandline()


def _own_usage() -> dict[str, float]:
    """This process's CPU seconds and peak RSS (MB), for a client's result line."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def _measure(name: str, argv: list[str], timeout: float) -> Drain:
    """Run a client process and read its result line."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line[line.index("{"):] for line in done.stdout.splitlines() if "{" in line]  # after Faust's tty codes
    if done.returncode != 0 or not lines:
        raise click.ClickException(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    r = orjson.loads(lines[-1])
    return Drain(name, r["events"], r["seconds"], r["cpu_seconds"], r["peak_rss_mb"])


# -- the harness -----------------------------------------------------------------------


async def _preload(settings: Settings, config: MarketConfig, prices: int) -> tuple[int, int, float]:
    """Reference data, then `prices` price ticks and the fills between them; (prices, fills, seconds)."""
    market = Market(config)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20,
                                max_batch_size=512 * 1024, acks=1, **settings.kafka_security.client_options())
    await producer.start()
    began = time.perf_counter()
    n_prices = n_fills = 0
    try:
        pending = []
        for event in market.reference_events():
            pending.append(await producer.send(settings.topic(event.topic), orjson.dumps(event.value),
                                               key=event.key.encode()))
        await asyncio.gather(*pending)
        for event in market.ticks():
            if event.topic == "prices":
                if n_prices >= prices:
                    break
                n_prices += 1
            else:
                n_fills += 1
            await producer.send(settings.topic(event.topic), orjson.dumps(event.value), key=event.key.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return n_prices, n_fills, time.perf_counter() - began


class Reading(NamedTuple):
    """What a worker's /metrics says of its drain."""

    prices: float  # prices read
    cpu_seconds: float  # the whole process's
    evaluations: float  # event-time windows (or what one fetch held of one) applied and evaluated
    evaluation_seconds: float  # time spent in them: applying prices, valuing and judging the books touched
    held: float  # events waiting in the gate
    caught_up: bool  # both streams read to their end and the gate empty, once (monitor_inputs_caught_up)
    books: frozenset[str]  # books whose gauges it exports: the books it owns and has evaluated

    @classmethod
    def of(cls, url: str) -> "Reading":
        samples = scrape(url)
        return cls(samples.get(("monitor_events_consumed_total", (("topic", "prices"),)), 0.0),
                   samples.get(("process_cpu_seconds_total", ()), 0.0),
                   samples.get(("monitor_evaluation_seconds_count", ()), 0.0),
                   samples.get(("monitor_evaluation_seconds_sum", ()), 0.0),
                   samples.get(("monitor_gate_held_events", ()), 0.0),
                   samples.get(("monitor_inputs_caught_up", ()), 0.0) == 1.0,
                   frozenset(dict(labels)["portfolio_id"] for name, labels in samples if name == "monitor_book_nav"))


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# A /metrics scrape costs the worker CPU (at 20 scrapes/s, ~6% of its profile samples), so the
# drain is polled from every 20 ms, slowing by half each time up to 4 times a second.
POLL_SECONDS = (0.02, 0.25)


def _spawn_worker(settings: Settings, workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "MONITOR_TOPIC_PREFIX": settings.topic_prefix, "MONITOR_PARTITIONS": str(settings.partitions),
           "MONITOR_METRICS_PORT": str(settings.metrics_port), "MONITOR_DATA_DIR": str(workdir / "worker-data"),
           "MONITOR_LOG_LEVEL": "warning", "MONITOR_INSTANCE_ID": settings.instance_id or "",
           "MONITOR_APP_ID": settings.app_id}
    return spawn([sys.executable, "-m", "monitor", "worker"], env=env, log_path=workdir / "bench-worker.log")


def _live_worker(settings: Settings, books: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A worker on topics holding reference data only, once it has read every book's snapshot."""
    proc = _spawn_worker(settings, workdir)
    url = settings.local_metrics_url
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if scrape(url).get(("monitor_events_consumed_total", (("topic", "positions"),)), 0.0) >= books:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    code = terminate(proc)
    log_path = workdir / "bench-worker.log"
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]) if log_path.exists() else ""
    raise click.ClickException(f"the latency run's worker read no snapshot of {books} books in 120 s "
                               f"(exit {code}); the end of {log_path}:\n{tail}")


@dataclass
class WorkerRun:
    """One worker of a group's drain: its readings at its first price read and when the group was
    caught up (its books a moment later, once its book gauges are published)."""

    first: Reading
    last: Reading
    books: frozenset[str]
    peak_rss_mb: float
    joined_s: float  # from the group's first price read to this worker's (its join and first recovery)

    @property
    def cpu_seconds(self) -> float:
        return self.last.cpu_seconds - self.first.cpu_seconds


@dataclass
class GroupDrain:
    """Workers of one consumer group draining the preloaded prices together."""

    prices: int
    seconds: float  # the first price read by any of them to the last of them caught up
    workers: list[WorkerRun]
    first_evaluation_s: float | None  # process start to the first evaluation of any of them

    @property
    def rate(self) -> float:
        return self.prices / self.seconds if self.seconds > 0 else 0.0

    @property
    def joined_rate(self) -> float:
        """From the last worker's first price read: the drain with the group formed, its join left out."""
        seconds = self.seconds - max(w.joined_s for w in self.workers)
        return self.prices / seconds if seconds > 0 else 0.0


# The worker publishes its book gauges once a second: wait this long after caught up to read them.
BOOK_GAUGES_S = 1.5


def _group_drain(settings: Settings, prices: int, workdir: Path, workers: int = 1) -> GroupDrain:
    """Start `workers` workers of one consumer group on the preloaded topics; time them from the first
    price any of them reads to every one caught up: all prices read, its inputs read to the end
    (monitor_inputs_caught_up) and nothing left in its gate. Every worker is stopped on return."""
    members = [replace(settings, metrics_port=port) for port in free_ports(workers)]
    dirs = [workdir / f"worker-{i + 1}" for i in range(workers)]
    started = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for member, member_dir in zip(members, dirs):
            member_dir.mkdir(parents=True, exist_ok=True)
            procs.append(_spawn_worker(member, member_dir))
        firsts: list[Reading | None] = [None] * workers
        first_at = [0.0] * workers
        began = first_evaluation = None
        poll = POLL_SECONDS[0]
        deadline = time.monotonic() + 1800
        while True:
            for proc, member_dir in zip(procs, dirs):
                if proc.poll() is not None:
                    raise click.ClickException(f"a worker exited ({proc.returncode}): "
                                               f"see {member_dir / 'bench-worker.log'}")
            try:
                readings = [Reading.of(m.local_metrics_url) for m in members]
            except OSError:
                time.sleep(0.05)
                continue
            now = time.perf_counter()
            for i, r in enumerate(readings):
                if firsts[i] is None and r.prices > 0:
                    firsts[i], first_at[i] = r, now
            if began is None and any(firsts):
                began = now
            if first_evaluation is None and any(r.evaluations > 0 for r in readings):
                first_evaluation = now - started
            if all(r.prices >= prices and r.held == 0 and r.caught_up for r in readings):
                break
            if time.monotonic() > deadline:
                state = "; ".join(f"{d.name}: {r.prices:,.0f} prices read, {r.held:,.0f} held, caught up {r.caught_up}"
                                  for d, r in zip(dirs, readings))
                raise click.ClickException(f"not caught up in 30 minutes ({state}): see the logs in {workdir}")
            time.sleep(poll)
            if began is not None:
                poll = min(POLL_SECONDS[1], poll * 1.5)
        assert began is not None
        time.sleep(BOOK_GAUGES_S)
        books = [Reading.of(m.local_metrics_url).books for m in members]
        runs = []
        for first, at, last, owned, proc in zip(firsts, first_at, readings, books, procs):
            assert first is not None  # it has read every price
            runs.append(WorkerRun(first, last, owned, _peak_rss_mb(proc.pid), at - began))
        return GroupDrain(prices, now - began, runs, first_evaluation)
    finally:
        for proc in procs:
            terminate(proc)


def _monitor_drain(settings: Settings, prices: int, workdir: Path) -> Drain:
    """One worker on the preloaded topics, from its first price read to its last price applied to the
    engine (all read, none left waiting in the gate)."""
    group = _group_drain(settings, prices, workdir)
    (run,) = group.workers
    return Drain("monitor (full engine)", prices, group.seconds, run.cpu_seconds, run.peak_rss_mb,
                 group.first_evaluation_s)


# The simulator takes ~75 us a tick at 2,000 instruments (it draws every instrument's shock each
# step): too slow to generate 20,000 prices/s live. The feed computes this many seconds of ticks
# before its clock starts, then plays them forth and back.
FEED_CYCLE_S = 5.0
FEED_STARTED = "feed started at"


async def _feed(bootstrap: str, topic: str, rate: float, seconds: float, config: MarketConfig) -> None:
    """Produce live prices at `rate`/s for `seconds`, each stamped with the wall clock as it is sent.
    Runs in its own process (`python -m monitor.bench feed ...`), so that producing 20,000
    messages/s does not delay the reader that timestamps the alerts."""
    market = Market(replace(config, tick_rate=rate, start=datetime.now(timezone.utc)))  # simulated time = wall time
    ticks = [(e.key.encode(), e.value) for e in
             itertools.islice((e for e in market.ticks() if e.topic == "prices"), int(rate * FEED_CYCLE_S))]
    loop = ticks + ticks[::-1]  # forth and back: each instrument's path stays continuous
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1,
                                **KafkaSecurity.from_env().client_options())
    await producer.start()
    try:
        began = time.time()
        print(f"{FEED_STARTED} {began}", flush=True)  # the reader's latency run starts here
        sent = 0
        while time.time() - began < seconds:
            due = int((time.time() - began) * rate)
            while sent < due:
                key, value = loop[sent % len(loop)]
                await producer.send(topic, orjson.dumps({**value, "ts": format_ts(datetime.now(timezone.utc))}),
                                    key=key)
                sent += 1
                if sent % 64 == 0:
                    await asyncio.sleep(0)  # let the producer's sender ship what is stamped
            await asyncio.sleep(0.001)
        await producer.flush()
    finally:
        await producer.stop()


async def _latency(settings: Settings, config: MarketConfig, rate: float, seconds: float,
                   log_path: Path) -> list[tuple[float, float]]:
    """Live prices at `rate`/s for `seconds` from a feed process; per alert, ms from its event ts to
    the alert readable on drift-alerts, and to its emission by the worker (its detected_ts)."""
    consumer = AIOKafkaConsumer(settings.topic("drift-alerts"), bootstrap_servers=settings.bootstrap_servers,
                                group_id=None, auto_offset_reset="latest", **settings.kafka_security.client_options())
    await consumer.start()
    await consumer.seek_to_end()
    latencies: list[tuple[float, float]] = []  # ms to readable, ms to emitted by the worker
    began: float | None = None  # when the feed's clock starts (after it has computed its ticks)
    offset = log_path.stat().st_size if log_path.exists() else 0
    feed = spawn([sys.executable, "-m", "monitor.bench", "feed", settings.bootstrap_servers,
                  settings.topic("prices"), str(rate), str(seconds), str(config.books), str(config.instruments),
                  str(config.seed)], env=dict(os.environ), log_path=log_path)
    try:
        ended: float | None = None
        while ended is None or time.time() - ended < 2.0:  # and 2 s for the last alerts
            if ended is None and feed.poll() is not None:
                if feed.returncode != 0:
                    raise click.ClickException(f"the price feed failed ({feed.returncode}): see {log_path}")
                ended = time.time()
            if began is None:
                began = _feed_start(log_path, offset)
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for r in records:
                    alert = orjson.loads(r.value)
                    if alert["event_ts"] and alert["inputs"]["price_ts"]:
                        event = datetime.fromisoformat(alert["event_ts"]).timestamp()
                        if began is not None and event >= began:
                            emitted = datetime.fromisoformat(alert["detected_ts"]).timestamp()
                            latencies.append(((now - event) * 1000, (emitted - event) * 1000))
    finally:
        terminate(feed)
        await consumer.stop()
    return latencies


def _feed_start(log_path: Path, offset: int) -> float | None:
    """The wall time the feed process's clock started, once it has said so in its log (which is
    appended to: read from `offset`, its size before this feed)."""
    with log_path.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            if line.startswith(FEED_STARTED):
                return float(line.split()[-1])
    return None


def _batches(before: dict, after: dict, wall_seconds: float, feed_seconds: float) -> str:
    """What the worker did during the latency run: price batches applied, their size and time."""
    def delta(name: str, labels: tuple = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    count, seconds = delta("monitor_evaluation_seconds_count"), delta("monitor_evaluation_seconds_sum")
    prices = delta("monitor_events_consumed_total", (("topic", "prices"),))
    cpu = delta("process_cpu_seconds_total")
    if not count:
        return ""
    return (f"During the latency run the worker read {prices:,.0f} prices ({prices / feed_seconds:,.0f}/s over the "
            f"feed's {feed_seconds:.0f} s) and evaluated {count:,.0f} times (the prices of one event-time window, or "
            f"of what one fetch held of it): {prices / count:,.0f} prices and {seconds / count * 1000:.2f} ms each on "
            f"average; it used {cpu:.1f} CPU s "
            f"in the {wall_seconds:.0f} s of the run.\n\n")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Cell:
    """The monitor's drain over one market size of the scaling grid."""

    books: int
    instruments: int
    drain: Drain


def _market(books: int, instruments: int, seed: int = 42) -> MarketConfig:
    """The seeded market of every bench run: a dense feed, 20,000 prices/s of event time."""
    return MarketConfig(books=books, instruments=instruments, seed=seed, tick_rate=20_000.0, fill_rate=10.0)


# Partitions of every bench topic: enough for two workers to own books each.
PARTITIONS = 4


def _preloaded(bootstrap: str, config: MarketConfig, prices: int) -> tuple[Settings, tuple[int, int, float]]:
    """Fresh topics (their own prefix; a free /metrics port for the worker) preloaded with the market."""
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:6]}-",
                        partitions=PARTITIONS, metrics_port=free_ports()[0], kafka_security=KafkaSecurity.from_env())
    asyncio.run(ensure_topics(settings))
    return settings, asyncio.run(_preload(settings, config, prices))


def _scaling(bootstrap: str, books: list[int], instruments: list[int], prices: int, fixed: tuple[int, int],
             workdir: Path) -> list[Cell]:
    """Monitor drain rate per market size: books at fixed[1] instruments, instruments at fixed[0] books."""
    grid = list(dict.fromkeys([(b, fixed[1]) for b in books] + [(fixed[0], i) for i in instruments]))
    cells: list[Cell] = []
    for n_books, n_instruments in grid:
        settings, loaded = _preloaded(bootstrap, _market(n_books, n_instruments), prices)
        cell_dir = workdir / f"scaling-{n_books}x{n_instruments}"
        cell_dir.mkdir(parents=True, exist_ok=True)
        drain = _monitor_drain(settings, loaded[0], cell_dir)
        cells.append(Cell(n_books, n_instruments, drain))
        click.echo(f"  scaling {n_books} books x {n_instruments} instruments: {drain.rate:,.0f} events/s, "
                   f"peak RSS {drain.peak_rss_mb:,.0f} MB")
    return cells


def _scaling_report(cells: list[Cell], prices: int) -> list[str]:
    if not cells:
        return []
    lines = [f"Scaling: the monitor draining {prices:,} preloaded prices per market size (fresh topics each).",
             "",
             "| books | instruments | events/s | CPU s | peak RSS MB | start to first evaluation s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in cells:
        first = f"{c.drain.first_evaluation_s:.1f}" if c.drain.first_evaluation_s is not None else "n/a"
        lines.append(f"| {c.books:,} | {c.instruments:,} | {c.drain.rate:,.0f} | {c.drain.cpu_seconds:.1f} | "
                     f"{c.drain.peak_rss_mb:,.0f} | {first} |")
    return lines + [""]


@dataclass
class Pair:
    """One worker and two workers of one consumer group on the same preloaded topics."""

    books: int
    instruments: int
    one: GroupDrain
    two: GroupDrain

    @property
    def ratio(self) -> float:
        return self.two.rate / self.one.rate if self.one.rate > 0 else float("nan")

    @property
    def joined_ratio(self) -> float:
        return self.two.joined_rate / self.one.joined_rate if self.one.joined_rate > 0 else float("nan")


def _split_wrong(group: GroupDrain, books: set[str]) -> str | None:
    """None when every book's gauges are exported by exactly one worker and every worker exports some."""
    owners = {b: [i + 1 for i, w in enumerate(group.workers) if b in w.books] for b in books}
    not_once = {b: o for b, o in owners.items() if len(o) != 1}
    idle = [i + 1 for i, w in enumerate(group.workers) if not w.books]
    strays = sorted(set().union(*(w.books for w in group.workers)) - books)
    if not (not_once or idle or strays):
        return None
    return (f"books not exported by exactly one worker: {dict(itertools.islice(not_once.items(), 10))} "
            f"({len(not_once)} of {len(books)}); workers exporting none: {idle}; unknown books: {strays[:10]}")


def _two_workers(bootstrap: str, books: list[int], instruments: int, prices: int, workdir: Path) -> list[Pair]:
    """Per book count, on one preloaded market: one worker, then two workers of one consumer group
    (each a fresh group: no committed offsets, state or checkpoint of the other run). Each worker
    reads every price; only the worker owning a book's partition values and judges it."""
    pairs: list[Pair] = []
    for n_books in books:
        config = _market(n_books, instruments)
        settings, loaded = _preloaded(bootstrap, config, prices)
        expected = {book.portfolio_id for book in Market(config).books}
        cell_dir = workdir / f"two-workers-{n_books}x{instruments}"
        drains = [_group_drain(replace(settings, app_id=f"bench-{n}-worker"), loaded[0], cell_dir / f"{n}-worker", n)
                  for n in (1, 2)]
        for drain in drains:
            wrong = _split_wrong(drain, expected)
            if wrong:
                raise click.ClickException(f"{len(drain.workers)} worker(s) at {n_books} books: {wrong}; "
                                           f"see the logs in {cell_dir}")
        pairs.append(Pair(n_books, instruments, *drains))
        click.echo(f"  {n_books} books x {instruments} instruments: one worker {drains[0].rate:,.0f} events/s, "
                   f"two {drains[1].rate:,.0f} events/s ({pairs[-1].ratio:.2f}x; once joined "
                   f"{pairs[-1].joined_ratio:.2f}x), books split "
                   f"{' / '.join(str(len(w.books)) for w in drains[1].workers)}")
    return pairs


def _two_workers_report(pairs: list[Pair], prices: int) -> list[str]:
    if not pairs:
        return []
    lines = [f"Two workers against one: the same {prices:,} preloaded prices ({pairs[0].instruments:,} instruments, "
             f"{PARTITIONS} partitions a topic) drained by one worker, then by two workers of one consumer group "
             "(a fresh group each). events/s: prices drained per second of wall time, from the first price read "
             "by any worker to every worker caught up (every price read, its inputs read to the end, its gate "
             "empty); once joined: from the last worker's first price read instead. Every worker reads, "
             "decodes and applies every price; each values and judges only the "
             "books of the partitions it owns (books owned: the books whose gauges it exports). Evaluations: "
             "event-time windows applied and evaluated; evaluation s: the time in them. CPU s: from the "
             "worker's first price read. First price s: from the group's first price read to the worker's (a "
             "worker reads prices once it has joined the group and recovered its books). Prices read include "
             "each instrument's start-of-day price.",
             "",
             "| books | workers | events/s | events/s once joined | worker | books owned | prices read | "
             "evaluations | evaluation s | "
             "CPU s | peak RSS MB | first price s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in pairs:
        for group in (p.one, p.two):
            for i, w in enumerate(group.workers):
                lines.append(f"| {p.books:,} | {len(group.workers)} | {group.rate:,.0f} | {group.joined_rate:,.0f} | "
                             f"{i + 1} | {len(w.books):,} | "
                             f"{w.last.prices:,.0f} | {w.last.evaluations:,.0f} | {w.last.evaluation_seconds:.2f} | "
                             f"{w.cpu_seconds:.1f} | {w.peak_rss_mb:,.0f} | {w.joined_s:.1f} |")
    lines.append("")
    for p in pairs:
        lines.append(f"At {p.books:,} books: two workers / one = {p.ratio:.2f}, once joined {p.joined_ratio:.2f} "
                     f"(target >= 1.5 at 1,000 books); "
                     f"CPU s one worker {p.one.workers[0].cpu_seconds:.1f}, two together "
                     f"{sum(w.cpu_seconds for w in p.two.workers):.1f}.  ")
    return lines + [""]


def _code_version() -> str:
    """The commit the bench ran, with -dirty if the code (monitor/) had uncommitted changes; a
    results file changed by an earlier run does not count."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "monitor"], cwd=root, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("-dirty" if changed else "")


def _header(title: str, args: dict, kafka: str) -> list[str]:
    """A result's heading: when, what, on which machine and code, and the command that reproduces it."""
    return [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {title}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; Kafka {kafka} (single-node KRaft, loopback); code {_code_version()}.  ",
        f"Command: `monitor bench {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in args.items())}`  ",
    ]


def _report(args: dict, drains: list[Drain], pairs: list[tuple[float, float]], kafka: str, preload: tuple) -> str:
    raw, naive, monitor = drains
    latencies, in_worker = [p[0] for p in pairs], [p[1] for p in pairs]
    lines = _header(f"{args['books']} books x {args['instruments']} instruments, {preload[0]:,} prices, "
                    f"{preload[1]:,} fills", args, kafka)
    lines += [
        f"Preload: {preload[0] + preload[1]:,} messages in {preload[2]:.1f} s.",
        "",
        "| consumer | events | seconds | events/s | CPU s | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in drains:
        lines.append(f"| {d.name} | {d.events:,} | {d.seconds:.3f} | {d.rate:,.0f} | {d.cpu_seconds:.1f} | "
                     f"{d.peak_rss_mb:,.0f} |")
    lines += [
        "",
        f"monitor / raw = {monitor.rate / raw.rate:.2f} (target >= 0.5); "
        f"monitor / naive Faust = {monitor.rate / naive.rate:.1f} (target >= 10).",
        "",
        f"Latency, event ts to alert readable on drift-alerts, at {args['latency_rate']:,.0f} prices/s for "
        f"{args['latency_seconds']:.0f} s, a live feed going on from the market's start-of-day prices on fresh "
        f"topics ({len(latencies):,} alerts): "
        f"p50 {_percentile(latencies, 0.5):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms, "
        f"p99.9 {_percentile(latencies, 0.999):.1f} ms (targets: p99 <= 50 ms, p99.9 <= 200 ms). Of which event "
        f"ts to emission by the worker (its detected_ts): p50 {_percentile(in_worker, 0.5):.1f} ms, "
        f"p99 {_percentile(in_worker, 0.99):.1f} ms.",
        "",
    ]
    return "\n".join(lines)


def _comparison(bootstrap: str, args: dict, workdir: Path) -> str:
    """Raw aiokafka, naive Faust and the monitor on one preloaded price topic; then the latency run."""
    from monitor.ops.broker import kafka_version

    books, instruments, prices = args["books"], args["instruments"], args["prices"]
    config = _market(books, instruments)
    click.echo(f"preloading {prices:,} prices for {books} books x {instruments} instruments ...")
    settings, preload = _preloaded(bootstrap, config, prices)
    click.echo(f"  {preload[0]:,} prices, {preload[1]:,} fills in {preload[2]:.1f} s")
    me = [sys.executable, "-m", "monitor.bench"]
    topic = settings.topic("prices")

    raw = _measure("raw aiokafka getmany + orjson", [*me, "raw", bootstrap, topic, str(preload[0])], 900)
    click.echo(f"  raw: {raw.rate:,.0f} events/s")
    naive_seconds = args["naive_seconds"]
    naive = _measure("naive Faust agent, Table write per price",
                     [*me, "naive", bootstrap, topic, str(preload[0]), str(naive_seconds), str(settings.partitions)],
                     naive_seconds + 120)
    click.echo(f"  naive Faust: {naive.rate:,.0f} events/s")
    monitor = _monitor_drain(settings, preload[0], workdir)
    click.echo(f"  monitor: {monitor.rate:,.0f} events/s")
    # Latency on fresh topics holding the same market's reference data and start-of-day
    # snapshots only: the live feed then goes on from those prices and this moment, as a
    # real feed would. (After the preload, the event-time clock would jump from the
    # preloaded market's simulated day to the wall clock: every book stale at once.)
    settings, _ = _preloaded(bootstrap, replace(config, start=datetime.now(timezone.utc)), 0)
    proc = _live_worker(settings, books, workdir)
    url = settings.local_metrics_url
    try:
        before = scrape(url)
        run_began = time.time()
        latencies = asyncio.run(_latency(settings, config, args["latency_rate"], args["latency_seconds"],
                                         workdir / "bench-feed.log"))
        batches = _batches(before, scrape(url), time.time() - run_began, args["latency_seconds"])
    finally:
        terminate(proc)
    first = monitor.first_evaluation_s
    report = _report(args, [raw, naive, monitor], latencies, kafka_version(), preload) + batches
    return report + (f"Worker process start to its first evaluation, {preload[0]:,} prices waiting: {first:.1f} s "
                     f"(target <= 10 s).\n\n" if first is not None else "")


def _books_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@click.command("bench")
@click.option("--books", type=int, default=50, show_default=True)
@click.option("--instruments", type=int, default=2_000, show_default=True)
@click.option("--prices", type=int, default=2_000_000, show_default=True,
              help="Prices to preload and drain; 0: no comparison of consumers and no latency run")
@click.option("--naive-seconds", type=float, default=60.0, show_default=True,
              help="Cap on the naive Faust agent's run (it is slow)")
@click.option("--latency-rate", type=float, default=20_000.0, show_default=True, help="Prices/s for the latency run")
@click.option("--latency-seconds", type=float, default=60.0, show_default=True)
@click.option("--large", is_flag=True, help="The large case: 200 books x 5,000 instruments (overrides the sizes)")
@click.option("--scaling-books", default="10,50,200,1000", show_default=True,
              help="Book counts of the scaling grid (at --instruments); empty: none")
@click.option("--scaling-instruments", default="500,2000,5000,20000", show_default=True,
              help="Instrument counts of the scaling grid (at --books); empty: none")
@click.option("--scaling-prices", type=int, default=200_000, show_default=True,
              help="Prices preloaded and drained per scaling cell and per two-worker case")
@click.option("--two-workers", default="200,1000", show_default=True,
              help="Book counts at which one worker and two workers of one consumer group drain the same "
                   "prices; empty: none")
@click.option("--two-workers-instruments", type=int, default=2_000, show_default=True,
              help="Instruments of the two-worker cases")
@click.option("--out", type=click.Path(path_type=Path), default=Path("BENCHMARKS.md"), show_default=True,
              help="Markdown file the results are appended to")
def bench_command(books: int, instruments: int, prices: int, naive_seconds: float, latency_rate: float,
                  latency_seconds: float, large: bool, scaling_books: str, scaling_instruments: str,
                  scaling_prices: int, two_workers: str, two_workers_instruments: int, out: Path) -> None:
    """Drain rate of raw aiokafka, a naive Faust agent and the monitor; event-to-alert latency; scaling
    in books and instruments; one worker against two."""
    from monitor.ops.broker import kafka_cluster, kafka_version
    from monitor.ops.logging import configure

    configure("console", "warning")
    if large:
        books, instruments = 200, 5_000
    args = {"books": books, "instruments": instruments, "prices": prices, "naive_seconds": naive_seconds,
            "latency_rate": latency_rate, "latency_seconds": latency_seconds, "scaling_books": f"'{scaling_books}'",
            "scaling_instruments": f"'{scaling_instruments}'", "scaling_prices": scaling_prices,
            "two_workers": f"'{two_workers}'", "two_workers_instruments": two_workers_instruments}
    grid_books, grid_instruments = _books_list(scaling_books), _books_list(scaling_instruments)
    workdir = Path(".bench")
    workdir.mkdir(exist_ok=True)
    with kafka_cluster() as bootstrap:
        report = _comparison(bootstrap, args, workdir) if prices > 0 else ""
        cells = _scaling(bootstrap, grid_books, grid_instruments, scaling_prices, (books, instruments), workdir)
        pairs = _two_workers(bootstrap, _books_list(two_workers), two_workers_instruments, scaling_prices, workdir)
        if not report:
            report = "\n".join(_header("scaling grid and two workers", args, kafka_version()) + [""])
        report += "\n".join(_scaling_report(cells, scaling_prices) + _two_workers_report(pairs, scaling_prices))
    click.echo(report)
    with out.open("a", encoding="utf-8") as f:
        f.write(report + "\n")
    click.echo(f"appended to {out}")


if __name__ == "__main__":
    client, bootstrap_servers, price_topic, count = sys.argv[1:5]
    if client == "raw":
        n, secs = asyncio.run(_raw_drain(bootstrap_servers, price_topic, int(count)))
        print(orjson.dumps({"events": n, "seconds": secs, **_own_usage()}).decode(), flush=True)
    elif client == "naive":
        _naive_faust(bootstrap_servers, price_topic, int(count), float(sys.argv[5]), int(sys.argv[6]))
    elif client == "feed":  # count is the rate here
        asyncio.run(_feed(bootstrap_servers, price_topic, float(count), float(sys.argv[5]),
                          _market(int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]))))
    else:
        raise SystemExit(f"unknown client {client}")
