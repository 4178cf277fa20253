"""`monitor bench-fills`: a trading day's fills against the worker's state.

Two parts, printed and appended to BENCHMARKS.md:

1. The engine alone (no Kafka): one book of `--positions` holdings takes `--big-book-fills` fills
   among prices, at the production tick; the time per fill over the first and the last 1,000 says
   whether a fill's cost grows with the fills since the snapshot.
2. The worker on a real broker: `--books` books of `--positions` holdings each; `--fills` fills (one
   book takes `--big-book-fills` of them) fed live at `--fill-rate` among prices at `--price-rate`.
   Figures: fills/s applied (fills over the time from the first sent to the last applied), the
   fills' event lag early and late in the run, changelog bytes per fill and the largest changelog
   record (read back from the broker), the worker's peak RSS; then kill -9 and a new worker: the
   time from its start to its first evaluation and to the gate caught up, with the prices the run
   left on the topic. `--history-prices` puts that many prices on the topic before the day (stamped
   at `--price-rate` up to the day's open, Kafka timestamps included): a restart at the end of the
   day must not read them again.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import resource
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from monitor.bench import _code_version, _peak_rss_mb, _spawn_worker
from monitor.engine import Engine, Fill, Instrument, Price, Snapshot, format_ts, parse_policy
from monitor.ops.config import KafkaSecurity, Settings
from monitor.ops.metrics import scrape
from monitor.ops.processes import free_ports, terminate
from monitor.stream.topics import ensure_topics

SEC = 1_000_000


@dataclass(frozen=True)
class Day:
    """A day's market: instrument ids, books (each holding every instrument), fills' books."""

    books: int
    positions: int
    fills: int
    big_book_fills: int
    seed: int = 11

    @property
    def instrument_ids(self) -> list[str]:
        return [f"I{i:05d}" for i in range(self.positions)]

    @property
    def book_ids(self) -> list[str]:
        return [f"BK-{b:03d}" for b in range(self.books)]

    def instrument(self, iid: str) -> dict:
        return {"instrument_id": iid, "currency": "USD", "asset_class": "equity", "sector": f"S{hash(iid) % 11}",
                "adv": 5_000_000, "spread_bps": 3, "daily_vol": 0.02}

    def policy(self, book: str) -> dict:
        w = 1.0 / self.positions
        return {"portfolio_id": book, "version": 1, "base_currency": "USD",
                "limits": [{"id": f"w-{iid}", "metric": "weight", "instrument": iid, "target": w,
                            "band": {"type": "relative", "width": 0.5}} for iid in self.instrument_ids[:20]]
                + [{"id": "gross", "metric": "gross_leverage", "target": 1.0, "band": {"width": 0.2}}]}

    def snapshot(self, book: str, as_of: int) -> dict:
        return {"portfolio_id": book, "as_of": format_ts(as_of), "cash": {"USD": 0.0},
                "positions": [{"instrument_id": iid, "quantity": 1000} for iid in self.instrument_ids]}

    def fill_books(self) -> list[str]:
        """The book of each fill, in order: the big book's share spread through the day."""
        rng = random.Random(self.seed)
        big, others = self.book_ids[0], self.book_ids[1:] or self.book_ids
        books = [big] * self.big_book_fills + [rng.choice(others) for _ in range(self.fills - self.big_book_fills)]
        rng.shuffle(books)
        return books


# -- part 1: the engine alone ----------------------------------------------------------------


def _priced_engine(day: Day, tick_us: int) -> tuple[Engine, int]:
    """An engine with the day's instruments, each priced at 100 at the returned time."""
    engine = Engine(tick_us)
    for iid in day.instrument_ids:
        engine.on_instrument(Instrument.from_message(day.instrument(iid)))
    t0 = 1_800_000_000 * SEC
    engine.on_prices([Price(iid, 100.0, t0) for iid in day.instrument_ids])
    return engine, t0


