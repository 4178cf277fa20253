"""The worker's HTTP API on live workers and a real broker: /health, /ready and the query API, every
answer held to its JSON Schema (the one schemas/api/openapi.yaml names for the path and status); and
two workers of one group, each answering for its own books and redirecting to the other's owner.

Books start at 60/40 (A 600 @ 100, B 800 @ 50, NAV 100,000) with weight limits 60% +/- 5 and 40% +/- 6
points and approval above 0 notional; a rally of A to 140 breaches both (84,000 / 124,000 = 67.7%),
which opens two alerts and one PENDING_APPROVAL signal.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.ops.processes import free_ports
from monitor.stream.api import book_partition
from tests.api_schemas import api_validate, schema_for
from tests.conftest import WorkerProcess, consume, produce, running_worker
from tests.integration.test_signals_live import instrument, ts

pytestmark = pytest.mark.integration


def book(pid: str) -> list[tuple[str, str, dict]]:
    policy = {"portfolio_id": pid, "version": 1, "base_currency": "USD",
              "limits": [{"metric": "weight", "instrument": "A", "target": 0.6, "band": {"width": 0.05}},
                         {"metric": "weight", "instrument": "B", "target": 0.4, "band": {"width": 0.06}}],
              "rebalance": {"trade_to": "target", "approval": {"notional_above": 0, "ttl_seconds": 3600}}}
    snapshot = {"portfolio_id": pid, "as_of": ts(0), "cash": {"USD": 0},
                "positions": [{"instrument_id": "A", "quantity": 600}, {"instrument_id": "B", "quantity": 800}]}
    return [("policies", pid, policy), ("positions", pid, snapshot)]


def market(*pids: str) -> list[tuple[str, str | None, Any]]:
    return [("instruments", "A", instrument("A")), ("instruments", "B", instrument("B")),
            *(m for pid in pids for m in book(pid)),
            ("prices", "A", {"instrument_id": "A", "price": 100.0, "ts": ts(0)}),
            ("prices", "B", {"instrument_id": "B", "price": 50.0, "ts": ts(0)})]


RALLY = ("prices", "A", {"instrument_id": "A", "price": 140.0, "ts": ts(1)})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def get(url: str, follow: bool = True) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of a GET; redirects followed unless `follow` is False."""
    opener = urllib.request.build_opener(*([] if follow else [_NoRedirect()]))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), orjson.loads(e.read())


def answer(base: str, path: str, template: str | None = None, follow: bool = True) -> tuple[int, dict, Any]:
    """A GET, its body checked against the schema the OpenAPI description gives for its path and status."""
    status, headers, body = get(base + path, follow)
    api_validate(schema_for(template or path.split("?")[0], status), body)
    return status, headers, body


def wait_for(what: str, check: Callable[[], Any], worker: WorkerProcess, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, LookupError):
            last = check()
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"{what} not seen in {timeout:.0f} s (last: {last}):\n{worker.log()[-3000:]}")


@contextlib.contextmanager
def api_worker(settings, tmp_path: Path, name: str, monkeypatch) -> Iterator[tuple[WorkerProcess, str]]:
    """A worker whose API listens on a free port of its own (given to it as MONITOR_API_PORT)."""
    port = free_ports()[0]
    monkeypatch.setenv("MONITOR_API_PORT", str(port))  # read by the child; the fixture's env inherits it
    with running_worker(settings, tmp_path / f"{name}.log") as handle:
        yield handle, f"http://127.0.0.1:{port}"


