"""`monitor replay`: the engine on a recorded log, deterministic, in the drift-alerts contract."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.contract import validate
from monitor.engine import Engine, Price
from monitor.replay import Replay, apply_event, output_record, read_log, write_events
from monitor.stream.codec import event_from_doc
from monitor.simulate import MarketConfig, write_jsonl


def _log(tmp_path: Path, ticks: int = 6_000) -> Path:
    path = tmp_path / "events.jsonl"
    write_jsonl(MarketConfig(books=4, instruments=30, seed=11), path, ticks)
    return path


def test_replay_is_deterministic_and_speaks_the_contract(tmp_path):
    log = _log(tmp_path)
    outputs = []
    for _ in range(2):
        out = io.BytesIO()
        write_events(Replay().run(log.read_bytes().splitlines()), out)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    records = [orjson.loads(line) for line in outputs[0].splitlines()]
    for record in records:
        validate(record["topic"], record["value"])
        assert record["key"] == record["value"]["portfolio_id"]
    alerts = [r["value"] for r in records if r["topic"] == "drift-alerts"]
    assert any(a["state"] == "OPEN" for a in alerts)
    # Every RESOLVED closes an alert that was OPENed before it, under the same id.
    opened: set[str] = set()
    for alert in alerts:
        if alert["state"] == "OPEN":
            assert alert["alert_id"] not in opened
            opened.add(alert["alert_id"])
        else:
            assert alert["alert_id"] in opened
        if alert["state"] == "RESOLVED":
            opened.discard(alert["alert_id"])


def test_replay_cli_reports_bad_lines_and_goes_on(tmp_path):
    log = _log(tmp_path, ticks=2_000)
    lines = log.read_bytes().splitlines()
    bad = [b'{"topic": "fills", "key": "B", "value": {"fill_id": "x"}}',
           b'{"topic": "prices", "key": "EQ0001", "value": {"instrument_id": "EQ0001", "price": -1, '
           b'"ts": "2026-01-05T14:30:00Z"}}']
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join(lines[:100] + bad + lines[100:]) + b"\n")
    out_good, out_broken = tmp_path / "good.out", tmp_path / "broken.out"
    runner = CliRunner()
    ok = runner.invoke(main, ["replay", str(log), "--out", str(out_good)])
    assert ok.exit_code == 0, ok.output
    result = runner.invoke(main, ["replay", str(broken), "--out", str(out_broken)])
    assert result.exit_code == 0, result.output
    assert "2 rejected" in result.output and "line 101: schema_violation" in result.output
    assert out_good.read_bytes() == out_broken.read_bytes()


def test_alerts_do_not_depend_on_how_prices_are_batched(tmp_path):
    """With event-time windows, batches of 1 and of 5,000 prices give the same alert sequence."""
    lines = _log(tmp_path, ticks=12_000).read_bytes().splitlines()
    runs = []
    for batch in (1, 7, 5_000):
        out = io.BytesIO()
        write_events(Replay(Engine(tick=10_000), batch=batch).run(lines), out)
        runs.append(out.getvalue())
    assert runs[0].count(b"\n") > 20
    assert runs[0] == runs[1] == runs[2]


def test_closing_a_window_once_its_events_are_in_changes_nothing(tmp_path):
    """The worker evaluates a window as soon as every event before its end has been applied
    (Engine.close_window) instead of at the first event beyond it: same events, only sooner."""
    lines = _log(tmp_path, ticks=12_000).read_bytes().splitlines()
    decoded = [event_from_doc(topic, value, "", validated=False) for _, topic, value in read_log(lines)]
    times = [getattr(e, "ts", getattr(e, "as_of", None)) for e in decoded]
    until = [2**62] * (len(decoded) + 1)  # per position: the least event ts still to come
    for i in range(len(decoded) - 1, -1, -1):
        until[i] = min(until[i + 1], times[i]) if times[i] is not None else until[i + 1]

    def run(close_early: bool) -> tuple[list[bytes], int]:
        engine, out, early = Engine(tick=10_000), [], 0
        for i, event in enumerate(decoded):
            out += engine.on_prices([event]) if isinstance(event, Price) else apply_event(engine, event)
            if close_early and i % 3 == 0:  # as the worker does: after some reads, not every one
                closed = engine.close_window(until[i + 1])
                early += len(closed)
                out += closed
        out += engine.flush()
        return [orjson.dumps(output_record(e)) for e in out], early

    (plain, _), (closed, early) = run(False), run(True)
    assert len(plain) > 20 and early > 0
    assert closed == plain


def test_noting_quiet_limits_at_once_equals_judging_each(tmp_path, monkeypatch):
    """Limits inside their band with nothing open or pending are noted per evaluation (`Quiet`), not
    judged one by one: the alerts, the book statuses and every persisted limit state are the same
    as when every limit is judged (the simulator's policies use every metric kind)."""
    lines = _log(tmp_path, ticks=12_000).read_bytes().splitlines()

    def run() -> tuple[list[bytes], dict, dict, int]:
        engine, noted = Engine(tick=10_000), 0
        out = [orjson.dumps(output_record(e)) for e in Replay(engine).run(lines)]
        for watch in engine.watches.values():
            if watch.quiet is not None:
                noted += len(watch.quiet.limits) - len(watch.quiet.judged)
        return out, {p: w.to_dict() for p, w in engine.watches.items()}, dict(engine.status), noted

    noting = run()
    def judge_every_limit(watch, limits, row):  # what _to_judge does, but every limit is judged
        watch.loud = watch.loud if watch.loud is not None else set()
        return list(range(len(limits)))

    monkeypatch.setattr(Engine, "_to_judge", staticmethod(judge_every_limit))
    judging = run()
    assert noting[3] > 0 and judging[3] == 0  # the note was used, and then not
    assert len(noting[0]) > 20
    assert noting[:3] == judging[:3]


ONBOARDING = b"""\
{"topic":"instruments","key":"AAA","value":{"instrument_id":"AAA","currency":"USD","asset_class":"equity"}}
{"topic":"prices","key":"AAA","value":{"instrument_id":"AAA","price":100.0,"ts":"2026-01-05T10:00:00.000Z"}}
{"topic":"policies","key":"B1","value":{"portfolio_id":"B1","version":1,"base_currency":"USD","limits":[{"id":"w-aaa","metric":"weight","instrument":"AAA","target":0.5,"band":{"width":0.05}}]}}
{"topic":"positions","key":"B1","value":{"portfolio_id":"B1","as_of":"2026-01-05T10:00:01.000Z","cash":{"USD":10000.0},"positions":[{"instrument_id":"AAA","quantity":100}]}}
"""


@pytest.mark.parametrize("tick_ms", [0, 1, 10, 1_000, 60_000])
def test_onboarding_a_book_policy_prices_then_snapshot_emits_nothing_at_any_tick(tmp_path, tick_ms):
    """Issue 16's log: a new book's natural order once gave a NAV_NON_POSITIVE CRITICAL stamped 1970
    at the 10 ms tick. NAV is 20,000 and AAA on target from the first evaluation: nothing to say."""
    log, out = tmp_path / "onboard.jsonl", tmp_path / "out.jsonl"
    log.write_bytes(ONBOARDING)
    result = CliRunner().invoke(main, ["replay", str(log), "--out", str(out), "--tick-ms", str(tick_ms)])
    assert result.exit_code == 0, result.output
    assert "replayed 4 events: 0 alert and signal events, 0 rejected" in result.output
    assert out.read_bytes() == b""
    engine = Engine(tick_ms * 1_000)
    list(Replay(engine).run(ONBOARDING.splitlines()))
    assert engine.status["B1"].nav == 20_000.0
