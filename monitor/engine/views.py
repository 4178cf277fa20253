"""What a desk asks of a book: the read model behind the worker's query API and `monitor top`.

Pure functions over an `Engine`; no I/O, and nothing here changes the engine (the worker calls
them under its lock, so a reader never sees a half-applied event). Two clocks, both stated:

* limits, band usage, alerts and NAV are *as evaluated*: the numbers the engine judged the book on
  at its last evaluation (`evaluated_ts`), the same ones behind the alerts on `drift-alerts`;
* holdings and exposures are valued at the latest prices the worker holds (`valued_ts`), so a
  position a fill just moved shows at once.

Every value is JSON-ready: times RFC 3339, a number that is not finite (or not known) is null.
"""

from __future__ import annotations

import math
from typing import Any

from monitor.engine.alerts import LimitState
from monitor.engine.engine import NAV_LIMIT_ID, RECONCILIATION_LIMIT_ID, STALE_LIMIT_ID, Engine, Watch
from monitor.engine.model import Micros, format_ts
from monitor.engine.policy import Limit, Policy
from monitor.engine.signals import LIVE, PENDING
from monitor.engine.valuation import value_book

ALERT_STATES = ("open",)  # alerts the engine holds: resolved ones live on the drift-alerts topic
SIGNAL_STATES = tuple(sorted(LIVE))  # signals the engine holds in full: the ended ones only by id
# The book's own conditions (not a policy limit): kind, limit id and metric as on drift-alerts.
_CONDITIONS = (("stale", "DATA_STALE", STALE_LIMIT_ID, "price_age_seconds", "BREACH"),
               ("nav", "NAV_NON_POSITIVE", NAV_LIMIT_ID, "nav", "CRITICAL"),
               ("reconciliation", "RECONCILIATION_BREAK", RECONCILIATION_LIMIT_ID, "reconciliation_breaks", "BREACH"))


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _ts(ts: Micros | None) -> str | None:
    return format_ts(ts) if ts else None


def book_ids(engine: Engine) -> list[str]:
    """Every book the worker knows: with a policy, a snapshot or fills."""
    return sorted(engine.books.keys() | engine.policies.keys())


def _evaluated_actual(watch: Watch, k: int, limit: Limit) -> float | None:
    """Limit k's metric as last evaluated, read without settling the watch: a quiet limit's value
    is in the latest note (`Quiet`), any other's in its state."""
    note = watch.quiet
    if note is not None and k < len(note.limits) and k not in note.judged and note.columns[k] is not None:
        return note.actuals[note.columns[k]]  # type: ignore[index]
    state = watch.states.get(limit.limit_id)
    return state.last_actual if state is not None else None


def limit_views(policy: Policy, watch: Watch | None) -> list[dict[str, Any]]:
    """Every limit of the policy: target, band, the evaluated actual, band usage, severity, its alert."""
    out = []
    for k, limit in enumerate(policy.limits):
        state: LimitState | None = watch.states.get(limit.limit_id) if watch is not None else None
        actual = _num(_evaluated_actual(watch, k, limit)) if watch is not None else None
        drift = actual - limit.target if actual is not None else None
        usage = _num(limit.band.usage(drift)) if drift is not None else None
        alert_id = state.alert_id if state is not None else None
        if alert_id is not None:
            severity, alert_state = state.severity or "BREACH", "OPEN"  # type: ignore[union-attr]
        else:
            severity = policy.evaluation.severity(usage) if usage is not None else None
            # Outside its band but not for the policy's persistence yet: no alert, one is coming.
            alert_state = "PENDING" if state is not None and state.breach_since is not None else None
        lower, upper = limit.band.bounds(limit.target)
        out.append({"limit_id": limit.limit_id, "metric": limit.metric, "instrument": limit.instrument,
                    "dimension": limit.dimension, "bucket": limit.bucket, "factor": limit.factor,
                    "target": limit.target, "band": {"lower": lower, "upper": upper}, "actual": actual,
                    "drift": drift, "usage": usage, "severity": severity, "alert_id": alert_id,
                    "alert_state": alert_state, "opened_ts": _ts(state.opened_ts) if alert_id else None})
    return out


