"""A worker killed with SIGKILL comes back with its books and its open alerts, from Kafka."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from tests.conftest import consume, produce, running_worker
from tests.integration.test_worker import BOOK, price, setup_messages, ts

pytestmark = pytest.mark.integration


def _wait_for_nav(worker, nav: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.metrics().get(("monitor_book_nav", (("portfolio_id", BOOK),))) == pytest.approx(nav):
            return
        time.sleep(0.2)
    pytest.fail(f"NAV never reached {nav}:\n{worker.log()[-3000:]}")


@pytest.mark.parametrize("instance_id", [None, "worker-1"], ids=["dynamic", "static-membership"])
def test_killed_worker_restarts_with_its_books_and_open_alerts(settings, tmp_path, instance_id):
    settings = dataclasses.replace(settings, instance_id=instance_id)
    with running_worker(settings, tmp_path / "first.log") as first:
        produce(settings, setup_messages())
        _wait_for_nav(first, 1000.0)
        produce(settings, [("prices", "A", price("A", 12.5))])
        [opened] = consume(settings, "drift-alerts", lambda r: len(r) >= 1)
        assert opened["state"] == "OPEN"
        # A fill below market: 1 A at 10 -> cash -10, MV +12.5: NAV 1150 -> 1152.5, still a breach.
        produce(settings, [("fills", BOOK, {"fill_id": "F-restart-1", "portfolio_id": BOOK, "instrument_id": "A",
                                            "side": "BUY", "quantity": 1, "price": 10.0, "ts": ts()})])
        _wait_for_nav(first, 1152.5)
        time.sleep(4.0)  # past Faust's commit interval: the fill's offset is committed
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)

    with running_worker(settings, tmp_path / "second.log") as second:
        # The group gives the dead worker's partitions back after its session (10 s) expires.
        _wait_for_nav(second, 1152.5, timeout=60)  # the book, fill included, came back from the changelog
        assert "books restored" in second.log() and "books=1" in second.log()
        time.sleep(1.0)
        again = consume(settings, "drift-alerts", lambda r: len(r) >= 1)
        assert [a["state"] for a in again] == ["OPEN"], "the open alert was re-opened after the restart"
        # Re-delivered or not, the fill counts once; and the alert that was open resolves, same id.
        produce(settings, [("prices", "A", price("A", 10.0))])
        alerts = consume(settings, "drift-alerts", lambda r: len(r) >= 2)
        assert [a["state"] for a in alerts] == ["OPEN", "RESOLVED"]
        assert alerts[1]["alert_id"] == opened["alert_id"]
        assert alerts[1]["inputs"]["last_fill_id"] == "F-restart-1"
        # 61 A at 10 + 40 B at 10 - 10 cash = 1000: the fill applied exactly once.
        _wait_for_nav(second, 1000.0)
