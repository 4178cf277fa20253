"""The worker on a real broker: a scripted scenario, bad input on every topic, /metrics."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from monitor.contract import validate
from tests.conftest import consume, produce

pytestmark = pytest.mark.integration

BOOK = "BOOK-IT"


def ts(offset_s: float = 0.0) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def instrument(iid: str, sector: str) -> dict:
    return {"instrument_id": iid, "currency": "USD", "asset_class": "equity", "sector": sector,
            "region": "NA", "multiplier": 1, "adv": 1_000_000, "spread_bps": 2, "daily_vol": 0.02}


POLICY = {
    "portfolio_id": BOOK, "version": 1, "base_currency": "USD",
    "evaluation": {"persistence_seconds": 0, "hysteresis": 0.2},
    "limits": [
        {"id": "w-A", "metric": "weight", "instrument": "A", "target": 0.60,
         "band": {"type": "absolute", "width": 0.05}},
        {"id": "sector-tech", "metric": "net_weight", "dimension": "sector", "bucket": "Technology",
         "target": 0.60, "band": {"type": "absolute", "width": 0.20}},
    ],
}


def snapshot() -> dict:
    return {"portfolio_id": BOOK, "as_of": ts(-60), "cash": {"USD": 0},
            "positions": [{"instrument_id": "A", "quantity": 60}, {"instrument_id": "B", "quantity": 40}]}


def price(iid: str, px: float) -> dict:
    return {"instrument_id": iid, "price": px, "ts": ts()}


def setup_messages() -> list[tuple[str, str, dict]]:
    return [
        ("instruments", "A", instrument("A", "Technology")),
        ("instruments", "B", instrument("B", "Energy")),
        ("policies", BOOK, POLICY),
        ("positions", BOOK, snapshot()),
        ("prices", "A", price("A", 10.0)),
        ("prices", "B", price("B", 10.0)),
    ]


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def test_price_move_opens_one_alert_and_move_back_resolves_it(worker, settings):
    produce(settings, setup_messages())
    # Let the book be evaluated at 60/40 before the move, so the move is what breaches.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = worker.metrics()
        if m.get(("monitor_book_nav", (("portfolio_id", BOOK),))) == 1000.0:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"book never valued at 1000:\n{worker.log()[-3000:]}")

    produce(settings, [("prices", "A", price("A", 12.5))])
    [opened] = consume(settings, "drift-alerts", lambda r: len(r) >= 1)
    validate("drift-alerts", {k: v for k, v in opened.items() if k not in ("key", "partition", "offset")})
    # By hand: MV A = 60 x 12.5 = 750, B = 400, NAV 1150; weight 750/1150 = 0.652174 > 0.65.
    assert opened["state"] == "OPEN" and opened["severity"] == "BREACH"
    assert opened["portfolio_id"] == BOOK and opened["limit_id"] == "w-A" and opened["key"] == BOOK.encode()
    assert opened["actual"] == pytest.approx(750 / 1150, rel=1e-12)
    assert opened["target"] == 0.60
    assert opened["band"] == {"lower": pytest.approx(0.55), "upper": pytest.approx(0.65)}
    assert opened["drift"] == pytest.approx(750 / 1150 - 0.60, rel=1e-12)
    assert opened["policy_version"] == 1

    produce(settings, [("prices", "A", price("A", 10.0))])
    alerts = consume(settings, "drift-alerts", lambda r: len(r) >= 2)
    time.sleep(1.0)  # nothing else may follow
    alerts = consume(settings, "drift-alerts", lambda r: len(r) >= 2)
    assert [a["state"] for a in alerts] == ["OPEN", "RESOLVED"]
    assert alerts[1]["alert_id"] == opened["alert_id"]
    assert alerts[1]["actual"] == pytest.approx(0.60)

    # /metrics, parsed with prometheus_client: the scenario's numbers (gauges publish every second).
    deadline = time.monotonic() + 10
    while True:
        m = worker.metrics()
        try:
            assert sample(m, "monitor_events_consumed_total", topic="instruments") == 2
            assert sample(m, "monitor_events_consumed_total", topic="policies") == 1
            assert sample(m, "monitor_events_consumed_total", topic="positions") == 1
            assert sample(m, "monitor_events_consumed_total", topic="prices") == 4
            assert sample(m, "monitor_alerts_emitted_total", severity="BREACH", state="OPEN") == 1
            assert sample(m, "monitor_alerts_emitted_total", severity="BREACH", state="RESOLVED") == 1
            assert sample(m, "monitor_event_lag_seconds_count", topic="prices") == 4
            assert 0 <= sample(m, "monitor_event_lag_seconds_sum", topic="prices") < 60
            assert sample(m, "monitor_book_nav", portfolio_id=BOOK) == pytest.approx(1000.0)
            # Back at 60/40 both limits sit on target.
            assert sample(m, "monitor_book_largest_drift", portfolio_id=BOOK) == pytest.approx(0.0, abs=1e-12)
            assert sample(m, "monitor_book_band_usage", portfolio_id=BOOK) == pytest.approx(0.0, abs=1e-12)
            assert sample(m, "monitor_alerts_open", portfolio_id=BOOK) == 0
            assert ("monitor_dlq_messages_total", (("reason", "invalid_json"), ("topic", "prices"))) not in m
            break
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


BAD_MESSAGES = [
    # (topic, key, raw bytes, reason_code, words the reason must contain)
    ("prices", "A", b'{"instrument_id": "A", "price": 1', "invalid_json", "JSON"),
    ("prices", "A", orjson.dumps({"instrument_id": "A", "price": -3.0, "ts": ts()}), "schema_violation", "price"),
    ("fills", BOOK, b"not json at all", "invalid_json", "JSON"),
    ("fills", BOOK, orjson.dumps({"fill_id": "F-neg", "portfolio_id": BOOK, "instrument_id": "A", "side": "BUY",
                                  "quantity": -5, "price": 10.0, "ts": ts()}), "schema_violation", "quantity"),
    ("fills", "NOBODY", orjson.dumps({"fill_id": "F-unknown", "portfolio_id": "NOBODY", "instrument_id": "A",
                                      "side": "BUY", "quantity": 5, "price": 10.0, "ts": ts()}),
     "unknown_book", "NOBODY"),
    ("fills", BOOK, orjson.dumps({"fill_id": "F-side", "portfolio_id": BOOK, "instrument_id": "A", "side": "HOLD",
                                  "quantity": 5, "price": 10.0, "ts": ts()}), "schema_violation", "side"),
    ("instruments", "X", b"\xff\xfe binary", "invalid_json", "JSON"),
    ("instruments", "X", orjson.dumps({"instrument_id": "X", "asset_class": "equity"}), "schema_violation",
     "currency"),
    ("positions", BOOK, b"[1, 2", "invalid_json", "JSON"),
    ("positions", BOOK, orjson.dumps({"portfolio_id": BOOK, "as_of": ts(), "cash": {"USD": 0},
                                      "positions": [{"instrument_id": "A"}]}), "schema_violation", "quantity"),
    ("policies", BOOK, b"{", "invalid_json", "JSON"),
    ("policies", BOOK, orjson.dumps({**POLICY, "limits": [{"metric": "weight", "target": 0.1,
                                                            "band": {"width": 0.01}}]}),
     "schema_violation", "instrument"),
    ("policies", BOOK, orjson.dumps({**POLICY, "limits": [{"metric": "weight", "instrument": "A", "target": 0,
                                                            "band": {"type": "relative", "width": 0.1}}]}),
     "schema_violation", "relative band"),
    ("policies", BOOK, orjson.dumps({**POLICY, "limits": [POLICY["limits"][0], POLICY["limits"][0]]}),
     "invalid_policy", "duplicate limit id"),
]


def test_bad_input_on_every_topic_goes_to_the_dlq_and_the_worker_goes_on(worker, settings):
    # Bad messages first (the unknown-book fill before any book exists), then a valid scenario.
    # With them, a valid price of an instrument nobody has described: kept and counted, not refused.
    produce(settings, [(topic, key, raw) for topic, key, raw, _, _ in BAD_MESSAGES]
            + [("prices", "ZZZ", price("ZZZ", 5.0))])
    dlq = consume(settings, "monitor-dlq", lambda r: len(r) >= len(BAD_MESSAGES))
    assert len(dlq) == len(BAD_MESSAGES)
    by_original = {base64.b64decode(d["original_base64"]): d for d in dlq}
    for topic, key, raw, code, words in BAD_MESSAGES:
        record = by_original[raw]
        validate("monitor-dlq", {k: v for k, v in record.items() if k not in ("key", "partition", "offset")})
        assert record["reason_code"] == code, record
        assert words.lower() in record["reason"].lower(), record
        assert record["source"]["topic"] == settings.topic(topic)
        assert record["source"]["key"] == key and record["key"] == key.encode()
        assert isinstance(record["source"]["partition"], int) and record["source"]["offset"] >= 0
        assert "\n" not in record["reason"]

    produce(settings, setup_messages() + [("prices", "A", price("A", 12.5))])
    alerts = consume(settings, "drift-alerts", lambda r: any(a["state"] == "OPEN" for a in r))
    assert alerts[0]["limit_id"] == "w-A"
    # The invalid policies left version 1 (sent after them) in force, and every refusal was counted.
    m = worker.metrics()
    assert sum(v for (name, _), v in m.items() if name == "monitor_dlq_messages_total") == len(BAD_MESSAGES)
    assert sample(m, "monitor_dlq_messages_total", topic="fills", reason="unknown_book") == 1
    deadline = time.monotonic() + 10  # the counter is published once a second
    while sample(m, "monitor_unreferenced_prices_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        m = worker.metrics()
    assert sample(m, "monitor_unreferenced_prices_total") == 1
