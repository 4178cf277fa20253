"""The default study (every baseline on the bundled 1990-2022 closes), run once: the literature's
orderings must come out of the computed figures."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.tools.baselines import BAND_WIDTHS
from monitor.tools import lab_command
from monitor.tools.lab import TICK_MS, run_lab
from monitor.tools.lab_command import default_market, default_policies
from monitor.tools.lab_figures import results_table


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    market = default_market()
    policies = default_policies()
    records = run_lab(market, policies, jobs=2)
    return results_table({p.name: records[p.name] for p in policies}, market.closes).set_index("policy")


def test_the_default_study_covers_thirty_years_and_every_baseline(study):
    market = default_market()
    assert market.closes.index[0].year == 1990 and market.closes.index[-1].year == 2022
    assert len(market.closes.columns) == 21 and len(study) >= 12
    assert {"never", "calendar-monthly", "calendar-quarterly", "calendar-annual", "global-20", "hybrid-20"} \
        <= set(study.index)


def test_the_command_names_the_labs_window():
    assert lab_command.TICK_MS == TICK_MS


def test_never_rebalancing_has_the_largest_tracking_error(study):
    assert study["tracking_error"].idxmax() == "never"
    assert study.loc["never", "turnover_per_year"] == 0


def test_trading_to_the_edge_turns_over_and_costs_less_than_to_target(study):
    cheaper = [w for w in BAND_WIDTHS
               if study.loc[f"band-{round(w * 100)}-edge", "turnover_per_year"]
               < study.loc[f"band-{round(w * 100)}-target", "turnover_per_year"]
               and study.loc[f"band-{round(w * 100)}-edge", "cost_bps_per_year"]
               < study.loc[f"band-{round(w * 100)}-target", "cost_bps_per_year"]]
    assert cheaper


def test_a_band_turns_over_less_than_monthly_at_no_worse_tracking_than_quarterly(study):
    bands = study[study.index.str.startswith("band-")]
    better = bands[(bands["turnover_per_year"] < study.loc["calendar-monthly", "turnover_per_year"])
                   & (bands["tracking_error"] <= study.loc["calendar-quarterly", "tracking_error"])]
    assert not better.empty


def test_the_command_writes_the_report_and_a_replayable_log(tmp_path):
    """A short window of the default study through the command line, and its log through replay."""
    out, events = tmp_path / "report", tmp_path / "events.jsonl"
    run = CliRunner().invoke(main, ["lab", "--from", "2020-02-15", "--to", "2020-04-30", "--jobs", "1",
                                    "--out", str(out), "--events", str(events)])
    assert run.exit_code == 0, run.output
    for name in ("results.csv", "report.md", "report.html", "tracking_error_vs_cost.png", "drift_2020.png"):
        assert (out / name).stat().st_size > 0, name
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 15 and results["policy"].is_unique
    replayed = tmp_path / "replayed.jsonl"
    run = CliRunner().invoke(main, ["replay", str(events), "--tick-ms", str(TICK_MS), "--out", str(replayed)])
    assert run.exit_code == 0, run.output
    opened = pd.read_json(replayed, lines=True)["value"].map(lambda v: v.get("state") == "OPEN"
                                                                      and "alert_id" in v).sum()
    assert opened == results["alerts"].sum()
