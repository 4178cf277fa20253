"""The Grafana dashboard "Drift monitor", as code (Grafana Foundation SDK).

`make dashboard` writes it to dashboards/drift-monitor.json, which Grafana provisions
(docker-compose.yml). Edit this file, never the JSON: tests/unit/test_compose.py fails when
the committed JSON is not this generator's output, and tests/integration/test_prometheus_live.py
runs every panel's query against a real Prometheus scraping a live worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row, TimePicker
from grafana_foundation_sdk.builders.heatmap import CellValues, HeatmapColorOptions, YAxisConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import DataSourceRef, GraphDrawStyle
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, VariableRefresh, VariableSort
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "drift-monitor.json"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioning/datasources/prometheus.yml
BOOK = 'portfolio_id=~"$book"'


def query(expr: str, legend: str = "__auto", *, table_row: bool = False) -> Dataquery:
    """A PromQL target; `table_row`: one instant value per series, for tables."""
    target = Dataquery().expr(expr).legend_format(legend).datasource(PROMETHEUS)
    return target.instant().format(PromQueryFormat.TABLE) if table_row else target.range()


def headline(title: str, unit: str, *targets: Dataquery) -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(PROMETHEUS).height(4).span(4)
    panel = panel.reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def graph(title: str, unit: str, *targets: Dataquery, width: int = 12, height: int = 8,
          description: str = "") -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(PROMETHEUS)
             .height(height).span(width).draw_style(GraphDrawStyle.LINE).line_width(1).fill_opacity(10))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def desk() -> list:
    """What a desk reads: its books' NAV and band usage, open alerts, signals, fills."""
    return [
        headline("Open alerts", "short", query(f'sum(monitor_alerts_open{{{BOOK}}})')),
        headline("Worst band usage", "percentunit", query(f'max(monitor_book_band_usage{{{BOOK}}})')),
        headline("Fills/s", "ops", query('sum(rate(monitor_events_consumed_total{topic="fills"}[$__rate_interval]))')),
        headline("Events consumed/s", "ops", query("sum(rate(monitor_events_consumed_total[$__rate_interval]))")),
        headline("DLQ messages/s", "ops", query("sum(rate(monitor_dlq_messages_total[$__rate_interval]))")),
        headline("Workers up", "short", query('sum(up{job="drift-monitor"})')),
        graph("NAV by book", "short", query(f"max by (portfolio_id) (monitor_book_nav{{{BOOK}}})", "{{portfolio_id}}"),
              description="Book NAV in its base currency (no line while a price or FX rate is missing)."),
        heatmap.Panel().title("Band usage by book")
        .description("Worst limit's |drift| / band half-width, per book over time: 100% is the band's edge, "
                     "200% CRITICAL under the default policy.")
        .datasource(PROMETHEUS).height(8).span(12).calculate(False)
        .color(HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("RdYlGn").reverse(True)
               .scale(HeatmapColorScale.LINEAR).min(0).max(2).steps(64))
        .cell_values(CellValues().unit("percentunit").decimals(0))
        .y_axis(YAxisConfig().unit("short"))
        .with_target(query(f"max by (portfolio_id) (monitor_book_band_usage{{{BOOK}}})", "{{portfolio_id}}")),
        table.Panel().title("Books").datasource(PROMETHEUS).height(9).span(16)
        .with_target(query(f"max by (portfolio_id) (monitor_book_nav{{{BOOK}}})", table_row=True).ref_id("NAV"))
        .with_target(query(f"max by (portfolio_id) (monitor_book_band_usage{{{BOOK}}})", table_row=True)
                     .ref_id("BAND_USAGE"))
        .with_target(query(f"max by (portfolio_id) (monitor_book_largest_drift{{{BOOK}}})", table_row=True)
                     .ref_id("LARGEST_DRIFT"))
        .with_target(query(f"max by (portfolio_id) (monitor_alerts_open{{{BOOK}}})", table_row=True)
                     .ref_id("OPEN_ALERTS")),
        bargauge.Panel().title("Largest band usage by book").datasource(PROMETHEUS).height(9).span(8)
        .unit("percentunit").min(0).max(2)
        .with_target(query(f"sort_desc(max by (portfolio_id) (monitor_book_band_usage{{{BOOK}}}))", "{{portfolio_id}}")),
        graph("Open alerts by book", "short", query(f"max by (portfolio_id) (monitor_alerts_open{{{BOOK}}})",
                                                  "{{portfolio_id}}")),
        graph("Rebalance signals emitted/s, by state", "ops",
              query("sum by (state) (rate(monitor_signals_emitted_total[$__rate_interval]))", "{{state}}")),
        graph("Alerts emitted/s by severity and state", "ops",
              query("sum by (severity, state) (rate(monitor_alerts_emitted_total[$__rate_interval]))",
                    "{{severity}} {{state}}")),
        graph("Fills/s", "ops", query('sum(rate(monitor_events_consumed_total{topic="fills"}[$__rate_interval]))',
                                      "fills")),
    ]


