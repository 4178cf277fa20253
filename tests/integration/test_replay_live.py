"""The backbone property: the same event log gives the same alerts and signals live from Kafka and offline."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time

import orjson
import pytest

from monitor.engine import Engine
from monitor.replay import Replay, write_events
from monitor.simulate import MarketConfig, write_jsonl
from monitor.stream.topics import ensure_topics
from tests.conftest import consume, produce, running_worker

pytestmark = pytest.mark.integration


def _comparable(alert: dict) -> dict:
    """Everything but the wall-clock detection time (and the consumer's own fields)."""
    return {k: v for k, v in alert.items() if k not in ("detected_ts", "key", "partition", "offset")}


def test_replay_and_live_worker_emit_identical_alerts_and_signals_for_a_10k_event_log(settings, tmp_path):
    log = tmp_path / "events.jsonl"
    write_jsonl(MarketConfig(books=5, instruments=40, seed=3), log, 11_000)
    lines = log.read_bytes().splitlines()
    assert len(lines) >= 10_000

    out = io.BytesIO()
    write_events(Replay(Engine(settings.tick), batch=1).run(lines), out)
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    expected = [_comparable(r["value"]) for r in records if r["topic"] == "drift-alerts"]
    expected_signals = [_comparable(r["value"]) for r in records if r["topic"] == "rebalance-signals"]
    assert len(expected) > 50 and {a["state"] for a in expected} >= {"OPEN", "RESOLVED"}
    assert expected_signals

    # One partition per topic, so that "the order of alerts" is one order. The whole log is on
    # the broker before the worker starts: it catches up on a backlog, as after a restart.
    settings = dataclasses.replace(settings, partitions=1)
    asyncio.run(ensure_topics(settings))
    records = [orjson.loads(line) for line in lines]
    produce(settings, [(r["topic"], r["key"], r["value"]) for r in records])

    with running_worker(settings, tmp_path / "worker.log") as worker:
        live = consume(settings, "drift-alerts", lambda got: len(got) >= len(expected), timeout=120)
        time.sleep(2.0)  # anything beyond the replay's alerts would show up here
        live = consume(settings, "drift-alerts", lambda got: len(got) >= len(expected), timeout=30)
        signals = consume(settings, "rebalance-signals", lambda got: len(got) >= len(expected_signals), timeout=30)
        assert "first evaluation" in worker.log()
    for name, live_events, replayed in (("alert", live, expected), ("signal", signals, expected_signals)):
        got = [_comparable(a) for a in live_events]
        assert len(got) == len(replayed), name
        for i, (a, b) in enumerate(zip(got, replayed)):
            assert a == b, (f"{name} {i} of {len(got)} differs (previous: {got[i - 1]['message'] if i else None}):"
                            f"\nlive   {a}\nreplay {b}")
