"""monitor/ops/broker.py against a real Kafka 4.4 broker JVM (no mocks, no Docker).

One broker serves the client tests (module fixture); the lifecycle tests start their
own, because they kill it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.ops.broker import (
    KafkaUnavailable,
    LocalKafka,
    _remove_orphaned_data_dirs,
    kafka_cluster,
    kafka_lib_dir,
    kafka_tool,
    kafka_version,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_kafka() -> Iterator[LocalKafka]:
    with LocalKafka() as kafka:
        yield kafka


def _topic() -> str:
    return f"test-broker-{uuid.uuid4().hex[:8]}"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of a live pid from /proc, None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid, pgrp = stat.rpartition(")")[2].split()[:3]
    return state, int(ppid), int(pgrp)


def _alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may be slow to reap orphans)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in "ZX"


def _live_pids(where: int, field: int) -> set[int]:
    """Live pids whose ppid (field 1) or process group (field 2) is `where`."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return {pid for pid in pids if (s := _proc_stat(pid)) and s[field] == where and s[0] not in "ZX"}


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _run_tool(name: str, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(kafka_tool(name, *args), input=input, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"kafka {name} failed:\n{proc.stderr}"
    return proc.stdout


def test_aiokafka_roundtrip(local_kafka: LocalKafka) -> None:
    bootstrap, topic = local_kafka.bootstrap_servers, _topic()

    async def roundtrip() -> tuple[list[str], bytes | None, bytes | None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
            # The broker answers CreateTopics before its metadata cache has the topic (KRaft applies
            # the record asynchronously): asked at once, the list was once empty. Asked until it has
            # it, for 10 s at most.
            topics = await admin.list_topics()
            for _ in range(100):
                if topic in topics:
                    break
                await asyncio.sleep(0.1)
                topics = await admin.list_topics()
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b'{"drift_bps": 153}', key=b"book-7")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 20)
        finally:
            await consumer.stop()
        return topics, record.key, record.value

    topics, key, value = asyncio.run(roundtrip())
    assert topic in topics
    assert (key, value) == (b"book-7", b'{"drift_bps": 153}')


def test_console_tools_roundtrip(local_kafka: LocalKafka) -> None:
    bootstrap, topic = local_kafka.bootstrap_servers, _topic()
    server = ("--bootstrap-server", bootstrap)
    _run_tool("topics", *server, "--create", "--topic", topic, "--partitions", "1", "--replication-factor", "1")
    assert topic in _run_tool("topics", *server, "--list").split()

    # Kafka 4.4 deprecates --property for --reader-property / --formatter-property.
    _run_tool(
        "console-producer", *server, "--topic", topic,
        "--reader-property", "parse.key=true", "--reader-property", "key.separator=|",
        input="book-7|rebalance: sell 120 AAPL\n",
    )  # fmt: skip
    out = _run_tool(
        "console-consumer", *server, "--topic", topic, "--from-beginning",
        "--max-messages", "1", "--timeout-ms", "30000",
        "--formatter-property", "print.key=true", "--formatter-property", "key.separator=|",
    )  # fmt: skip
    assert out.splitlines() == ["book-7|rebalance: sell 120 AAPL"]


def test_kafka_cluster_uses_given_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: had kafka_cluster started a broker, it would yield its own address.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with kafka_cluster() as bootstrap:
        assert bootstrap == "127.0.0.1:1"


def test_stop_leaves_no_process_and_no_data_dir() -> None:
    kafka = LocalKafka().start()
    pid, data_dir = kafka.pid, kafka.data_dir
    assert pid is not None and data_dir is not None
    try:
        assert _alive(pid) and (data_dir / "server.properties").is_file()
        assert _live_pids(pid, field=2) == {pid}  # the JVM leads its own process group
    finally:
        kafka.stop()
    assert not _alive(pid)
    assert _live_pids(pid, field=2) == set()
    assert not data_dir.exists()
    kafka.stop()  # idempotent
    assert kafka.pid is None and kafka.data_dir is None


def test_data_dirs_of_killed_processes_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # sweep a private temp dir only
    orphan, live, fresh = (tmp_path / f"drift-monitor-kafka-{name}" for name in ("orphan", "live", "fresh"))
    for data_dir in (orphan, live, fresh):
        (data_dir / "kraft").mkdir(parents=True)
        (data_dir / "owner.lock").touch()
    for data_dir in (orphan, live):
        os.utime(data_dir, (time.time() - 3600,) * 2)
    with open(live / "owner.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the LocalKafka of a running process does
        _remove_orphaned_data_dirs()
    assert not orphan.exists()
    assert live.exists() and fresh.exists()


def _start_main() -> tuple[subprocess.Popen[str], str, int, Path]:
    """`python -m monitor.ops.broker` in a child: (child, bootstrap servers, JVM pid, data dir)."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # the local JVM even where Docker runs
    child = subprocess.Popen([sys.executable, "-m", "monitor.ops.broker"], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 120)
    line = child.stdout.readline() if ready else ""
    if not line.startswith("KAFKA_BOOTSTRAP_SERVERS="):
        child.kill()
        child.wait()
        pytest.fail(f"monitor.ops.broker printed {line!r} (exit code {child.poll()})")
    (jvm,) = _live_pids(child.pid, field=1)
    return child, line.strip().partition("=")[2], jvm, Path(os.readlink(f"/proc/{jvm}/cwd"))


def test_main_prints_address_and_stops_on_sigterm() -> None:
    child, bootstrap, jvm, data_dir = _start_main()
    try:
        assert bootstrap.startswith("127.0.0.1:")
        status = _run_tool("metadata-quorum", "--bootstrap-server", bootstrap, "describe", "--status")
        assert "LeaderId:" in status
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
        assert not _alive(jvm)
        assert not data_dir.exists()
    finally:
        child.kill()
        child.wait()


def test_broker_dies_with_its_python_process() -> None:
    child, _, jvm, data_dir = _start_main()
    try:
        assert _alive(jvm)
        child.kill()  # SIGKILL: no atexit, no finally; only PR_SET_PDEATHSIG can stop the JVM
        child.wait()
        assert _wait_gone(jvm), "the broker JVM outlived its killed Python process"
    finally:
        if _alive(jvm):
            os.kill(jvm, signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)  # left behind by the kill -9


def test_missing_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no java, no mvn
    monkeypatch.setenv("MONITOR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(KafkaUnavailable) as raised:
        LocalKafka().start()
    message = str(raised.value)
    for needed in ("`java` is not on PATH", "Java 17+ JDK", "Maven 3.6+", "KAFKA_BOOTSTRAP_SERVERS=", "Docker"):
        assert needed in message
    assert not (tmp_path / "cache").exists()


def test_jar_cache_replaces_a_half_cache_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, version = tmp_path / "cache", kafka_version()
    monkeypatch.setenv("MONITOR_CACHE_DIR", str(cache))
    half = cache / f"kafka-{version}" / "lib"  # as if a fetch had died halfway, without the marker
    half.mkdir(parents=True)
    (half / "truncated.jar").write_bytes(b"PK")

    lib = kafka_lib_dir()  # runs Maven
    jars = {jar.name for jar in lib.glob("*.jar")}
    assert lib == half
    assert {f"kafka_2.13-{version}.jar", f"kafka-tools-{version}.jar", f"kafka-clients-{version}.jar"} <= jars
    assert "truncated.jar" not in jars
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [f"kafka-{version}"]  # no staging dir left

    # Reused: with `java` but no `mvn` on PATH, a second fetch would raise KafkaUnavailable.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = shutil.which("java")
    assert java is not None
    (bin_dir / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert kafka_lib_dir() == lib