def engine_fill_cost(day: Day, tick_us: int) -> tuple[float, float, float, float]:
    """(us per fill over the first 1,000, over the last 1,000, fills in total, us per fill when
    re-applied at a restart) for one book. The restart: a fresh engine with the book's policy and
    watch restored, its snapshot and fills applied again in order (as the worker's gate releases
    them; the book is judged again only after its clock)."""
    engine, t0 = _priced_engine(day, tick_us)
    rng = random.Random(day.seed)
    ids = day.instrument_ids
    book = day.book_ids[0]
    engine.on_policy(parse_policy(day.policy(book), "bench"))
    engine.on_snapshot(Snapshot(book, t0, {"USD": 0.0}, {iid: 1000.0 for iid in ids}))
    n = day.big_book_fills
    times: list[float] = []
    inputs: list[Fill | Snapshot] = [Snapshot(book, t0, {"USD": 0.0}, {iid: 1000.0 for iid in ids})]
    for k in range(n):
        ts = t0 + (k + 1) * 5_000  # a fill every 5 ms, a price between
        iid = ids[rng.randrange(len(ids))]
        engine.on_prices([Price(ids[rng.randrange(len(ids))], 100.0 + rng.uniform(-1, 1), ts - 1)])
        fill = Fill(f"F{k}", book, iid, rng.choice(("BUY", "SELL")), float(rng.randint(1, 50)), 100.0, ts)
        inputs.append(fill)
        began = time.perf_counter()
        engine.on_fill(fill)
        engine.changes()
        times.append(time.perf_counter() - began)
    engine.flush()
    window = min(1_000, n // 2)

    again = Engine(tick_us)
    for iid in ids:
        again.on_instrument(engine.instruments[iid])
    again.restore_market(engine.market_state())
    again.restore(None, engine.policies[book], engine.watches[book], book)
    began = time.perf_counter()
    for event in inputs:
        again.on_fill(event) if isinstance(event, Fill) else again.on_snapshot(event)
        again.changes()
    reapplied = (time.perf_counter() - began) / len(inputs) * 1e6
    assert again.books[book].positions == engine.books[book].positions, "the restart must rebuild the book"
    return sum(times[:window]) / window * 1e6, sum(times[-window:]) / window * 1e6, float(n), reapplied


def engine_window_cost(day: Day, tick_us: int, price_rate: float, fill_rate: float,
                       windows: int = 300) -> tuple[float, int, int]:
    """(ms an event-time window costs, prices and fills in each) for every book of the day at
    once: each window's share of `price_rate` prices of random instruments and `fill_rate` fills
    of random books, applied as the gate releases them, then the window closed (every book is
    touched: each holds every instrument). The engine's share of a live worker's CPU at those rates
    is this over the window's length."""
    engine, t0 = _priced_engine(day, tick_us)
    rng = random.Random(day.seed)
    ids, books = day.instrument_ids, day.book_ids
    for book in books:
        engine.on_policy(parse_policy(day.policy(book), "bench"))
        engine.on_snapshot(Snapshot(book, t0, {"USD": 0.0}, {iid: 1000.0 for iid in ids}))
    engine.flush()
    n_prices, n_fills = max(1, round(price_rate * tick_us / SEC)), round(fill_rate * tick_us / SEC)
    k, spent = 0, 0.0
    for w in range(windows):
        start = t0 + (w + 1) * tick_us
        kinds = [Price] * n_prices + [Fill] * n_fills
        rng.shuffle(kinds)
        step = tick_us // (len(kinds) + 1)
        events: list[Price | Fill] = []
        for i, kind in enumerate(kinds):
            ts = start + (i + 1) * step
            if kind is Price:
                events.append(Price(ids[rng.randrange(len(ids))], 100.0 + rng.uniform(-1, 1), ts))
            else:
                k += 1
                events.append(Fill(f"F{k}", books[rng.randrange(len(books))], ids[rng.randrange(len(ids))],
                                   rng.choice(("BUY", "SELL")), float(rng.randint(1, 50)), 100.0, ts))
        began = time.perf_counter()
        prices: list[Price] = []
        for event in events:
            if isinstance(event, Price):
                prices.append(event)
                continue
            engine.on_prices(prices)
            prices = []
            engine.on_fill(event)
            engine.changes()
        engine.on_prices(prices)
        engine.close_window(start + tick_us)
        spent += time.perf_counter() - began
    return spent / windows * 1e3, n_prices, n_fills


# -- part 2: the worker on a broker ---------------------------------------------------------------


async def _produce(settings: Settings, messages: list[tuple[str, str, dict]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20,
                                max_batch_size=512 * 1024, max_request_size=8 << 20, acks=1,
                                **settings.kafka_security.client_options())
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(settings.topic(topic), orjson.dumps(value), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _produce_history(settings: Settings, day: Day, n: int, end: int, rate: float) -> None:
    """`n` prices stamped at `rate` per second up to `end` (event ts and Kafka timestamp alike)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=50,
                                max_batch_size=1 << 20, acks=1, **settings.kafka_security.client_options())
    await producer.start()
    ids, topic = day.instrument_ids, settings.topic("prices")
    try:
        for k in range(n):
            at = end - int((n - k) / rate * SEC)
            iid = ids[k % len(ids)]
            value = b'{"instrument_id":"%s","price":%.2f,"ts":"%s"}' % (
                iid.encode(), 100.0 + (k % 200) / 100, format_ts(at).encode())
            await producer.send(topic, value, key=iid.encode(), timestamp_ms=at // 1000)
        await producer.flush()
    finally:
        await producer.stop()


async def _feed(settings: Settings, day: Day, price_rate: float, fill_rate: float) -> tuple[float, int]:
    """Prices and fills at their rates, stamped now, in 10 ms slices; (seconds, prices sent).

    Each slice's records go out as one batch a partition (`_Slices`), partitioned as the producer's
    default partitioner would: on this 2-core machine the feeder shares the cores with the broker
    and the worker, and a `send` a record cost it ~0.6 of a core at 20,000 prices/s."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_batch_size=1 << 20, acks=1,
                                **settings.kafka_security.client_options())
    await producer.start()
    rng = random.Random(day.seed + 1)
    ids = day.instrument_ids
    books = day.fill_books()
    prices_topic, fills_topic = settings.topic("prices"), settings.topic("fills")
    prices = _Slices(producer, prices_topic, await producer.partitions_for(prices_topic))
    fills = _Slices(producer, fills_topic, await producer.partitions_for(fills_topic))
    began = time.perf_counter()
    sent_fills = sent_prices = 0
    try:
        while sent_fills < len(books):
            elapsed = time.perf_counter() - began
            due_prices, due_fills = int(elapsed * price_rate), min(len(books), int(elapsed * fill_rate))
            ts = format_ts(time.time_ns() // 1_000)
            for _ in range(due_prices - sent_prices):
                iid = ids[rng.randrange(len(ids))]
                prices.add(iid, orjson.dumps({"instrument_id": iid, "ts": ts, "price": round(100 + rng.uniform(-2, 2), 4)}))
            for k in range(sent_fills, due_fills):
                book, iid = books[k], ids[rng.randrange(len(ids))]
                fills.add(book, orjson.dumps({
                    "fill_id": f"F-{k}", "portfolio_id": book, "instrument_id": iid, "ts": ts,
                    "side": rng.choice(("BUY", "SELL")), "quantity": rng.randint(1, 50),
                    "price": round(100 + rng.uniform(-2, 2), 4)}))
            await prices.send()
            await fills.send()
            sent_prices, sent_fills = due_prices, due_fills
            await asyncio.sleep(0.01)
        await asyncio.gather(*prices.sent, *fills.sent)
    finally:
        await producer.stop()
    return time.perf_counter() - began, sent_prices


class _Slices:
    """One topic's records of a slice, a batch a partition, sent together (in the order added)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: set[int]) -> None:
        self.producer, self.topic = producer, topic
        self.partitions = sorted(partitions)
        self.partitioner = DefaultPartitioner()
        self.open: dict[int, Any] = {}
        self.sent: list[asyncio.Future[Any]] = []

    def add(self, key: str, value: bytes) -> None:
        k = key.encode()
        p = self.partitioner(k, self.partitions, self.partitions)
        batch = self.open.get(p)
        if batch is None:
            batch = self.open[p] = self.producer.create_batch()
        if batch.append(key=k, value=value, timestamp=None) is None:
            raise RuntimeError(f"a slice's batch for {self.topic}[{p}] is full")

    async def send(self) -> None:
        for p, batch in self.open.items():
            batch.close()
            self.sent.append(await self.producer.send_batch(batch, self.topic, partition=p))
        self.open.clear()
        if len(self.sent) > 1000:
            await asyncio.gather(*self.sent)
            self.sent.clear()


def _fills_lag_p50(before: dict, after: dict) -> str:
    """Median event lag of the fills read between two scrapes, as the histogram's bucket that holds
    it ("<= 10 s"), or "> 60 s" past its last bound."""
    prefix = "monitor_event_lag_seconds_bucket"
    buckets = sorted((float(dict(labels)["le"]), after[(name, labels)] - before.get((name, labels), 0.0))
                     for (name, labels) in after if name == prefix and dict(labels).get("topic") == "fills")
    total = buckets[-1][1] if buckets else 0.0
    for k, (le, count) in enumerate(buckets):
        if total and count >= total / 2:
            return f"<= {le:g} s" if le != float("inf") else f"> {buckets[k - 1][0]:g} s"
    return "none read"


def _changelog_sizes(settings: Settings) -> tuple[int, int, int]:
    """(records, bytes, largest record) over the worker's changelog topics."""

    async def go() -> tuple[int, int, int]:
        app = settings.topic(settings.app_id)
        topics = [f"{app}-{t}-changelog" for t in ("policies", "watches", "book-inputs")]
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                    **settings.kafka_security.client_options())
        await consumer.start()
        n = size = largest = 0
        quiet = time.monotonic()
        try:
            while time.monotonic() - quiet < 2.0:
                for records in (await consumer.getmany(timeout_ms=300, max_records=10_000)).values():
                    quiet = time.monotonic()
                    for r in records:
                        b = len(r.key or b"") + len(r.value or b"")
                        n, size, largest = n + 1, size + b, max(largest, b)
        finally:
            await consumer.stop()
        return n, size, largest

    return asyncio.run(go())


def _cpu(samples: dict) -> float:
    return samples.get(("process_cpu_seconds_total", ()), 0.0)


def _gc_pauses(samples: dict, generations: tuple[str, ...] = ("0", "1", "2")) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "monitor_gc_pause_seconds_total" and dict(labels)["generation"] in generations)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _book_navs(samples: dict) -> dict[str, float]:
    return {dict(labels)["portfolio_id"]: v for (name, labels), v in samples.items() if name == "monitor_book_nav"}


def _wait(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes],
          every: float = 0.25) -> float:
    """Seconds until `check` holds, asked every `every` s. A scrape costs the worker ~10 ms (50 books'
    gauges, its process collector reading /proc): 4% of its CPU at 4 a second."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if proc.poll() is not None:
            raise click.ClickException(f"the worker exited while waiting for {what}")
        try:
            if check():
                return time.perf_counter() - began
        except OSError:
            pass
        time.sleep(every)
    raise click.ClickException(f"timed out after {timeout:.0f} s waiting for {what}")


def _log_seconds(log: Path, marker: str) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if marker in line and "seconds_since_start=" in line:
            return float(line.split("seconds_since_start=")[1].split()[0])
    return None


def run_bench(bootstrap: str, day: Day, price_rate: float, fill_rate: float, history_prices: int,
              workdir: Path) -> list[str]:
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=f"bf{uuid.uuid4().hex[:6]}-", partitions=4,
                        metrics_port=free_ports()[0], data_dir=str(workdir / "data"),
                        kafka_security=KafkaSecurity.from_env(),
                        instance_id="bench-worker")  # static membership: a restart waits for no rebalance
    asyncio.run(ensure_topics(settings))
    t0 = time.time_ns() // 1_000 - 10 * SEC
    setup = [("instruments", iid, day.instrument(iid)) for iid in day.instrument_ids]
    setup += [("policies", b, day.policy(b)) for b in day.book_ids]
    setup += [("positions", b, day.snapshot(b, t0)) for b in day.book_ids]
    setup += [("prices", iid, {"instrument_id": iid, "price": 100.0, "ts": format_ts(t0)}) for iid in day.instrument_ids]
    if history_prices:
        asyncio.run(_produce_history(settings, day, history_prices, t0, price_rate))
    asyncio.run(_produce(settings, setup))
    url = settings.local_metrics_url
    proc = _spawn_worker(settings, workdir)

    def applied(topic: str, n: int) -> bool:
        """`n` messages of `topic` read, the worker caught up (every input partition read to its end)
        and nothing left in its gate: from one scrape."""
        samples = scrape(url)
        return (samples.get(("monitor_events_consumed_total", (("topic", topic),)), 0.0) >= n
                and samples.get(("monitor_inputs_caught_up", ())) == 1.0
                and samples.get(("monitor_gate_held_events", ())) == 0)

    try:
        # Caught up, so the price history read too (an empty gate alone happens between two batches
        # of it: the day then began behind by the history left).
        _wait(lambda: applied("positions", day.books), 1800, "the books (and the price history) to be read", proc,
              every=1.0)
        before = scrape(url)
        feeder_cpu = _own_cpu_seconds()
        fed_s, prices_sent = asyncio.run(_feed(settings, day, price_rate, fill_rate))
        feeder_cpu = _own_cpu_seconds() - feeder_cpu
        mid = scrape(url)
        catch_up = _wait(lambda: applied("fills", day.fills), 600, "the fills applied", proc,
                         every=1.0)  # the catch-up takes tens of seconds: +-1 s, for 3% more of the worker
        after = scrape(url)
        rss = _peak_rss_mb(proc.pid)
        records, size, largest = _changelog_sizes(settings)
        time.sleep(settings.checkpoint_s + 1.0)  # as at the end of a day: a checkpoint after the last fill
        navs = _book_navs(scrape(url))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        began = time.perf_counter()
        # The same name and ports, as a supervisor restarts a worker (with static membership the group
        # hands the new process the old one's assignment, which names its API URL).
        again = settings
        proc = _spawn_worker(again, workdir)
        recovered_s = _wait(lambda: scrape(again.local_metrics_url).get(("monitor_table_recoveries_total", ()), 0) > 0
                            and scrape(again.local_metrics_url).get(("monitor_inputs_caught_up", ())) is not None,
                            900, "the restarted worker's books", proc)
        _wait(lambda: scrape(again.local_metrics_url).get(("monitor_inputs_caught_up", ())) == 1.0, 900,
              "the restarted worker to catch up", proc)
        restart_s = time.perf_counter() - began
        # The restarted worker must hold what the killed one held: every book's NAV, once published.
        _wait(lambda: len(_book_navs(scrape(again.local_metrics_url))) == day.books, 30, "the books' NAVs", proc)
        restored = _book_navs(scrape(again.local_metrics_url))
        wrong = {b: (nav, restored.get(b)) for b, nav in navs.items()
                 if abs(restored.get(b, 0.0) - nav) > 1e-6 * max(1.0, abs(nav))}
        if len(navs) != day.books or wrong:
            raise click.ClickException(f"the restarted worker's books differ (book: NAV before, after): {wrong}")
    except click.ClickException as e:
        log_tail = (workdir / "bench-worker.log").read_text(errors="replace")[-4000:]
        raise click.ClickException(f"{e.message}; the worker's log ends:\n{log_tail}") from None
    finally:
        terminate(proc)
    total_s = fed_s + catch_up
    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: bench-fills, {day.books} books x {day.positions} "
        f"positions, {day.fills:,} fills (one book {day.big_book_fills:,})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; code "
        f"{_code_version()}.  ",
        f"Fed live: {day.fills:,} fills at {fill_rate:,.0f}/s among {prices_sent:,} prices at {price_rate:,.0f}/s "
        f"over {fed_s:.1f} s; the worker applied the last fill {catch_up:.1f} s after the feed ended.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| fills/s applied, first sent to last applied | {day.fills / total_s:,.0f} |",
        f"| fills' event lag p50 when read, first half of the feed / second half | {_fills_lag_p50(before, mid)} / "
        f"{_fills_lag_p50(mid, after)} |",
        f"| changelog records / bytes per fill | {records / day.fills:.2f} / {size / day.fills:,.0f} B |",
        f"| largest changelog record | {largest / 1024:,.1f} KB |",
        f"| worker peak RSS | {rss:,.0f} MB |",
        f"| worker CPU s, first sent to last applied ({total_s:.0f} s); the feeder's, while feeding | "
        f"{_cpu(after) - _cpu(before):.1f} s; {feeder_cpu:.1f} s |",
        f"| of the worker's: in the garbage collector; in its full collections | "
        f"{_gc_pauses(after) - _gc_pauses(before):.1f} s; {_gc_pauses(after, ('2',)) - _gc_pauses(before, ('2',)):.1f} s |",
        f"| restart after kill -9 to gate caught up ({prices_sent + history_prices + day.positions:,} prices on "
        f"the topic) | {restart_s:.1f} s |",
        f"| of which: to the books recovered (group rebalance, changelogs read) | {recovered_s:.1f} s |",
        "",
    ]
    return lines


@click.command("bench-fills")
@click.option("--books", type=int, default=50, show_default=True)
@click.option("--positions", type=int, default=2_000, show_default=True, help="Holdings per book")
@click.option("--fills", type=int, default=200_000, show_default=True)
@click.option("--big-book-fills", type=int, default=40_000, show_default=True, help="Fills of the busiest book")
@click.option("--fill-rate", type=float, default=2_500.0, show_default=True, help="Fills/s fed")
@click.option("--price-rate", type=float, default=20_000.0, show_default=True, help="Prices/s fed meanwhile")
@click.option("--history-prices", type=int, default=0, show_default=True,
              help="Prices on the topic before the day (a day at 20,000/s is ~470 M)")
@click.option("--engine-only", is_flag=True, help="Only part 1 (no broker)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("BENCHMARKS.md"), show_default=True)
def bench_fills_command(books: int, positions: int, fills: int, big_book_fills: int, fill_rate: float,
                        price_rate: float, history_prices: int, engine_only: bool, out: Path) -> None:
    """A day's fills: cost per fill, changelog bytes, largest record, RSS, restart (see monitor/bench_fills.py)."""
    import tempfile

    from monitor.ops.broker import kafka_cluster

    day = Day(books, positions, fills, min(big_book_fills, fills))
    first, last, n, reapplied = engine_fill_cost(day, Settings.from_env().tick)
    tick = Settings.from_env().tick
    window_ms, window_prices, window_fills = engine_window_cost(day, tick, price_rate, fill_rate)
    lines = [f"Engine alone: one book of {positions:,} holdings, {n:,.0f} fills: {first:.1f} us a fill over the "
             f"first 1,000, {last:.1f} us over the last 1,000; re-applied at a restart, {reapplied:.1f} us a fill. "
             f"All {books} books, {tick / 1e3:g} ms windows of {window_prices} prices and {window_fills} fills "
             f"({price_rate:,.0f} prices/s, {fill_rate:,.0f} fills/s): {window_ms:.2f} ms a window, "
             f"{window_ms * 1e3 / tick:.0%} of the window's length.", ""]
    click.echo("\n".join(lines))
    if not engine_only:
        with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-fills-") as tmp:
            lines = run_bench(bootstrap, day, price_rate, fill_rate, history_prices, Path(tmp))[:-1] + [""] + lines
            click.echo("\n".join(lines))
    with out.open("a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
