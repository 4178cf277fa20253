"""Real Prometheus and Alertmanager for the tests: find the programs, run them on free loopback
ports in a temporary directory from the shipped deploy/ files, query them, receive webhooks.

The shipped files are used as they are except for what only a test can know: the addresses
(the worker's and Alertmanager's ports, the receivers' webhook URLs) and shorter intervals.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.ops.processes import free_ports, spawn, terminate

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy/prometheus"
ALERTMANAGER_CONFIG = REPO / "deploy/alertmanager/alertmanager.yml"


def tool(*names: str) -> str:
    """The first of `names` on PATH (Debian calls Alertmanager `prometheus-alertmanager`); a failure
    saying how to install it otherwise: a missing tool must not pass as a skipped test."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{' / '.join(names)} not on PATH: run `make tools` (deploy/install-tools.sh installs "
                "the distribution's prometheus and prometheus-alertmanager packages)")


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def get_json(url: str, timeout: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # Prometheus says why in the body
        raise AssertionError(f"GET {url}: {error.code} {error.read().decode(errors='replace')}") from None


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something truthy (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Server:
    """A running Prometheus or Alertmanager."""

    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return get_json(f"{self.url}{path}{query}")


@contextlib.contextmanager
def _serving(argv: list[str], url: str, ready_path: str, log_path: Path) -> Iterator[Server]:
    proc = spawn(argv, log_path=log_path)
    server = Server(url, log_path)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited with {proc.returncode}:\n{server.log()[-3000:]}")
            with urllib.request.urlopen(f"{url}{ready_path}", timeout=1) as response:
                return response.status == 200

        wait_for(f"{argv[0]} at {url}", ready, 30, server.log)
        yield server
    finally:
        terminate(proc)


@contextlib.contextmanager
def prometheus(workdir: Path, worker: str, alertmanager: str, interval: str = "1s") -> Iterator[Server]:
    """deploy/prometheus/prometheus.yml and rules.yml, scraping `worker` (host:port) and sending
    alerts to `alertmanager`, scraping and evaluating every `interval`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    for job in config["scrape_configs"]:
        job["scrape_interval"] = interval
        job["static_configs"] = [{"targets": [worker]}]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_DIR / rule_file, workdir / rule_file)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    [port] = free_ports()
    url = f"http://127.0.0.1:{port}"
    argv = [tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with _serving(argv, url, "/-/ready", workdir / "prometheus.log") as server:
        yield server


@contextlib.contextmanager
def alertmanager(workdir: Path, webhook: str, group_wait: str = "1s") -> Iterator[Server]:
    """deploy/alertmanager/alertmanager.yml with every receiver's webhook at `webhook`/<receiver>
    and the routes' waits shortened to `group_wait`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook}/{receiver['name']}"

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = group_wait
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    [port] = free_ports()
    url = f"http://127.0.0.1:{port}"
    argv = [tool("alertmanager", "prometheus-alertmanager"), f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # one instance: no gossip port
            "--log.level=warn"]
    with _serving(argv, url, "/-/ready", workdir / "alertmanager.log") as server:
        yield server


@dataclass
class Webhook:
    """What Alertmanager posted: (receiver, payload) in arrival order."""

    url: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def alerts(self, receiver: str) -> list[dict[str, Any]]:
        return [alert for name, payload in list(self.received) if name == receiver for alert in payload["alerts"]]


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    """An HTTP server on a free loopback port recording every POST, keyed by its path."""
    [port] = free_ports()
    hook = Webhook(f"http://127.0.0.1:{port}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.received.append((self.path.strip("/"), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
