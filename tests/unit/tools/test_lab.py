"""The policy lab on a hand-computed two-asset book, and against `monitor replay` of its own log."""

from __future__ import annotations

import io
import math

import numpy as np
import orjson
import pandas as pd
import pytest

from monitor.engine import Engine
from monitor.replay import Replay, output_record
from monitor.tools.baselines import baselines
from monitor.tools.datasets import study_limits
from monitor.tools.lab import DAY, Desk, LabPolicy, Market, prepare_closes, run_lab, write_log
from monitor.tools.lab_command import default_market
from monitor.tools.lab_figures import policy_figures

NAV = 1_000_000.0
SPREAD_BPS, DAILY_VOL, ADV = 10.0, 0.02, 1_000_000.0
DATES = pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"])


def two_assets(a: list[float], b: list[float]) -> Market:
    closes = pd.DataFrame({"A": a, "B": b}, index=DATES[: len(a)]).rename_axis("date")
    docs = tuple({"instrument_id": iid, "currency": "USD", "asset_class": "equity", "sector": s,
                  "adv": ADV, "spread_bps": SPREAD_BPS, "daily_vol": DAILY_VOL, "lot_size": 1}
                 for iid, s in (("A", "Tech"), ("B", "Energy")))
    return Market(prepare_closes(closes), docs)


def band_policy(name: str, width: float, trade_to: str = "target", rebalance: bool = True) -> LabPolicy:
    doc = {"portfolio_id": name, "version": 1, "base_currency": "USD",
           "evaluation": {"persistence_seconds": 0, "hysteresis": 0.0},
           "limits": [{"metric": "weight", "instrument": "A", "target": 0.5, "band": {"width": width}},
                      {"metric": "weight", "instrument": "B", "target": 0.3, "band": {"width": width}}]}
    if rebalance:
        doc["rebalance"] = {"mode": "targeted", "trade_to": trade_to, "max_participation": 0.1}
    return LabPolicy.named(name, doc)


def test_hand_computed_two_asset_book():
    """A jumps from 100 to 125 on the third date: its weight leaves the 5-point band, the engine proposes
    to sell it back to target, the desk sells at the next close (130) paying the estimate."""
    a, b = [100.0, 100.0, 125.0, 130.0, 130.0], [50.0] * 5
    market = two_assets(a, b)
    rec = run_lab(market, [band_policy("two", 0.05)], nav=NAV, keep_outputs=True)["two"]

    # The book by hand: 5,000 A and 6,000 B, 200,000 cash.
    qa, qb, cash = 0.5 * NAV / 100, 0.3 * NAV / 50, 0.2 * NAV
    nav2 = qa * 125 + qb * 50 + cash
    sell = round((qa * 125 - 0.5 * nav2) / 125)  # to target, whole shares
    assert sell == 500
    notional_at_signal = sell * 125
    cost = notional_at_signal * (SPREAD_BPS / 2 / 1e4 + DAILY_VOL * math.sqrt(sell / ADV))
    cost_bps = cost / notional_at_signal * 1e4

    signals = [m for m in rec.outputs if "trades" in m]
    assert [s["state"] for s in signals] == ["AUTO_APPROVED"]
    (trade,) = signals[0]["trades"]
    assert (trade["instrument_id"], trade["side"], trade["quantity"]) == ("A", "SELL", sell)
    assert trade["est_cost_bps"] == pytest.approx(cost_bps, rel=1e-12)

    fills = [doc for _, (topic, _, doc) in rec.inputs if topic == "fills"]
    assert len(fills) == 1 and fills[0]["price"] == 130.0 and fills[0]["quantity"] == sell
    fees = cost_bps / 1e4 * sell * 130
    assert fills[0]["fees"] == pytest.approx(fees, rel=1e-12)

    qa3, cash3 = qa - sell, cash + sell * 130 - fees
    navs = [qa * 100 + qb * 50 + cash] * 2 + [nav2] + [qa3 * 130 + qb * 50 + cash3] * 2
    np.testing.assert_allclose(rec.nav, navs, rtol=1e-12)
    weights = np.array([[qa * a[0] / navs[0], qb * b[0] / navs[0]], [qa * a[1] / navs[1], qb * b[1] / navs[1]],
                        [qa * a[2] / navs[2], qb * b[2] / navs[2]], [qa3 * a[3] / navs[3], qb * b[3] / navs[3]],
                        [qa3 * a[4] / navs[4], qb * b[4] / navs[4]]])
    np.testing.assert_allclose(rec.actuals, weights, rtol=1e-12)

    alerts = [m for m in rec.outputs if "alert_id" in m]
    assert [(m["state"], m["limit_id"]) for m in alerts] == [("OPEN", "weight:A"), ("RESOLVED", "weight:A")]

    figures = policy_figures(rec, market.closes)
    drift = np.abs(weights - [0.5, 0.3])
    years = (DATES[4] - DATES[0]).days / 365.25
    assert figures["mean_abs_drift"] == pytest.approx(drift.mean(), rel=1e-12)
    assert figures["rms_drift"] == pytest.approx(np.sqrt((drift ** 2).mean()), rel=1e-12)
    assert figures["max_abs_drift"] == pytest.approx(drift.max(), rel=1e-12)
    assert figures["pct_days_outside_band"] == pytest.approx(100 * (drift > 0.05).mean())
    assert figures["turnover_per_year"] == pytest.approx(sell * 130 / np.mean(navs) / years, rel=1e-12)
    assert figures["cost_bps_per_year"] == pytest.approx(fees / np.mean(navs) / years * 1e4, rel=1e-12)
    assert (figures["signals"], figures["trades"], figures["alerts"], figures["alerts_resolved_without_trade"]) \
        == (1, 1, 1, 0)


