"""The market simulator: deterministic, realistic enough, and on-contract.

Pure tests: no Kafka. The statistical ones use fixed seeds, so they cannot flake, and
their thresholds still leave a margin: the model implies correlations of about 0.5 within
a sector and 0.3 across; sampled once a second from asynchronous ticks (Epps effect) they
measure about 0.37 and 0.22.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from monitor.simulate import (
    APPROVAL_NAV_FRACTION,
    TRADING_SECONDS_PER_DAY,
    Event,
    Market,
    MarketConfig,
    events_for,
    simulate_command,
    write_jsonl,
)

START = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
FIELDS = {
    "prices": {"instrument_id", "price", "ts"},
    "fills": {"fill_id", "portfolio_id", "instrument_id", "side", "quantity", "price", "ts", "fees"},
    "positions": {"portfolio_id", "as_of", "cash", "positions"},
    "policies": {"portfolio_id", "version", "base_currency", "evaluation", "limits", "rebalance", "risk_model"},
    "risk-models": {"model_id", "as_of", "factors", "covariance", "specific_var"},
}
INSTRUMENT_FIELDS = {"instrument_id", "currency", "asset_class", "sector", "region", "multiplier",
                     "adv", "spread_bps", "daily_vol", "factors"}


METRICS = ("weight", "net_weight", "gross_weight", "long_weight", "short_weight", "gross_leverage", "net_leverage",
           "exposure", "drawdown", "risk_contribution")


def session(config: MarketConfig, n: int) -> list[Event]:
    """Reference events, then the first n live events."""
    market = Market(config)
    return market.reference_events() + list(itertools.islice(market.ticks(), n))


def serialized(events: list[Event]) -> list[bytes]:
    return [orjson.dumps([e.topic, e.key, e.value]) for e in events]


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


# ----- determinism and time --------------------------------------------------------------


def test_same_seed_gives_identical_events_and_another_seed_does_not() -> None:
    config = MarketConfig(seed=3, start=START)
    first = serialized(session(config, 5_000))
    assert first == serialized(session(MarketConfig(seed=3, start=START), 5_000))
    assert first != serialized(session(MarketConfig(seed=4, start=START), 5_000))
    # iterating a second time from the same Market replays from the start too
    market = Market(config)
    assert list(itertools.islice(market.ticks(), 500)) == list(itertools.islice(market.ticks(), 500))


def test_prices_do_not_depend_on_the_fill_rate() -> None:
    """Fills have their own random stream: adding trading does not change the market."""
    def prices(fill_rate: float) -> list[Event]:
        events = itertools.islice(Market(MarketConfig(fill_rate=fill_rate, start=START)).ticks(), 3_000)
        return [e for e in events if e.topic == "prices"][:2_000]
    assert prices(0.0) == prices(20.0)


def test_event_times_start_at_start_and_ticks_are_spaced_by_one_over_tick_rate() -> None:
    config = MarketConfig(start=START, tick_rate=200.0, fill_rate=5.0)
    market = Market(config)
    reference = market.reference_events()
    for event in reference:
        stamp = event.value.get("ts") or event.value.get("as_of")
        if stamp is not None:
            assert stamp == "2026-11-24T14:00:00.000Z"
    live = list(itertools.islice(market.ticks(), 20_000))
    times = [parse(e.value["ts"]) for e in live]
    assert times[0] >= START
    assert all(a <= b for a, b in zip(times, times[1:]))
    price_times = [parse(e.value["ts"]) for e in live if e.topic == "prices"]
    assert price_times[0] == START + timedelta(milliseconds=5)
    assert all(b - a == timedelta(milliseconds=5) for a, b in zip(price_times, price_times[1:]))
    assert any(e.topic == "fills" for e in live)


def test_times_stay_monotone_with_a_tick_rate_that_does_not_divide_a_millisecond() -> None:
    live = list(itertools.islice(Market(MarketConfig(start=START, tick_rate=300.0, fill_rate=50.0)).ticks(), 6_000))
    stamps = [e.value["ts"] for e in live]
    assert all(s.endswith("Z") and len(s) == len("2026-11-24T14:00:00.000Z") for s in stamps)
    assert stamps == sorted(stamps)  # fixed-width RFC 3339: text order is time order
    prices = [e for e in live if e.topic == "prices"]
    assert prices[299].value["ts"] == "2026-11-24T14:00:01.000Z"  # tick 300: exactly 1 s in


# ----- the contract ------------------------------------------------------------------------


def test_values_carry_exactly_the_contract_fields() -> None:
    events = session(MarketConfig(start=START, fill_rate=20.0), 5_000)
    topics = {e.topic for e in events}
    assert topics == {"instruments", "risk-models", "policies", "positions", "prices", "fills"}
    for event in events:
        if event.topic == "instruments":
            expected = INSTRUMENT_FIELDS
            if event.value["asset_class"] == "fx":
                expected = INSTRUMENT_FIELDS - {"sector", "region"}
            assert set(event.value) == expected
            assert event.key == event.value["instrument_id"]
        else:
            assert set(event.value) == FIELDS[event.topic], event
            key_field = {"prices": "instrument_id", "risk-models": "model_id"}.get(event.topic, "portfolio_id")
            assert event.key == event.value[key_field]
        if event.topic in ("prices", "fills"):
            assert event.value["price"] > 0
            assert round(event.value["price"], 4) == event.value["price"]
        if event.topic == "fills":
            assert event.value["side"] in ("BUY", "SELL")
            assert isinstance(event.value["quantity"], int) and event.value["quantity"] > 0
        if event.topic == "positions":
            assert all(isinstance(p["quantity"], int) and p["quantity"] != 0
                       for p in event.value["positions"])
        if event.topic == "policies":
            for limit in event.value["limits"]:
                assert limit["metric"] in METRICS
                assert limit["band"]["type"] in ("absolute", "relative")


def test_every_event_validates_against_the_schemas() -> None:
    contract = pytest.importorskip("monitor.contract")
    for event in session(MarketConfig(start=START, fill_rate=20.0), 3_000):
        contract.validate(event.topic, event.value)


def test_reference_data_is_plausible() -> None:
    market = Market(MarketConfig(start=START))
    instruments = [e.value for e in market.reference_events() if e.topic == "instruments"]
    tradeable = [i for i in instruments if i["asset_class"] != "fx"]
    assert len(tradeable) == 50
    assert {i["asset_class"] for i in instruments} == {"equity", "future", "fx"}
    region_of = {"USD": "NA", "EUR": "EU", "GBP": "EU", "AUD": "APAC"}
    for inst in tradeable:
        assert inst["region"] == region_of[inst["currency"]]
        assert 1e5 <= inst["adv"] <= 5e7 and 1 <= inst["spread_bps"] <= 30
        assert set(inst["factors"]) == {"market", "value", "momentum"}
        if inst["asset_class"] == "equity":
            assert inst["instrument_id"].startswith("EQ") and inst["multiplier"] == 1
            assert 0.01 <= inst["daily_vol"] <= 0.04 and 0.6 <= inst["factors"]["market"] <= 1.4
        else:
            assert inst["multiplier"] == 50
    equities = [i for i in tradeable if i["asset_class"] == "equity"]
    thin = [i["spread_bps"] for i in equities if i["adv"] < 1e6]
    thick = [i["spread_bps"] for i in equities if i["adv"] > 5e6]
    assert np.mean(thin) > np.mean(thick)  # illiquid names are wider


def test_every_non_usd_currency_has_an_fx_instrument() -> None:
    for seed in (1, 2, 3):
        events = Market(MarketConfig(seed=seed, start=START)).reference_events()
        instruments = {e.key: e.value for e in events if e.topic == "instruments"}
        used = {i["currency"] for i in instruments.values()}
        used |= {c for e in events if e.topic == "positions" for c in e.value["cash"]}
        used |= {e.value["base_currency"] for e in events if e.topic == "policies"}
        assert {"USD", "EUR"} <= used
        for ccy in used - {"USD"}:
            fx = instruments[f"{ccy}USD"]
            assert (fx["asset_class"], fx["currency"], fx["multiplier"]) == ("fx", "USD", 1)
        prices = {e.key for e in events if e.topic == "prices"}
        assert prices == set(instruments)  # one initial price for every instrument and pair


# ----- books and policies ------------------------------------------------------------------


def test_policy_targets_are_the_initial_exposures_and_nav_is_positive() -> None:
    """Recompute every target from the published events alone, by the DESIGN formulas."""
    for seed in (7, 8):
        events = Market(MarketConfig(seed=seed, start=START)).reference_events()
        inst = {e.key: e.value for e in events if e.topic == "instruments"}
        price = {e.key: e.value["price"] for e in events if e.topic == "prices"}
        snapshots = {e.key: e.value for e in events if e.topic == "positions"}
        policies = [e.value for e in events if e.topic == "policies"]
        assert len(policies) == len(snapshots) == 5
        assert any(p["base_currency"] == "EUR" for p in policies)

        def usd(ccy: str) -> float:
            return 1.0 if ccy == "USD" else price[ccy + "USD"]

        for policy in policies:
            base = policy["base_currency"]
            snap = snapshots[policy["portfolio_id"]]
            assert policy["version"] == 1 and 10 <= len(snap["positions"]) <= 41
            mv = {p["instrument_id"]: p["quantity"] * price[p["instrument_id"]]
                  * inst[p["instrument_id"]]["multiplier"] * usd(inst[p["instrument_id"]]["currency"]) / usd(base)
                  for p in snap["positions"]}
            nav = sum(amount * usd(ccy) / usd(base) for ccy, amount in snap["cash"].items()) + sum(mv.values())
            assert nav > 0
            assert any(v < 0 for v in mv.values()) and any(v > 0 for v in mv.values())
            assert any(inst[i]["asset_class"] == "future" for i in mv)
            by_id = {limit["id"]: limit for limit in policy["limits"]}
            weights = [lim for lim in policy["limits"] if lim["metric"] == "weight"]
            assert len(weights) == 5
            for limit in weights:
                assert limit["id"] == f"weight:{limit['instrument']}"
                assert limit["target"] == pytest.approx(mv[limit["instrument"]] / nav, abs=1e-12)
                assert limit["band"] == {"type": "absolute", "width": 0.02}
            # the weight limits sit on the largest holdings
            smallest_limited = min(abs(lim["target"]) for lim in weights)
            assert sum(abs(v) / nav > smallest_limited + 1e-12 for v in mv.values()) < 5
            sectors = {inst[i]["sector"] for i in mv}
            for sector in sectors:
                limit = by_id[f"net_weight:sector:{sector}"]
                assert (limit["metric"], limit["dimension"], limit["bucket"]) == ("net_weight", "sector", sector)
                expected = sum(v for i, v in mv.items() if inst[i]["sector"] == sector) / nav
                assert limit["target"] == pytest.approx(expected, abs=1e-12)
                assert limit["band"] == {"type": "absolute", "width": 0.03}
            lev = by_id["gross_leverage"]
            assert lev["target"] == pytest.approx(sum(abs(v) for v in mv.values()) / nav, rel=1e-12)
            assert lev["band"] == {"type": "relative", "width": 0.1}
            assert 1.0 < lev["target"] < 4.0


def test_every_metric_kind_is_limited_and_the_engine_finds_each_book_on_target_at_the_start() -> None:
    """The engine, given only the published reference events, measures every limit of every
    book (risk contribution through the published risk model) at its target."""
    from monitor.engine import Engine, Price
    from monitor.replay import apply_event
    from monitor.stream.codec import event_from_doc

    market = Market(MarketConfig(books=4, seed=9, start=START))
    assert {lim["metric"] for p in market.policies for lim in p["limits"]} == set(METRICS)
    engine = Engine()
    for event in market.reference_events():
        decoded = event_from_doc(event.topic, event.value, event.topic)
        assert (engine.on_prices([decoded]) if isinstance(decoded, Price) else apply_event(engine, decoded)) == []
    for policy in market.policies:
        status = engine.status[policy["portfolio_id"]]
        assert status.unavailable is None and status.band_usage == pytest.approx(0.0, abs=1e-9)
        watch = engine.watches[policy["portfolio_id"]]
        assert {lim["id"] for lim in policy["limits"]} == set(watch.limits)


def test_policies_rebalance_targeted_to_the_inner_rail_with_approval_above_a_share_of_nav() -> None:
    """So the demo closes the loop: most proposals auto-approve, a large one waits for a human."""
    from monitor.engine.policy import parse_policy

    market = Market(MarketConfig(start=START))
    for book, policy in zip(market.books, market.policies):
        nav = market.valuation(book)[0]
        rebalance = policy["rebalance"]
        assert {k: v for k, v in rebalance.items() if k != "approval"} == {
            "mode": "targeted", "trade_to": "inner", "inner_fraction": 0.5, "max_participation": 0.05}
        assert set(rebalance["approval"]) == {"notional_above", "ttl_seconds"}
        assert rebalance["approval"]["notional_above"] == pytest.approx(APPROVAL_NAV_FRACTION * nav, abs=500)
        assert 0.01 <= APPROVAL_NAV_FRACTION <= 0.2
        assert rebalance["approval"]["ttl_seconds"] == 120
        parsed = parse_policy(policy, "simulator").rebalance
        assert parsed is not None and parsed.trade_to == "inner" and parsed.approval is not None


def test_fills_trade_held_names_at_the_market_and_never_flip_a_position() -> None:
    market = Market(MarketConfig(start=START, fill_rate=50.0))
    held = {b.portfolio_id: dict(b.positions) for b in market.books}
    last_price: dict[str, float] = dict(market.initial_prices)
    fills = 0
    ids: set[str] = set()
    for event in itertools.islice(market.ticks(), 100_000):
        v = event.value
        if event.topic == "prices":
            last_price[v["instrument_id"]] = v["price"]
            continue
        fills += 1
        ids.add(v["fill_id"])
        before = held[v["portfolio_id"]][v["instrument_id"]]
        after = before + (v["quantity"] if v["side"] == "BUY" else -v["quantity"])
        assert after != 0 and (after > 0) == (before > 0)
        assert v["quantity"] <= max(1, 0.06 * abs(before))
        held[v["portfolio_id"]][v["instrument_id"]] = after
        assert v["price"] == last_price[v["instrument_id"]]  # traded at the last print
        notional = v["quantity"] * v["price"] * market.by_id[v["instrument_id"]]["multiplier"]
        assert v["fees"] == pytest.approx(notional * 0.5e-4, abs=0.006)
    assert fills > 10_000 and len(ids) == fills
    # leaning back towards the start: no book drifts far from its snapshot through trading
    for book in market.books:
        for iid, q0 in book.positions.items():
            assert 0.5 < held[book.portfolio_id][iid] / q0 < 1.6


def test_small_configurations_still_build_sensible_books() -> None:
    for books, instruments in ((1, 2), (2, 9), (3, 12), (8, 120)):
        market = Market(MarketConfig(books=books, instruments=instruments, start=START))
        events = market.reference_events() + list(itertools.islice(market.ticks(), 500))
        assert sum(e.topic == "policies" for e in events) == books
        for book in market.books:
            assert market.valuation(book)[0] > 0


# ----- the price process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled() -> tuple[Market, list[str], np.ndarray]:
    """Published prices sampled once a simulated second (last value carried), 20 minutes."""
    config = MarketConfig(seed=11, start=START, tick_rate=200.0, fill_rate=0.0, vol_scale=10.0)
    market = Market(config)
    ids = [i["instrument_id"] for i in market.instruments]
    column = {iid: k for k, iid in enumerate(ids)}
    last = np.array([market.initial_prices[iid] for iid in ids])
    rows = [last.copy()]
    per_second = int(config.tick_rate)
    for n, event in enumerate(itertools.islice(market.ticks(), 1200 * per_second), start=1):
        assert event.value["price"] > 0
        last[column[event.key]] = event.value["price"]
        if n % per_second == 0:
            rows.append(last.copy())
    return market, ids, np.array(rows)


def test_same_sector_stocks_are_more_correlated_than_cross_sector(sampled) -> None:
    market, ids, grid = sampled
    equities = [k for k, iid in enumerate(ids) if market.by_id[iid]["asset_class"] == "equity"]
    returns = np.diff(np.log(grid[:, equities]), axis=0)
    corr = np.corrcoef(returns.T)
    sector = [market.by_id[ids[k]]["sector"] for k in equities]
    same = [corr[a, b] for a in range(len(equities)) for b in range(a) if sector[a] == sector[b]]
    cross = [corr[a, b] for a in range(len(equities)) for b in range(a) if sector[a] != sector[b]]
    assert np.mean(same) > np.mean(cross) + 0.05
    assert 0.05 < np.mean(cross) < 0.6
    # and for one named pair of each kind
    a = 0
    b = next(k for k in range(1, len(equities)) if sector[k] == sector[a])
    c = next(k for k in range(1, len(equities)) if sector[k] != sector[a])
    assert corr[a, b] > corr[a, c]


def test_realised_vol_follows_daily_vol_times_vol_scale(sampled) -> None:
    market, ids, grid = sampled
    returns = np.diff(np.log(grid), axis=0)  # one-second log returns
    realised = returns.std(axis=0) * math.sqrt(TRADING_SECONDS_PER_DAY) / market.config.vol_scale
    declared = np.array([market.by_id[iid]["daily_vol"] for iid in ids])
    ratio = realised / declared
    assert 0.85 < np.median(ratio) < 1.15
    assert np.all((ratio > 0.7) & (ratio < 1.3))
    # rank correlation: the ordering of vols is kept
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(rank(realised), rank(declared))[0, 1] > 0.9


def test_every_instrument_ticks_regularly() -> None:
    market = Market(MarketConfig(start=START, fill_rate=0.0))
    seen: dict[str, list[datetime]] = {}
    for event in itertools.islice(market.ticks(), 200 * 60):
        seen.setdefault(event.key, []).append(parse(event.value["ts"]))
    assert set(seen) == {i["instrument_id"] for i in market.instruments}
    for times in seen.values():
        assert len(times) > 60  # more than once a second on average
        assert max(b - a for a, b in zip(times, times[1:])) < timedelta(seconds=10)


# ----- the replay file and the command -----------------------------------------------------------


def test_write_jsonl_writes_the_replay_format(tmp_path) -> None:
    config = MarketConfig(start=START, fill_rate=10.0)
    path = tmp_path / "session.jsonl"
    stats = write_jsonl(config, path, 2_000)
    lines = path.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert all(set(r) == {"topic", "key", "value"} for r in records)
    assert stats.counts["prices"] == 2_000 + sum(r["topic"] == "instruments" for r in records)
    assert sum(stats.counts.values()) == len(records)
    expected = [Event(r["topic"], r["key"], r["value"]) for r in records]
    assert expected == [e for _, e in events_for(Market(config), 2_000)]
    assert records[-1]["topic"] == "prices"  # ends with the last requested tick


def test_command_writes_jsonl_and_prints_a_summary(tmp_path) -> None:
    path = tmp_path / "out.jsonl"
    result = CliRunner().invoke(simulate_command, ["--jsonl", str(path), "--ticks", "300", "--books", "2",
                                                   "--instruments", "20", "--seed", "5",
                                                   "--start", "2026-11-24T14:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "prices" in result.output and len(result.output.splitlines()) == 1
    last = orjson.loads(path.read_bytes().splitlines()[-1])
    assert last["value"]["ts"] == "2026-11-24T14:00:01.500Z"  # tick 300 at 200/s
    again = tmp_path / "again.jsonl"
    CliRunner().invoke(simulate_command, ["--jsonl", str(again), "--ticks", "300", "--books", "2",
                                          "--instruments", "20", "--seed", "5", "--start", "2026-11-24T14:00:00Z"])
    assert again.read_bytes() == path.read_bytes()


def test_command_rejects_ticks_without_jsonl_and_bad_start() -> None:
    assert CliRunner().invoke(simulate_command, ["--ticks", "5"]).exit_code != 0
    result = CliRunner().invoke(simulate_command, ["--jsonl", "-", "--execute"])
    assert result.exit_code != 0 and "--execute" in result.output
    result = CliRunner().invoke(simulate_command, ["--jsonl", "-", "--start", "yesterday"])
    assert result.exit_code != 0 and "start" in result.output.lower()
