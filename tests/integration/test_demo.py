"""`DEMO_SECONDS=30 make demo`: shows the desk view of the demo's books, prints alerts (DEMO_ALERTS=1),
exits 0, leaves nothing running."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _pids(pattern: str) -> set[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_make_demo_prints_alerts_and_stops_everything():
    patterns = ("monitor worker", "monitor simulate")
    before = {p: _pids(p) for p in patterns}
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # its own broker
    env["DEMO_SECONDS"] = "30"
    env["DEMO_ALERTS"] = "1"  # the alert lines too, above the desk view
    result = subprocess.run(["make", "--no-print-directory", "demo"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    alert_lines = [line for line in result.stdout.splitlines()
                   if re.match(r"^\d\d:\d\d:\d\d\.\d{3}\s+(OPEN|ESCALATED|DEESCALATED|RESOLVED)\s", line)]
    assert any(" OPEN " in line for line in alert_lines), result.stdout[-3000:]
    # The desk view (`monitor top` on the worker's API), as last shown: every book, its NAV and worst limit.
    view = result.stdout[result.stdout.rindex("drift-monitor (monitor top)"):result.stdout.index("events in:")]
    rows = {m.group(1): line for line in view.splitlines() if (m := re.search(r"\b(BOOK-\d{3})\b", line))}
    assert sorted(rows) == [f"BOOK-{i:03d}" for i in range(1, 6)], view
    assert all(re.search(r"[A-Z]{3}\s+[│|]\s+[\d,]+\s+[│|]\s+\d+\.\d\d\s", row) for row in rows.values()), view
    assert "5 book(s) from 1 worker(s)" in view, view
    summary = result.stdout[result.stdout.index("events in:"):]
    assert re.search(r"events in: [1-9][\d,]*", summary), summary
    assert re.search(r"alerts out: [1-9]", summary), summary
    assert re.search(r"books breached: [1-9]\d* of 5", summary), summary
    # Its own broker and worker are gone (other brokers on this machine are not its business).
    ports = re.search(r"broker 127\.0\.0\.1:(\d+); worker /metrics on http://127\.0\.0\.1:(\d+)/", result.stdout)
    assert ports, result.stdout[:2000]
    broker_port, metrics_port = map(int, ports.groups())
    assert not _listening(broker_port), "the demo's broker is still running"
    assert not _listening(metrics_port), "the demo's worker is still running"
    for pattern in patterns:
        assert _pids(pattern) <= before[pattern], f"{pattern} left running"