def test_same_close_fills_at_the_signals_close():
    market = two_assets([100.0, 100.0, 125.0, 130.0, 130.0], [50.0] * 5)
    rec = run_lab(market, [band_policy("two", 0.05)], nav=NAV, fill="same")["two"]
    fills = [doc for _, (topic, _, doc) in rec.inputs if topic == "fills"]
    assert [(f["price"], f["quantity"]) for f in fills] == [(125.0, 500)]


def test_deferred_quantity_is_worked_within_the_participation_cap():
    desk = Desk(participation={"p": 0.1})
    body = {"signal_id": "s", "portfolio_id": "p", "trades": [
        {"instrument_id": "A", "side": "BUY", "quantity": 100, "deferred_quantity": 250, "est_cost_bps": 10.0}]}
    from monitor.engine.signals import SignalEvent

    desk.on_signal(SignalEvent(body, "AUTO_APPROVED", 0))
    ref = {"A": {"lot_size": 1}}
    executed = [[f["quantity"] for f in desk.execute(day * DAY, {"A": 10.0}, ref, {"A": 1000.0})]
                for day in range(4)]
    assert executed == [[100], [100], [100], [50]]
    desk.on_signal(SignalEvent(body, "AUTO_APPROVED", 0))
    desk.execute(0, {"A": 10.0}, ref, {"A": 1000.0})
    desk.on_signal(SignalEvent(body, "SUPERSEDED", 0))
    assert desk.execute(DAY, {"A": 10.0}, ref, {"A": 1000.0}) == []


