"""The lab's figures per policy, from what its book did date by date (pure numpy/pandas).

Definitions (README, "Policy lab"):
- drift = actual - target of each limit at each date's close, in the metric's units (weights and
  leverage as fractions of NAV); `mean_abs_drift` and `rms_drift` average over dates and limits,
  `max_abs_drift` is the largest; `pct_days_outside_band` is the share of (date, limit) pairs
  outside the policy's own band, in percent.
- `turnover_per_year`: one-way traded notional / average NAV / years; `cost_bps_per_year`: fees
  paid / average NAV / years, in bps.
- `ann_return` (geometric) and `ann_volatility` of the NAV; the target book is held exactly at
  the target weights every day at no cost (its daily return is the target-weighted mean of the
  instruments' returns, cash earning 0); `tracking_difference` is the annualised return minus
  the target book's, `tracking_error` the annualised standard deviation of the daily return
  differences.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from monitor.tools.lab import BookRecord

TRADING_DAYS = 252
TOL = 1e-12  # as the engine's band test: landing on an edge is inside


def years_between(dates: pd.DatetimeIndex) -> float:
    return max((dates[-1] - dates[0]).days / 365.25, 1 / 365.25)


def drift_figures(actuals: np.ndarray, limits: pd.DataFrame) -> dict[str, float]:
    """Drift of every limit at every date against its target and band."""
    target = limits["target"].to_numpy(dtype=float)
    drift = actuals - target
    outside = (actuals < limits["lower"].to_numpy(dtype=float) - TOL) | \
              (actuals > limits["upper"].to_numpy(dtype=float) + TOL)
    measured = ~np.isnan(actuals)
    absolute = np.abs(drift[measured])
    return {
        "mean_abs_drift": float(absolute.mean()) if absolute.size else float("nan"),
        "rms_drift": float(np.sqrt((absolute ** 2).mean())) if absolute.size else float("nan"),
        "pct_days_outside_band": float(100 * outside[measured].mean()) if absolute.size else float("nan"),
        "max_abs_drift": float(absolute.max()) if absolute.size else float("nan"),
    }


def daily_drift(record: BookRecord, dates: pd.DatetimeIndex) -> pd.Series:
    """Mean |drift| over the limits at each date (for the crisis plots)."""
    drift = np.abs(record.actuals - record.limits["target"].to_numpy(dtype=float))
    return pd.Series(np.nanmean(drift, axis=1), index=dates, name=record.name)


def target_weights(record: BookRecord) -> dict[str, float]:
    weights = record.limits[record.limits["metric"] == "weight"]
    return {lid.split(":", 1)[1]: float(t) for lid, t in zip(weights["limit_id"], weights["target"])}


def target_returns(closes: pd.DataFrame, weights: Mapping[str, float]) -> pd.Series:
    """Daily returns of a book held exactly at `weights` (rebalanced every day at no cost)."""
    returns = closes[list(weights)].pct_change().iloc[1:]
    return returns @ pd.Series(weights)


def return_figures(nav: np.ndarray, dates: pd.DatetimeIndex, benchmark: pd.Series) -> dict[str, float]:
    years = years_between(dates)
    nav_series = pd.Series(nav, index=dates)
    daily = nav_series.pct_change().iloc[1:]
    growth = nav[-1] / nav[0]
    bench_growth = float((1 + benchmark).prod())
    ann = growth ** (1 / years) - 1
    return {
        "ann_return": float(ann),
        "ann_volatility": float(daily.std() * np.sqrt(TRADING_DAYS)),
        "tracking_difference": float(ann - (bench_growth ** (1 / years) - 1)),
        "tracking_error": float((daily - benchmark).std() * np.sqrt(TRADING_DAYS)),
    }


def trading_figures(record: BookRecord, dates: pd.DatetimeIndex) -> dict[str, float]:
    years, mean_nav = years_between(dates), float(np.nanmean(record.nav))
    return {
        "turnover_per_year": float(record.traded.sum() / mean_nav / years),
        "cost_bps_per_year": float(record.fees.sum() / mean_nav / years * 1e4),
    }


def alert_figures(record: BookRecord) -> dict[str, int]:
    """Alerts opened, and those that resolved with no fill on the book after they opened."""
    traded_by = np.cumsum(record.fills)
    without_trade = sum(1 for _, opened, resolved in record.alerts
                        if resolved is not None and traded_by[resolved] == traded_by[opened])
    return {"signals": int(sum(record.signals.values())), "trades": int(record.fills.sum()),
            "alerts": len(record.alerts), "alerts_resolved_without_trade": without_trade}


def policy_figures(record: BookRecord, closes: pd.DataFrame) -> dict[str, Any]:
    dates = closes.index
    bench = target_returns(closes, target_weights(record))
    return {"policy": record.name, **drift_figures(record.actuals, record.limits),
            **trading_figures(record, dates), **alert_figures(record),
            **return_figures(record.nav, dates, bench)}


def results_table(records: Mapping[str, BookRecord], closes: pd.DataFrame) -> pd.DataFrame:
    """One row per policy (the `policy` column names it), in the order given."""
    return pd.DataFrame([policy_figures(rec, closes) for rec in records.values()])


def by_metric(records: Mapping[str, BookRecord]) -> pd.DataFrame:
    """mean |drift| per policy and limit metric (weight, net_weight, leverage...)."""
    rows = []
    for name, rec in records.items():
        drift = np.abs(rec.actuals - rec.limits["target"].to_numpy(dtype=float))
        for metric in dict.fromkeys(rec.limits["metric"]):
            cols = (rec.limits["metric"] == metric).to_numpy()
            rows.append({"policy": name, "metric": metric, "mean_abs_drift": float(np.nanmean(drift[:, cols]))})
    return pd.DataFrame(rows).pivot(index="policy", columns="metric", values="mean_abs_drift") \
        .reindex(list(records))
