"""`monitor demo`: the whole loop on a real broker, in one terminal.

Starts (or reuses) a Kafka broker, the worker and the simulator as separate processes,
prints every drift alert and every rebalance signal event as one line as it arrives, and
a summary at the end. The simulator runs with `--execute`, so approved signals come back
as paper fills and the loop closes: alert -> signal -> fill -> the book moves back. Every
process it started is stopped when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import orjson
from aiokafka import AIOKafkaConsumer
from rich.live import Live

from monitor.ops.config import KafkaSecurity, Settings
from monitor.ops.metrics import scrape
from monitor.ops.processes import free_ports, spawn, terminate
from monitor.paper import FILL_ID_PREFIX
from monitor.top import Snapshot, console, fetch, table


@dataclass
class DemoSummary:
    alerts_by_state: collections.Counter[str] = field(default_factory=collections.Counter)
    breached_books: set[str] = field(default_factory=set)
    events_in: dict[str, float] = field(default_factory=dict)
    signals_by_state: collections.Counter[str] = field(default_factory=collections.Counter)
    paper_fills: set[str] = field(default_factory=set)  # fill ids, so a re-delivery counts once

    def render(self, books: int) -> str:
        events = ", ".join(f"{t} {int(n):,}" for t, n in sorted(self.events_in.items()))
        total_in = int(sum(self.events_in.values()))
        return (f"events in: {total_in:,} ({events or 'none'})\n"
                f"alerts out: {sum(self.alerts_by_state.values())} ({_counts(self.alerts_by_state)})\n"
                f"books breached: {len(self.breached_books)} of {books}"
                f"{' (' + ', '.join(sorted(self.breached_books)) + ')' if self.breached_books else ''}\n"
                f"rebalance signals out: {sum(self.signals_by_state.values())} ({_counts(self.signals_by_state)})\n"
                f"paper fills executed: {len(self.paper_fills)}")


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items())) or "none"


def events_consumed(url: str) -> dict[str, float]:
    """monitor_events_consumed_total by topic, from the worker's /metrics."""
    return {dict(labels)["topic"]: value for (name, labels), value in scrape(url).items()
            if name == "monitor_events_consumed_total"}


def alert_line(alert: dict) -> str:
    clock = alert["event_ts"][11:23]
    return f"{clock}  {alert['state']:<11} {alert['severity']:<8} {alert['message'].split(': ', 1)[-1]}  " \
           f"[{alert['portfolio_id']} {alert['limit_id']}]"


def signal_line(doc: dict) -> str:
    """One line per signal state change, its text in the same column as an alert's."""
    text = doc["message"]
    if text.startswith(doc["state"]):
        text = text[len(doc["state"]):].lstrip(" :")
    if doc["portfolio_id"] not in text:
        text = f"{text}  [{doc['portfolio_id']}]"
    return f"{doc['event_ts'][11:23]}  {doc['state']:<20} {text}"


