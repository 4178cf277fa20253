"""The alert lifecycle of one limit: persistence, severity tiers and hysteresis, in event time.

A limit outside its band for `persistence` of event time opens an alert (BREACH, or
CRITICAL past `critical_multiple` bands); while open it escalates and de-escalates
between those tiers, and resolves only once back inside the band shrunk by the
hysteresis fraction. Every way down needs the hysteresis margin, so a metric hovering
at an edge does not flap. WARN is the tier of a limit near its edge with no alert open.
Ids are hashes of what the alert is about, so a replay or a re-delivery gives the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from monitor.engine.model import Micros, format_ts
from monitor.engine.policy import Evaluation, Limit

if TYPE_CHECKING:
    from monitor.engine.reconcile import Reconciliation

PERCENT_METRICS = frozenset({"weight", "net_weight", "gross_weight", "long_weight", "short_weight",
                             "risk_contribution", "drawdown"})


def digest(*parts: object) -> str:
    """A short stable id from what something is about (alert and signal ids)."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


@dataclass(slots=True)
class LimitState:
    """What the engine remembers about one limit (or book condition) between evaluations."""

    breach_since: Micros | None = None  # event ts of the first evaluation outside the band
    alert_id: str | None = None  # set while an alert is open
    opened_ts: Micros | None = None
    severity: str | None = None  # severity of the open alert
    # Drift attribution: the last value measured, when it was last inside its band, and how much
    # it has moved since then through prices and through fills.
    last_actual: float | None = None
    inside_ts: Micros | None = None
    from_prices: float = 0.0
    from_fills: float = 0.0

    def attribute(self, actual: float, held_actual: float | None, inside: bool, ts: Micros) -> None:
        """Split the move since the last evaluation: `held_actual` is the metric at today's prices
        with the positions held before this window's fills (None: no fills in the window)."""
        if inside:
            self.inside_ts, self.from_prices, self.from_fills = ts, 0.0, 0.0
        elif self.last_actual is not None and self.inside_ts is not None:
            at_old_positions = actual if held_actual is None else held_actual
            self.from_prices += at_old_positions - self.last_actual
            self.from_fills += actual - at_old_positions
        self.last_actual = actual

    def attribution(self) -> "Attribution | None":
        if self.inside_ts is None:
            return None  # never seen inside its band: there is no "since"
        return Attribution(self.inside_ts, self.from_prices, self.from_fills)

    def to_dict(self) -> dict[str, Any]:
        return {"breach_since": self.breach_since, "alert_id": self.alert_id, "opened_ts": self.opened_ts,
                "severity": self.severity, "last_actual": self.last_actual, "inside_ts": self.inside_ts,
                "from_prices": self.from_prices, "from_fills": self.from_fills}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LimitState":
        return cls(**d)


def condition_step(state: LimitState, portfolio_id: str, kind: str, holds: bool, ts: Micros,
                   make: "Callable[[str, str, Micros], AlertEvent]") -> AlertEvent | None:
    """Lifecycle of a book condition (stale prices, NAV <= 0): open while it holds, resolve when not.

    `make(state, alert_id, opened_ts)` builds the event with the condition's details.
    """
    if holds and state.alert_id is None:
        state.alert_id, state.opened_ts = digest(portfolio_id, kind, ts), ts
        return make("OPEN", state.alert_id, ts)
    if not holds and state.alert_id is not None:
        event = make("RESOLVED", state.alert_id, state.opened_ts or ts)
        state.alert_id = state.opened_ts = None
        return event
    return None


class Inputs(NamedTuple):
    """The events behind a number: newest price used and the last fill applied (a named tuple:
    built per book evaluation)."""

    price_ts: Micros | None
    last_fill_id: str | None


