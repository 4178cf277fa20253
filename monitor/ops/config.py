"""Runtime settings: one place that turns environment and flags into a frozen value.

Every topic is named by its logical name (the left column of the contract in
DESIGN.md); the physical name is the logical one behind an optional prefix, so that
several monitors (or several tests) can share one cluster.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# Logical topic names, in the order of the contract.
INPUT_TOPICS = ("prices", "fills", "instruments", "positions", "policies", "risk-models", "approvals")
OUTPUT_TOPICS = ("drift-alerts", "rebalance-signals", "monitor-dlq")
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
# Latest-value topics: only the newest record per key matters.
COMPACTED_TOPICS = frozenset({"instruments", "policies", "risk-models"})

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConfigError(ValueError):
    """A setting that cannot work; the message names it and says why (never a secret's value)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client authenticates and encrypts: the standard KAFKA_* settings, checked once.

    The one place client options are built (`client_options` for aiokafka, `faust_options` for the
    Faust app), so that the worker, the CLI and the tools cannot disagree. The password stays out
    of reprs and messages.
    """

    protocol: str = "PLAINTEXT"  # KAFKA_SECURITY_PROTOCOL
    sasl_mechanism: str | None = None  # KAFKA_SASL_MECHANISM; PLAIN when SASL and unset
    sasl_username: str | None = None  # KAFKA_SASL_USERNAME
    sasl_password: str | None = field(default=None, repr=False)  # KAFKA_SASL_PASSWORD
    ssl_cafile: str | None = None  # KAFKA_SSL_CAFILE; the system's CAs when unset
    ssl_certfile: str | None = None  # KAFKA_SSL_CERTFILE: client certificate (PEM), for mutual TLS
    ssl_keyfile: str | None = None  # KAFKA_SSL_KEYFILE: its private key (PEM), if not in the certfile

    ENV = {"protocol": "KAFKA_SECURITY_PROTOCOL", "sasl_mechanism": "KAFKA_SASL_MECHANISM",
           "sasl_username": "KAFKA_SASL_USERNAME", "sasl_password": "KAFKA_SASL_PASSWORD",
           "ssl_cafile": "KAFKA_SSL_CAFILE", "ssl_certfile": "KAFKA_SSL_CERTFILE", "ssl_keyfile": "KAFKA_SSL_KEYFILE"}

    def __post_init__(self) -> None:
        protocol = self.protocol.strip().upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={self.protocol!r}: not one of {', '.join(SECURITY_PROTOCOLS)}")
        object.__setattr__(self, "protocol", protocol)
        if self.sasl:
            mechanism = (self.sasl_mechanism or "PLAIN").strip().upper()
            if mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: not one of {', '.join(SASL_MECHANISMS)}")
            object.__setattr__(self, "sasl_mechanism", mechanism)
            for name in ("sasl_username", "sasl_password"):
                if not getattr(self, name):
                    raise ConfigError(f"{self.ENV[name]} is not set: KAFKA_SECURITY_PROTOCOL={protocol} "
                                      f"with {mechanism} needs a username and a password")
        else:
            self._refuse_unused(("sasl_mechanism", "sasl_username", "sasl_password"), "SASL_PLAINTEXT or SASL_SSL")
        if self.tls:
            self.ssl_context()  # a missing or unreadable file is refused now, not at the first connection
        else:
            self._refuse_unused(("ssl_cafile", "ssl_certfile", "ssl_keyfile"), "SSL or SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KafkaSecurity":
        """From the KAFKA_* variables; an empty one counts as unset (compose files pass empty values)."""
        env = os.environ if env is None else env
        given = {name: env[var].strip() for name, var in cls.ENV.items() if env.get(var, "").strip()}
        if "sasl_password" in given:
            given["sasl_password"] = env["KAFKA_SASL_PASSWORD"]  # a password may begin or end in spaces
        return cls(**given)

    def as_env(self) -> dict[str, str]:
        """The KAFKA_* variables that give this value back: for the processes a tool or test starts."""
        return {var: getattr(self, name) for name, var in self.ENV.items() if getattr(self, name)}

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context verifying the broker (hostname included) against KAFKA_SSL_CAFILE, presenting
        the client certificate if one is given; None without TLS."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{self.ENV[name]}={path}: no such file")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE: the key needs its certificate")
        try:
            context = create_ssl_context(cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"KAFKA_SSL_CAFILE={self.ssl_cafile}: not a readable PEM certificate ({e})") from None
        if self.ssl_certfile:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"KAFKA_SSL_CERTFILE={self.ssl_certfile} / KAFKA_SSL_KEYFILE={self.ssl_keyfile}: "
                                  f"not a PEM certificate and its matching, unencrypted private key ({e})") from None
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            options |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self.sasl_password}
        return options

    def faust_options(self) -> dict[str, Any]:
        """Keyword arguments for faust.App: its consumers and producers get the same credentials."""
        import faust

        if self.sasl:
            return {"broker_credentials": faust.SASLCredentials(
                username=self.sasl_username, password=self.sasl_password, mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context())}
        if self.tls:
            return {"broker_credentials": faust.SSLCredentials(self.ssl_context())}
        return {}

    def describe(self) -> str:
        """For logs and errors: the protocol, mechanism and user, never the password."""
        if self.sasl:
            return f"{self.protocol} {self.sasl_mechanism} as {self.sasl_username!r}"
        return self.protocol

    def _refuse_unused(self, names: tuple[str, ...], needs: str) -> None:
        for name in names:
            if getattr(self, name):
                raise ConfigError(f"{self.ENV[name]} is set but KAFKA_SECURITY_PROTOCOL is {self.protocol}: "
                                  f"it would not be used (it needs {needs})")


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    tick_ms: float = 10.0  # event-time evaluation window (see monitor/engine/engine.py)
    session_timeout_s: float = 10.0  # consumer-group session: how soon a dead worker's books move
    stall_exit_s: float = 60.0  # book messages waiting on the broker, none delivered this long: exit 75
    checkpoint_s: float = 5.0  # how often the latest prices are checkpointed (a restart re-reads from there)
    instance_id: str | None = None  # a stable name per worker (static group membership): a restart keeps its books
    max_clock_skew_s: float = 300.0  # live input stamped further ahead of the wall clock is dead-lettered
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    api_port: int | None = None  # the HTTP API (/health, /ready, /api/v1); None: metrics_port + 1
    api_url: str | None = None  # how clients and the other workers reach the API; None: from host and port
    log_format: str = "console"  # "console" for a terminal, "json" in production
    log_level: str = "info"
    app_id: str = "drift-monitor"
    data_dir: str = field(default_factory=lambda: os.path.join(os.getcwd(), ".monitor-data"))
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @property
    def tick(self) -> int:
        """The evaluation window in event-time microseconds."""
        return round(self.tick_ms * 1000)

    @property
    def local_metrics_url(self) -> str:
        """Where a process on this machine scrapes the worker's /metrics (bench, demo, tests)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def http_port(self) -> int:
        """Where the worker's HTTP API listens (on `metrics_host`)."""
        return self.api_port if self.api_port is not None else self.metrics_port + 1

    @property
    def public_api_url(self) -> str:
        """The API's URL as the other workers of the group are told it (Faust's canonical_url): a redirect
        to the owner of a book points there."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = self.metrics_host if self.metrics_host not in ("", "0.0.0.0", "::") else socket.gethostname()
        return f"http://{host}:{self.http_port}"

    def topic(self, logical: str) -> str:
        """Physical topic name of a logical one."""
        return f"{self.topic_prefix}{logical}"

    def logical(self, physical: str) -> str:
        """Logical name of a physical topic (inverse of `topic`)."""
        return physical[len(self.topic_prefix):] if physical.startswith(self.topic_prefix) else physical

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from MONITOR_* / KAFKA_*, then explicit overrides (flags). ConfigError names a bad one."""
        env = os.environ
        base = cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap_servers),
            topic_prefix=env.get("MONITOR_TOPIC_PREFIX", ""),
            partitions=int(env.get("MONITOR_PARTITIONS", cls.partitions)),
            replication_factor=int(env.get("MONITOR_REPLICATION_FACTOR", cls.replication_factor)),
            tick_ms=float(env.get("MONITOR_TICK_MS", cls.tick_ms)),
            session_timeout_s=float(env.get("MONITOR_SESSION_TIMEOUT_S", cls.session_timeout_s)),
            stall_exit_s=float(env.get("MONITOR_STALL_EXIT_S", cls.stall_exit_s)),
            checkpoint_s=float(env.get("MONITOR_PRICE_CHECKPOINT_S", cls.checkpoint_s)),
            instance_id=env.get("MONITOR_INSTANCE_ID") or None,
            max_clock_skew_s=float(env.get("MONITOR_MAX_CLOCK_SKEW_S", cls.max_clock_skew_s)),
            metrics_host=env.get("MONITOR_METRICS_HOST", cls.metrics_host),
            metrics_port=int(env.get("MONITOR_METRICS_PORT", cls.metrics_port)),
            api_port=int(env["MONITOR_API_PORT"]) if env.get("MONITOR_API_PORT") else None,
            api_url=env.get("MONITOR_API_URL") or None,
            log_format=env.get("MONITOR_LOG_FORMAT", "console"),
            log_level=env.get("MONITOR_LOG_LEVEL", "info"),
            app_id=env.get("MONITOR_APP_ID", cls.app_id),
            data_dir=env.get("MONITOR_DATA_DIR", os.path.join(os.getcwd(), ".monitor-data")),
            kafka_security=KafkaSecurity.from_env(env),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
