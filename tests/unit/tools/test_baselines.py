"""Baseline policies and --grid variations: valid policy documents that differ where they should."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.stream.codec import event_from_doc
from monitor.tools.baselines import BAND_WIDTHS, baselines, grid, read_grid, scaled_limits
from monitor.tools.datasets import TARGETS, study_limits

GRID_100 = Path(__file__).parents[2] / "examples" / "lab" / "grid-100.yaml"


def test_every_baseline_is_a_valid_policy_with_the_same_limits():
    policies = baselines(study_limits)
    assert len(policies) == 1 + 3 + 3 * len(BAND_WIDTHS) + 2
    ids = None
    for p in policies:
        parsed = event_from_doc("policies", p.doc, p.name, validated=False)
        assert parsed.portfolio_id == p.name
        limit_ids = [lim.limit_id for lim in parsed.limits]
        assert ids is None or limit_ids == ids
        ids = limit_ids
    assert {f"weight:{iid}" for iid in TARGETS} <= set(ids)
    by_name = {p.name: p.doc for p in policies}
    assert "rebalance" not in by_name["never"]
    assert by_name["calendar-monthly"]["rebalance"]["mode"] == "global"
    assert by_name["band-10-edge"]["rebalance"]["trade_to"] == "edge"


def test_band_widths_follow_the_targets():
    narrow, wide = study_limits(0.1), study_limits(0.3)
    for n, w in zip(narrow, wide):
        assert w["band"]["width"] >= n["band"]["width"] >= 0.005
        assert n["band"]["width"] == pytest.approx(max(0.1 * abs(n["target"]), 0.005))


def test_a_grid_is_every_combination_of_the_varied_values():
    base = next(p.doc for p in baselines(study_limits) if p.name == "band-20-inner")
    policies = grid(base, {"band_scale": [0.5, 2.0], "rebalance.trade_to": ["edge", "target"]})
    assert [p.name for p in policies] == ["grid-band_scale=0.5-trade_to=edge", "grid-band_scale=0.5-trade_to=target",
                                          "grid-band_scale=2-trade_to=edge", "grid-band_scale=2-trade_to=target"]
    first, last = policies[0].doc, policies[-1].doc
    assert last["limits"][0]["band"]["width"] == pytest.approx(4 * first["limits"][0]["band"]["width"])
    assert base["rebalance"]["trade_to"] == "inner"  # the base is not changed
    for p in policies:
        event_from_doc("policies", p.doc, p.name, validated=False)


def test_the_bundled_100_policy_grid():
    base = next(p.doc for p in baselines(scaled_limits(study_limits(0.2))) if p.name == "band-20-inner")
    policies = read_grid(GRID_100, base)
    assert len(policies) == 100 and len({p.name for p in policies}) == 100
