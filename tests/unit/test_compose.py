"""The Docker Compose stack and its Prometheus/Alertmanager/Grafana files agree with each other
and the code.

No Docker engine is needed: these tests read the files and check what would break at
`docker compose up` time: missing mounted files, a command the CLI does not have, a
scrape target that is not the worker, an Alertmanager Prometheus cannot reach, a rule or panel
querying a series the worker never exports, a panel pointing at another data source, a
dashboard JSON that is not its generator's output. (tests/unit/test_rules.py runs promtool and
amtool on the same files; tests/integration/test_prometheus_live.py runs them for real.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from monitor.ops import metrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
RULES = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
DASHBOARD_PATH = REPO / "deploy/grafana/dashboards/drift-monitor.json"
DASHBOARD_GENERATOR = REPO / "deploy/grafana/dashboard.py"

# The worker's series, as Prometheus exposes them: read from monitor/ops/metrics.py itself.
_COLLECTORS = [c for c in vars(metrics).values() if isinstance(c, (Counter, Gauge, Histogram))]
COUNTERS = {f"{c._name}_total" for c in _COLLECTORS if isinstance(c, Counter)}
GAUGES = {c._name for c in _COLLECTORS if isinstance(c, Gauge)}
HISTOGRAMS = {c._name for c in _COLLECTORS if isinstance(c, Histogram)}
METRICS = COUNTERS | GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
# The last two from prometheus_client's process collector.
ALLOWED_SERIES = METRICS | {"up", "process_start_time_seconds", "process_cpu_seconds_total"}
KNOWN_LABELS = {"topic", "reason", "severity", "state", "portfolio_id", "loop", "library", "le", "job", "instance",
                "generation"}


# ---------------------------------------------------------------- helpers


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of the service's bind mounts; named volumes are skipped."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        target = rest.split(":", 1)[0]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def _built_from_repo(service: dict[str, Any]) -> bool:
    build = service.get("build")
    context = build.get("context", ".") if isinstance(build, dict) else build
    return context in (".", "./")


def _command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return list(command) if isinstance(command, list) else shlex.split(command)


_PROMQL_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2",
}


def promql_series(expr: str) -> set[str]:
    """Metric names an expression selects (a small lexer: enough for our own expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if match.group(1).lower() not in _PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def promql_labels(expr: str) -> set[str]:
    """Label names an expression groups or matches on."""
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text())


def dashboard_generator() -> Any:
    """deploy/grafana/dashboard.py as a module (it lives beside its output, outside the package)."""
    spec = importlib.util.spec_from_file_location("drift_monitor_dashboard", DASHBOARD_GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()["panels"]) for t in p.get("targets", []) if t.get("expr")]


