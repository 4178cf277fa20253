"""`monitor whatif --since/--until` on the live topics agrees with whatif on the same log recorded to a file."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from monitor.cli import main
from monitor.engine.model import format_ts, parse_ts
from monitor.stream.topics import ensure_topics
from monitor.tools.lab import DAY, TICK_MS, evaluation_ts
from monitor.tools.whatif import compare, report_lines
from tests.unit.tools.test_whatif import DATES, NARROW, policy, recorded_log

pytestmark = pytest.mark.integration


def _event_ms(value: dict, first_ms: int) -> int:
    """When a live feed would have written the record: its event time; reference data before the first price."""
    stamp = value.get("ts") or value.get("as_of")
    return parse_ts(stamp) // 1000 if stamp else first_ms


def test_whatif_on_a_time_range_of_the_topics_equals_whatif_on_the_log(settings, tmp_path):
    lines = recorded_log().splitlines()
    records = [orjson.loads(line) for line in lines]
    first_ms = (evaluation_ts(DATES[0]) - 5_000_000) // 1000

    async def produce() -> None:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for r in records:
                await producer.send_and_wait(settings.topic(r["topic"]), orjson.dumps(r["value"]),
                                             key=r["key"].encode(), timestamp_ms=_event_ms(r["value"], first_ms))
            await producer.send_and_wait(settings.topic("prices"), b"{not json", key=b"A")
        finally:
            await producer.stop()

    asyncio.run(produce())
    since, until = evaluation_ts(DATES[1]), evaluation_ts(DATES[-1])
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(policy(NARROW)))
    run = CliRunner().invoke(main, ["whatif", "--policy", str(tmp_path / "narrow.yaml"), "--since", format_ts(since),
                                    "--until", format_ts(until), "--tick-ms", str(TICK_MS),
                                    "--bootstrap", settings.bootstrap_servers, "--topic-prefix", settings.topic_prefix])
    assert run.exit_code == 0, run.output
    expected = report_lines(compare(lines, policy(NARROW), DAY, since))
    assert run.output.splitlines() == expected
    assert "alerts only with the candidate: 2" in run.output
