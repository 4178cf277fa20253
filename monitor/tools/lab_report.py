"""The lab's report folder: results.csv, report.md, report.html and their PNG plots."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping

import pandas as pd

from monitor.tools.lab import BookRecord
from monitor.tools.lab_figures import by_metric, daily_drift

CRISES = {"2008": ("2008-06-01", "2009-06-30"), "2020": ("2020-01-01", "2020-12-31")}
SHOWN = ["policy", "mean_abs_drift", "rms_drift", "pct_days_outside_band", "max_abs_drift", "turnover_per_year",
         "cost_bps_per_year", "signals", "trades", "alerts", "alerts_resolved_without_trade", "ann_return",
         "ann_volatility", "tracking_difference", "tracking_error"]


def best_band_policy(results: pd.DataFrame) -> str | None:
    """The band policy with the smallest tracking error (ties: the cheaper one)."""
    bands = results[results["policy"].str.startswith("band-")]
    if bands.empty:
        return None
    return str(bands.sort_values(["tracking_error", "cost_bps_per_year"]).iloc[0]["policy"])


def crisis_lines(results: pd.DataFrame) -> list[str]:
    """The policies drawn through the crises: the best band, a calendar and never rebalancing."""
    names = [best_band_policy(results), "calendar-quarterly", "never"]
    known = set(results["policy"])
    return [n for n in names if n is not None and n in known] or list(results["policy"][:3])


def plot_cost_vs_tracking(results: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(results["cost_bps_per_year"], results["tracking_error"] * 1e4, s=18)
    for _, row in results.iterrows():
        ax.annotate(row["policy"], (row["cost_bps_per_year"], row["tracking_error"] * 1e4), fontsize=7,
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("cost, bps of NAV per year")
    ax.set_yscale("log")  # never rebalancing sits far above the rest
    ax.set_ylabel("tracking error vs the target book, bps per year (log)")
    ax.set_title("Every policy: tracking error against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_crisis(drift: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in drift.columns:
        ax.plot(drift.index, drift[name] * 1e4, label=name, lw=1.2)
    ax.set_yscale("log")
    ax.set_ylabel("mean |drift| over the limits, bps (log)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def write_report(out: Path, results: pd.DataFrame, records: Mapping[str, BookRecord], closes: pd.DataFrame,
                 about: str) -> list[Path]:
    """Every file of the report folder; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.csv"]
    results.to_csv(written[0], index=False)
    plots: list[tuple[str, str]] = []
    plot_cost_vs_tracking(results, out / "tracking_error_vs_cost.png")
    plots.append(("tracking_error_vs_cost.png", "Tracking error against cost, every policy"))
    lines = crisis_lines(results)
    for crisis, (start, end) in CRISES.items():
        drift = pd.concat([daily_drift(records[n], closes.index) for n in lines], axis=1).loc[start:end]
        if len(drift) > 5:
            name = f"drift_{crisis}.png"
            plot_crisis(drift, f"Drift through the {crisis} crisis", out / name)
            plots.append((name, f"Mean |drift| through the {crisis} crisis: {', '.join(lines)}"))
    written += [out / p for p, _ in plots]
    metric_table = by_metric(records).reset_index()
    md = [f"# Policy lab report\n\n{about}\n", "## Figures per policy\n", markdown_table(results[SHOWN]),
          "\n## Mean |drift| per limit metric\n", markdown_table(metric_table), "\n## Plots\n"]
    md += [f"![{caption}]({p})\n" for p, caption in plots]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written.append(out / "report.md")
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>Policy lab report</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}</style>",
            "</head><body><h1>Policy lab report</h1>", f"<p>{html.escape(about)}</p>",
            "<h2>Figures per policy</h2>", results[SHOWN].to_html(index=False, float_format=lambda x: f"{x:.4g}"),
            "<h2>Mean |drift| per limit metric</h2>",
            metric_table.to_html(index=False, float_format=lambda x: f"{x:.4g}"), "<h2>Plots</h2>"]
    page += [f"<figure><img src='{p}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption></figure>"
             for p, c in plots]
    page.append("</body></html>")
    (out / "report.html").write_text("\n".join(page), encoding="utf-8")
    written.append(out / "report.html")
    return written