def _conditions(pid: str, watch: Watch | None) -> list[dict[str, Any]]:
    """The book's open conditions (stale prices, NAV <= 0, a reconciliation break) as alerts."""
    if watch is None:
        return []
    out = []
    for attr, kind, limit_id, metric, severity in _CONDITIONS:
        state: LimitState = getattr(watch, attr)
        if state.alert_id is not None:
            out.append({"alert_id": state.alert_id, "portfolio_id": pid, "kind": kind, "limit_id": limit_id,
                        "metric": metric, "dimension": None, "bucket": None, "severity": severity,
                        "opened_ts": _ts(state.opened_ts), "actual": None, "target": None, "band": None,
                        "usage": None})
    return out


def _worst(policy: Policy, watch: Watch) -> tuple[float, int, float] | None:
    """(usage, index, actual) of the limit with the largest band usage as evaluated (the first of
    equals). A lean pass, since the book list does it for every book under the worker's lock."""
    worst = None
    for k, limit in enumerate(policy.limits):
        actual = _evaluated_actual(watch, k, limit)
        if actual is None or not math.isfinite(actual):
            continue
        usage = limit.band.usage(actual - limit.target)
        if worst is None or usage > worst[0]:
            worst = (usage, k, actual)
    return worst


def _summary(engine: Engine, pid: str) -> dict[str, Any]:
    policy, watch, status = engine.policies.get(pid), engine.watches.get(pid), engine.status.get(pid)
    found = _worst(policy, watch) if policy is not None and watch is not None else None
    worst_limit = None
    if found is not None:
        usage, k, actual = found
        limit, state = policy.limits[k], watch.states.get(policy.limits[k].limit_id)  # type: ignore[union-attr]
        open_ = state is not None and state.alert_id is not None
        worst_limit = {"limit_id": limit.limit_id, "metric": limit.metric, "bucket": limit.bucket, "actual": actual,
                       "target": limit.target, "drift": actual - limit.target,
                       "severity": (state.severity or "BREACH") if open_ else  # type: ignore[union-attr]
                       policy.evaluation.severity(usage)}  # type: ignore[union-attr]
    open_alerts = len(watch.open_alerts(policy.limits)) if policy is not None and watch is not None else 0
    return {
        "portfolio_id": pid,
        "base_currency": policy.base_currency if policy else None,
        "policy_version": policy.version if policy else None,
        "nav": _num(status.nav) if status else None,
        "unavailable": status.unavailable if status else None,
        "worst_band_usage": _num(found[0]) if found else None,
        "worst_limit": worst_limit,
        "open_alerts": open_alerts + len(_conditions(pid, watch)),
        "pending_signals": sum(e["state"] == PENDING for e in watch.signals.live.values()) if watch else 0,
        "evaluated_ts": _ts(watch.clock) if watch else None,
    }


def _limits(engine: Engine, pid: str) -> list[dict[str, Any]]:
    policy = engine.policies.get(pid)
    return limit_views(policy, engine.watches.get(pid)) if policy is not None else []


def books(engine: Engine) -> list[dict[str, Any]]:
    """Every book's headline: NAV, worst band usage and its limit, open alerts, pending signals."""
    return [_summary(engine, pid) for pid in book_ids(engine)]


def book(engine: Engine, pid: str) -> dict[str, Any] | None:
    """One book in full: its headline, every limit, open conditions, holdings and exposures; None
    for a book this engine does not know."""
    if not engine.known_book(pid):
        return None
    return {**_summary(engine, pid), "limits": _limits(engine, pid),
            "conditions": _conditions(pid, engine.watches.get(pid)), **_holdings(engine, pid)}


