"""The paper trader: which signals execute, once, at which price and time. Pure, no Kafka."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from monitor.contract import validate
from monitor.engine.model import format_ts, parse_ts
from monitor.paper import PaperTrader

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rebalance-signals" / "pending-approval.json"
SIGNAL_TS = "2026-01-05T14:31:00.000000Z"  # event_ts of the example
SIGNAL_AT = parse_ts(SIGNAL_TS)
NOT_TRADEABLE = ("PENDING_APPROVAL", "REJECTED", "EXPIRED", "SUPERSEDED", "WITHHELD")


def signal(state: str, **changes: Any) -> dict[str, Any]:
    """The example signal (SELL 10 AAA @ 100, BUY 20 BBB @ 50, BOOK-001) in `state`."""
    doc = copy.deepcopy(json.loads(EXAMPLE.read_text()))
    doc.update(state=state, approver="jane" if state in ("APPROVED", "REJECTED") else None, **changes)
    validate("rebalance-signals", doc)  # the test signals are on-contract themselves
    return doc


@pytest.mark.parametrize("state", ["AUTO_APPROVED", "APPROVED"])
def test_a_tradeable_signal_fills_every_trade_at_the_latest_price(state: str) -> None:
    trader = PaperTrader()
    trader.on_price("AAA", 99.0, SIGNAL_AT - 5_000_000)
    trader.on_price("AAA", 101.5, SIGNAL_AT + 2_000_000)  # the latest print, after the signal
    trader.on_price("BBB", 49.0, SIGNAL_AT - 1_000_000)
    fills = trader.on_signal(signal(state))
    at = format_ts(SIGNAL_AT + 2_000_000)  # the newest market time: later than the signal
    assert fills == [
        {"fill_id": "paper-a41c7f0e93d25b68e1f4c2d0-AAA", "portfolio_id": "BOOK-001",
         "instrument_id": "AAA", "side": "SELL", "quantity": 10, "price": 101.5, "ts": at},
        {"fill_id": "paper-a41c7f0e93d25b68e1f4c2d0-BBB", "portfolio_id": "BOOK-001",
         "instrument_id": "BBB", "side": "BUY", "quantity": 20, "price": 49.0, "ts": at},
    ]
    assert at == "2026-01-05T14:31:02.000000Z"
    for fill in fills:
        validate("fills", fill)


def test_the_fill_time_is_the_signal_time_when_the_market_is_older() -> None:
    trader = PaperTrader()
    trader.on_price("AAA", 99.0, SIGNAL_AT - 3_000_000)
    fills = trader.on_signal(signal("AUTO_APPROVED"))
    assert {f["ts"] for f in fills} == {SIGNAL_TS}


def test_without_a_price_the_trade_executes_at_its_sizing_price() -> None:
    fills = PaperTrader().on_signal(signal("AUTO_APPROVED"))
    assert [(f["instrument_id"], f["price"], f["ts"]) for f in fills] == [
        ("AAA", 100.0, SIGNAL_TS), ("BBB", 50.0, SIGNAL_TS)]


def test_an_older_price_arriving_late_does_not_replace_a_newer_one() -> None:
    trader = PaperTrader()
    trader.on_price("AAA", 101.0, SIGNAL_AT)
    trader.on_price("AAA", 97.0, SIGNAL_AT - 1_000_000)  # another partition, behind
    assert trader.price("AAA") == 101.0 and trader.market_ts == SIGNAL_AT


@pytest.mark.parametrize("state", NOT_TRADEABLE)
def test_other_states_produce_nothing(state: str) -> None:
    trader = PaperTrader()
    trader.on_price("AAA", 100.0, SIGNAL_AT)
    assert trader.on_signal(signal(state)) == []


def test_a_pending_signal_executes_once_approved() -> None:
    trader = PaperTrader()
    assert trader.on_signal(signal("PENDING_APPROVAL")) == []
    assert len(trader.on_signal(signal("APPROVED", event_ts="2026-01-05T14:32:00.000000Z"))) == 2


def test_a_signal_executes_once_whatever_is_delivered_after() -> None:
    trader = PaperTrader()
    approved = signal("AUTO_APPROVED")
    assert len(trader.on_signal(approved)) == 2
    assert trader.on_signal(approved) == []  # re-delivery of the same message
    assert trader.on_signal(signal("APPROVED", event_ts="2026-01-05T14:33:00.000000Z")) == []
    assert trader.on_signal(signal("SUPERSEDED")) == []
    other = signal("AUTO_APPROVED", signal_id="b000000000000000000000ff")
    assert [f["fill_id"] for f in trader.on_signal(other)] == [
        "paper-b000000000000000000000ff-AAA", "paper-b000000000000000000000ff-BBB"]


@pytest.mark.parametrize("closed", ["SUPERSEDED", "REJECTED", "EXPIRED"])
def test_a_signal_closed_before_its_approval_is_never_executed(closed: str) -> None:
    trader = PaperTrader()
    assert trader.on_signal(signal("PENDING_APPROVAL")) == []
    assert trader.on_signal(signal(closed)) == []
    assert trader.on_signal(signal("APPROVED", event_ts="2026-01-05T14:34:00.000000Z")) == []


def test_fully_deferred_trades_are_not_filled() -> None:
    doc = signal("AUTO_APPROVED")
    doc["trades"][0].update(quantity=0, notional_base=0.0, deferred_quantity=10, note="participation cap")
    validate("rebalance-signals", doc)
    assert [f["instrument_id"] for f in PaperTrader().on_signal(doc)] == ["BBB"]


def test_fill_ids_are_deterministic_so_a_restarted_trader_repeats_them() -> None:
    first, restarted = PaperTrader(), PaperTrader()
    for trader in (first, restarted):
        trader.on_price("AAA", 100.0, SIGNAL_AT)
    ids = [f["fill_id"] for f in first.on_signal(signal("AUTO_APPROVED"))]
    assert ids == [f["fill_id"] for f in restarted.on_signal(signal("AUTO_APPROVED"))]
