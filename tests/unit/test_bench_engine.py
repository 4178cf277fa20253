"""The engine parts of `monitor bench-fills` (no broker): they apply what they say they time."""

from __future__ import annotations

from monitor.bench_fills import Day, engine_fill_cost, engine_window_cost


def test_the_window_cost_applies_each_windows_share_of_the_rates():
    ms, prices, fills = engine_window_cost(Day(books=3, positions=40, fills=0, big_book_fills=0), tick_us=10_000,
                                           price_rate=2_000, fill_rate=500, windows=4)
    assert (prices, fills) == (20, 5) and ms > 0


def test_the_fill_cost_rebuilds_the_book_at_a_restart():
    first, last, n, reapplied = engine_fill_cost(Day(books=1, positions=40, fills=200, big_book_fills=200), 10_000)
    assert n == 200 and min(first, last, reapplied) > 0
