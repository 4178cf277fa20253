"""Real Prometheus and Alertmanager on a live worker: the shipped deploy/ files end to end.

One scenario on the real broker: a book valued, two bad messages, a fill and its re-delivery,
then a price move far outside the band. Prometheus (deploy/prometheus, 1 s intervals) scrapes
the worker; the test reads, through Prometheus's HTTP API, the scenario's numbers, the shipped
rules' health, and every dashboard panel's query; Prometheus fires DriftBookCritical and
DriftBookBreach to Alertmanager (deploy/alertmanager), which delivers CRITICAL to the book's desk
pager, a webhook run by the test, and holds BREACH back (inhibited).
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest

from monitor.ops.metrics import scrape
from tests.conftest import produce
from tests.integration.test_worker import instrument, price, ts
from tests.monitoring import alertmanager, prometheus, wait_for, webhook_receiver
from tests.unit.test_compose import _panels, dashboard_generator
from tests.unit.test_rules import ALERT_RULES

pytestmark = pytest.mark.integration

BOOK = "BOOK-ELS-PT"  # an equity long/short book: routed to the equity desk
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape: 4 x the scrape interval
# The dashboard query that has no series in a healthy run, and why (the test checks it is empty,
# so this cannot silently go stale): monitor_loop_failures_total is labelled by loop and counted
# only as a loop fails, just before the worker exits (the restart shows in "Recovery").
NO_DATA_WHEN_HEALTHY = {"sum by (loop) (increase(monitor_loop_failures_total[5m]))"}

POLICY = {
    "portfolio_id": BOOK, "version": 1, "base_currency": "USD",
    "evaluation": {"persistence_seconds": 0},
    "limits": [{"id": "w-A", "metric": "weight", "instrument": "A", "target": 0.60,
                "band": {"type": "absolute", "width": 0.05}}],
    "rebalance": {"trade_to": "target"},
}
FILL = {"fill_id": "F-PT-1", "portfolio_id": BOOK, "instrument_id": "A", "side": "BUY", "quantity": 1, "price": 10.0}


class Prom:
    """Prometheus's HTTP query API."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def _data(self, path: str, **params: str) -> Any:
        body = self.server.get(path, **params)
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """{labels but name, job and instance: value} of an instant query."""
        data = self._data("/api/v1/query", query=expr)
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance"))):
                float(r["value"][1]) for r in data["result"]}

    def one(self, expr: str) -> float | None:
        values = list(self.instant(expr).values())
        assert len(values) <= 1, (expr, values)
        return values[0] if values else None

    def range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        return self._data("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1s")["result"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._data("/api/v1/rules")["groups"] for rule in group["rules"]]


