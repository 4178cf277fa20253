"""Rebalance signals: a proposal made into a signal, and its approval lifecycle, in event time.

A signal is born from a `Proposal` (rebalance.py) as WITHHELD (the cost-benefit gate
or nothing to trade), PENDING_APPROVAL (a threshold of the policy's `approval` section
is crossed) or AUTO_APPROVED. A pending one becomes APPROVED or REJECTED by a decision
on the `approvals` topic, or EXPIRED when its TTL passes in event time. A live signal
(pending or approved) that shares a limit with a newer tradeable signal is SUPERSEDED.
Every transition is a `SignalEvent` carrying the whole proposal, so a trade engine needs
only the latest message of a signal. Ids are hashes of what the signal is about, so a
replay gives the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from monitor.engine.alerts import Attribution, digest
from monitor.engine.model import Micros, Rejected, format_ts, parse_ts
from monitor.engine.policy import SEVERITY_RANK, Policy, RebalancePolicy
from monitor.engine.rebalance import Proposal

PENDING, AUTO_APPROVED, APPROVED = "PENDING_APPROVAL", "AUTO_APPROVED", "APPROVED"
REJECTED, EXPIRED, SUPERSEDED, WITHHELD = "REJECTED", "EXPIRED", "SUPERSEDED", "WITHHELD"
LIVE = frozenset({PENDING, AUTO_APPROVED, APPROVED})  # may still be traded, or decided
NEVER: Micros = 2**62
DECIDED_KEPT = 500  # ids of ended signals remembered per book, to tell "decided" from "unknown"


@dataclass(frozen=True, slots=True)
class Decision:
    """An approver's answer to a PENDING_APPROVAL signal (topic `approvals`)."""

    signal_id: str
    portfolio_id: str
    decision: str  # APPROVE | REJECT
    approver: str
    reason: str | None
    ts: Micros

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> "Decision":
        return cls(m["signal_id"], m["portfolio_id"], m["decision"], m["approver"], m.get("reason"),
                   parse_ts(m["ts"]))


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """One state of a signal: the proposal (`body`, fixed at birth) and what this transition says."""

    body: Mapping[str, Any]
    state: str
    event_ts: Micros
    reason: str | None = None
    approver: str | None = None

    @property
    def signal_id(self) -> str:
        return self.body["signal_id"]

    @property
    def portfolio_id(self) -> str:
        return self.body["portfolio_id"]

    @property
    def event_id(self) -> str:
        return digest(self.signal_id, self.state, self.event_ts)

    def to_message(self, detected_ts: Micros) -> dict[str, Any]:
        """The rebalance-signals contract form (schemas/rebalance-signals.v1.schema.json)."""
        return {"schema_version": 1, "event_id": self.event_id, **self.body, "state": self.state,
                "approver": self.approver, "reason": self.reason, "event_ts": format_ts(self.event_ts),
                "detected_ts": format_ts(detected_ts), "message": self.summary()}

    def summary(self) -> str:
        b = self.body
        ccy = " " + b["base_currency"]
        trades = [t for t in b["trades"] if t["quantity"] > 0]
        head = (f"{self.state} {self.portfolio_id} {b['mode']} to {b['trade_to']}: {len(trades)} trade(s), "
                f"notional {b['total_notional_base']:,.2f}{ccy}, est cost {b['total_est_cost_base']:,.2f}{ccy} "
                f"({b['total_est_cost_bps']:.1f} bps)")
        return f"{head}: {self.reason}" if self.reason else head


