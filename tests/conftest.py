"""Shared fixtures: one real Kafka broker per session, one worker process per test.

Each test gets its own topic prefix, so tests share the broker without sharing data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from monitor.ops.config import KafkaSecurity, Settings
from monitor.ops.metrics import Sample, scrape
from monitor.ops.processes import free_ports, spawn, terminate

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    from monitor.ops.broker import kafka_cluster

    with kafka_cluster() as bootstrap:
        yield bootstrap


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}-", partitions=2,
                    metrics_port=free_ports()[0], data_dir=str(tmp_path / "worker-data"))


def produce(settings: Settings, messages: list[tuple[str, str | None, Any]]) -> None:
    """Send (logical topic, key, value) in order; a value that is not bytes is JSON-encoded."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                                    **settings.kafka_security.client_options())
        await producer.start()
        try:
            sent = []
            for topic, key, value in messages:
                raw = value if isinstance(value, bytes) else orjson.dumps(value)
                sent.append(await producer.send(settings.topic(topic), raw, key=key.encode() if key else None))
            await asyncio.gather(*sent)  # every one acknowledged, in order per partition
        finally:
            await producer.stop()

    asyncio.run(go())


def consume(settings: Settings, topic: str, until: Callable[[list[dict]], bool], timeout: float = 30.0) -> list[dict]:
    """Read a topic from the beginning until `until(records)` holds; fail after `timeout` seconds."""

    async def go() -> list[dict]:
        consumer = AIOKafkaConsumer(settings.topic(topic), bootstrap_servers=settings.bootstrap_servers,
                                    group_id=None, auto_offset_reset="earliest",
                                    **settings.kafka_security.client_options())
        await consumer.start()
        records: list[dict] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(records):
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout}s on {topic}; got {records}")
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records += [{"key": r.key, "partition": r.partition, "offset": r.offset,
                                 **orjson.loads(r.value)} for r in part]
            return records
        finally:
            await consumer.stop()

    return asyncio.run(go())


@dataclass
class WorkerProcess:
    settings: Settings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return self.settings.local_metrics_url

    def metrics(self) -> dict[Sample, float]:
        """Every sample of the worker's /metrics."""
        return scrape(self.metrics_url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_env(settings: Settings) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k not in KafkaSecurity.ENV.values()}
    return {**inherited, **settings.kafka_security.as_env(), "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "MONITOR_TOPIC_PREFIX": settings.topic_prefix, "MONITOR_PARTITIONS": str(settings.partitions),
            "MONITOR_METRICS_PORT": str(settings.metrics_port), "MONITOR_DATA_DIR": settings.data_dir,
            "MONITOR_SESSION_TIMEOUT_S": str(settings.session_timeout_s), "MONITOR_STALL_EXIT_S": str(settings.stall_exit_s),
            "MONITOR_LOG_FORMAT": "console", "MONITOR_LOG_LEVEL": "info",
            "MONITOR_INSTANCE_ID": settings.instance_id or ""}


@contextlib.contextmanager
def running_worker(settings: Settings, log_path: Path) -> Iterator[WorkerProcess]:
    """A `monitor worker` process on the given broker, ready when /metrics answers; stopped after."""
    handle = WorkerProcess(settings, log_path)
    proc = spawn([sys.executable, "-m", "monitor", "worker"], env=worker_env(settings), log_path=handle.log_path)
    handle.proc = proc
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{handle.log()[-4000:]}")
            try:
                urllib.request.urlopen(handle.metrics_url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker /metrics did not answer in 60 s:\n{handle.log()[-4000:]}")
                time.sleep(0.2)
        yield handle
    finally:
        terminate(proc)
        sys.stderr.write(f"\n--- worker log ({handle.log_path}) ---\n{handle.log()[-3000:]}\n")


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker on the session broker, with this test's topic prefix."""
    with running_worker(settings, tmp_path / "worker.log") as handle:
        yield handle