def test_never_rebalancing_drifts_as_buy_and_hold():
    """Every limit of the study fund, never rebalanced, against holdings bought at the first close."""
    market = default_market().between("2019-01-01", "2019-06-30")
    never = next(p for p in baselines(study_limits) if p.name == "never")
    rec = run_lab(market, [never])["never"]
    closes = market.closes
    weights0 = {lim["instrument"]: lim["target"] for lim in never.doc["limits"] if lim["metric"] == "weight"}
    quantities = pd.Series({iid: w * 100e6 / closes[iid].iloc[0] for iid, w in weights0.items()})
    mv = closes[quantities.index] * quantities
    nav = mv.sum(axis=1) + 100e6 * (1 - sum(weights0.values()))
    expected = {}
    for lim in never.doc["limits"]:
        if lim["metric"] == "weight":
            expected_col = mv[lim["instrument"]] / nav
        elif lim["metric"] == "net_weight":
            members = [d["instrument_id"] for d in market.instruments if d[lim["dimension"]] == lim["bucket"]
                       and d["instrument_id"] in quantities]
            expected_col = mv[members].sum(axis=1) / nav
        elif lim["metric"] == "gross_leverage":
            expected_col = mv.abs().sum(axis=1) / nav
        else:
            expected_col = mv.sum(axis=1) / nav
        expected[len(expected)] = expected_col.to_numpy()
    buy_and_hold = np.column_stack(list(expected.values()))
    np.testing.assert_allclose(rec.actuals, buy_and_hold, rtol=1e-9, atol=1e-12)
    targets = np.array([lim["target"] for lim in never.doc["limits"]])
    figures = policy_figures(rec, closes)
    assert figures["mean_abs_drift"] == pytest.approx(np.abs(buy_and_hold - targets).mean(), rel=1e-9)
    assert figures["max_abs_drift"] == pytest.approx(np.abs(buy_and_hold - targets).max(), rel=1e-9)
    assert figures["turnover_per_year"] == 0 and figures["trades"] == 0


def test_alerts_and_signals_equal_replay_of_the_log_the_lab_wrote():
    market = default_market().between("2008-09-01", "2008-12-31")
    chosen = {"band-10-edge", "calendar-monthly", "global-20", "never"}
    policies = [p for p in baselines(study_limits) if p.name in chosen]
    records = run_lab(market, policies, keep_outputs=True)
    log = io.BytesIO()
    write_log(market, records, log)
    replayed: dict[str, list[dict]] = {}
    for event in Replay(Engine(DAY)).run(log.getvalue().splitlines()):
        record = output_record(event)
        replayed.setdefault(str(record["key"]), []).append(orjson.loads(orjson.dumps(record["value"])))
    for name, rec in records.items():
        lab = [orjson.loads(orjson.dumps(m)) for m in rec.outputs]
        assert lab == replayed.get(name, []), name
    assert sum(len(r.outputs) for r in records.values()) > 50  # the crisis moved every book
    assert any(m["state"] == "AUTO_APPROVED" for m in records["global-20"].outputs)


def test_the_command_on_vendor_files_with_baselines_on_the_policys_limits(tmp_path):
    import yaml
    from click.testing import CliRunner

    from monitor.cli import main

    market = two_assets([100.0, 100.0, 125.0, 130.0, 130.0], [50.0] * 5)
    market.closes.to_csv(tmp_path / "closes.csv")
    (tmp_path / "instruments.yaml").write_text(yaml.safe_dump(list(market.instruments)))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(band_policy("mine", 0.05).doc))
    run = CliRunner().invoke(main, ["lab", "--prices", str(tmp_path / "closes.csv"), "--instruments",
                                    str(tmp_path / "instruments.yaml"), "--policy", str(tmp_path / "policy.yaml"),
                                    "--baselines", "--nav", str(NAV), "--jobs", "1", "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("policy")
    assert list(results.index[:2]) == ["mine", "never"] and len(results) == 16
    assert results.loc["mine", "trades"] == 1 and results.loc["never", "trades"] == 0
    assert results.loc["band-20-target", "alerts"] == 1  # the baselines' 20% band is this policy's 5 points


def test_the_command_says_why_it_refuses_a_policy_on_instruments_without_closes(tmp_path):
    import yaml
    from click.testing import CliRunner

    from monitor.cli import main

    market = two_assets([100.0, 101.0], [50.0, 50.0])
    market.closes.to_csv(tmp_path / "closes.csv")
    (tmp_path / "instruments.yaml").write_text(yaml.safe_dump(list(market.instruments)))
    doc = band_policy("mine", 0.05).doc
    doc["limits"].append({"metric": "weight", "instrument": "C", "target": 0.1, "band": {"width": 0.05}})
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(doc))
    run = CliRunner().invoke(main, ["lab", "--prices", str(tmp_path / "closes.csv"), "--instruments",
                                    str(tmp_path / "instruments.yaml"), "--policy", str(tmp_path / "policy.yaml"),
                                    "--jobs", "1", "--out", str(tmp_path / "out")])
    assert run.exit_code == 1 and "no reference data or closes for C" in run.output