def _holdings(engine: Engine, pid: str) -> dict[str, Any]:
    """Positions with price, MV and weight; weights by bucket of every instrument attribute, and factor
    exposures; at the latest prices, in the policy's base currency."""
    b, policy = engine.books.get(pid), engine.policies.get(pid)
    empty = {"valued_ts": None, "valuation_nav": None, "cash": {}, "holdings": [], "exposures": {}, "factors": {}}
    if b is None or b.as_of is None:
        return empty | {"unavailable_valuation": "no position snapshot yet"}
    if policy is None:
        return empty | {"cash": dict(b.cash), "unavailable_valuation": "no policy: no base currency",
                        "holdings": [{"instrument_id": iid, "quantity": q, "price": None, "mv": None, "weight": None}
                                     for iid, q in sorted(b.positions.items())]}
    valuation = value_book(b, policy.base_currency, engine.instruments, engine.prices)
    nav = valuation.nav if valuation.ok else None
    weigh = (lambda mv: mv / nav) if nav is not None and nav > 0 else (lambda mv: None)
    holdings = []
    for iid, qty in sorted(b.positions.items()):
        mv, px = valuation.mv.get(iid), engine.prices.get(iid)
        holdings.append({"instrument_id": iid, "quantity": qty, "price": _num(px[0]) if px else None,
                         "mv": _num(mv), "weight": _num(weigh(mv)) if mv is not None else None})
    exposures: dict[str, dict[str, dict[str, float]]] = {}
    factors: dict[str, float] = {}
    if nav is not None and nav > 0:
        for iid, mv in valuation.mv.items():
            instrument, w = engine.instruments[iid], mv / nav
            for dimension, bucket in instrument.attributes.items():
                cell = exposures.setdefault(dimension, {}).setdefault(
                    bucket, {"net": 0.0, "gross": 0.0, "long": 0.0, "short": 0.0})
                cell["net"] += w
                cell["gross"] += abs(w)
                cell["long" if w > 0 else "short"] += w
            for factor, loading in instrument.factors.items():
                factors[factor] = factors.get(factor, 0.0) + w * loading
    return {"valued_ts": _ts(valuation.price_ts), "valuation_nav": _num(nav),
            "unavailable_valuation": valuation.unavailable, "cash": dict(b.cash), "holdings": holdings,
            "exposures": {d: dict(sorted(buckets.items())) for d, buckets in sorted(exposures.items())},
            "factors": dict(sorted(factors.items()))}


def alerts(engine: Engine) -> list[dict[str, Any]]:
    """Every open alert of every book: on a limit (with its numbers) or on the book's data."""
    out = []
    for pid in book_ids(engine):
        watch, policy = engine.watches.get(pid), engine.policies.get(pid)
        if watch is None:
            continue
        if policy is not None and watch.open_alerts(policy.limits):  # only books with one are looked at closely
            for lim in limit_views(policy, watch):
                if lim["alert_state"] == "OPEN":
                    out.append({"alert_id": lim["alert_id"], "portfolio_id": pid, "kind": "LIMIT",
                                **{k: lim[k] for k in ("limit_id", "metric", "dimension", "bucket", "severity",
                                                       "opened_ts", "actual", "target", "band", "usage")}})
        out += _conditions(pid, watch)
    return out


def signals(engine: Engine, state: str | None = None) -> list[dict[str, Any]]:
    """The live signals (pending, auto-approved, approved) of every book, in the rebalance-signals
    contract's form (trades, limits, costs), with their state; only those in `state` if given."""
    out = []
    for pid in book_ids(engine):
        watch = engine.watches.get(pid)
        if watch is None:
            continue
        for entry in watch.signals.live.values():
            if state is None or entry["state"] == state:
                out.append({**entry["body"], "state": entry["state"]})
    return sorted(out, key=lambda s: (s["created_ts"], s["signal_id"]))
