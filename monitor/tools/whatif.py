"""`monitor whatif`: a candidate policy against the current one, on a recorded JSON Lines log.

Both runs go through `monitor replay`'s path: the log as recorded, then the same log with
every `policies` record of the candidate's book replaced by the candidate. What differs:

- alerts only one run raised (by alert id: the same limit leaving its band at the same
  event time gives the same id in both runs);
- signals only one run proposed (by book, trigger, mode, limits and creation time: a
  signal id also hashes the policy version, which the candidate may change);
- counts of alert and signal events by state, estimated cost of the tradeable signals, and
  the largest band usage (|drift| / band half-width) each limit reached in an alert event.

Only the JSON Lines form; reading a time range of the live topics (`--since/--until` on the
broker) is not built yet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import click
import orjson

from monitor.engine import Engine
from monitor.engine.model import Rejected
from monitor.engine.signals import APPROVED, AUTO_APPROVED
from monitor.ops.config import Settings
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


def summarise(messages: Iterable[tuple[str, Mapping[str, Any]]]) -> RunSummary:
    """(topic, message) pairs of a replay's output, summarised."""
    out = RunSummary()
    for topic, m in messages:
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


def compare(lines: list[bytes], candidate: Mapping[str, Any], tick: int) -> Comparison:
    return Comparison(summarise(replay_messages(lines, tick)),
                      summarise(replay_messages(with_policy(lines, candidate), tick)))


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
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--policy", "policy_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The candidate policy (YAML/JSON); replaces its book's policy records in the log")
@click.option("--tick-ms", type=float, default=None,
              help="Event-time evaluation window [default: the worker's, env MONITOR_TICK_MS]")
def whatif_command(events: Path, policy_file: Path, tick_ms: float | None) -> None:
    """Compare a candidate policy with the current one on a recorded JSON Lines log (as `monitor replay`)."""
    from monitor.ops.policy_files import load_policy_file
    from monitor.engine.policy import PolicyError

    try:
        candidate, _ = load_policy_file(policy_file)
        result = compare(events.read_bytes().splitlines(), candidate, Settings.from_env(tick_ms=tick_ms).tick)
    except (PolicyError, Rejected, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo("\n".join(report_lines(result)))
