"""`monitor bench` on a small market: every figure is measured and written down."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from monitor.bench import _market
from monitor.cli import main
from monitor.simulate import Market

pytestmark = pytest.mark.integration


def test_bench_measures_all_three_consumers_and_latency(kafka_bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    result = CliRunner().invoke(main, ["bench", "--books", "20", "--instruments", "100", "--prices", "20000",
                                       "--naive-seconds", "5", "--latency-rate", "1000", "--latency-seconds", "8",
                                       "--scaling-books", "2,20", "--scaling-instruments", "50,100",
                                       "--scaling-prices", "5000", "--two-workers", "", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = out.read_text()
    rows = {m.group(1): [float(x.replace(",", "")) for x in m.groups()[1:]]
            for m in re.finditer(r"^\| ([^|]+?) \| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \|$",
                                 report, re.M)}
    assert set(rows) == {"raw aiokafka getmany + orjson", "naive Faust agent, Table write per price",
                         "monitor (full engine)"}
    assert rows["raw aiokafka getmany + orjson"][0] == 20_000 and rows["monitor (full engine)"][0] == 20_000
    for events, seconds, rate, cpu, rss in rows.values():
        assert events > 0 and seconds > 0 and rate > 0 and cpu > 0 and rss > 0
    assert re.search(r"monitor / raw = [\d.]+ .*monitor / naive Faust = [\d.]+", report)
    assert re.search(r"; code [0-9a-f]{7,}(-dirty)?\.  ", report), report  # the commit the figures are of
    assert re.search(r"\(\d[\d,]* alerts\): p50 [\d.]+ ms, p99 [\d.]+ ms, p99.9 [\d.]+ ms", report), report
    assert re.search(r"to its first evaluation, 20,000 prices waiting: [\d.]+ s", report), report
    assert re.search(r"the worker read [\d,]+ prices \([\d,]+/s over the feed.s 8 s\) and evaluated [\d,]+ times "
                     r"\(.*\): [\d,]+ prices and [\d.]+ ms each", report), report
    # The scaling grid: books at the main instrument count, instruments at the main book count.
    cells = {(int(m.group(1)), int(m.group(2))): float(m.group(3).replace(",", ""))
             for m in re.finditer(r"^\| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| [\d.]+ \| [\d,]+ \| [\d.]+ \|$",
                                  report, re.M)}
    assert set(cells) == {(2, 100), (20, 100), (20, 50)} and all(rate > 0 for rate in cells.values()), report


def test_bench_two_workers_split_the_books_and_both_catch_up(kafka_bootstrap, tmp_path, monkeypatch):
    """One worker, then two of one consumer group, drain the same preloaded prices: every worker reads
    every price, the two own some books each, every book once (the bench fails otherwise)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    result = CliRunner().invoke(main, ["bench", "--prices", "0", "--scaling-books", "", "--scaling-instruments", "",
                                       "--two-workers", "20", "--two-workers-instruments", "50",
                                       "--scaling-prices", "20000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = out.read_text()
    assert re.search(r"; code [0-9a-f]{7,}(-dirty)?\.  ", report), report
    assert "--prices 0 " in report and "--two-workers '20' --two-workers-instruments 50" in report, report
    assert "raw aiokafka" not in report  # --prices 0: no comparison of consumers, no latency run
    rows = {(int(m[2]), int(m[5])): (int(m[1]), float(m[3].replace(",", "")), float(m[4].replace(",", "")), *(
        float(x.replace(",", "")) for x in m.groups()[5:]))
        for m in re.finditer(r"^\| ([\d,]+) \| (\d) \| ([\d,]+) \| ([\d,]+) \| (\d) \| ([\d,]+) \| ([\d,]+) \| "
                             r"([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \|$", report, re.M)}
    assert set(rows) == {(1, 1), (2, 1), (2, 2)}, report
    start_of_day = len(Market(_market(20, 50)).instruments)  # one price each, FX pairs included, before the ticks
    for (workers, _), (books, rate, joined_rate, _, prices_read, evaluations, evaluation_s, cpu, rss, first_price) \
            in rows.items():
        assert books == 20 and 0 < rate <= joined_rate, report
        # A worker that read prices before the other joined rewinds its market at the rebalance (to
        # the start of the topic: no checkpoint yet) and reads them again.
        assert prices_read == 20_000 + start_of_day if workers == 1 else \
            20_000 + start_of_day <= prices_read <= 2 * (20_000 + start_of_day), report
        assert evaluations > 0 and evaluation_s >= 0 and cpu > 0 and rss > 0 and first_price >= 0, report
    assert rows[(1, 1)][3] == 20, report  # one worker owns every book
    assert rows[(2, 1)][3] > 0 and rows[(2, 2)][3] > 0 and rows[(2, 1)][3] + rows[(2, 2)][3] == 20, report
    assert rows[(2, 1)][1:3] == rows[(2, 2)][1:3], report  # one aggregate rate for the group
    ratio = re.search(r"^At 20 books: two workers / one = ([\d.]+), once joined ([\d.]+) "
                      r"\(target >= 1.5 at 1,000 books\); CPU s one worker [\d.]+, two together [\d.]+\.", report, re.M)
    assert ratio and float(ratio[1]) == pytest.approx(rows[(2, 1)][1] / rows[(1, 1)][1], abs=0.02), report
    assert float(ratio[2]) == pytest.approx(rows[(2, 1)][2] / rows[(1, 1)][2], abs=0.02), report
