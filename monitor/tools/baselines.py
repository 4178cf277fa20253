"""The lab's built-in baseline policies, and `--grid` variations of a base policy.

Every baseline has the same limits (the study's, or a given policy's) and differs only in how
it rebalances and in its band width:

- `never`: alerts only, no rebalance section;
- `calendar-monthly|quarterly|annual`: a global check every 1/12, 1/4 or 1 year of event
  time (periods counted from the epoch, as the engine schedules them) moves every limit back
  to target; alerts never ask for a proposal (min_severity CRITICAL, critical_multiple out of
  reach);
- `band-W-edge|inner|target`: threshold bands of W% of each target (a floor of half a point),
  targeted proposals to the edge, the inner rail (half way) or the target;
- `global-W`: any alert moves every limit to target; `hybrid-W`: targeted to the edge on
  alerts plus a quarterly global check.

The baselines use hysteresis 0: with the engine as it is, an alert stays open after a trade to
the band edge unless the limit lands inside the band shrunk by the hysteresis, and an open alert
asks for no new proposal (issue 16); with 0, a limit back inside its band resolves.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from monitor.tools.lab import LabPolicy

YEAR_SECONDS = 365.25 * 86_400
CALENDARS = {"monthly": YEAR_SECONDS / 12, "quarterly": YEAR_SECONDS / 4, "annual": YEAR_SECONDS}
BAND_WIDTHS = (0.1, 0.2, 0.3)  # of each target
REFERENCE_WIDTH = 0.2  # the band of the policies that do not trade on bands (never, calendar)
TRADE_TO = ("edge", "inner", "target")
EVALUATION = {"persistence_seconds": 0, "hysteresis": 0.0, "stale_price_seconds": 300}
REBALANCE = {"max_participation": 0.1, "min_notional": 0, "impact_coefficient": 1.0}
LimitsAt = Callable[[float], list[dict[str, Any]]]  # band width -> limit documents


def policy_doc(name: str, limits: list[dict[str, Any]], rebalance: Mapping[str, Any] | None,
               evaluation: Mapping[str, Any] | None = None, base_currency: str = "USD") -> dict[str, Any]:
    doc: dict[str, Any] = {"portfolio_id": name, "version": 1, "base_currency": base_currency,
                           "evaluation": dict(evaluation or EVALUATION), "limits": limits}
    if rebalance is not None:
        doc["rebalance"] = {**REBALANCE, **rebalance}
    return doc


def baselines(limits_at: LimitsAt, widths: Sequence[float] = BAND_WIDTHS,
              base_currency: str = "USD") -> list[LabPolicy]:
    """Every baseline over the limits `limits_at(width)` gives."""
    reference = limits_at(REFERENCE_WIDTH)
    out = [LabPolicy.named("never", policy_doc("never", reference, None, base_currency=base_currency))]
    calendar_evaluation = {**EVALUATION, "critical_multiple": 1e9}
    for period, seconds in CALENDARS.items():
        name = f"calendar-{period}"
        out.append(LabPolicy.named(name, policy_doc(
            name, reference, {"mode": "global", "schedule_seconds": seconds, "min_severity": "CRITICAL"},
            calendar_evaluation, base_currency)))
    for width in widths:
        w = f"{round(width * 100):d}"
        for trade_to in TRADE_TO:
            name = f"band-{w}-{trade_to}"
            out.append(LabPolicy.named(name, policy_doc(name, limits_at(width), {"mode": "targeted",
                                                                                 "trade_to": trade_to},
                                                        base_currency=base_currency)))
    w = f"{round(REFERENCE_WIDTH * 100):d}"
    out.append(LabPolicy.named(f"global-{w}", policy_doc(f"global-{w}", reference, {"mode": "global"},
                                                         base_currency=base_currency)))
    out.append(LabPolicy.named(f"hybrid-{w}", policy_doc(
        f"hybrid-{w}", reference, {"mode": "hybrid", "trade_to": "edge", "schedule_seconds": CALENDARS["quarterly"]},
        base_currency=base_currency)))
    return out


def scaled_limits(limits: list[dict[str, Any]]) -> LimitsAt:
    """Baseline limits from a given policy's: its bands scaled by width / REFERENCE_WIDTH."""
    return lambda width: [scale_band(lim, width / REFERENCE_WIDTH) for lim in limits]


def scale_band(limit: Mapping[str, Any], factor: float) -> dict[str, Any]:
    band = {k: (v * factor if k in ("width", "lower", "upper") else v) for k, v in limit["band"].items()}
    return {**limit, "band": band}


# ----- --grid ---------------------------------------------------------------------------------


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = doc
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid(base: Mapping[str, Any], vary: Mapping[str, Sequence[Any]]) -> list[LabPolicy]:
    """One policy per combination of the varied values. A key is a dotted path into the policy document
    (`rebalance.trade_to`, `evaluation.hysteresis`), or `band_scale`: a factor on every limit's band."""
    keys = list(vary)
    out = []
    for values in itertools.product(*(vary[k] for k in keys)):
        doc = copy.deepcopy(dict(base))
        for key, value in zip(keys, values):
            if key == "band_scale":
                doc["limits"] = [scale_band(lim, float(value)) for lim in doc["limits"]]
            else:
                _set(doc, key, value)
        name = "grid-" + "-".join(f"{key.rsplit('.', 1)[-1]}={_label(v)}" for key, v in zip(keys, values))
        out.append(LabPolicy.named(name, doc))
    return out


def read_grid(path: Path, default_base: Mapping[str, Any]) -> list[LabPolicy]:
    """A grid file (YAML): `vary: {key: [values]}` and optionally `base:` a policy document or the path
    of a policy file (relative to the grid file); without it, the default base policy."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = spec.get("base", default_base)
    if isinstance(base, str):
        base = yaml.safe_load((path.parent / base).read_text(encoding="utf-8"))
    if not isinstance(spec.get("vary"), dict) or not spec["vary"]:
        raise ValueError(f"{path}: a grid needs `vary: {{key: [values, ...]}}`")
    return grid(base, spec["vary"])
