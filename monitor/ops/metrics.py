"""The worker's Prometheus series: what came in, what was refused, what went out, how late.

Names and labels are part of the product (Grafana dashboards and alert rules in
deploy/ use them); change them only with those.
"""

from __future__ import annotations

import gc
import time
import urllib.request
from typing import Sequence

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from monitor.engine import AlertEvent, BookStatus
from monitor.ops.logging import LIBRARIES

EVENTS_CONSUMED = Counter("monitor_events_consumed", "Input messages consumed, by logical topic", ["topic"])
DLQ_MESSAGES = Counter("monitor_dlq_messages", "Messages sent to the dead-letter topic, by source topic and reason",
                       ["topic", "reason"])
ALERTS_EMITTED = Counter("monitor_alerts_emitted", "Drift-alert lifecycle events emitted", ["severity", "state"])
SIGNALS_EMITTED = Counter("monitor_signals_emitted", "Rebalance-signal lifecycle events emitted", ["state"])
EVENT_LAG = Histogram(
    "monitor_event_lag_seconds", "Wall time at processing minus the event's own ts", ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVALUATION_SECONDS = Histogram(
    "monitor_evaluation_seconds",
    "Time to apply one event-time window's prices (or what one fetch held of it) and evaluate the books they touch",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
BOOK_NAV = Gauge("monitor_book_nav", "Book NAV in its base currency", ["portfolio_id"])
BOOK_LARGEST_DRIFT = Gauge("monitor_book_largest_drift", "Drift (actual - target) of the limit with the largest band usage",
                           ["portfolio_id"])
BOOK_BAND_USAGE = Gauge("monitor_book_band_usage", "Largest |drift| / band half-width of the book (1.0 = at the edge)",
                        ["portfolio_id"])
ALERTS_OPEN = Gauge("monitor_alerts_open", "Alerts currently open", ["portfolio_id"])
GATE_HELD = Gauge("monitor_gate_held_events",
                  "Prices and book events read but waiting for the other stream to reach their event time")
UNREFERENCED_PRICES = Counter("monitor_unreferenced_prices",
                              "Prices of instruments without reference data (kept, used once it arrives)")
LATE_INPUTS = Counter("monitor_late_inputs",
                      "Prices, fills and snapshots applied after an input stamped in a later window (arrived "
                      "late, or re-sent): judged in a later window than a replay of the log judges them", ["topic"])
UNCONFIRMED_ENDS = Counter("monitor_unconfirmed_partition_ends",
                           "Times the broker did not say in time where the input partitions end: the gate released "
                           "on the consumers' last fetch answers (late inputs possible)")
HELD_FILLS = Gauge("monitor_held_fills", "Fills held until their instrument's reference data arrives")
GATE_OLDEST_AGE = Gauge("monitor_gate_oldest_held_age_seconds",
                        "Wall time minus the event ts of the oldest event waiting in the gate (0 when empty); "
                        "growing while monitor_gate_held_events stays up is a stall")
INPUTS_CAUGHT_UP = Gauge("monitor_inputs_caught_up",
                         "1 once both streams have been read to their end (the gate holding only what waits for the broker to "
                         "confirm the ends); 0 again from each "
                         "rebalance until the books it brings are read to their end")
CLIENT_LOG_ERRORS = Counter("monitor_client_log_errors", "Warnings and errors logged by the Kafka client libraries "
                            "(logged at most once per 10 s per message; a broker outage shows here)", ["library"])
for _library in LIBRARIES:  # at 0 from the start, so a first warning is a rise rate() sees, not a new series
    CLIENT_LOG_ERRORS.labels(_library)
for _topic in ("prices", "fills", "positions"):  # the same for late inputs (`Worker._publish_late_inputs`)
    LATE_INPUTS.labels(_topic)
DUPLICATES = Counter("monitor_duplicate_inputs", "Book inputs read again and not applied (re-deliveries)", ["topic"])
BOOK_RESEEKS = Counter("monitor_book_partition_reseeks", "Book partitions sought back to the offset after the "
                       "last message read, because the broker held more and nothing was delivered for 5 s")
RECOVERY_WAKEUPS = Counter("monitor_recovery_wakeups", "Faust's changelog recovery read every changelog to its "
                           "end and ended, but missed the signal its own waiter needed: the worker woke it")
BOOK_GAP_RECORDS = Counter("monitor_book_gap_records", "Book messages the framework did not deliver (its offsets "
                           "jumped) that the worker read from the broker itself, before the message after them")
RECOVERIES = Counter("monitor_table_recoveries", "Times this worker rebuilt its books from the tables "
                     "(start, rebalance, failover)")
LOOP_FAILURES = Counter("monitor_loop_failures", "A worker loop failed and the process exited non-zero "
                        "(seen only until the exit; process_start_time_seconds shows the restart)", ["loop"])
GC_PAUSE_SECONDS = Counter("monitor_gc_pause_seconds", "Time the worker stood still in Python's cyclic garbage "
                           "collector, by generation (every loop waits meanwhile)", ["generation"])
RECONCILIATION_BREAKS = Counter("monitor_reconciliation_breaks",
                                "Position snapshots that differ from what the monitor held for their as_of "
                                "(RECONCILIATION_BREAK alerts opened)")


_GC_PAUSES = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _GC_PAUSES[info["generation"]].inc(time.perf_counter() - _gc_started[0])


def time_gc_pauses() -> None:
    """Count the collector's pauses in `GC_PAUSE_SECONDS`: with a large heap of held prices and
    books, a collection stops the worker for milliseconds, which no other series shows."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def alert_emitted(event: AlertEvent) -> None:
    """Count an alert event as it leaves: by severity and state, and a reconciliation break as it opens."""
    ALERTS_EMITTED.labels(event.severity, event.state).inc()
    if event.kind == "RECONCILIATION_BREAK" and event.state == "OPEN":
        RECONCILIATION_BREAKS.inc()


def publish_book(portfolio_id: str, status: BookStatus) -> None:
    """Set a book's gauges from its latest evaluation (NaN where a number is unavailable)."""
    nan = float("nan")
    BOOK_NAV.labels(portfolio_id).set(status.nav if status.nav is not None else nan)
    BOOK_LARGEST_DRIFT.labels(portfolio_id).set(status.largest_drift if status.largest_drift is not None else nan)
    BOOK_BAND_USAGE.labels(portfolio_id).set(status.band_usage if status.band_usage is not None else nan)
    ALERTS_OPEN.labels(portfolio_id).set(status.open_alerts)


BOOK_GAUGES = (BOOK_NAV, BOOK_LARGEST_DRIFT, BOOK_BAND_USAGE, ALERTS_OPEN)


def forget_book(portfolio_id: str) -> None:
    """Remove a book's series: its partition moved to another worker, which exports them now (two
    workers exporting one book would double `sum(monitor_alerts_open)` with a frozen copy)."""
    for gauge in BOOK_GAUGES:
        try:
            gauge.remove(portfolio_id)
        except KeyError:
            pass


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for every amount, in one pass over its buckets.

    prometheus_client has no bulk observe; at the price rate its two locked increments per
    observation took ~7% of the worker's time. This reads the child's own bounds and value
    cells (`_upper_bounds`, `_buckets`, `_sum`); a unit test holds it equal to `observe`.
    """
    if not len(amounts):
        return
    bounds = histogram._upper_bounds  # type: ignore[attr-defined]
    counts = np.bincount(np.searchsorted(bounds, amounts, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(amounts)))  # type: ignore[attr-defined]
    for cell, count in zip(histogram._buckets, counts.tolist()):  # type: ignore[attr-defined]
        if count:
            cell.inc(count)


def serve(host: str, port: int) -> None:
    """Serve /metrics over HTTP from a daemon thread."""
    start_http_server(port, addr=host)


Sample = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def scrape(url: str, timeout: float = 5.0) -> dict[Sample, float]:
    """Every sample a /metrics endpoint serves, read with prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
