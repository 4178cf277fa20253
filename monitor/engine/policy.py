"""A book's policy: base currency, limits with targets and bands, evaluation settings.

The document format is the `policies` topic schema (schemas/policies.v1.schema.json);
the same document is read from YAML files. `parse_policy` adds the checks a schema
cannot express and turns the document into frozen values the engine evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from monitor.engine.model import Micros

# Metrics a limit can be set on, and what each needs to name what it measures.
INSTRUMENT_METRICS = frozenset({"weight"})
BUCKET_METRICS = frozenset({"net_weight", "gross_weight", "long_weight", "short_weight"})
PORTFOLIO_METRICS = frozenset({"gross_leverage", "net_leverage", "drawdown"})
FACTOR_METRICS = frozenset({"exposure"})
RISK_METRICS = frozenset({"risk_contribution"})
SEVERITIES = ("WARN", "BREACH", "CRITICAL")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}  # to compare severities
USAGE_NOISE = 1e-9  # of a band: what float arithmetic may leave between a computed usage and an edge


class PolicyError(ValueError):
    """A policy that is refused: where it came from, which field, and why."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(f"{source}: {path or '/'}: {reason}")
        self.source = source
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Band:
    """Absolute half-widths below and above the target (asymmetric bands differ)."""

    below: float
    above: float

    def bounds(self, target: float) -> tuple[float, float]:
        return target - self.below, target + self.above

    def usage(self, drift: float) -> float:
        """|drift| as a fraction of the band on its side: 1.0 is the edge."""
        return drift / self.above if drift >= 0 else -drift / self.below


@dataclass(frozen=True, slots=True)
class Limit:
    limit_id: str
    metric: str
    target: float
    band: Band
    instrument: str | None = None
    dimension: str | None = None
    bucket: str | None = None
    factor: str | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    persistence: Micros = 0
    hysteresis: float = 0.2
    stale_price: Micros = 300_000_000
    warn_fraction: float = 0.8
    critical_multiple: float = 2.0
    # A snapshot differing from what the monitor held by more than these is a reconciliation break.
    reconciliation_quantity: float = 0.0  # units of an instrument
    reconciliation_cash: float = 0.01  # units of a cash currency

    def resolves(self, usage: float) -> bool:
        """Whether an open alert at this band usage resolves: back inside by the hysteresis margin. A
        billionth of a band of slack: a proposal that lands on that edge is not float noise short of it."""
        return usage <= 1.0 - self.hysteresis + USAGE_NOISE

    @staticmethod
    def outside(usage: float) -> bool:
        """Whether a limit is outside its band: the edge itself is inside, give or take float noise (with
        hysteresis 0 a proposal lands on it, and must not re-open what it resolved)."""
        return usage > 1.0 + USAGE_NOISE

    def severity(self, usage: float) -> str | None:
        """Severity of a band usage; None when comfortably inside the band."""
        if usage > self.critical_multiple:
            return "CRITICAL"
        if usage > 1.0:
            return "BREACH"
        if usage >= self.warn_fraction:
            return "WARN"
        return None


@dataclass(frozen=True, slots=True)
class Approval:
    """When a proposal needs a human; None thresholds never require one."""

    notional_above: float | None = None
    cost_above: float | None = None
    severity: str | None = None  # an alert at this severity or above behind the proposal
    ttl: Micros = 300_000_000  # event time a PENDING_APPROVAL signal waits before it EXPIRES


@dataclass(frozen=True, slots=True)
class RebalancePolicy:
    """How a book's proposals are made (the policy's `rebalance` section; see the policies schema)."""

    mode: str = "targeted"  # targeted | global | hybrid
    trade_to: str = "edge"  # edge (where an alert resolves) | inner | target; global proposals go to target
    inner_fraction: float = 0.5  # inner rail: this fraction of the way from the band edge to the target
    min_severity: str = "BREACH"
    schedule: Micros | None = None  # period of the scheduled global check, in event time
    max_participation: float = 0.1  # of ADV, per instrument and proposal
    min_notional: float = 0.0  # base currency
    without_adv_cap_notional: float | None = None  # None: skip instruments without ADV
    impact_coefficient: float = 1.0
    factor_hedges: Mapping[str, str] = field(default_factory=dict)  # factor -> instrument
    bucket_hedges: Mapping[str, str] = field(default_factory=dict)  # bucket limit id -> instrument
    drift_value: float | None = None  # base currency per unit of drift removed, any limit
    drift_value_by_limit: Mapping[str, float] = field(default_factory=dict)
    approval: Approval | None = None  # None: every proposal is AUTO_APPROVED

    @property
    def gated(self) -> bool:
        """Whether the cost-benefit gate applies (the policy values drift)."""
        return self.drift_value is not None or bool(self.drift_value_by_limit)

    def value_of(self, limit_id: str) -> float:
        """Base currency per unit of drift removed on a limit (0 when the policy gives none)."""
        return self.drift_value_by_limit.get(limit_id, self.drift_value or 0.0)


@dataclass(frozen=True, slots=True)
class Policy:
    portfolio_id: str
    version: int
    base_currency: str
    evaluation: Evaluation
    limits: tuple[Limit, ...]
    risk_model: str | None = None  # model_id for risk_contribution limits; None: the only one there is
    rebalance: RebalancePolicy | None = None  # None: alerts only, no rebalance signals
    uses_risk: bool = field(init=False, repr=False, compare=False)  # a risk_contribution limit: needs a model

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses_risk", any(lim.metric in RISK_METRICS for lim in self.limits))

    def limit(self, limit_id: str) -> Limit | None:
        return next((lim for lim in self.limits if lim.limit_id == limit_id), None)