@dataclass
class SignalLedger:
    """A book's signals: the live ones in full, the ended ones by id and final state."""

    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {body, state, limit_ids, expires}
    ended: dict[str, str] = field(default_factory=dict)  # id -> final state, the newest DECIDED_KEPT
    next_check: Micros | None = None  # event time of the next scheduled global check
    # No pending signal expires before this (a lower bound; None: not known): `expire` is asked at
    # every evaluation of the book, and late in a day without approvers a signal is nearly always pending.
    _soonest: Micros | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"live": self.live, "ended": self.ended, "next_check": self.next_check}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SignalLedger":
        if not d:
            return cls()
        return cls(dict(d["live"]), dict(d["ended"]), d.get("next_check"))

    # -- transitions ------------------------------------------------------------------

    def propose(self, body: dict[str, Any], proposal: Proposal, severities: Iterable[str],
                rebalance: RebalancePolicy, ts: Micros) -> list[SignalEvent]:
        """A new signal from a proposal; supersedes the live signals it replaces."""
        tradeable = any(t.quantity > 0 for t in proposal.trades)
        if proposal.withheld or not tradeable:
            reason = proposal.withheld or "nothing to trade: " + ("; ".join(proposal.warnings) or "no trade needed")
            self._end(body["signal_id"], WITHHELD)
            return [SignalEvent(body, WITHHELD, ts, reason)]
        why = _needs_approval(proposal, severities, rebalance, " " + body["base_currency"])
        limit_ids = [lim["limit_id"] for lim in body["limits"]]
        out = [self._move(sid, SUPERSEDED, ts, f"superseded by signal {body['signal_id']}")
               for sid, entry in list(self.live.items()) if set(entry["limit_ids"]) & set(limit_ids)]
        state = PENDING if why else AUTO_APPROVED
        expires = ts + rebalance.approval.ttl if why and rebalance.approval else None
        body["expires_ts"] = format_ts(expires) if expires is not None else None
        self.live[body["signal_id"]] = {"body": body, "state": state, "limit_ids": limit_ids, "expires": expires}
        if expires is not None and self._soonest is not None:
            self._soonest = min(self._soonest, expires)
        return out + [SignalEvent(body, state, ts, why)]

    def decide(self, decision: Decision) -> SignalEvent:
        """APPROVED or REJECTED; an approval for no pending signal is refused with the reason."""
        entry = self.live.get(decision.signal_id)
        if entry is None:
            ended = self.ended.get(decision.signal_id)
            if ended is None:
                raise Rejected("unknown_signal", f"no signal {decision.signal_id} for book {decision.portfolio_id}")
            raise Rejected("signal_decided", f"signal {decision.signal_id} is already {ended}")
        if entry["state"] != PENDING:
            raise Rejected("signal_decided", f"signal {decision.signal_id} is already {entry['state']}")
        if entry["expires"] is not None and decision.ts >= entry["expires"]:
            raise Rejected("signal_decided", f"signal {decision.signal_id} expired at "
                                             f"{format_ts(entry['expires'])}, before the decision at "
                                             f"{format_ts(decision.ts)}")
        ts = max(decision.ts, parse_ts(entry["body"]["created_ts"]))
        if decision.decision == "APPROVE":
            entry["state"] = APPROVED
            return SignalEvent(entry["body"], APPROVED, ts, decision.reason, decision.approver)
        return self._move(decision.signal_id, REJECTED, ts, decision.reason, decision.approver)

    def expire(self, now: Micros) -> list[SignalEvent]:
        """Pending signals whose TTL has passed by event time `now` (each at its expiry time)."""
        if not self.live or (self._soonest is not None and now < self._soonest):
            return []  # nearly always
        expiring = [(entry["expires"], sid) for sid, entry in self.live.items()
                    if entry["state"] == PENDING and entry["expires"] is not None]
        out = [self._move(sid, EXPIRED, at, "no decision within the TTL") for at, sid in sorted(expiring)
               if at <= now]
        self._soonest = min((at for at, _ in expiring if at > now), default=NEVER)
        return out

    def awaiting(self) -> bool:
        """Whether an approved signal is live: it ends once its limits have no open alert (`settle`)."""
        return any(entry["state"] != PENDING for entry in self.live.values())

    def settle(self, open_limits: set[str]) -> None:
        """Approved signals whose limits have no open alert left are done: forget them quietly."""
        for sid, entry in list(self.live.items()):
            if entry["state"] != PENDING and not set(entry["limit_ids"]) & open_limits:
                del self.live[sid]
                self._end(sid, entry["state"])

    def _move(self, sid: str, state: str, ts: Micros, reason: str | None,
              approver: str | None = None) -> SignalEvent:
        entry = self.live.pop(sid)
        self._end(sid, state)
        return SignalEvent(entry["body"], state, ts, reason, approver)

    def _end(self, sid: str, state: str) -> None:
        self.ended[sid] = state
        while len(self.ended) > DECIDED_KEPT:
            del self.ended[next(iter(self.ended))]