@dataclass(frozen=True, slots=True)
class Attribution:
    """Where a limit's drift came from since it was last inside its band, in the metric's units:
    from_prices + from_fills = actual now - actual at `since_ts`."""

    since_ts: Micros
    from_prices: float
    from_fills: float

    def to_message(self) -> dict[str, Any]:
        return {"since_ts": format_ts(self.since_ts), "from_prices": self.from_prices, "from_fills": self.from_fills}


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One lifecycle event of an alert on a limit (kind LIMIT) or on the book itself
    (DATA_STALE, NAV_NON_POSITIVE, RECONCILIATION_BREAK)."""

    alert_id: str
    state: str  # OPEN, ESCALATED, DEESCALATED, RESOLVED
    kind: str
    portfolio_id: str
    limit_id: str
    metric: str
    actual: float | None
    target: float | None
    band: tuple[float, float] | None  # absolute bounds of the metric
    severity: str
    policy_version: int
    event_ts: Micros
    opened_ts: Micros
    inputs: Inputs
    dimension: str | None = None
    bucket: str | None = None
    reason: str | None = None
    stale_instruments: tuple[str, ...] = ()
    attribution: Attribution | None = None
    reconciliation: "Reconciliation | None" = None  # RECONCILIATION_BREAK only: the snapshot and its breaks

    @property
    def drift(self) -> float | None:
        if self.kind != "LIMIT" or self.actual is None or self.target is None:
            return None
        return self.actual - self.target

    @property
    def event_id(self) -> str:
        return digest(self.alert_id, self.state, self.severity, self.event_ts)

    def to_message(self, detected_ts: Micros) -> dict[str, Any]:
        """The drift-alerts contract form (schemas/drift-alerts.v1.schema.json)."""
        inputs: dict[str, Any] = {
            "price_ts": format_ts(self.inputs.price_ts) if self.inputs.price_ts else None,
            "last_fill_id": self.inputs.last_fill_id,
        }
        if self.stale_instruments:
            inputs["stale_instruments"] = list(self.stale_instruments)
        message: dict[str, Any] = {
            "schema_version": 1,
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "kind": self.kind,
            "state": self.state,
            "portfolio_id": self.portfolio_id,
            "limit_id": self.limit_id,
            "metric": self.metric,
            "dimension": self.dimension,
            "bucket": self.bucket,
            "actual": self.actual,
            "target": self.target,
            "band": {"lower": self.band[0], "upper": self.band[1]} if self.band else None,
            "drift": self.drift,
            "attribution": self.attribution.to_message() if self.attribution else None,
            "severity": self.severity,
            "policy_version": self.policy_version,
            "event_ts": format_ts(self.event_ts),
            "detected_ts": format_ts(detected_ts),
            "opened_ts": format_ts(self.opened_ts),
            "inputs": inputs,
            "reason": self.reason,
            "message": self.summary(),
        }
        if self.reconciliation is not None:
            message["reconciliation"] = self.reconciliation.to_message()
        return message

    def summary(self) -> str:
        head = f"{self.state} {self.severity} {self.portfolio_id} {self.limit_id}"
        if self.kind != "LIMIT" or self.actual is None:
            return f"{head}: {self.reason}"
        f = _fmt(self.metric)
        assert self.actual is not None and self.target is not None and self.band is not None
        return (f"{head}: actual {f(self.actual)} vs target {f(self.target)} "
                f"(band {f(self.band[0])}..{f(self.band[1])}), drift {f(self.actual - self.target, signed=True)}")


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
    """Advance one limit's lifecycle on a fresh measurement; return the event it causes, if any.
    (Runs for every limit outside its band or with an alert open, every evaluation: it builds
    nothing until there is an event.)"""
    usage = limit.band.usage(actual - limit.target)
    if state.alert_id is None:
        if not evaluation.outside(usage):
            state.breach_since = None
            return None
        if state.breach_since is None:
            state.breach_since = ts
        if ts - state.breach_since < evaluation.persistence:
            return None
        severity = evaluation.severity(usage)
        state.alert_id = digest(portfolio_id, limit.limit_id, state.breach_since)
        state.opened_ts = ts
        state.severity = severity
        return _limit_event(state, "OPEN", severity or "BREACH", portfolio_id, limit, policy_version, actual, ts,
                            inputs)

    if evaluation.resolves(usage):
        resolved = _limit_event(state, "RESOLVED", state.severity or "BREACH",  # the severity it had when it ended
                                portfolio_id, limit, policy_version, actual, ts, inputs)
        state.breach_since = state.alert_id = state.opened_ts = state.severity = None
        return resolved
    # Open alerts move between BREACH and CRITICAL; the way down needs the hysteresis margin
    # too, so a metric hovering at a tier's edge does not flap.
    old_severity = state.severity or "BREACH"
    if old_severity == "BREACH" and usage > evaluation.critical_multiple:
        state.severity = "CRITICAL"
        return _limit_event(state, "ESCALATED", "CRITICAL", portfolio_id, limit, policy_version, actual, ts, inputs)
    if old_severity == "CRITICAL" and usage <= evaluation.critical_multiple - evaluation.hysteresis:
        state.severity = "BREACH"
        return _limit_event(state, "DEESCALATED", "BREACH", portfolio_id, limit, policy_version, actual, ts, inputs)
    return None


def _limit_event(state: LimitState, state_name: str, severity: str, portfolio_id: str, limit: Limit,
                 policy_version: int, actual: float, ts: Micros, inputs: Inputs) -> AlertEvent:
    assert state.alert_id is not None and state.opened_ts is not None
    return AlertEvent(state.alert_id, state_name, "LIMIT", portfolio_id, limit.limit_id, limit.metric, actual,
                      limit.target, limit.band.bounds(limit.target), severity, policy_version, ts, state.opened_ts,
                      inputs, limit.dimension, limit.bucket)