def default_limit_id(doc: Mapping[str, Any]) -> str:
    """A readable, stable id from what the limit measures, e.g. `net_weight:sector:Energy`."""
    metric = doc["metric"]
    if metric in INSTRUMENT_METRICS:
        return f"{metric}:{doc['instrument']}"
    if "dimension" in doc:
        return f"{metric}:{doc['dimension']}:{doc['bucket']}"
    if metric in FACTOR_METRICS:
        return f"{metric}:{doc['factor']}"
    return metric


def _band(doc: Mapping[str, Any], target: float, source: str, path: str) -> Band:
    kind = doc.get("type", "absolute")
    if "width" in doc:
        below = above = float(doc["width"])
    else:
        below, above = float(doc["lower"]), float(doc["upper"])
    if kind == "relative":
        if target == 0:
            raise PolicyError(source, path, "a relative band needs a non-zero target")
        below, above = below * abs(target), above * abs(target)
    if below <= 0 or above <= 0:
        raise PolicyError(source, path, "band widths must be > 0")
    return Band(below, above)


def parse_policy(doc: Mapping[str, Any], source: str) -> Policy:
    """Turn a schema-valid policy document into a Policy, or raise PolicyError."""
    ev = doc.get("evaluation", {})
    evaluation = Evaluation(
        persistence=round(float(ev.get("persistence_seconds", 0)) * 1_000_000),
        hysteresis=float(ev.get("hysteresis", 0.2)),
        stale_price=round(float(ev.get("stale_price_seconds", 300)) * 1_000_000),
        warn_fraction=float(ev.get("warn_fraction", 0.8)),
        critical_multiple=float(ev.get("critical_multiple", 2.0)),
        reconciliation_quantity=float(ev.get("reconciliation_quantity_tolerance", 0.0)),
        reconciliation_cash=float(ev.get("reconciliation_cash_tolerance", 0.01)),
    )
    if not 0 <= evaluation.hysteresis < 1:
        raise PolicyError(source, "/evaluation/hysteresis", "must be in [0, 1)")
    if evaluation.critical_multiple <= 1:
        raise PolicyError(source, "/evaluation/critical_multiple", "must be > 1")
    limits: list[Limit] = []
    seen: set[str] = set()
    for i, ld in enumerate(doc["limits"]):
        path = f"/limits/{i}"
        limit_id = ld.get("id") or default_limit_id(ld)
        if limit_id in seen:
            raise PolicyError(source, f"{path}/id", f"duplicate limit id {limit_id!r}")
        seen.add(limit_id)
        target = float(ld["target"])
        limits.append(Limit(
            limit_id=limit_id,
            metric=ld["metric"],
            target=target,
            band=_band(ld["band"], target, source, f"{path}/band"),
            instrument=ld.get("instrument"),
            dimension=ld.get("dimension"),
            bucket=ld.get("bucket"),
            factor=ld.get("factor"),
        ))
    rebalance = _rebalance(doc["rebalance"], {lim.limit_id for lim in limits}, source) \
        if "rebalance" in doc else None
    return Policy(doc["portfolio_id"], int(doc["version"]), doc["base_currency"], evaluation, tuple(limits),
                  doc.get("risk_model"), rebalance)


def _seconds(value: float) -> Micros:
    return round(float(value) * 1_000_000)


def _rebalance(doc: Mapping[str, Any], limit_ids: set[str], source: str) -> RebalancePolicy:
    """The `rebalance` section: the schema checked shapes; here, references to limits."""
    for key in ("bucket_hedges", "drift_value_by_limit"):
        for limit_id in doc.get(key, {}):
            if limit_id not in limit_ids:
                raise PolicyError(source, f"/rebalance/{key}/{limit_id}", "names no limit of this policy")
    mode, scheduled = doc.get("mode", "targeted"), "schedule_seconds" in doc
    if mode == "targeted" and scheduled:
        raise PolicyError(source, "/rebalance/schedule_seconds", "a scheduled global check needs mode global or hybrid")
    if mode == "hybrid" and not scheduled:
        raise PolicyError(source, "/rebalance/schedule_seconds", "mode hybrid needs a schedule for its global checks")
    ad = doc.get("approval")
    approval = None if ad is None else Approval(
        notional_above=ad.get("notional_above"), cost_above=ad.get("cost_above"), severity=ad.get("severity"),
        ttl=_seconds(ad.get("ttl_seconds", 300)))
    return RebalancePolicy(
        mode=mode,
        trade_to=doc.get("trade_to", "edge"),
        inner_fraction=float(doc.get("inner_fraction", 0.5)),
        min_severity=doc.get("min_severity", "BREACH"),
        schedule=_seconds(doc["schedule_seconds"]) if "schedule_seconds" in doc else None,
        max_participation=float(doc.get("max_participation", 0.1)),
        min_notional=float(doc.get("min_notional", 0.0)),
        without_adv_cap_notional=(float(doc["without_adv_cap_notional"])
                                  if doc.get("without_adv", "skip") == "cap" else None),
        impact_coefficient=float(doc.get("impact_coefficient", 1.0)),
        factor_hedges=dict(doc.get("factor_hedges", {})),
        bucket_hedges=dict(doc.get("bucket_hedges", {})),
        drift_value=doc.get("drift_value"),
        drift_value_by_limit=dict(doc.get("drift_value_by_limit", {})),
        approval=approval,
    )