def _needs_approval(proposal: Proposal, severities: Iterable[str], rebalance: RebalancePolicy,
                    ccy: str) -> str | None:
    """Why a human must approve this proposal, or None."""
    approval = rebalance.approval
    if approval is None:
        return None
    if approval.notional_above is not None and proposal.total_notional_base > approval.notional_above:
        return (f"total notional {proposal.total_notional_base:,.2f}{ccy} above the approval threshold "
                f"{approval.notional_above:,.2f}{ccy}")
    if approval.cost_above is not None and proposal.total_est_cost_base > approval.cost_above:
        return (f"estimated cost {proposal.total_est_cost_base:,.2f}{ccy} above the approval threshold "
                f"{approval.cost_above:,.2f}{ccy}")
    if approval.severity is not None:
        worst = max(severities, key=lambda s: SEVERITY_RANK.get(s, -1), default=None)
        if worst is not None and SEVERITY_RANK[worst] >= SEVERITY_RANK[approval.severity]:
            return f"an alert behind it is {worst} (approval needed at {approval.severity} or above)"
    return None


def signal_body(policy: Policy, proposal: Proposal, trigger: str, mode: str, alert_ids: Iterable[str],
                attribution: Mapping[str, Attribution | None], ts: Micros) -> dict[str, Any]:
    """The proposal part of a signal message: fixed for the signal's whole life."""
    assert policy.rebalance is not None
    trade_to = "target" if mode == "global" else policy.rebalance.trade_to
    limits = [lim.limit.limit_id for lim in proposal.limits]
    signal_id = digest(policy.portfolio_id, trigger, mode, ",".join(limits), ts, policy.version)
    return {
        "signal_id": signal_id,
        "portfolio_id": policy.portfolio_id,
        "base_currency": policy.base_currency,
        "trigger": trigger,
        "alert_ids": sorted(alert_ids),
        "mode": mode,
        "trade_to": trade_to,
        "trades": [{
            "instrument_id": t.instrument_id, "side": t.side, "quantity": t.quantity, "price": t.price,
            "notional_base": t.notional_base, "est_cost_base": t.est_cost_base, "est_cost_bps": t.est_cost_bps,
            "participation": t.participation, "deferred_quantity": t.deferred_quantity,
            "dropped_quantity": t.dropped_quantity, "note": t.note,
        } for t in proposal.trades],
        "limits": [{
            "limit_id": e.limit.limit_id, "metric": e.limit.metric, "target": e.limit.target,
            "band": dict(zip(("lower", "upper"), e.limit.band.bounds(e.limit.target))),
            "drift_before": e.drift_before, "drift_after_est": e.drift_after, "inside_after": e.inside_after,
            "attribution": (a.to_message() if (a := attribution.get(e.limit.limit_id)) else None),
        } for e in proposal.limits],
        "total_notional_base": proposal.total_notional_base,
        "total_est_cost_base": proposal.total_est_cost_base,
        "total_est_cost_bps": proposal.total_est_cost_bps,
        "value_base": proposal.value_base,
        "warnings": list(proposal.warnings),
        "policy_version": policy.version,
        "created_ts": format_ts(ts),
        "expires_ts": None,
    }