def pipeline() -> list:
    """The stream's health: input rates, refusals, lag, the event-time gate."""
    return [
        graph("Events consumed/s by topic", "ops",
              query("sum by (topic) (rate(monitor_events_consumed_total[$__rate_interval]))", "{{topic}}")),
        graph("DLQ messages/s by reason", "ops",
              query("sum by (topic, reason) (rate(monitor_dlq_messages_total[$__rate_interval]))",
                    "{{topic}} {{reason}}")),
        graph("End-to-end lag p50 / p99", "s",
              query("histogram_quantile(0.5, sum by (topic, le) (rate(monitor_event_lag_seconds_bucket"
                    "[$__rate_interval])))", "p50 {{topic}}"),
              query("histogram_quantile(0.99, sum by (topic, le) (rate(monitor_event_lag_seconds_bucket"
                    "[$__rate_interval])))", "p99 {{topic}}")),
        graph("Evaluation time p99", "s",
              query("histogram_quantile(0.99, sum by (le) (rate(monitor_evaluation_seconds_bucket"
                    "[$__rate_interval])))", "p99")),
        graph("Worker CPU and garbage collection", "percentunit",
              query('sum by (instance) (rate(process_cpu_seconds_total{job="drift-monitor"}[$__rate_interval]))',
                    "CPU {{instance}}"),
              query("sum by (instance, generation) (rate(monitor_gc_pause_seconds_total[$__rate_interval]))",
                    "GC gen {{generation}} {{instance}}"),
              description="A worker's share of a core, and the share it spends stopped in Python's garbage "
                          "collector. Near 100% CPU the worker falls behind: inputs wait and lag grows."),
        graph("Events waiting in the gate", "short", query("sum(monitor_gate_held_events)", "held events"),
              query("max(monitor_gate_oldest_held_age_seconds)", "oldest held age (s)"),
              description="Growing age while events stay held is a stall."),
        graph("Waiting for reference data", "short", query("sum(monitor_held_fills)", "held fills"),
              query("sum(rate(monitor_unreferenced_prices_total[$__rate_interval]))", "unreferenced prices/s")),
        graph("Inputs applied late", "short",
              query("sum by (topic) (increase(monitor_late_inputs_total[5m]))", "late {{topic}} (5m)"),
              query("sum(increase(monitor_unconfirmed_partition_ends_total[5m]))", "ends not confirmed (5m)"),
              description="Applied after an input stamped in a later window: it reached the broker late (after a "
                          "producer's outage) or was re-sent. Live alerts may differ from monitor replay's there. "
                          "Ends not confirmed: the broker did not say in time where the partitions end (an outage)."),
    ]


def state() -> list:
    """The books' persisted state: recovery, re-deliveries, failures, reconciliation."""
    return [
        graph("Recovery", "short",
              query("sum(increase(monitor_table_recoveries_total[5m]))", "table recoveries (5m)"),
              query("min(monitor_inputs_caught_up)", "inputs caught up"),
              query('changes(process_start_time_seconds{job="drift-monitor"}[15m])', "restarts {{instance}} (15m)"),
              description="A worker rebuilds its books from the tables at start, rebalance and failover; "
                          "inputs caught up is 1 once it has read both streams to their end."),
        graph("Re-deliveries and failures", "short",
              query("sum by (topic) (rate(monitor_duplicate_inputs_total[$__rate_interval]))", "re-delivered {{topic}}/s"),
              query("sum by (loop) (increase(monitor_loop_failures_total[5m]))", "loop failed: {{loop}}"),
              query("sum(increase(monitor_book_partition_reseeks_total[5m]))", "book partitions sought back (5m)"),
              query("sum(increase(monitor_recovery_wakeups_total[5m]))", "table recoveries woken (5m)"),
              query("sum(increase(monitor_book_gap_records_total[5m]))", "book messages read past a gap (5m)"),
              query("sum by (library) (rate(monitor_client_log_errors_total[$__rate_interval]))",
                    "{{library}} errors/s"),
              description="Sought back: a book partition the broker held more of while nothing came for 5 s "
                          "(a message the framework skipped at a rebalance), read again from the worker's own offset. "
                          "Recoveries woken: Faust's table recovery read everything and missed its own end signal. "
                          "Read past a gap: messages the framework's offsets jumped over, read by the worker itself."),
        graph("Reconciliation breaks", "short",
              query("sum(increase(monitor_reconciliation_breaks_total[1h]))", "breaks (1h)"), width=24,
              description="Snapshots from the books of record that disagreed with the fills applied; "
                          "rule DriftMonitorReconciliationBreak opens a ticket on any."),
    ]


def build() -> Dashboard:
    board = (
        Dashboard("Drift monitor").uid("drift-monitor")
        .description("Real-time exposure drift monitor: books, alerts and signals; ingestion, dead letters, "
                     "latency; state and recovery.")
        .tags(["drift-monitor", "kafka", "risk"]).timezone("utc").editable()
        .tooltip(DashboardCursorSync.CROSSHAIR).refresh("5s").time("now-1h", "now")
        .timepicker(TimePicker().refresh_intervals(["5s", "10s", "30s", "1m", "5m"]))
        .with_variable(QueryVariable("book").label("Book").datasource(PROMETHEUS)
                       .query("label_values(monitor_book_nav, portfolio_id)")
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
                       .multi(True).include_all(True).all_value(".*"))
    )
    panel_id = 0
    for title, panels in (("Desk", desk()), ("Pipeline", pipeline()), ("Book state", state())):
        panel_id += 1
        board = board.with_row(Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return board


def render() -> str:
    """The dashboard's JSON, as committed (stable: sorted keys)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    sys.stderr.write(f"wrote {OUTPUT}\n")
