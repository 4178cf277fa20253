"""`monitor replay`: the engine on a recorded log, deterministic, in the drift-alerts contract."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
from click.testing import CliRunner

from monitor.cli import main
from monitor.contract import validate
from monitor.engine import Engine
from monitor.replay import Replay, write_events
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
