"""Rebalance proposals: the trades that bring drifted limits back, sized, capped and costed.

Pure: a policy, a valued book, reference data and prices in; a Proposal out. The finance:

- Trades are NAV-neutral: buying notional v (base currency) moves v from cash into the
  holding, so NAV stays `valuation.nav` and a weight moves by v / NAV. Estimated costs are
  reported, not deducted from the after-estimates.
- Each limit goes from its actual to a `goal`, fixed before any trade: the edge where its alert
  resolves (the band edge it crossed, moved in by the hysteresis), an inner rail between the
  band edge and the target (never short of the resolving edge), or the target.
- Trades are first solved as base-currency notionals on hypothetical MVs, per metric:
  weight trades the instrument; net_weight a bucket hedge, else the bucket pro rata to |MV|;
  gross/long/short_weight and the leverages scale the holdings they sum by goal/actual;
  exposure trades a factor hedge (v = dx * NAV / beta), else the smallest (least-squares)
  trade list over the holdings, v_i proportional to beta_i. drawdown and risk_contribution
  have no rule. Limits go in policy order, each re-measured on the hypothetical state, in
  passes (at most 10), because a later limit's trades can move an earlier one.
- Notionals become orders: units in whole lots (up to edge and inner, never short of the goal;
  nearest to target), capped at max_participation x ADV
  (the rest deferred); no ADV: skipped, or capped at a notional. What is left under min_notional
  is dropped: listed as `dropped_quantity` (and warned), neither traded nor deferred, so
  quantity + deferred + dropped is always the whole need.
- Cost = notional x (spread_bps / 2 / 1e4 + impact_coefficient x daily_vol x sqrt(qty / ADV)).
- After-estimates re-measure every limit with the final orders at current prices. When the
  policy values drift, a proposal costing more than the value of the drift it removes is withheld.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from monitor.engine.book import Book
from monitor.engine.model import Instrument, RiskModel
from monitor.engine.policy import BUCKET_METRICS, Limit, Policy, RebalancePolicy
from monitor.engine.valuation import PriceBook, Valuation, decompose_risk, fx_rate, measure

TOL = 1e-12  # a limit this close to its goal has reached it; a metric moving less did not move
MAX_PASSES = 10
_RULES = BUCKET_METRICS | {"weight", "exposure", "gross_leverage", "net_leverage"}
Measured = tuple[float | None, str | None]


@dataclass(frozen=True, slots=True)
class Trade:
    instrument_id: str
    side: str  # BUY | SELL
    quantity: float  # unsigned units now, a whole multiple of lot_size (0 when all is deferred)
    price: float  # latest price used, instrument currency
    notional_base: float  # quantity * price * multiplier * fx-to-base, unsigned
    est_cost_base: float
    est_cost_bps: float
    participation: float | None  # quantity / ADV; None without ADV
    deferred_quantity: float  # unsigned units still needed but not proposed now (liquidity)
    note: str | None  # why quantity differs from the need, else None
    dropped_quantity: float = 0.0  # unsigned units not proposed because under min_notional; not deferred


@dataclass(frozen=True, slots=True)
class LimitEffect:
    limit: Limit
    drift_before: float  # actual - target now
    drift_after: float | None  # estimated after the trades at current prices; None if not re-measurable
    inside_after: bool  # lower <= actual_after <= upper (False when it cannot be re-measured)


@dataclass(frozen=True, slots=True)
class Proposal:
    trades: tuple[Trade, ...]  # sorted by instrument_id
    limits: tuple[LimitEffect, ...]  # in policy order
    total_notional_base: float
    total_est_cost_base: float
    total_est_cost_bps: float
    value_base: float | None  # value of the drift removed; None without a cost-benefit gate
    warnings: tuple[str, ...]
    withheld: str | None  # why the cost-benefit gate withholds it, else None


def goal(limit: Limit, actual: float, trade_to: str, inner_fraction: float, hysteresis: float) -> float:
    """Where a proposal moves a limit; a limit already at or inside its goal stays put.

    `edge` is where an open alert resolves: the band edge on the side of the drift, shrunk by the
    hysteresis (band usage 1 - hysteresis), so an executed proposal ends its alert. `inner` is the
    rail `inner_fraction` of the way from the band edge to the target, never short of that edge."""
    target = limit.target
    if trade_to == "target":
        return target
    lo, hi = limit.band.bounds(target)
    above = actual > target
    usage = 1.0 - hysteresis if trade_to == "edge" else min(1.0 - hysteresis, 1.0 - inner_fraction)
    aim = target + usage * ((hi if above else lo) - target)
    beyond = actual > aim if above else actual < aim
    return aim if beyond else actual


def _fmt(x: float) -> str:
    return f"{x:,.6f}".rstrip("0").rstrip(".")


def _inside(value: float, limit: Limit) -> bool:
    """Bounds inclusive, with TOL so that landing on an edge is not float noise away from it."""
    lo, hi = limit.band.bounds(limit.target)
    return lo - TOL <= value <= hi + TOL


def _lots(units: float, lot: float, floor: bool = False, up: bool = False) -> int:
    """Whole lots in `units` (>= 0): nearest (half up), floor or ceiling, after clearing float noise."""
    n = round(units / lot, 9)
    return int(math.floor(n) if floor else math.ceil(n) if up else math.floor(n + 0.5))


def _unit_value(iid: str, policy: Policy, instruments: Mapping[str, Instrument],
                prices: PriceBook) -> float | str:
    """Base-currency value of one unit, or why the instrument cannot be traded."""
    inst, px = instruments.get(iid), prices.get(iid)
    if inst is None:
        return f"no reference data for {iid}"
    if px is None:
        return f"no price for {iid}"
    fx = fx_rate(inst.currency, policy.base_currency, prices)
    if fx is None:
        return f"no FX {inst.currency}{policy.base_currency} for {iid}"
    return px[0] * inst.multiplier * fx[0]


def _value(limit: Limit, valuation: Valuation, instruments: Mapping[str, Instrument]) -> float:
    value, why = measure(limit, valuation, instruments)
    assert value is not None, why  # every metric with a rule is measurable on a valued book
    return value


def _scale(mv: Mapping[str, float], aim: float, actual: float, what: str) -> dict[str, float] | str:
    """Scale holdings by k = aim / actual: the metric (a sum of them, or of |them|) scales by k."""
    if actual == 0 or not mv:
        return f"no {what} to scale"
    k = aim / actual
    if k < 0:
        return f"goal {aim:.6g} and actual {actual:.6g} have opposite signs"
    return {iid: (k - 1.0) * v for iid, v in mv.items()}


def _deltas(limit: Limit, actual: float, aim: float, hypothetical: Valuation, policy: Policy,
            instruments: Mapping[str, Instrument], prices: PriceBook) -> dict[str, float] | str:
    """Base-currency notional per instrument that moves `limit` from actual to aim, or why none can."""
    rb = policy.rebalance
    assert rb is not None and hypothetical.nav is not None
    need = (aim - actual) * hypothetical.nav
    mv = hypothetical.mv
    metric = limit.metric
    if metric == "weight":
        iid = limit.instrument or ""
        why = _unit_value(iid, policy, instruments, prices)
        return why if isinstance(why, str) else {iid: need}
    if metric in BUCKET_METRICS:
        dim, bucket = limit.dimension or "", limit.bucket
        members = {i: v for i in hypothetical.members(instruments, dim, bucket) if (v := mv[i]) != 0}
        if metric == "net_weight":
            hedge = rb.bucket_hedges.get(limit.limit_id)
            if hedge is not None:
                why = _unit_value(hedge, policy, instruments, prices)
                if isinstance(why, str):
                    return why
                if instruments[hedge].attribute(dim) != bucket:
                    return f"hedge {hedge} is not in {dim} {bucket}, so trading it cannot move the limit"
                return {hedge: need}
            gross = sum(abs(v) for v in members.values())
            if gross == 0:
                return f"no holdings in {dim} {bucket}"
            return {i: need * abs(v) / gross for i, v in members.items()}
        if metric == "long_weight":
            members = {i: v for i, v in members.items() if v > 0}
        elif metric == "short_weight":
            members = {i: v for i, v in members.items() if v < 0}
        return _scale(members, aim, actual, f"{metric.removesuffix('_weight')} holdings in {dim} {bucket}")
    held = {iid: v for iid, v in mv.items() if v != 0}
    if metric in ("gross_leverage", "net_leverage"):
        return _scale(held, aim, actual, "holdings")
    if metric == "exposure":
        factor = limit.factor or ""
        hedge = rb.factor_hedges.get(factor)
        if hedge is not None:
            why = _unit_value(hedge, policy, instruments, prices)
            if isinstance(why, str):
                return why
            beta = instruments[hedge].factors.get(factor, 0.0)
            return {hedge: need / beta} if beta else f"hedge {hedge} has no loading on {factor}"
        betas = {i: b for i in held if (b := instruments[i].factors.get(factor, 0.0))}
        squares = sum(b * b for b in betas.values())
        if not squares:
            return f"no holding loads on factor {factor}"
        return {i: need * b / squares for i, b in betas.items()}
    return f"no trade rule for metric {metric}"


def _solve(policy: Policy, goals: Sequence[tuple[Limit, float]], nav: float, mv: Mapping[str, float],
           instruments: Mapping[str, Instrument], prices: PriceBook, warnings: list[str]) -> dict[str, float]:
    """Hypothetical MVs with every goal met: limits in policy order, in passes until all hold."""
    mv = dict(mv)
    hypothetical = Valuation(nav, mv)  # changed in place: its bucket groups last while no holding is added
    stuck: set[str] = set()
    for _ in range(MAX_PASSES):
        for limit, aim in goals:
            if limit.limit_id in stuck:
                continue
            actual = _value(limit, hypothetical, instruments)
            if abs(actual - aim) <= TOL:
                continue
            deltas = _deltas(limit, actual, aim, hypothetical, policy, instruments, prices)
            if isinstance(deltas, str):
                warnings.append(f"{limit.limit_id}: {deltas}")
                stuck.add(limit.limit_id)
                continue
            for iid, v in deltas.items():
                if iid not in mv:
                    hypothetical.regroup()
                mv[iid] = mv.get(iid, 0.0) + v
        if all(lim.limit_id in stuck or abs(_value(lim, hypothetical, instruments) - aim) <= TOL
               for lim, aim in goals):
            break
    return mv  # unconverged limits show in the after-estimates (and their warnings) if it matters


def _trade(iid: str, v: float, u: float, inst: Instrument, price: float, rb: RebalancePolicy,
           warnings: list[str], round_up: bool) -> Trade | None:
    """Units for notional v: whole lots (nearest, or up: never short of the goal), capped by
    liquidity, dropped under min_notional; costed."""
    lot = inst.lot_size if inst.lot_size > 0 else 1.0
    side = "BUY" if v > 0 else "SELL"
    raw = abs(v) / u
    need = _lots(raw, lot, up=round_up)
    notes: list[str] = []
    if need and abs(need * lot - raw) > 1e-9 * max(1.0, raw):
        notes.append(f"rounded to lots of {_fmt(lot)} from {_fmt(raw)}")
    adv = inst.adv if inst.adv is not None and inst.adv > 0 else None
    if adv is not None:
        cap = _lots(rb.max_participation * adv, lot, floor=True)
        why = f"capped at {rb.max_participation * 100:g}% of ADV {_fmt(adv)}"
    elif rb.without_adv_cap_notional is None:
        cap, why = 0, "no ADV, skipped"
    else:
        cap = _lots(rb.without_adv_cap_notional / u, lot, floor=True)
        why = f"no ADV, capped at notional {_fmt(rb.without_adv_cap_notional)} (base ccy)"
    n = min(need, cap)
    deferred = (need - n) * lot
    if deferred:
        notes.append(f"{why}: {_fmt(deferred)} deferred")
    dropped = 0.0
    if n and n * lot * u < rb.min_notional:
        warnings.append(f"{iid}: {side} {_fmt(n * lot)} dropped, notional {n * lot * u:,.2f} "
                        f"below min_notional {rb.min_notional:,.2f}")
        notes.append(f"{_fmt(n * lot)} below min_notional, dropped")
        dropped, n = n * lot, 0
    if n == 0 and deferred == 0 and dropped == 0:
        return None
    qty = n * lot
    notional = qty * u
    spread = notional * inst.spread_bps / 2 / 1e4 if inst.spread_bps is not None else 0.0
    impact = 0.0
    if inst.daily_vol is not None and adv is not None:
        impact = notional * rb.impact_coefficient * inst.daily_vol * math.sqrt(qty / adv)
    missing = [name for name, absent in (("spread_bps", inst.spread_bps is None),
                                         ("daily_vol", inst.daily_vol is None and rb.impact_coefficient > 0),
                                         ("ADV", adv is None and rb.impact_coefficient > 0)) if absent]
    if qty and missing:
        warnings.append(f"{iid}: estimated cost understated, no {' or '.join(missing)}")
    cost = spread + impact
    return Trade(instrument_id=iid, side=side, quantity=qty, price=price, notional_base=notional,
                 est_cost_base=cost, est_cost_bps=cost / notional * 1e4 if notional else 0.0,
                 participation=qty / adv if adv is not None else None, deferred_quantity=deferred,
                 note="; ".join(notes) or None, dropped_quantity=dropped)


def _measure_all(policy: Policy, valuation: Valuation, instruments: Mapping[str, Instrument],
                 peak_nav: float | None, risk_model: RiskModel | None) -> dict[str, Measured]:
    risk = None
    if risk_model is not None and policy.uses_risk:
        risk = decompose_risk(valuation, instruments, risk_model)
    return {lim.limit_id: measure(lim, valuation, instruments, peak_nav, risk) for lim in policy.limits}


def propose(policy: Policy, limit_ids: Sequence[str], to_target: bool, book: Book, valuation: Valuation,
            instruments: Mapping[str, Instrument], prices: PriceBook,
            peak_nav: float | None = None, risk_model: RiskModel | None = None) -> Proposal:
    """The trades that move `limit_ids` to their goals (to target when `to_target`), and their effects."""
    rb = policy.rebalance
    assert rb is not None, "propose needs a policy with a rebalance section"
    warnings: list[str] = []
    trade_to = "target" if to_target else rb.trade_to
    nav = valuation.nav
    if not valuation.ok or nav is None or nav <= 0:
        why = valuation.unavailable or f"NAV is {nav}"
        return Proposal((), (), 0.0, 0.0, 0.0, 0.0 if rb.gated else None, (f"cannot propose: {why}",), None)
    wanted = set(limit_ids)
    warnings += [f"{lid}: no such limit in policy version {policy.version}"
                 for lid in limit_ids if policy.limit(lid) is None]
    before = _measure_all(policy, valuation, instruments, peak_nav, risk_model)

    goals: list[tuple[Limit, float]] = []
    for lim in (lim for lim in policy.limits if lim.limit_id in wanted):
        actual, why = before[lim.limit_id]
        if actual is None:
            warnings.append(f"{lim.limit_id}: cannot measure: {why}")
            continue
        aim = goal(lim, actual, trade_to, rb.inner_fraction, policy.evaluation.hysteresis)
        if lim.metric in _RULES:
            goals.append((lim, aim))
        elif abs(actual - aim) > TOL:
            warnings.append(f"{lim.limit_id}: no trade rule for metric {lim.metric}")
    solved = _solve(policy, goals, nav, valuation.mv, instruments, prices, warnings)

    trades: list[Trade] = []
    mv_after = dict(valuation.mv)
    for iid in sorted(solved):
        v = solved[iid] - valuation.mv.get(iid, 0.0)
        u = _unit_value(iid, policy, instruments, prices) if v else None
        if u is None or isinstance(u, str):
            continue  # no trade; a str cannot happen: _deltas only trades priced instruments
        inst, price = instruments[iid], prices[iid][0]
        trade = _trade(iid, v, u, inst, price, rb, warnings, round_up=trade_to != "target")
        if trade is None:
            continue
        trades.append(trade)
        if trade.quantity:
            qty = book.positions.get(iid, 0.0) + (trade.quantity if trade.side == "BUY" else -trade.quantity)
            fx = fx_rate(inst.currency, policy.base_currency, prices)
            assert fx is not None
            mv_after[iid] = qty * price * inst.multiplier * fx[0]  # as value_book computes it
            if qty == 0:
                del mv_after[iid]

    after = _measure_all(policy, Valuation(nav, mv_after), instruments, peak_nav, risk_model)
    deferred = any(t.deferred_quantity for t in trades)
    effects: list[LimitEffect] = []
    for lim in policy.limits:
        (b, _), (a, why) = before[lim.limit_id], after[lim.limit_id]
        if b is None or (lim.limit_id not in wanted and (a is None or abs(a - b) <= TOL)):
            continue
        inside_after = a is not None and _inside(a, lim)
        effects.append(LimitEffect(lim, b - lim.target, None if a is None else a - lim.target, inside_after))
        lo, hi = lim.band.bounds(lim.target)
        band = f"band [{lo:.6g}, {hi:.6g}]"
        if a is None:
            if lim.limit_id in wanted:
                warnings.append(f"{lim.limit_id}: cannot estimate after the trades: {why}")
        elif _inside(b, lim) and not inside_after:
            warnings.append(f"would push {lim.limit_id} out of its band: {b:.6g} -> {a:.6g}, {band}")
        elif lim.limit_id in wanted and not inside_after:
            warnings.append(f"{lim.limit_id} still outside its band after the trades: {a:.6g}, {band}"
                            + ("; some quantity is deferred" if deferred else ""))
        elif lim.limit_id in wanted and not to_target and \
                not policy.evaluation.resolves(usage := lim.band.usage(a - lim.target)):
            warnings.append(f"{lim.limit_id} would stay open after the trades: band usage {usage:.4g}, "
                            f"resolves at {1.0 - policy.evaluation.hysteresis:.4g}"
                            + ("; some quantity is deferred" if deferred else ""))

    notional = sum(t.notional_base for t in trades)
    cost = sum(t.est_cost_base for t in trades)
    value: float | None = None
    withheld: str | None = None
    if rb.gated:
        value = sum(rb.value_of(e.limit.limit_id) * max(0.0, abs(e.drift_before) - abs(e.drift_after))
                    for e in effects if e.drift_after is not None)
        if cost > value:
            withheld = f"estimated cost {cost:,.2f} exceeds the value of the drift removed {value:,.2f} (base ccy)"
    return Proposal(tuple(trades), tuple(effects), notional, cost, cost / notional * 1e4 if notional else 0.0,
                    value, tuple(warnings), withheld)
