"""`monitor replay`: the engine on a recorded event log, without Kafka.

The log is JSON Lines, one event per line, in the order the events happened:

    {"topic": "prices", "key": "EQ0001", "value": {"instrument_id": "EQ0001", "price": 101.5, "ts": "..."}}

`topic` is the logical topic name (prices, fills, instruments, positions, policies,
risk-models, approvals), `key` the message key, `value` the message as on the topic.
This is the format `monitor simulate --jsonl` writes. The output is in the same format:
the alert events (`drift-alerts`) and rebalance signal events (`rebalance-signals`), in
the order the worker would produce them, each value exactly as the worker writes it
except that `detected_ts` is the event's own time (a replay detects in event time), so
the same log always gives the same bytes. With the worker's evaluation window
(`--tick-ms`, default the worker's MONITOR_TICK_MS), the output is what the worker emits
for the same log.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

import click
import orjson

from monitor.engine import AlertEvent, Engine, Fill, Instrument, Policy, Price, Rejected, RiskModel, Snapshot
from monitor.engine.engine import Event
from monitor.engine.signals import Decision
from monitor.ops.config import INPUT_TOPICS, Settings
from monitor.stream.codec import event_from_doc



@dataclass
class ReplayStats:
    events: int = 0
    emitted: int = 0  # alert and signal events
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason_code, reason)


def read_log(lines: Iterable[bytes]) -> Iterator[tuple[int, str, object]]:
    """(line number, topic, value) per non-blank line; a malformed line raises Rejected."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise Rejected("invalid_json", f"line {number}: invalid JSON: {e}") from None
        if not isinstance(record, dict) or record.get("topic") not in INPUT_TOPICS or "value" not in record:
            raise Rejected("schema_violation", f"line {number}: expected {{topic, key, value}} with topic in "
                                               f"{', '.join(INPUT_TOPICS)}")
        yield number, record["topic"], record["value"]


class Replay:
    """Feeds a log to the engine in order. Prices go in batches of up to `batch` consecutive
    price events, as the worker's consumer would hand them over."""

    def __init__(self, engine: Engine | None = None, batch: int = 1) -> None:
        self.engine = engine or Engine()
        self.batch = batch
        self.stats = ReplayStats()

    def run(self, lines: Iterable[bytes]) -> Iterator[Event]:
        pending: list[Price] = []
        for number, topic, value in read_log(lines):
            self.stats.events += 1
            try:
                event = event_from_doc(topic, value, f"line {number}", validated=False)
                if isinstance(event, Price):
                    pending.append(event)
                    if len(pending) < self.batch:
                        continue
                    out, pending = self.engine.on_prices(pending), []
                else:
                    out, pending = (self.engine.on_prices(pending) if pending else []), []
                    out += apply_event(self.engine, event)
            except Rejected as r:
                self.stats.rejected.append((number, r.code, r.reason))
                continue
            self.stats.emitted += len(out)
            yield from out
        out = (self.engine.on_prices(pending) if pending else []) + self.engine.flush()  # the log ends
        self.stats.emitted += len(out)
        yield from out


def apply_event(engine: Engine, event: object) -> list[Event]:
    """One event other than a price into the engine, by its type."""
    if isinstance(event, Fill):
        return engine.on_fill(event)
    if isinstance(event, Snapshot):
        return engine.on_snapshot(event)
    if isinstance(event, Policy):
        return engine.on_policy(event)
    if isinstance(event, Instrument):
        return engine.on_instrument(event)
    if isinstance(event, Decision):
        return engine.on_decision(event)
    assert isinstance(event, RiskModel)
    return engine.on_risk_model(event)


def output_record(event: Event) -> dict[str, object]:
    """An engine event as a replay-log record of the topic the worker would write it to."""
    topic = "drift-alerts" if isinstance(event, AlertEvent) else "rebalance-signals"
    return {"topic": topic, "key": event.portfolio_id, "value": event.to_message(event.event_ts)}


def write_events(events: Iterable[Event], out: IO[bytes]) -> None:
    for event in events:
        out.write(orjson.dumps(output_record(event)) + b"\n")


@click.command("replay")
@click.argument("events", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the alert and signal events here [default: stdout]")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Hand consecutive prices to the engine in batches of up to this many (the output does not change)")
@click.option("--tick-ms", type=float, default=None,
              help="Event-time evaluation window [default: the worker's, env MONITOR_TICK_MS]")
def replay_command(events: str, out: Path | None, batch: int, tick_ms: float | None) -> None:
    """Run the engine on a JSON Lines event log (see `monitor/replay.py`); write the alert and signal events."""
    source = sys.stdin.buffer if events == "-" else open(events, "rb")  # noqa: SIM115
    sink = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115
    run = Replay(Engine(Settings.from_env(tick_ms=tick_ms).tick), batch=batch)
    try:
        write_events(run.run(source), sink)
    except Rejected as r:
        raise click.ClickException(r.reason) from None
    finally:
        source.close() if source is not sys.stdin.buffer else None
        sink.flush()
        if out:
            sink.close()
    stats = run.stats
    click.echo(f"replayed {stats.events:,} events: {stats.emitted:,} alert and signal events, "
               f"{len(stats.rejected)} rejected", err=True)
    for number, code, reason in stats.rejected[:20]:
        click.echo(f"  line {number}: {code}: {reason}", err=True)