def grafana_expr(expr: str) -> str:
    """A panel's query as Grafana sends it, for this test's book and scrape interval."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$book", BOOK)


def test_prometheus_scrapes_the_worker_and_alertmanager_delivers(worker, settings, tmp_path):
    started = time.time()
    with webhook_receiver() as hook, \
            alertmanager(tmp_path / "alertmanager", hook.url) as am, \
            prometheus(tmp_path / "prometheus", f"127.0.0.1:{settings.metrics_port}",
                       am.url.removeprefix("http://")) as server:
        prom = Prom(server)
        book = f'portfolio_id="{BOOK}"'

        # The book at 60/40 (A 60 x 10, B 40 x 10): NAV 1,000, in Prometheus.
        produce(settings, [("instruments", "A", instrument("A", "Technology")),
                           ("instruments", "B", instrument("B", "Energy")),
                           ("policies", BOOK, POLICY),
                           ("positions", BOOK, {"portfolio_id": BOOK, "as_of": ts(-60), "cash": {"USD": 0},
                                                "positions": [{"instrument_id": "A", "quantity": 60},
                                                              {"instrument_id": "B", "quantity": 40}]}),
                           ("prices", "A", price("A", 10.0)), ("prices", "B", price("B", 10.0))])
        wait_for("NAV 1000 in Prometheus", lambda: prom.one(f"monitor_book_nav{{{book}}}") == 1000.0, 30,
                 worker.log)

        # Two refusals with different reasons; a fill (BUY 1 A at 10: NAV unchanged) and its re-delivery;
        # then A to 20: weight 1,220 / 1,610 = 75.8 %, drift +15.8 % on a 5 % band: usage 3.155, CRITICAL.
        fill = {**FILL, "ts": ts()}
        produce(settings, [("prices", "A", b'{"instrument_id": "A", "price": 1'),
                           ("fills", "NOBODY", orjson.dumps({**fill, "fill_id": "F-X", "portfolio_id": "NOBODY"})),
                           ("fills", BOOK, fill), ("fills", BOOK, fill)])
        wait_for("the fill applied", lambda: prom.one('monitor_duplicate_inputs_total{topic="fills"}') == 1, 30,
                 worker.log)
        produce(settings, [("prices", "A", price("A", 20.0))])

        # Alertmanager delivers the CRITICAL book alert to the equity desk's pager ...
        [critical] = wait_for("DriftBookCritical at the equity desk's pager",
                              lambda: hook.alerts("equity-desk-page"), 40, server.log)
        assert critical["labels"]["alertname"] == "DriftBookCritical"
        assert critical["labels"]["portfolio_id"] == BOOK and critical["labels"]["severity"] == "CRITICAL"
        assert critical["status"] == "firing"
        assert "315.5%" in critical["annotations"]["description"]
        # ... and holds back the book's BREACH, which Prometheus fired too: inhibited by the CRITICAL.
        breach = wait_for("DriftBookBreach at Alertmanager", lambda: [
            a for a in am.get("/api/v2/alerts") if a["labels"]["alertname"] == "DriftBookBreach"], 20)
        assert [a["labels"]["portfolio_id"] for a in breach] == [BOOK]
        assert breach[0]["status"]["state"] == "suppressed" and breach[0]["status"]["inhibitedBy"], breach
        assert not [a for name, p in hook.received for a in p["alerts"] if a["labels"]["alertname"] == "DriftBookBreach"]

        # The series in Prometheus equal the worker's /metrics and the scenario's numbers.
        nav = 61 * 20 + 40 * 10 - 10
        wait_for(f"NAV {nav}", lambda: prom.one(f"monitor_book_nav{{{book}}}") == nav, 10)
        assert prom.one(f"monitor_book_band_usage{{{book}}}") == pytest.approx((1220 / 1610 - 0.60) / 0.05)
        assert prom.one(f"monitor_book_largest_drift{{{book}}}") == pytest.approx(1220 / 1610 - 0.60)
        assert prom.one(f"monitor_alerts_open{{{book}}}") == 1
        assert prom.instant("monitor_dlq_messages_total") == {
            (("reason", "invalid_json"), ("topic", "prices")): 1.0,
            (("reason", "unknown_book"), ("topic", "fills")): 1.0}
        assert prom.one('monitor_alerts_emitted_total{severity="CRITICAL", state="OPEN"}') == 1
        wait_for("signals emitted", lambda: prom.instant("monitor_signals_emitted_total"), 10)
        metrics = scrape(worker.metrics_url)
        for name in ("monitor_book_nav", "monitor_book_band_usage", "monitor_book_largest_drift", "monitor_alerts_open"):
            assert prom.one(f"{name}{{{book}}}") == pytest.approx(metrics[(name, (("portfolio_id", BOOK),))])
        for topic in ("prices", "fills", "policies", "positions", "instruments"):
            assert prom.one(f'monitor_events_consumed_total{{topic="{topic}"}}') == \
                metrics[("monitor_events_consumed_total", (("topic", topic),))]
        # Per book: NAV, band usage, largest drift, open alerts (README, "Metrics").
        assert prom.one(f'count({{job="drift-monitor", {book}}})') == 4

        # Every shipped rule is loaded and evaluates; the book's two fire.
        rules = {rule["name"]: rule for rule in prom.rules()}
        assert set(rules) == set(ALERT_RULES)
        assert {name: rule["health"] for name, rule in rules.items()} == {name: "ok" for name in ALERT_RULES}, rules
        assert rules["DriftBookCritical"]["state"] == rules["DriftBookBreach"]["state"] == "firing"
        assert rules["DriftMonitorWorkerDown"]["state"] == "inactive"

        # Every dashboard query returns data from this Prometheus (those in NO_DATA_WHEN_HEALTHY none).
        board = orjson.loads(dashboard_generator().render())
        exprs = [grafana_expr(t["expr"]) for p in _panels(board["panels"]) for t in p.get("targets", [])]
        assert NO_DATA_WHEN_HEALTHY <= set(exprs)

        def empty_queries() -> list[str]:
            empty = []
            for expr in exprs:
                result = prom.range(expr, started, time.time())
                values = [float(v) for series in result for _, v in series["values"]]
                has_data = any(not math.isnan(v) for v in values)
                if expr in NO_DATA_WHEN_HEALTHY:
                    assert not has_data, f"{expr} has data now: take it off NO_DATA_WHEN_HEALTHY"
                elif not has_data:
                    empty.append(expr)
            return empty

        # A rate needs two scrapes of its counter: a counter born in the last seconds (the first
        # signal, the CRITICAL escalation) has none yet. Each query gets a few scrapes to show data.
        still_empty: list[str] = []

        def all_have_data() -> bool:
            still_empty[:] = empty_queries()
            return not still_empty

        wait_for("every dashboard query to return data", all_have_data, 15, lambda: f"without data: {still_empty}")
        books = server.get("/api/v1/label/portfolio_id/values", **{"match[]": "monitor_book_nav"})["data"]
        assert BOOK in books  # the $book variable's label_values query

