"""Real daily closes shipped inside an installed wheel, and the default study's fund built on them.

skfolio's wheel carries `skfolio/datasets/data/sp500_dataset.csv.gz` (20 S&P 500 stocks,
split-adjusted closes 1990-01-02..2022-12-28) and `sp500_index.csv.gz` (the index over the
same dates), gzip-compressed CSV with a `Date` column. They are read from the installed
files, without importing skfolio (its import pulls scikit-learn and cvxpy) and without a
network. arch's wheel also carries WTI, but only to January 2019, so it would miss the 2020
crisis; the commodity sleeve is held in energy producers instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pandas as pd

INDEX_ID = "SP500"
DATASETS = ("skfolio-sp500",)

# instrument -> (sector, sleeve, daily ADV in USD, spread in bps, daily vol)
REFERENCE: dict[str, tuple[str, str, float, float, float]] = {
    "AAPL": ("Technology", "long_short", 5e9, 2.0, 0.025),
    "AMD": ("Technology", "long_short", 1e9, 4.0, 0.035),
    "MSFT": ("Technology", "long_short", 5e9, 2.0, 0.020),
    "BAC": ("Financials", "long_short", 1.5e9, 3.0, 0.025),
    "JPM": ("Financials", "long_short", 2e9, 2.0, 0.022),
    "BBY": ("Consumer Discretionary", "long_short", 3e8, 5.0, 0.028),
    "HD": ("Consumer Discretionary", "long_short", 1.5e9, 2.0, 0.018),
    "GE": ("Industrials", "long_short", 1e9, 3.0, 0.022),
    "UNH": ("Health Care", "long_short", 1.5e9, 2.0, 0.018),
    "JNJ": ("Health Care", "factor", 1.5e9, 2.0, 0.012),
    "LLY": ("Health Care", "factor", 1e9, 3.0, 0.016),
    "MRK": ("Health Care", "factor", 1e9, 3.0, 0.016),
    "PFE": ("Health Care", "factor", 1e9, 3.0, 0.016),
    "KO": ("Consumer Staples", "factor", 1e9, 2.0, 0.012),
    "PEP": ("Consumer Staples", "factor", 1e9, 2.0, 0.012),
    "PG": ("Consumer Staples", "factor", 1.5e9, 2.0, 0.012),
    "WMT": ("Consumer Staples", "factor", 1.5e9, 2.0, 0.014),
    "XOM": ("Energy", "commodity", 2e9, 2.0, 0.016),
    "CVX": ("Energy", "commodity", 1.5e9, 2.0, 0.017),
    "RRC": ("Energy", "commodity", 2e8, 6.0, 0.035),
    INDEX_ID: ("Index", "long_short", 3e10, 0.5, 0.011),  # traded as an index fund: the sleeve's hedge
}

# The multi-strategy fund: target weights of NAV. An equity long/short sleeve with a short index
# hedge, a defensive-factor sleeve (low-volatility quality names), a commodity sleeve in energy
# producers; the rest is cash.
TARGETS: dict[str, float] = {
    "AAPL": 0.05, "MSFT": 0.05, "JPM": 0.04, "HD": 0.04, "UNH": 0.04,
    "AMD": -0.02, "BBY": -0.02, "BAC": -0.03, "GE": -0.03, INDEX_ID: -0.12,
    "JNJ": 0.04, "LLY": 0.03, "MRK": 0.03, "PFE": 0.03, "KO": 0.03, "PEP": 0.03, "PG": 0.04, "WMT": 0.03,
    "XOM": 0.05, "CVX": 0.05, "RRC": 0.02,
}
SECTOR_LIMITS = ("Technology", "Financials", "Health Care", "Consumer Staples", "Energy")
SLEEVES = ("long_short", "factor", "commodity")


def package_data(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed (pip install 'drift-monitor[lab]')")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed {package}")
    return path


def read_closes(path: Path | str) -> pd.DataFrame:
    """A vendor-style CSV (a date column, one column of closes per instrument) as a date-indexed table."""
    frame = pd.read_csv(path)
    date_column = next(c for c in frame.columns if c.lower() == "date")
    frame[date_column] = pd.to_datetime(frame[date_column])
    return frame.set_index(date_column).rename_axis("date").sort_index().astype(float)


def load_dataset(name: str = "skfolio-sp500") -> pd.DataFrame:
    """The bundled closes: 20 stocks and the S&P 500 index, one row per trading date."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    stocks = read_closes(package_data("skfolio", "datasets", "data", "sp500_dataset.csv.gz"))
    index = read_closes(package_data("skfolio", "datasets", "data", "sp500_index.csv.gz"))
    return stocks.join(index.rename(columns={"SP500": INDEX_ID}), how="inner")


def study_instruments() -> list[dict[str, Any]]:
    """Reference documents (the `instruments` topic) of the study's instruments. `adv` is set per
    month by the lab from the USD ADV here, since the closes are split-adjusted."""
    return [{"instrument_id": iid, "currency": "USD", "asset_class": "index" if iid == INDEX_ID else "equity",
             "sector": sector, "sleeve": sleeve, "adv_usd": adv, "spread_bps": spread, "daily_vol": vol,
             "lot_size": 1}
            for iid, (sector, sleeve, adv, spread, vol) in REFERENCE.items()]


def _bucket_target(dimension: int, bucket: str) -> float:
    return round(sum(w for iid, w in TARGETS.items() if REFERENCE[iid][dimension] == bucket), 10)


def study_limits(relative_width: float, floor: float = 0.005) -> list[dict[str, Any]]:
    """The fund's limits: every weight, the sector and sleeve nets, gross and net leverage, each with
    an absolute band of `relative_width` x |target| (at least `floor`, so a near-zero target still
    has a band)."""
    def band(target: float) -> dict[str, Any]:
        return {"type": "absolute", "width": round(max(relative_width * abs(target), floor), 10)}

    limits = [{"metric": "weight", "instrument": iid, "target": w, "band": band(w)} for iid, w in TARGETS.items()]
    for dimension, name, buckets in ((0, "sector", SECTOR_LIMITS), (1, "sleeve", SLEEVES)):
        for bucket in buckets:
            target = _bucket_target(dimension, bucket)
            limits.append({"metric": "net_weight", "dimension": name, "bucket": bucket, "target": target,
                           "band": band(target)})
    gross = round(sum(abs(w) for w in TARGETS.values()), 10)
    net = round(sum(TARGETS.values()), 10)
    limits.append({"metric": "gross_leverage", "target": gross, "band": band(gross)})
    limits.append({"metric": "net_leverage", "target": net, "band": band(net)})
    return limits
