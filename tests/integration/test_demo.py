"""`DEMO_SECONDS=30 make demo`: prints alerts, exits 0, leaves nothing running."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _pids(pattern: str) -> set[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_make_demo_prints_alerts_and_stops_everything():
    patterns = ("kafka.Kafka", "monitor worker", "monitor simulate")
    before = {p: _pids(p) for p in patterns}
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # its own broker
    env["DEMO_SECONDS"] = "30"
    result = subprocess.run(["make", "--no-print-directory", "demo"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    alert_lines = [line for line in result.stdout.splitlines()
                   if re.match(r"^\d\d:\d\d:\d\d\.\d{3}\s+(OPEN|ESCALATED|DEESCALATED|RESOLVED)\s", line)]
    assert any(" OPEN " in line for line in alert_lines), result.stdout[-3000:]
    summary = result.stdout[result.stdout.index("events in:"):]
    assert re.search(r"events in: [1-9][\d,]*", summary), summary
    assert re.search(r"alerts out: [1-9]", summary), summary
    assert re.search(r"books breached: [1-9]\d* of 5", summary), summary
    for pattern in patterns:
        assert _pids(pattern) <= before[pattern], f"{pattern} left running"
