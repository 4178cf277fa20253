"""The alert lifecycle of one limit: persistence, severity tiers and hysteresis, in event time.

A limit outside its band for `persistence` of event time opens an alert; it escalates
and de-escalates between tiers while open, and resolves only once back inside the
band shrunk by the hysteresis fraction, so a metric hovering at the edge does not flap.
Ids are hashes of what the alert is about, so a replay or a re-delivery gives the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from monitor.engine.model import Micros, format_ts
from monitor.engine.policy import Evaluation, Limit, SEVERITIES

_RANK = {s: i for i, s in enumerate(SEVERITIES)}
PERCENT_METRICS = frozenset({"weight", "net_weight", "gross_weight", "long_weight", "short_weight",
                             "risk_contribution", "drawdown"})


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


@dataclass(slots=True)
class LimitState:
    """What the engine remembers about one limit of one book between evaluations."""

    breach_since: Micros | None = None  # event ts of the first evaluation outside the band
    alert_id: str | None = None  # set while an alert is open
    opened_ts: Micros | None = None
    severity: str | None = None  # severity of the open alert


@dataclass(frozen=True, slots=True)
class Inputs:
    """The events behind a number: newest price used and the last fill applied."""

    price_ts: Micros | None
    last_fill_id: str | None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    alert_id: str
    state: str  # OPEN, ESCALATED, DEESCALATED, RESOLVED
    kind: str  # LIMIT
    portfolio_id: str
    limit: Limit
    actual: float
    severity: str
    policy_version: int
    event_ts: Micros
    opened_ts: Micros
    inputs: Inputs

    @property
    def drift(self) -> float:
        return self.actual - self.limit.target

    @property
    def event_id(self) -> str:
        return _digest(self.alert_id, self.state, self.severity, self.event_ts)

    def to_message(self, detected_ts: Micros) -> dict[str, Any]:
        """The drift-alerts contract form (schemas/drift-alerts.v1.schema.json)."""
        lim = self.limit
        lower, upper = lim.band.bounds(lim.target)
        return {
            "schema_version": 1,
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "kind": self.kind,
            "state": self.state,
            "portfolio_id": self.portfolio_id,
            "limit_id": lim.limit_id,
            "metric": lim.metric,
            "dimension": lim.dimension,
            "bucket": lim.bucket,
            "actual": self.actual,
            "target": lim.target,
            "band": {"lower": lower, "upper": upper},
            "drift": self.drift,
            "severity": self.severity,
            "policy_version": self.policy_version,
            "event_ts": format_ts(self.event_ts),
            "detected_ts": format_ts(detected_ts),
            "opened_ts": format_ts(self.opened_ts),
            "inputs": {
                "price_ts": format_ts(self.inputs.price_ts) if self.inputs.price_ts else None,
                "last_fill_id": self.inputs.last_fill_id,
            },
            "reason": None,
            "message": self.summary(),
        }

    def summary(self) -> str:
        lim = self.limit
        lower, upper = lim.band.bounds(lim.target)
        f = _fmt(lim.metric)
        return (f"{self.state} {self.severity} {self.portfolio_id} {lim.limit_id}: "
                f"actual {f(self.actual)} vs target {f(lim.target)} "
                f"(band {f(lower)}..{f(upper)}), drift {f(self.drift, signed=True)}")


def _fmt(metric: str):
    def fmt(x: float, signed: bool = False) -> str:
        sign = "+" if signed else ""
        if metric in PERCENT_METRICS or metric == "exposure":
            return f"{x * 100:{sign}.2f}%"
        if metric.endswith("leverage"):
            return f"{x:{sign}.3f}x"
        return f"{x:{sign}.4f}"
    return fmt


def step(
    state: LimitState,
    portfolio_id: str,
    limit: Limit,
    evaluation: Evaluation,
    policy_version: int,
    actual: float,
    ts: Micros,
    inputs: Inputs,
) -> AlertEvent | None:
    """Advance one limit's lifecycle on a fresh measurement; return the event it causes, if any."""
    usage = limit.band.usage(actual - limit.target)
    severity = evaluation.severity(usage)
    outside = usage > 1.0

    def event(state_name: str, sev: str) -> AlertEvent:
        assert state.alert_id is not None and state.opened_ts is not None
        return AlertEvent(state.alert_id, state_name, "LIMIT", portfolio_id, limit, actual, sev,
                          policy_version, ts, state.opened_ts, inputs)

    if state.alert_id is None:
        if not outside:
            state.breach_since = None
            return None
        if state.breach_since is None:
            state.breach_since = ts
        if ts - state.breach_since < evaluation.persistence:
            return None
        state.alert_id = _digest(portfolio_id, limit.limit_id, state.breach_since)
        state.opened_ts = ts
        state.severity = severity
        return event("OPEN", severity or "BREACH")

    if usage <= 1.0 - evaluation.hysteresis:
        resolved = event("RESOLVED", severity or "WARN")
        state.breach_since = state.alert_id = state.opened_ts = state.severity = None
        return resolved
    # Still open: inside the band but not past hysteresis counts as WARN.
    new_severity = severity if outside else "WARN"
    old_severity = state.severity or "BREACH"
    if new_severity == old_severity:
        return None
    state.severity = new_severity
    return event("ESCALATED" if _RANK[new_severity] > _RANK[old_severity] else "DEESCALATED", new_severity)
