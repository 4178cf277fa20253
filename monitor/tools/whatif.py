"""`monitor whatif`: a candidate policy against the current one, on a recorded JSON Lines log.

Both runs go through `monitor replay`'s path: the log as recorded, then the same log with
every `policies` record of the candidate's book replaced by the candidate. What differs:

- alerts only one run raised (by alert id: the same limit leaving its band at the same
  event time gives the same id in both runs);
- signals only one run proposed (by book, trigger, mode, limits and creation time: a
  signal id also hashes the policy version, which the candidate may change);
- counts of alert and signal events by state, estimated cost of the tradeable signals, and
  the largest band usage (|drift| / band half-width) each limit reached in an alert event.

The stream is a JSON Lines log (`monitor replay`'s format), or a time range of the live input
topics (`--since/--until`): every input record up to `--until` is read from the beginning of
its topic, put in one order (event time; records without one, such as reference data and
policies, at their Kafka timestamp), replayed, and only what the runs emitted from `--since` on
is compared. Records that are not JSON are left out, as the worker dead-letters them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import click
import orjson

from monitor.engine import Engine
from monitor.engine.model import Micros, Rejected, parse_ts
from monitor.engine.signals import APPROVED, AUTO_APPROVED
from monitor.ops.config import INPUT_TOPICS, Settings
from monitor.replay import Replay, output_record

BIRTHS = frozenset({"AUTO_APPROVED", "PENDING_APPROVAL", "WITHHELD"})


@dataclass
class RunSummary:
    """What one run raised, keyed so that the two runs can be compared."""

    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert_id -> its OPEN message
    signals: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)  # key -> its birth message
    alert_states: Counter[str] = field(default_factory=Counter)
    signal_states: Counter[str] = field(default_factory=Counter)
    tradeable_cost: float = 0.0
    band_usage: dict[str, float] = field(default_factory=dict)  # "book limit" -> largest usage


def signal_key(message: Mapping[str, Any]) -> tuple[Any, ...]:
    return (message["portfolio_id"], message["trigger"], message["mode"],
            tuple(sorted(lim["limit_id"] for lim in message["limits"])), message["created_ts"])


def band_usage(message: Mapping[str, Any]) -> float | None:
    """|drift| as a fraction of the band half-width on its side, from an alert message."""
    band, drift, target = message.get("band"), message.get("drift"), message.get("target")
    if band is None or drift is None or target is None:
        return None
    half = band["upper"] - target if drift >= 0 else target - band["lower"]
    return abs(drift) / half if half > 0 else None


def summarise(messages: Iterable[tuple[str, Mapping[str, Any]]], since: Micros | None = None) -> RunSummary:
    """(topic, message) pairs of a replay's output, summarised (those from event time `since` on)."""
    out = RunSummary()
    for topic, m in messages:
        if since is not None and parse_ts(m["event_ts"]) < since:
            continue
        if topic == "drift-alerts":
            out.alert_states[m["state"]] += 1
            if m["state"] == "OPEN":
                out.alerts[m["alert_id"]] = dict(m)
            usage = band_usage(m)
            if usage is not None:
                where = f"{m['portfolio_id']} {m['limit_id']}"
                out.band_usage[where] = max(out.band_usage.get(where, 0.0), usage)
        else:
            out.signal_states[m["state"]] += 1
            if m["state"] in BIRTHS:
                out.signals[signal_key(m)] = dict(m)
            if m["state"] in (AUTO_APPROVED, APPROVED):
                out.tradeable_cost += m["total_est_cost_base"]
    return out


def replay_messages(lines: Iterable[bytes], tick: int) -> list[tuple[str, dict[str, Any]]]:
    """The alert and signal messages `monitor replay` writes for a log."""
    records = map(output_record, Replay(Engine(tick)).run(lines))
    return [(r["topic"], r["value"]) for r in records]  # type: ignore[misc]


def with_policy(lines: Iterable[bytes], candidate: Mapping[str, Any]) -> list[bytes]:
    """The log with every policy record of the candidate's book replaced by the candidate."""
    book, out, replaced = candidate["portfolio_id"], [], 0
    for line in lines:
        if line.strip():
            record = orjson.loads(line)
            if record.get("topic") == "policies" and record.get("value", {}).get("portfolio_id") == book:
                line = orjson.dumps({**record, "value": dict(candidate)})
                replaced += 1
        out.append(line)
    if not replaced:
        raise ValueError(f"the log has no policy of book {book} to replace")
    return out


@dataclass
class Comparison:
    current: RunSummary
    candidate: RunSummary

    @property
    def alerts_only_current(self) -> list[dict[str, Any]]:
        return _only(self.current.alerts, self.candidate.alerts)

    @property
    def alerts_only_candidate(self) -> list[dict[str, Any]]:
        return _only(self.candidate.alerts, self.current.alerts)

    @property
    def signals_only_current(self) -> list[dict[str, Any]]:
        return _only(self.current.signals, self.candidate.signals)

    @property
    def signals_only_candidate(self) -> list[dict[str, Any]]:
        return _only(self.candidate.signals, self.current.signals)


def _only(these: Mapping[Any, dict[str, Any]], those: Mapping[Any, Any]) -> list[dict[str, Any]]:
    return [m for k, m in these.items() if k not in those]


def compare(lines: list[bytes], candidate: Mapping[str, Any], tick: int, since: Micros | None = None) -> Comparison:
    return Comparison(summarise(replay_messages(lines, tick), since),
                      summarise(replay_messages(with_policy(lines, candidate), tick), since))


# ----- a time range of the live topics ------------------------------------------------------------

