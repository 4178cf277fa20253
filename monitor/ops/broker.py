"""A real single-node Apache Kafka (KRaft) for tests and `make demo`, without Docker.

Kafka is not on PyPI and a Docker engine is not always there, but Maven Central is:
the broker and Kafka's CLI tools run from the jars Maven resolves for
deploy/kafka/pom.xml, cached outside the repository and reused across runs.

- `kafka_lib_dir()`: the jar cache (fetched once, atomically).
- `LocalKafka`: one broker+controller JVM on free loopback ports, throw-away data dir.
- `kafka_cluster()`: $KAFKA_BOOTSTRAP_SERVERS, else Docker (testcontainers), else LocalKafka.
- `kafka_tool()`: argv for kafka-topics, the console producer/consumer, perf tools...
- `main()`: `python -m monitor.ops.broker` (and `monitor broker`).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import IO

from monitor.ops.processes import free_ports, spawn, terminate

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
LOG4J_CONFIG = DEPLOY_DIR / "log4j2.properties"
MIN_JAVA = 17
_COMPLETE = ".complete"  # written into the cache dir after a successful Maven copy
_DATA_DIR_PREFIX = "drift-monitor-kafka-"  # LocalKafka's data dirs, in the temp dir
_OWNER_LOCK = "owner.lock"

# Kafka's bin/kafka-<name>.sh scripts and the main class each runs (Kafka 4.4).
TOOLS = {
    "topics": "org.apache.kafka.tools.TopicCommand",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "producer-perf-test": "org.apache.kafka.tools.ProducerPerformance",
    "consumer-perf-test": "org.apache.kafka.tools.ConsumerPerformance",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "configs": "org.apache.kafka.tools.ConfigCommand",
    "delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "storage": "kafka.tools.StorageTool",
}

# Settings for a one-node cluster: every internal topic gets one replica, and few
# partitions, so that the first consumer group or transaction does not wait on 50.
_SINGLE_NODE = {
    "node.id": "1",
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "default.replication.factor": "1",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    "group.initial.rebalance.delay.ms": "0",
}


@dataclass(frozen=True)
class SecuredListener:
    """A SASL_SSL listener for LocalKafka, beside its PLAINTEXT one (which the broker, its controller
    and the readiness check keep using on loopback): what a fund's cluster asks of a client.

    `keystore` is a PEM file holding the broker's private key (PKCS#8, unencrypted) and its
    certificate chain; `truststore` the PEM CA certificate that client certificates must chain to.
    The SCRAM `users` (name -> password) are created when the storage is formatted.
    """

    keystore: Path
    truststore: Path
    users: Mapping[str, str] = field(repr=False)
    mechanism: str = "SCRAM-SHA-512"
    client_auth: str = "required"  # ssl.client.auth: "required" makes clients present a certificate

    def server_properties(self) -> dict[str, str]:
        return {
            "sasl.enabled.mechanisms": self.mechanism,
            f"listener.name.sasl_ssl.{self.mechanism.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(self.keystore),
            "listener.name.sasl_ssl.ssl.truststore.type": "PEM",
            "listener.name.sasl_ssl.ssl.truststore.location": str(self.truststore),
            "listener.name.sasl_ssl.ssl.client.auth": self.client_auth,
        }

    def format_args(self) -> list[str]:
        """`kafka-storage format` arguments that create the SCRAM users (no broker round trip needed)."""
        return [arg for name, password in self.users.items()
                for arg in ("--add-scram", f"{self.mechanism}=[name={name},password={password}]")]


class KafkaUnavailable(RuntimeError):
    """No way to run Kafka on this machine; the message says what to install or set."""


class KafkaStartError(RuntimeError):
    """The broker JVM failed or did not answer in time; the message ends with its log."""


def _unavailable(problem: str) -> KafkaUnavailable:
    return KafkaUnavailable(
        f"{problem}. To run a local Kafka broker, install a Java {MIN_JAVA}+ JDK "
        "(e.g. `apt-get install openjdk-17-jdk-headless`) and Apache Maven 3.6+ "
        "(e.g. `apt-get install maven`) and put `java` and `mvn` on PATH; "
        "or use an existing cluster by setting KAFKA_BOOTSTRAP_SERVERS=host:port; "
        f"or start a Docker engine, so that testcontainers can run apache/kafka:{kafka_version()}."
    )


@lru_cache
def kafka_version() -> str:
    """The Kafka version pinned in deploy/kafka/pom.xml (the one place it is set)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    if not version:
        raise RuntimeError(f"no <kafka.version> in {POM}")
    return version.strip()


