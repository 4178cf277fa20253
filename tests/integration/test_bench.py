"""`monitor bench` on a small market: every figure is measured and written down."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from monitor.cli import main

pytestmark = pytest.mark.integration


def test_bench_measures_all_three_consumers_and_latency(kafka_bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    result = CliRunner().invoke(main, ["bench", "--books", "20", "--instruments", "100", "--prices", "20000",
                                       "--naive-seconds", "5", "--latency-rate", "1000", "--latency-seconds", "8",
                                       "--scaling-books", "2,20", "--scaling-instruments", "50,100",
                                       "--scaling-prices", "5000", "--out", str(out)])
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
