"""Runtime settings: one place that turns environment and flags into a frozen value.

Every topic is named by its logical name (the left column of the contract in
DESIGN.md); the physical name is the logical one behind an optional prefix, so that
several monitors (or several tests) can share one cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

# Logical topic names, in the order of the contract.
INPUT_TOPICS = ("prices", "fills", "instruments", "positions", "policies", "risk-models", "approvals")
OUTPUT_TOPICS = ("drift-alerts", "rebalance-signals", "monitor-dlq")
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
# Latest-value topics: only the newest record per key matters.
COMPACTED_TOPICS = frozenset({"instruments", "policies", "risk-models"})


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    tick_ms: float = 10.0  # event-time evaluation window (see monitor/engine/engine.py)
    session_timeout_s: float = 10.0  # consumer-group session: how soon a dead worker's books move
    stall_exit_s: float = 60.0  # book messages waiting on the broker, none delivered this long: exit 75
    max_clock_skew_s: float = 300.0  # live input stamped further ahead of the wall clock is dead-lettered
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    log_format: str = "console"  # "console" for a terminal, "json" in production
    log_level: str = "info"
    app_id: str = "drift-monitor"
    data_dir: str = field(default_factory=lambda: os.path.join(os.getcwd(), ".monitor-data"))

    @property
    def tick(self) -> int:
        """The evaluation window in event-time microseconds."""
        return round(self.tick_ms * 1000)

    @property
    def local_metrics_url(self) -> str:
        """Where a process on this machine scrapes the worker's /metrics (bench, demo, tests)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def topic(self, logical: str) -> str:
        """Physical topic name of a logical one."""
        return f"{self.topic_prefix}{logical}"

    def logical(self, physical: str) -> str:
        """Logical name of a physical topic (inverse of `topic`)."""
        return physical[len(self.topic_prefix):] if physical.startswith(self.topic_prefix) else physical

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from MONITOR_* / KAFKA_BOOTSTRAP_SERVERS, then explicit overrides (flags)."""
        env = os.environ
        base = cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap_servers),
            topic_prefix=env.get("MONITOR_TOPIC_PREFIX", ""),
            partitions=int(env.get("MONITOR_PARTITIONS", cls.partitions)),
            replication_factor=int(env.get("MONITOR_REPLICATION_FACTOR", cls.replication_factor)),
            tick_ms=float(env.get("MONITOR_TICK_MS", cls.tick_ms)),
            session_timeout_s=float(env.get("MONITOR_SESSION_TIMEOUT_S", cls.session_timeout_s)),
            stall_exit_s=float(env.get("MONITOR_STALL_EXIT_S", cls.stall_exit_s)),
            max_clock_skew_s=float(env.get("MONITOR_MAX_CLOCK_SKEW_S", cls.max_clock_skew_s)),
            metrics_host=env.get("MONITOR_METRICS_HOST", cls.metrics_host),
            metrics_port=int(env.get("MONITOR_METRICS_PORT", cls.metrics_port)),
            log_format=env.get("MONITOR_LOG_FORMAT", "console"),
            log_level=env.get("MONITOR_LOG_LEVEL", "info"),
            app_id=env.get("MONITOR_APP_ID", cls.app_id),
            data_dir=env.get("MONITOR_DATA_DIR", os.path.join(os.getcwd(), ".monitor-data")),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