def _rule_exprs() -> list[str]:
    return [rule["expr"] for group in RULES["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------- compose


def test_compose_has_the_stack() -> None:
    assert {"kafka", "worker", "simulator", "prometheus", "alertmanager", "grafana"} <= set(SERVICES)
    assert SERVICES["kafka"]["image"] == "apache/kafka:4.4.0"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_bind_mounted_host_paths_exist_in_the_repo(name: str) -> None:
    for source, _ in _bind_mounts(SERVICES[name]):
        assert not source.startswith(("/", "~")), f"{name}: bind mount {source} is outside the repository"
        assert (REPO / source).exists(), f"{name}: {source} does not exist"


def test_services_built_from_the_repo_run_cli_subcommands() -> None:
    from monitor.cli import main  # the project's entry point (pyproject: monitor = "monitor.cli:main")

    built = [name for name, service in SERVICES.items() if _built_from_repo(service)]
    assert {"worker", "simulator"} <= set(built)
    assert (REPO / "Dockerfile").is_file()
    for name in built:
        words = _command_words(SERVICES[name])
        assert words, f"{name}: no command"
        assert words[0] in main.commands, f"{name}: {words[0]!r} is not a `monitor` subcommand ({sorted(main.commands)})"


def test_containers_reach_kafka_on_its_advertised_internal_listener() -> None:
    kafka = _environment(SERVICES["kafka"])
    advertised = {entry.split("://", 1)[1] for entry in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in ("worker", "simulator"):
        assert _environment(SERVICES[name])["KAFKA_BOOTSTRAP_SERVERS"] in advertised
        assert SERVICES[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(_command_words({"command": SERVICES["kafka"]["healthcheck"]["test"]}))


def test_dockerfile_entrypoint_is_the_cli() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    assert next(line for line in lines if line.upper().startswith("FROM ")).split()[1] == "python:3.11-slim"
    entry = [line for line in lines if line.upper().startswith("ENTRYPOINT")][-1].split(None, 1)[1]
    words = json.loads(entry) if entry.startswith("[") else shlex.split(entry)
    assert words[0] == "monitor"


# ---------------------------------------------------------------- prometheus


def test_prometheus_scrapes_the_worker_on_its_metrics_port() -> None:
    worker_env = _environment(SERVICES["worker"])
    assert worker_env["MONITOR_METRICS_HOST"] == "0.0.0.0"  # reachable from the prometheus container
    port = worker_env["MONITOR_METRICS_PORT"]
    targets = [t for job in PROMETHEUS["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert f"worker:{port}" in targets
    assert "worker" in SERVICES


def test_prometheus_rule_files_are_mounted_where_the_config_looks() -> None:
    mounts = dict((target, source) for source, target in _bind_mounts(SERVICES["prometheus"]))
    config_target = next(t for t, s in mounts.items() if s.endswith("deploy/prometheus/prometheus.yml"))
    for rule_file in PROMETHEUS["rule_files"]:
        in_container = str(PurePosixPath(config_target).parent / rule_file)
        assert in_container in mounts, f"{rule_file} is not mounted at {in_container}"
        assert (REPO / mounts[in_container]).is_file()


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    targets = [t for am in PROMETHEUS["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    alertmanager = SERVICES["alertmanager"]
    assert "9093:9093" in alertmanager["ports"]  # Alertmanager's default listen port
    config_flag = next(w for w in _command_words(alertmanager) if w.startswith("--config.file="))
    mounts = {target: source for source, target in _bind_mounts(alertmanager)}
    assert (REPO / mounts[config_flag.split("=", 1)[1]]).resolve() == REPO / "deploy/alertmanager/alertmanager.yml"


def test_rules_are_well_formed() -> None:
    names = []
    for group in RULES["groups"]:
        assert group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert rule["alert"] and rule["expr"]
            if "for" in rule:
                assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(rule["for"]))
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    used = set().union(*(promql_series(e) for e in _rule_exprs()))
    # worker down, DLQ, lag, CRITICAL alerts
    assert {"up", "monitor_dlq_messages_total", "monitor_event_lag_seconds_bucket", "monitor_alerts_emitted_total"} <= used


@pytest.mark.parametrize("expr", _rule_exprs())
def test_rule_exprs_use_only_worker_series(expr: str) -> None:
    assert promql_series(expr), expr
    assert promql_series(expr) <= ALLOWED_SERIES, expr
    assert promql_labels(expr) <= KNOWN_LABELS, expr


# ---------------------------------------------------------------- grafana


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards_mount() -> None:
    datasources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["uid"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"]
    mounts = {target: source for source, target in _bind_mounts(SERVICES["grafana"])}
    for provider in providers:
        path = provider["options"]["path"]
        assert path == "/var/lib/grafana/dashboards"
        assert (REPO / mounts[path]).resolve() == DASHBOARD_PATH.parent
    assert (REPO / mounts["/etc/grafana/provisioning"]).is_dir()
    env = _environment(SERVICES["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


def test_committed_dashboard_is_the_generator_output() -> None:
    assert DASHBOARD_PATH.read_text() == dashboard_generator().render(), \
        "deploy/grafana/dashboards/drift-monitor.json is not deploy/grafana/dashboard.py's output: run `make dashboard`"


def test_dashboard_panels_use_the_prometheus_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    panels = _panels(dashboard["panels"])
    assert panels
    for panel in panels:
        if panel.get("type") == "row":
            continue
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", {"uid": "prometheus"})["uid"] == "prometheus", panel["title"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            assert variable["datasource"]["uid"] == "prometheus"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("expr", _dashboard_exprs())
def test_dashboard_exprs_use_only_worker_series(expr: str) -> None:
    assert promql_series(expr), expr
    assert promql_series(expr) <= ALLOWED_SERIES, expr
    assert promql_labels(expr) <= KNOWN_LABELS, expr


def test_dashboard_shows_every_worker_series() -> None:
    used = set().union(*(promql_series(e) for e in _dashboard_exprs()))
    for counter in COUNTERS | GAUGES:
        assert counter in used, counter
    for histogram in HISTOGRAMS:
        assert f"{histogram}_bucket" in used, histogram


# What a desk reads, by panel type: (panel type, a series its queries use, a grouping label or None).
DESK_PANELS = [
    ("timeseries", "monitor_book_nav", "portfolio_id"),  # NAV per book
    ("heatmap", "monitor_book_band_usage", "portfolio_id"),  # band usage per book
    ("stat", "monitor_alerts_open", None),  # open alerts
    ("timeseries", "monitor_signals_emitted_total", "state"),  # signals by state
    ("timeseries", "monitor_event_lag_seconds_bucket", "topic"),  # lag
    ("timeseries", "monitor_dlq_messages_total", "reason"),  # DLQ by reason
    ("timeseries", "monitor_table_recoveries_total", None),  # recovery
]


@pytest.mark.parametrize(("kind", "series", "label"), DESK_PANELS)
def test_dashboard_has_the_desk_panels(kind: str, series: str, label: str | None) -> None:
    exprs = [t["expr"] for p in _panels(_dashboard()["panels"]) if p["type"] == kind for t in p["targets"]]
    assert any(series in promql_series(e) and (label is None or label in promql_labels(e)) for e in exprs), \
        f"no {kind} panel on {series}" + (f" by {label}" if label else "")


def test_dashboard_shows_fills_per_second() -> None:
    assert any('monitor_events_consumed_total{topic="fills"}' in e and "rate(" in e for e in _dashboard_exprs())


def test_promql_lexer() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, topic) (rate(a_bucket{job="x y"}[$__rate_interval]))) > 1e-9 and on (job) b offset 5m'
    assert promql_series(expr) == {"a_bucket", "b"}
    assert promql_labels(expr) == {"le", "topic", "job"}