def _java() -> str:
    """Absolute path of the `java` on PATH, checked to be Java 17+ (Kafka 4 needs it)."""
    java = shutil.which("java")
    if java is None:
        raise _unavailable("`java` is not on PATH")
    major = _java_major(java)
    if major < MIN_JAVA:
        raise _unavailable(f"{java} is Java {major}, Kafka {kafka_version()} needs Java {MIN_JAVA}+")
    return java


@lru_cache
def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        raise _unavailable(f"cannot tell the version of {java} from: {out.strip()[:200]!r}")
    major, minor = int(match[1]), int(match[2] or 0)
    return minor if major == 1 else major  # "1.8.0_402" is Java 8


def kafka_lib_dir() -> Path:
    """The directory of Kafka's runtime jars, fetched with Maven on first use.

    Lives in $MONITOR_CACHE_DIR (default ~/.cache/drift-monitor)/kafka-<version>/lib so
    that clean checkouts and `git clean` do not refetch. Maven copies into a staging dir
    that is renamed into place with a marker file, under a lock: a fetch killed halfway
    leaves no half cache, and parallel test sessions fetch once.
    """
    _java()
    root = Path(os.environ.get("MONITOR_CACHE_DIR") or Path.home() / ".cache" / "drift-monitor")
    home = root / f"kafka-{kafka_version()}"
    if (home / _COMPLETE).is_file():
        return home / "lib"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise _unavailable(f"`mvn` is not on PATH (needed once, to fetch Kafka's jars into {home})")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / _COMPLETE).is_file():  # another process fetched while we waited
            return home / "lib"
        staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=root))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            log.info("fetching Kafka %s jars with Maven into %s", kafka_version(), home)
            _maven_copy_jars(mvn, staging / "lib")
            (staging / _COMPLETE).write_text(f"{kafka_version()}\n")
            if home.exists():  # incomplete: a cache made by hand or by older code
                shutil.rmtree(home)
            staging.rename(home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return home / "lib"


def _maven_copy_jars(mvn: str, dest: Path) -> None:
    cmd = [
        mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={dest}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(dest.glob("kafka_*.jar")):
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise _unavailable(
            f"Maven could not fetch Kafka {kafka_version()} (exit code {proc.returncode}):\n{output}\n"
            "Maven Central must be reachable (or the jars already in ~/.m2)"
        )


def kafka_tool(name: str, *args: str) -> list[str]:
    """argv that runs one of Kafka's CLI tools from the cached jars, as its own client.

    `name` is the bin/kafka-<name>.sh script name (see TOOLS), or a main class name.
    E.g. subprocess.run(kafka_tool("topics", "--bootstrap-server", bs, "--list")).
    Tools log to stderr only, so stdout carries just their output.
    """
    main_class = TOOLS.get(name) or (name if "." in name else None)
    if main_class is None:
        raise ValueError(f"unknown Kafka tool {name!r}; known: {', '.join(sorted(TOOLS))}")
    return [
        _java(), "-Xmx256m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{kafka_lib_dir()}/*",
        main_class, *args,
    ]  # fmt: skip


class LocalKafka:
    """One Kafka JVM (broker + KRaft controller) on loopback with a throw-away data dir.

        with LocalKafka() as kafka:
            ... kafka.bootstrap_servers ...   # "127.0.0.1:<port>"

    The JVM runs in its own process group, so a terminal's Ctrl-C reaches Python only,
    which then stops the broker in order. On Linux the JVM also gets SIGKILL when the
    thread that started it dies (PR_SET_PDEATHSIG), so a Python process killed with -9
    does not leave a broker behind; start it from a thread that outlives the broker
    (normally the main thread).
    """

    def __init__(self, port: int = 0, *, config: Mapping[str, str] | None = None,
                 secured: SecuredListener | None = None) -> None:
        """`port` 0 picks a free one; `config` adds or overrides server.properties entries;
        `secured` adds a SASL_SSL listener on a free port (`secured_bootstrap_servers`)."""
        self._wanted_port = port
        self._extra_config = dict(config or {})
        self._secured = secured
        self._port = self._secured_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None
        self._owner_lock: IO[str] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._proc is None:
            raise RuntimeError("LocalKafka is not started")
        return f"127.0.0.1:{self._port}"

    @property
    def secured_bootstrap_servers(self) -> str:
        """The SASL_SSL listener's address (the name the broker's certificate must carry: 127.0.0.1)."""
        if self._proc is None or self._secured is None:
            raise RuntimeError("LocalKafka is not started with a secured listener")
        return f"127.0.0.1:{self._secured_port}"

    @property
    def pid(self) -> int | None:
        """The JVM's pid (also its process group id), None when stopped."""
        return self._proc.pid if self._proc else None

    @property
    def data_dir(self) -> Path | None:
        """server.properties, broker.log and the Kafka log dir; deleted by stop()."""
        return self._data_dir

    def start(self, timeout: float = 60) -> LocalKafka:
        """Start the broker and return once it answers a metadata request.

        `timeout` covers formatting, JVM start and the first answer, not the one-time
        Maven fetch. Raises KafkaUnavailable (no Java/Maven) or KafkaStartError.
        """
        if self._proc is not None:
            return self
        lib, java = kafka_lib_dir(), _java()
        deadline = time.monotonic() + timeout
        atexit.register(self.stop)
        try:
            props = self._make_data_dir()
            self._format_storage(java, lib, props, deadline)
            self._launch(java, lib, props)
            self._wait_until_ready(deadline, timeout)
        except BaseException:  # including KeyboardInterrupt: never leave a half-started JVM
            self.stop()
            raise
        log.info("Kafka broker (pid %s) ready at %s", self.pid, self.bootstrap_servers)
        return self

    def stop(self) -> None:
        """SIGTERM the JVM's group, SIGKILL after 10 s, reap it, delete the data dir. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, grace=10.0)
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
        if self._owner_lock is not None:
            self._owner_lock.close()
            self._owner_lock = None
        atexit.unregister(self.stop)

    def restart(self, down_for: float = 0.0, timeout: float = 60) -> None:
        """A broker outage: stop the JVM (SIGTERM, SIGKILL after 10 s), stay down `down_for` seconds,
        start it again on the same port and data dir, and return once it answers again."""
        proc, self._proc = self._proc, None
        if proc is None or self._data_dir is None:
            raise RuntimeError("LocalKafka is not started")
        terminate(proc, grace=10.0)
        time.sleep(down_for)
        deadline = time.monotonic() + timeout
        try:
            self._launch(_java(), kafka_lib_dir(), self._data_dir / "server.properties")
            self._wait_until_ready(deadline, timeout)
        except BaseException:
            self.stop()
            raise

    def pause(self) -> None:
        """SIGSTOP the JVM: a broker that hangs (GC pause, frozen VM) without closing its sockets."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _make_data_dir(self) -> Path:
        """A fresh data dir, locked as ours, with server.properties on free ports."""
        _remove_orphaned_data_dirs()
        self._data_dir = Path(tempfile.mkdtemp(prefix=_DATA_DIR_PREFIX))
        self._owner_lock = open(self._data_dir / _OWNER_LOCK, "w")  # noqa: SIM115 (held until stop)
        fcntl.flock(self._owner_lock, fcntl.LOCK_EX)
        port, controller_port, self._secured_port = free_ports(3)
        self._port = self._wanted_port or port
        props = self._data_dir / "server.properties"
        props.write_text(self._server_properties(controller_port))
        return props

    def _format_storage(self, java: str, lib: Path, props: Path, deadline: float) -> None:
        """`kafka-storage format` with a new cluster id: KRaft will not start unformatted."""
        cmd = [
            java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", f"{lib}/*",
            "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props),
            *(self._secured.format_args() if self._secured else ()),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(deadline - time.monotonic(), 1))
        if done.returncode != 0:
            raise KafkaStartError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}")

    def _launch(self, java: str, lib: Path, props: Path) -> None:
        """Start the JVM in its own session, tied to our life, logging to broker.log."""
        assert self._data_dir is not None
        cmd = [
            java, "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{lib}/*", "kafka.Kafka", str(props),
        ]  # fmt: skip
        self._proc = spawn(cmd, cwd=self._data_dir, log_path=self._data_dir / "broker.log")

    def _server_properties(self, controller_port: int) -> str:
        assert self._data_dir is not None
        listeners = {"PLAINTEXT": self._port} | ({"SASL_SSL": self._secured_port} if self._secured else {})
        advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
        props = {
            **_SINGLE_NODE,
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": advertised,
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self._data_dir / "kraft"),
            "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),  # 128 MiB default, heap is 512
            **(self._secured.server_properties() if self._secured else {}),
            **self._extra_config,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _wait_until_ready(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise KafkaStartError(f"Kafka exited with code {code} while starting.\n{self._log_tail()}")
            if _answers_metadata(self.bootstrap_servers):
                return
            if time.monotonic() > deadline:
                raise KafkaStartError(
                    f"Kafka did not answer on {self.bootstrap_servers} within {timeout:g} s.\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _log_tail(self, lines: int = 40) -> str:
        assert self._data_dir is not None
        path = self._data_dir / "broker.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"({path} is missing)"
        return f"Last lines of {path}:\n" + "\n".join(tail)


def _remove_orphaned_data_dirs(min_age: float = 60) -> None:
    """Delete data dirs whose Python process died without stop() (kill -9, SIGTERM).

    A live owner holds an flock on the dir's owner.lock; the kernel drops it when the
    process dies. Dirs younger than `min_age` seconds may still be setting up: skipped.
    """
    for data_dir in Path(tempfile.gettempdir()).glob(f"{_DATA_DIR_PREFIX}*"):
        with contextlib.suppress(OSError):  # vanished meanwhile, not ours to read, ...
            if time.time() - data_dir.stat().st_mtime < min_age:
                continue
            with open(data_dir / _OWNER_LOCK) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while its owner lives
                log.info("removing %s, left behind by a killed process", data_dir)
                shutil.rmtree(data_dir, ignore_errors=True)


def _cluster_id() -> str:
    """A new KRaft cluster id, as `kafka-storage random-uuid` prints it (without a JVM)."""
    while True:  # Kafka rejects ids that would read as an option
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _answers_metadata(bootstrap_servers: str) -> bool:
    """Whether a broker at `bootstrap_servers` answers a metadata request listing itself."""
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    try:  # cheap check first, so aiokafka does not log a connection error per poll
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    # asyncio.run in a worker thread: a private loop even if the caller runs one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _metadata_lists_brokers(bootstrap_servers)).result()


async def _metadata_lists_brokers(bootstrap_servers: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await admin.start()
        return bool((await admin.describe_cluster())["brokers"])
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()


def _docker_answers() -> bool:
    """Whether a Docker engine answers within ~2 s (the `docker` client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no daemon, refused...: all mean "no Docker"
        return False


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    """apache/kafka (KRaft, single node) in Docker through testcontainers.

    testcontainers' KafkaContainer drives the layout of Confluent's cp-kafka image, so the
    official image runs as a generic container configured by its KAFKA_* variables. The
    host port is chosen up front because the broker must advertise it; a second listener
    (BROKER) serves the broker's own connections inside the container.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    (port,) = free_ports(1)
    container = DockerContainer(f"apache/kafka:{kafka_version()}").with_bind_ports(9092, port)
    host = container.get_docker_client().host()
    config = {
        **_SINGLE_NODE,
        "controller.quorum.voters": "1@localhost:9093",
        "listeners": "PLAINTEXT://0.0.0.0:9092,BROKER://localhost:19092,CONTROLLER://localhost:9093",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},BROKER://localhost:19092",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "BROKER",
    }
    env = {"KAFKA_" + key.upper().replace(".", "_"): value for key, value in config.items()}
    container.with_envs(CLUSTER_ID=_cluster_id(), **env)
    container.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    with container:
        bootstrap_servers = f"{host}:{port}"
        deadline = time.monotonic() + 30
        while not _answers_metadata(bootstrap_servers):
            if time.monotonic() > deadline:
                raise KafkaStartError(f"Kafka in Docker did not answer on {bootstrap_servers}")
            time.sleep(0.2)
        yield bootstrap_servers


@contextlib.contextmanager
def kafka_cluster() -> Iterator[str]:
    """Bootstrap servers of a Kafka cluster for the duration of the block.

    In order of choice: $KAFKA_BOOTSTRAP_SERVERS (nothing is started); apache/kafka in
    Docker when an engine answers; else a LocalKafka JVM. KafkaUnavailable when none works.
    """
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if given:
        log.info("Kafka: using the cluster at %s (KAFKA_BOOTSTRAP_SERVERS)", given)
        yield given
    elif _docker_answers():
        log.info("Kafka: starting apache/kafka:%s in Docker (testcontainers)", kafka_version())
        with _kafka_container() as bootstrap_servers:
            log.info("Kafka: container ready at %s", bootstrap_servers)
            yield bootstrap_servers
    else:
        log.info("Kafka: no KAFKA_BOOTSTRAP_SERVERS, no Docker engine; starting a local broker JVM")
        with LocalKafka() as kafka:
            yield kafka.bootstrap_servers


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT: unwind like Ctrl-C does, once; the cleanup itself is not interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> int:
    """Provide a Kafka cluster until SIGINT/SIGTERM; print `KAFKA_BOOTSTRAP_SERVERS=...` first.

    The one stdout line is meant for scripts (`make demo`); logs go to stderr. Exits with
    status 2 (SystemExit, so also under `monitor broker`) when Kafka is unavailable.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with kafka_cluster() as bootstrap_servers:
            print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap_servers}", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        log.info("Kafka: stopped")
    except KafkaUnavailable as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