TIME_FIELDS = {"prices": "ts", "fills": "ts", "positions": "as_of", "approvals": "ts"}


class TopicRecord(NamedTuple):
    topic: str  # logical
    key: str | None
    value: bytes
    timestamp_ms: int  # Kafka's
    partition: int
    offset: int


def ordered_log(records: Iterable[TopicRecord], until: Micros) -> list[bytes]:
    """Input records as one replay log: in event time (records without one at their Kafka timestamp),
    ties in topic, partition and offset order; those after `until` and those that are not JSON left out."""
    keyed = []
    for r in records:
        try:
            value = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            continue
        field_name = TIME_FIELDS.get(r.topic)
        try:
            at = parse_ts(value[field_name]) if field_name else r.timestamp_ms * 1000
        except (KeyError, TypeError, ValueError):
            at = r.timestamp_ms * 1000  # the replay refuses it, with its reason
        if at <= until:
            keyed.append(((at, r.topic, r.partition, r.offset), {"topic": r.topic, "key": r.key, "value": value}))
    keyed.sort(key=lambda pair: pair[0])
    return [orjson.dumps(record) for _, record in keyed]


async def read_topics(settings: Settings) -> list[TopicRecord]:
    """Every record of the input topics, from the beginning to their ends as of now."""
    from aiokafka import AIOKafkaConsumer

    probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             **settings.kafka_security.client_options())
    await probe.start()
    try:
        existing = await probe.topics()
    finally:
        await probe.stop()
    names = [settings.topic(t) for t in INPUT_TOPICS if settings.topic(t) in existing]
    if not names:
        return []
    # Without a group the consumer is given every partition of its topics.
    consumer = AIOKafkaConsumer(*names, bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **settings.kafka_security.client_options())
    await consumer.start()
    try:
        parts = list(consumer.assignment())
        await consumer.seek_to_beginning(*parts)
        ends = {tp: end for tp, end in (await consumer.end_offsets(parts)).items() if end > 0}
        out: list[TopicRecord] = []
        while ends:
            batch = await consumer.getmany(*ends, timeout_ms=1000)
            for tp, records in batch.items():
                out += [TopicRecord(settings.logical(tp.topic), r.key.decode() if r.key else None, r.value or b"",
                                    r.timestamp, tp.partition, r.offset) for r in records if r.offset < ends[tp]]
                if records and records[-1].offset + 1 >= ends[tp]:
                    del ends[tp]
        return out
    finally:
        await consumer.stop()


def report_lines(c: Comparison) -> list[str]:
    """The comparison as text, differences first."""
    out = [f"alerts only with the candidate: {len(c.alerts_only_candidate)}"]
    out += [f"  + {m['event_ts']} {m['message']}" for m in c.alerts_only_candidate]
    out.append(f"alerts only with the current policy: {len(c.alerts_only_current)}")
    out += [f"  - {m['event_ts']} {m['message']}" for m in c.alerts_only_current]
    for label, signals in (("candidate", c.signals_only_candidate), ("current policy", c.signals_only_current)):
        out.append(f"signals only with the {label}: {len(signals)}")
        out += [f"  {s['created_ts']} {s['message']}" for s in signals]
    for what, cur, cand in (("alert events", c.current.alert_states, c.candidate.alert_states),
                            ("signal events", c.current.signal_states, c.candidate.signal_states)):
        states = sorted(set(cur) | set(cand))
        out.append(f"{what} by state (current -> candidate): "
                   + (", ".join(f"{s} {cur[s]} -> {cand[s]}" for s in states) or "none"))
    out.append(f"estimated cost of tradeable signals: {c.current.tradeable_cost:,.2f} -> "
               f"{c.candidate.tradeable_cost:,.2f}")
    limits = sorted(set(c.current.band_usage) | set(c.candidate.band_usage))
    out += [f"largest band usage {where}: {c.current.band_usage.get(where, 0):.2f} -> "
            f"{c.candidate.band_usage.get(where, 0):.2f}" for where in limits]
    return out


@click.command("whatif")
@click.argument("events", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--policy", "policy_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The candidate policy (YAML/JSON); replaces its book's policy records in the log")
@click.option("--since", help="With --until instead of EVENTS: compare from this event time (RFC 3339) on")
@click.option("--until", help="Read the live input topics up to this event time (RFC 3339)")
@click.option("--tick-ms", type=float, default=None,
              help="Event-time evaluation window [default: the worker's, env MONITOR_TICK_MS]")
@click.option("--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
@click.option("--topic-prefix", help="Prefix of every topic name [env MONITOR_TOPIC_PREFIX]")
def whatif_command(events: Path | None, policy_file: Path, since: str | None, until: str | None,
                   tick_ms: float | None, **flags: str | None) -> None:
    """Compare a candidate policy with the current one on a recorded JSON Lines log (EVENTS), or on the
    live input topics from --since to --until; both as `monitor replay` runs the engine."""
    import asyncio

    from monitor.engine.policy import PolicyError
    from monitor.ops.policy_files import load_policy_file

    if (events is None) == (until is None):
        raise click.ClickException("give a JSON Lines log, or --since/--until on the live topics")
    settings = Settings.from_env(tick_ms=tick_ms, **flags)
    try:
        candidate, _ = load_policy_file(policy_file)
        if events is not None:
            lines, start = events.read_bytes().splitlines(), None
        else:
            assert until is not None
            start = parse_ts(since) if since else None
            lines = ordered_log(asyncio.run(read_topics(settings)), parse_ts(until))
        result = compare(lines, candidate, settings.tick, start)
    except (PolicyError, Rejected, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo("\n".join(report_lines(result)))