async def _watch_alerts(settings: Settings, seconds: float | None, summary: DemoSummary,
                        alive: "callable[[], bool]", show_alerts: bool) -> None:
    """The desk view (`monitor top` on the worker's API) refreshed every second; alerts and signals
    printed above it as they arrive with `show_alerts`; all counted, and the paper fills, for the summary."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    alerts, signals = settings.topic("drift-alerts"), settings.topic("rebalance-signals")
    consumer = AIOKafkaConsumer(alerts, signals, settings.topic("fills"), bootstrap_servers=settings.bootstrap_servers,
                                group_id=None, auto_offset_reset="earliest", **settings.kafka_security.client_options())
    await consumer.start()
    deadline = time.monotonic() + seconds if seconds else None
    api = [f"http://127.0.0.1:{settings.http_port}"]
    view = Live(table(Snapshot()), console=console(), refresh_per_second=4)
    view.start()
    shown = 0.0
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if not alive():
                raise click.ClickException("a demo process stopped early: see the logs in .demo/")
            if time.monotonic() - shown >= 1.0:
                view.update(table(await asyncio.to_thread(fetch, api), title="drift-monitor (monitor top)"))
                shown = time.monotonic()
            batch = await consumer.getmany(timeout_ms=200)
            for record in (r for part in batch.values() for r in part):
                doc = orjson.loads(record.value)
                if record.topic == alerts:
                    summary.alerts_by_state[doc["state"]] += 1
                    if doc["state"] == "OPEN":
                        summary.breached_books.add(doc["portfolio_id"])
                    if show_alerts:
                        view.console.print(alert_line(doc), highlight=False, markup=False)
                elif record.topic == signals:
                    summary.signals_by_state[doc["state"]] += 1
                    if show_alerts:
                        view.console.print(signal_line(doc), highlight=False, markup=False)
                elif doc.get("fill_id", "").startswith(FILL_ID_PREFIX):
                    summary.paper_fills.add(doc["fill_id"])
    finally:
        view.stop()
        if not view.console.is_terminal:
            view.console.line()  # (a terminal gets it from Live)
        await consumer.stop()


def run_demo(seconds: float | None, books: int, instruments: int, workdir: Path,
             show_alerts: bool = False) -> DemoSummary:
    from monitor.ops.broker import kafka_cluster
    from monitor.stream.topics import ensure_topics

    workdir.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary()
    with kafka_cluster() as bootstrap:
        prefix = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-"
        metrics_port, api_port = free_ports(2)
        settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=2,
                            metrics_port=metrics_port, api_port=api_port, data_dir=str(workdir / "worker-data"),
                            kafka_security=KafkaSecurity.from_env())
        asyncio.run(ensure_topics(settings))
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "MONITOR_TOPIC_PREFIX": prefix,
               "MONITOR_PARTITIONS": "2", "MONITOR_METRICS_PORT": str(settings.metrics_port),
               "MONITOR_API_PORT": str(api_port),
               "MONITOR_DATA_DIR": settings.data_dir, "MONITOR_LOG_FORMAT": "console"}
        click.echo(f"broker {bootstrap}; worker /metrics on http://127.0.0.1:{settings.metrics_port}/metrics, "
                   f"API on http://127.0.0.1:{api_port} (`monitor top --url http://127.0.0.1:{api_port}`); "
                   f"logs in {workdir}/")
        me = [sys.executable, "-m", "monitor"]
        worker = spawn([*me, "worker"], env=env, log_path=workdir / "worker.log")
        simulator = spawn([*me, "simulate", "--execute", "--books", str(books), "--instruments", str(instruments)],
                          env=env, log_path=workdir / "simulator.log")
        try:
            asyncio.run(_watch_alerts(settings, seconds, summary,
                                      lambda: worker.poll() is None and simulator.poll() is None, show_alerts))
        finally:
            terminate(simulator)
            try:
                summary.events_in = events_consumed(settings.local_metrics_url)
            except OSError:
                pass  # the worker is gone already: the summary says none
            terminate(worker)
    return summary


@click.command("demo")
@click.option("--seconds", envvar="DEMO_SECONDS", default=None,
              callback=lambda _ctx, _param, value: float(value) if value else None,
              help="Stop after this many seconds [env DEMO_SECONDS; default: until Ctrl-C]")
@click.option("--books", type=int, default=5, show_default=True)
@click.option("--instruments", type=int, default=50, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True)
@click.option("--alerts", "show_alerts", is_flag=True, envvar="DEMO_ALERTS",
              help="Also print every alert and signal event as a line as it arrives [env DEMO_ALERTS]")
def demo_command(seconds: float | None, books: int, instruments: int, workdir: Path, show_alerts: bool) -> None:
    """Run broker, worker and simulator; show the desk view (`monitor top`) live; summarise."""
    from monitor.ops.logging import configure

    configure("console", "warning")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # leader elections of just-created topics
    summary = run_demo(seconds or None, books, instruments, workdir, show_alerts)
    click.echo("-" * 72)
    click.echo(summary.render(books))