def test_health_ready_and_the_query_api_of_a_live_worker(settings, tmp_path, monkeypatch):
    with api_worker(settings, tmp_path, "worker", monkeypatch) as (worker, api):
        # The API listens before the group is joined and the tables recovered (seconds): not ready yet.
        status, _, ready = wait_for("/ready", lambda: answer(api, "/ready"), worker)
        assert status == 503 and not ready["ok"] and "book tables not recovered yet" in ready["reasons"], ready
        status, _, body = answer(api, "/health")  # alive meanwhile
        assert status == 200 and body["ok"] is True
        wait_for("/ready 200 on empty topics", lambda: answer(api, "/ready")[0] == 200, worker)

        produce(settings, market("BOOK-API"))
        wait_for("the book valued at 100,000", lambda: answer(api, "/api/v1/books")[2]["books"][0]["nav"] == 100_000,
                 worker)
        assert answer(api, "/ready")[:1] == (200,)
        produce(settings, [RALLY])
        alerts = consume(settings, "drift-alerts", lambda r: len(r) >= 2)
        [signal] = consume(settings, "rebalance-signals", lambda r: len(r) >= 1)

        def listed() -> Any:
            _, _, body = answer(api, "/api/v1/books")
            [summary] = body["books"]
            return body if summary["open_alerts"] == 2 and summary["pending_signals"] == 1 else None

        books = wait_for("2 open alerts and a pending signal", listed, worker)
        assert books["worker"]["url"] == api and books["worker"]["partitions"] == [0, 1] and books["worker"]["peers"] == []
        [summary] = books["books"]
        assert summary["nav"] == pytest.approx(124_000)
        assert summary["worst_band_usage"] == pytest.approx((84_000 / 124_000 - 0.6) / 0.05)
        assert summary["worst_limit"]["limit_id"] == "weight:A" and summary["worst_limit"]["severity"] == "BREACH"

        status, _, detail = answer(api, "/api/v1/books/BOOK-API", "/api/v1/books/{portfolio_id}")
        assert status == 200
        limits = {lim["limit_id"]: lim for lim in detail["limits"]}
        assert {lim["alert_id"] for lim in limits.values()} == {a["alert_id"] for a in alerts}
        assert limits["weight:B"]["actual"] == pytest.approx(40_000 / 124_000)
        holdings = {h["instrument_id"]: h for h in detail["holdings"]}
        assert holdings["A"]["mv"] == pytest.approx(84_000) and holdings["A"]["weight"] == pytest.approx(84 / 124)
        assert detail["exposures"]["sector"]["Technology"]["gross"] == pytest.approx(1.0)

        _, _, open_alerts = answer(api, "/api/v1/alerts?state=open")
        assert sorted(a["alert_id"] for a in open_alerts["alerts"]) == sorted(a["alert_id"] for a in alerts)
        _, _, pending = answer(api, "/api/v1/signals?state=PENDING_APPROVAL")
        assert [s["signal_id"] for s in pending["signals"]] == [signal["signal_id"]]
        assert answer(api, "/api/v1/signals?state=APPROVED")[2]["signals"] == []

        status, _, missing = answer(api, "/api/v1/books/NO-SUCH-BOOK", "/api/v1/books/{portfolio_id}")
        assert status == 404 and "NO-SUCH-BOOK" in missing["error"] and missing["owner"] == api
        status, _, bad = answer(api, "/api/v1/alerts?state=resolved")
        assert status == 400 and "state" in bad["error"]
        status, _, bad = answer(api, "/api/v1/signals?state=DONE")
        assert status == 400 and "PENDING_APPROVAL" in bad["error"]
        status, _, body = get(api + "/api/v1/nothing-here")
        assert status == 404 and body["error"]
        assert answer(api, "/health")[0] == 200

        shown = CliRunner().invoke(main, ["top", "--once", "--url", api])
        assert shown.exit_code == 0, shown.output
        [row] = [line for line in shown.output.splitlines() if "BOOK-API" in line]
        assert "124,000" in row and f"{summary['worst_band_usage']:.2f}" in row and "weight:A" in row
        assert "1 book(s) from 1 worker(s)" in shown.output


def test_each_of_two_workers_answers_for_its_books_and_redirects_to_the_owner_of_the_others(
        settings, tmp_path, monkeypatch):
    pids = {book_partition(pid, settings.partitions): pid for pid in ("BOOK-001", "BOOK-002")}
    assert sorted(pids) == [0, 1], "the two books must fall in different partitions"
    second = replace(settings, metrics_port=free_ports()[0], data_dir=str(tmp_path / "w2-data"))
    with api_worker(settings, tmp_path, "w1", monkeypatch) as (w1, api1), \
            api_worker(second, tmp_path, "w2", monkeypatch) as (w2, api2):
        def split() -> Any:
            parts = {api: answer(api, "/api/v1/books")[2]["worker"] for api in (api1, api2)}
            return parts if all(len(p["partitions"]) == 1 for p in parts.values()) else None

        workers = wait_for("one book partition on each worker", split, w2, timeout=90)
        assert workers[api1]["peers"] == [api2] and workers[api2]["peers"] == [api1]
        owner = {pids[w["partitions"][0]]: api for api, w in workers.items()}
        produce(settings, market(*pids.values()))
        for pid, api in owner.items():
            wait_for(f"{pid} valued on its owner", lambda: [b["nav"] for b in answer(api, "/api/v1/books")[2]["books"]]
                     == [100_000], w1)

        for pid, api in owner.items():
            other = api2 if api == api1 else api1
            path = f"/api/v1/books/{pid}"
            status, headers, moved = answer(other, path, "/api/v1/books/{portfolio_id}", follow=False)
            assert status == 307 and moved["owner"] == api and headers["Location"] == api + path
            status, _, found = answer(other, path, "/api/v1/books/{portfolio_id}")  # the redirect followed
            assert status == 200 and found["portfolio_id"] == pid and found["worker"]["url"] == api
            assert found["nav"] == pytest.approx(100_000)

        # `monitor top` asked one worker shows every book: the worker names its peer.
        shown = CliRunner().invoke(main, ["top", "--once", "--url", api1])
        assert shown.exit_code == 0 and "2 book(s) from 2 worker(s)" in shown.output, shown.output
        for pid, api in owner.items():
            [row] = [line for line in shown.output.splitlines() if pid in line]
            assert "100,000" in row and api in row
