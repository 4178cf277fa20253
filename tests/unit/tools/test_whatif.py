"""`monitor whatif`: a narrower band on a recorded log reports exactly the alerts it adds."""

from __future__ import annotations

import io

import orjson
import pandas as pd
import yaml
from click.testing import CliRunner

from monitor.cli import main
from monitor.engine.model import format_ts, parse_ts
from monitor.tools.lab import DAY, TICK_MS, LabPolicy, Market, evaluation_ts, prepare_closes, run_lab, write_log
from monitor.tools.whatif import compare

DATES = pd.bdate_range("2024-01-02", periods=6)
A = [100.0, 113.0, 100.0, 135.0, 100.0, 100.0]
TARGETS = {"A": 0.5, "B": 0.3}
WIDE, NARROW = 0.05, 0.02


def policy(width: float) -> dict:
    return {"portfolio_id": "book", "version": 1, "base_currency": "USD",
            "evaluation": {"persistence_seconds": 0, "hysteresis": 0.0},
            "limits": [{"metric": "weight", "instrument": iid, "target": t, "band": {"width": width}}
                       for iid, t in TARGETS.items()]}


def recorded_log() -> bytes:
    closes = pd.DataFrame({"A": A, "B": [50.0] * len(A)}, index=DATES).rename_axis("date")
    docs = tuple({"instrument_id": iid, "currency": "USD", "asset_class": "equity"} for iid in closes)
    market = Market(prepare_closes(closes), docs)
    records = run_lab(market, [LabPolicy.named("book", policy(WIDE))], nav=1e6)
    out = io.BytesIO()
    write_log(market, records, out)
    return out.getvalue()


def episodes(width: float) -> set[tuple[str, str]]:
    """(limit, time it left the band) of each stay outside, from buy-and-hold weights computed here."""
    closes = pd.DataFrame({"A": A, "B": [50.0] * len(A)}, index=DATES)
    quantities = {iid: t * 1e6 / closes[iid].iloc[0] for iid, t in TARGETS.items()}
    mv = pd.DataFrame({iid: closes[iid] * q for iid, q in quantities.items()})
    nav = mv.sum(axis=1) + 1e6 * (1 - sum(TARGETS.values()))
    out = set()
    for iid, target in TARGETS.items():
        outside = ((mv[iid] / nav - target).abs() > width).tolist()
        for k, now in enumerate(outside):
            if now and (k == 0 or not outside[k - 1]):
                out.add((f"weight:{iid}", format_ts(evaluation_ts(DATES[k]))))
    return out


def test_a_narrower_band_reports_exactly_the_extra_alerts(tmp_path):
    log = recorded_log()
    result = compare(log.splitlines(), policy(NARROW), DAY)
    added = {(m["limit_id"], m["event_ts"]) for m in result.alerts_only_candidate}
    assert added == episodes(NARROW) - episodes(WIDE)
    assert len(added) == 2  # the case is built so that the narrow band adds two alerts
    assert result.alerts_only_current == []
    assert {(m["limit_id"], m["event_ts"]) for m in result.candidate.alerts.values()} == episodes(NARROW)

    (tmp_path / "log.jsonl").write_bytes(log)
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(policy(NARROW)))
    run = CliRunner().invoke(main, ["whatif", str(tmp_path / "log.jsonl"), "--policy", str(tmp_path / "narrow.yaml"),
                                    "--tick-ms", str(TICK_MS)])
    assert run.exit_code == 0, run.output
    assert "alerts only with the candidate: 2" in run.output
    assert "alerts only with the current policy: 0" in run.output


def test_a_candidate_for_a_book_not_in_the_log_is_refused(tmp_path):
    (tmp_path / "log.jsonl").write_bytes(recorded_log())
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**policy(NARROW), "portfolio_id": "other"}))
    run = CliRunner().invoke(main, ["whatif", str(tmp_path / "log.jsonl"), "--policy", str(tmp_path / "other.yaml")])
    assert run.exit_code != 0 and "no policy of book other" in run.output


def test_a_range_of_topic_records_is_ordered_in_event_time_and_cut_at_until():
    """Records of several topics and partitions, as a broker hands them, make the recorded log again."""
    from monitor.tools.whatif import TopicRecord, ordered_log

    lines = recorded_log().splitlines()
    records = [orjson.loads(line) for line in lines]
    cut = evaluation_ts(DATES[3])
    stamped = []
    for offset, r in enumerate(records):
        kafka_ms = (evaluation_ts(DATES[0]) - 5_000_000) // 1000  # reference data and policies came first
        stamped.append(TopicRecord(r["topic"], r["key"], orjson.dumps(r["value"]), kafka_ms, offset % 2, offset))
    stamped.append(TopicRecord("prices", "A", b"not json", 0, 0, 10**6))
    got = ordered_log(reversed(stamped), cut)  # arrival order across partitions is not event order
    expected = [line for line, r in zip(lines, records)
                if "ts" not in r["value"] and "as_of" not in r["value"]
                or parse_ts(r["value"].get("ts") or r["value"]["as_of"]) <= cut]
    assert [orjson.loads(x) for x in got] == [orjson.loads(x) for x in expected]


def test_since_compares_only_what_was_emitted_from_then_on():
    log = recorded_log()
    since = evaluation_ts(DATES[2])
    result = compare(log.splitlines(), policy(NARROW), DAY, since)
    added = {(m["limit_id"], m["event_ts"]) for m in result.alerts_only_candidate}
    assert added == {(lim, ts) for lim, ts in episodes(NARROW) - episodes(WIDE) if parse_ts(ts) >= since}
    assert len(added) == 1
