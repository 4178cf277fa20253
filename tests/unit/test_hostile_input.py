"""Hostile input at the decode edge: every crafted message that once stopped or corrupted a worker
is refused with its reason code and a bounded dead-letter record, and nothing decoded holds a
number or a time outside its bounds."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from monitor.contract import MAX_DEPTH, MAX_MESSAGE_BYTES, validate
from monitor.engine import Fill, Price, Rejected, Snapshot, format_ts
from monitor.engine.model import (EARLIEST, LATEST, MAX_AMOUNT, MAX_PRICE, MAX_QUANTITY, Micros, RiskModel,
                                  parse_ts)
from monitor.ops.config import Settings
from monitor.replay import Replay
from monitor.stream.codec import (ANY_KEY, EXCERPT_BYTES, KEY_EXCERPT_BYTES, MAX_DEAD_LETTER_BYTES, dead_letter,
                                  decode_event, decode_price, event_from_doc)
from tests.hostile import Crafted, crafted, fill, stamp

BOOK, IID = "BOOK-H", "AAA"
NOW = datetime.now(timezone.utc)
NOW_US: Micros = time.time_ns() // 1_000
LIVE = NOW_US + 300 * 1_000_000  # what the worker allows: its clock plus the default skew
MARKET = ("prices", "instruments", "risk-models")
INPUT_TOPICS = ("prices", "fills", "instruments", "positions", "policies", "risk-models", "approvals")


def live_decode(topic: str, raw: bytes | None, key: bytes | None) -> object:
    """Decode as the worker does: market topics check their key, and event times are live."""
    if topic == "prices":
        return decode_price(raw, key, LIVE)
    return decode_event(topic, raw, "test", key=key if topic in MARKET else ANY_KEY, not_after=LIVE)


def refusal(topic: str, raw: bytes | None, key: bytes | None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        live_decode(topic, raw, key)
    return caught.value


def record_of(raw: bytes | None, key: bytes | None, rejected: Rejected) -> bytes:
    return dead_letter(raw, key, "t-prices", 3, 17, 1_700_000_000_000, rejected, NOW_US)


def check_bounded_record(record: bytes, raw: bytes | None, key: bytes | None) -> dict:
    """The record is within its bound, valid, and holds the right excerpt of the original."""
    assert len(record) <= MAX_DEAD_LETTER_BYTES
    doc = orjson.loads(record)
    validate("monitor-dlq", doc)
    original = raw or b""
    excerpt = base64.b64decode(doc["original_base64"])
    assert excerpt == original[:EXCERPT_BYTES]
    assert doc["original_bytes"] == len(original)
    assert doc["truncated"] is (len(original) > EXCERPT_BYTES)
    assert doc["source"]["key"] == (None if key is None else key[:KEY_EXCERPT_BYTES].decode("utf-8", "replace"))
    return doc


# ------------------------------------------------------------------ the crafted messages


@pytest.mark.parametrize("case", crafted(NOW, BOOK, IID), ids=lambda c: c.name)
def test_each_crafted_message_is_refused_with_its_reason_and_a_bounded_record(case: Crafted) -> None:
    key = case.key.encode() if case.key is not None else None
    rejected = refusal(case.topic, case.raw, key)
    assert rejected.code == case.code, rejected.reason
    doc = check_bounded_record(record_of(case.raw, key, rejected), case.raw, key)
    assert doc["reason_code"] == case.code and "\n" not in doc["reason"]


def test_the_large_crafted_message_is_cut_to_an_excerpt() -> None:
    [big] = [c for c in crafted(NOW, BOOK, IID) if c.name == "600-KB-fill"]
    doc = orjson.loads(record_of(big.raw, BOOK.encode(), refusal(big.topic, big.raw, BOOK.encode())))
    assert len(big.raw) > 600_000 and doc["truncated"] is True and doc["original_bytes"] == len(big.raw)
    assert doc["original"] == big.raw[:EXCERPT_BYTES].decode()
    assert "note" in doc["reason"]


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_a_message_over_the_size_limit_is_too_large_on_every_topic(topic: str) -> None:
    raw = b'{"x": "' + b"y" * MAX_MESSAGE_BYTES + b'"}'
    rejected = refusal(topic, raw, b"k")
    assert rejected.code == "too_large" and f"{len(raw):,}" in rejected.reason
    check_bounded_record(record_of(raw, b"k", rejected), raw, b"k")


@pytest.mark.parametrize("topic", INPUT_TOPICS)
@pytest.mark.parametrize("shape", ["array", "object", "inside"])
def test_deep_nesting_is_too_deep_on_every_topic(topic: str, shape: str) -> None:
    n = 1000
    raw = {"array": b"[" * n + b"]" * n, "object": b'{"a": ' * n + b"1" + b"}" * n,
           "inside": b'{"instrument_id": "A", "price": ' + b"[" * n + b"]" * n + b', "ts": "2026-01-05T14:30:00Z"}'}
    rejected = refusal(topic, raw[shape], b"A")
    assert rejected.code == "too_deep"


def test_nesting_up_to_the_limit_is_judged_by_the_schema() -> None:
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert refusal("fills", raw, None).code == "schema_violation"
    assert refusal("fills", b"[" + raw + b"]", None).code == "too_deep"


@given(st.integers(0, 3000), st.sampled_from(INPUT_TOPICS), st.sampled_from([b"[]", b'{"a":}']))
@settings(max_examples=200, deadline=None)
def test_any_depth_is_refused_with_a_reason_never_an_exception(depth: int, topic: str, brackets: bytes) -> None:
    raw = brackets[:-1] * depth + b"0" + brackets[-1:] * depth
    try:
        live_decode(topic, raw, b"A")
    except Rejected as rejected:
        assert rejected.code in ("too_deep", "schema_violation", "invalid_json")
        assert rejected.code != "too_deep" or depth > MAX_DEPTH


# ------------------------------------------------------------------ time


@pytest.mark.parametrize("ts,ok", [
    ("1969-12-31T23:59:59Z", False),
    ("1970-01-01T00:00:00Z", True),
    ("1970-01-01T00:30:00+01:00", False),
    ("2099-12-31T23:59:59.999999Z", True),
    ("2099-12-31T23:59:59-05:00", False),
    ("2100-01-01T00:00:00Z", False),
    ("9999-12-31T23:59:59Z", False),
    ("9999-12-31T23:59:59-05:00", False),
    ("0001-01-01T00:00:00+14:00", False),
])
def test_event_times_are_held_to_1970_through_2099(ts: str, ok: bool) -> None:
    """Everywhere, replay included: a time outside them cannot even be written back (format_ts)."""
    if ok:
        assert format_ts(parse_ts(ts))
        return
    with pytest.raises(Rejected) as caught:
        event_from_doc("prices", {"instrument_id": "A", "price": 1.0, "ts": ts}, "", validated=False)
    assert caught.value.code == "impossible_value" and "1970" in caught.value.reason


@pytest.mark.parametrize("topic,doc", [
    ("prices", {"instrument_id": IID, "price": 10.0, "ts": "{}"}),
    ("fills", fill("F-1", BOOK, IID, "{}")),
    ("positions", {"portfolio_id": BOOK, "as_of": "{}", "cash": {"USD": 0}, "positions": []}),
    ("approvals", {"signal_id": "S-1", "portfolio_id": BOOK, "decision": "APPROVE", "approver": "a", "ts": "{}"}),
])
def test_live_event_times_may_be_at_most_the_skew_ahead_of_the_clock_and_replay_keeps_log_time(topic, doc) -> None:
    def raw(ahead: timedelta) -> bytes:
        at = stamp(NOW + ahead)
        return orjson.dumps({k: (at if v == "{}" else v) for k, v in doc.items()})

    key = IID.encode() if topic == "prices" else None
    assert live_decode(topic, raw(timedelta(seconds=-3600 * 24 * 365 * 20)), key)  # backfill: far back is fine
    assert live_decode(topic, raw(timedelta(seconds=290)), key)
    rejected = refusal(topic, raw(timedelta(seconds=310)), key)
    assert rejected.code == "future_timestamp" and "skew" in rejected.reason
    # Replay and the policy lab decode with event_from_doc: the log's own time, a year ahead or not.
    assert event_from_doc(topic, orjson.loads(raw(timedelta(days=365))), "", validated=False)


def test_replay_of_a_log_stamped_ahead_of_the_clock_applies_it_and_refuses_deep_lines() -> None:
    ahead = stamp(NOW + timedelta(days=30))
    deep = b'{"topic": "prices", "key": "A", "value": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    lines = [orjson.dumps({"topic": "prices", "key": "A", "value": {"instrument_id": "A", "price": 1.0, "ts": ahead}}),
             deep]
    replay = Replay()
    list(replay.run(lines))
    assert replay.stats.events == 2
    assert [(n, code) for n, code, _ in replay.stats.rejected] == [(2, "too_deep")]


def test_a_risk_model_may_be_dated_ahead_live() -> None:
    """Its as_of moves no clock (a model for tomorrow may be published tonight)."""
    doc = {"model_id": "M", "as_of": stamp(NOW + timedelta(days=1)), "factors": ["f"], "covariance": [[0.1]],
           "specific_var": {"A": 0.01}}
    assert isinstance(live_decode("risk-models", orjson.dumps(doc), b"M"), RiskModel)


def test_the_allowed_skew_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_clock_skew_s == 300.0
    monkeypatch.setenv("MONITOR_MAX_CLOCK_SKEW_S", "2.5")
    assert Settings.from_env().max_clock_skew_s == 2.5


# ------------------------------------------------------------------ keys of market topics


@pytest.mark.parametrize("topic,doc", [
    ("prices", {"instrument_id": IID, "price": 10.0, "ts": stamp(NOW)}),
    ("instruments", {"instrument_id": IID, "currency": "USD", "asset_class": "equity"}),
    ("risk-models", {"model_id": IID, "as_of": stamp(NOW), "factors": ["f"], "covariance": [[0.1]],
                     "specific_var": {"A": 0.01}}),
])
def test_a_market_message_is_keyed_by_its_own_id(topic: str, doc: dict) -> None:
    raw = orjson.dumps(doc)
    assert live_decode(topic, raw, IID.encode())
    for key in (None, b"", b"OTHER", IID.lower().encode(), b"\xff" * 100_000):
        rejected = refusal(topic, raw, key)
        assert rejected.code == "impossible_value" and "key" in rejected.reason and len(rejected.reason) < 300
        check_bounded_record(record_of(raw, key, rejected), raw, key)
    # Callers that do not check keys (replay, the paper trader) decode it all the same.
    assert decode_event(topic, raw, "") and (topic != "prices" or decode_price(raw))


# ------------------------------------------------------------------ the dead-letter record


def test_no_dead_letter_record_exceeds_its_bound() -> None:
    """The worst case: every byte a control character (escaped to 6 bytes each), the longest key,
    a reason of many lines and many characters."""
    raw = b"\x01" * MAX_MESSAGE_BYTES
    key = b"\x01" * 1_000_000
    rejected = Rejected("internal_error", "\x02" * 100_000 + "\nsecond line")
    record = record_of(raw, key, rejected)
    doc = check_bounded_record(record, raw, key)
    assert len(doc["reason"]) <= 500 and doc["original"] == "\x01" * EXCERPT_BYTES


@pytest.mark.parametrize("raw", [None, b"", b"\xff\xfe garbage", "é".encode() * EXCERPT_BYTES,
                                 b"a" + "é".encode() * EXCERPT_BYTES])
def test_the_excerpt_is_text_when_it_is_utf8_even_when_the_cut_splits_a_character(raw: bytes | None) -> None:
    doc = check_bounded_record(record_of(raw, None, Rejected("invalid_json", "\n")), raw, None)
    assert doc["reason"] == "invalid_json"  # a reason with no text on its first line says its code
    if raw is not None and raw.startswith(b"\xff"):
        assert doc["original"] is None
    else:
        text = (raw or b"").decode("utf-8", "ignore")
        assert doc["original"] is not None and text.startswith(doc["original"])
        assert len(doc["original"].encode()) >= min(len(raw or b""), EXCERPT_BYTES) - 3


# ------------------------------------------------------------------ numbers


_HUGE = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**40, 10**40),
                  st.sampled_from([1e308, -1e308, 123 * 10**27, 1e12, 1e12 + 1, 1e9, 1e9 * (1 + 1e-15), 5e-324]))
_ZONES = st.sampled_from([timezone.utc, timezone(timedelta(hours=14)), timezone(-timedelta(hours=14))])
_TIMES = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES)
    .map(lambda d: d.isoformat()),
    st.sampled_from(["9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"]))


def _accepted(decode, doc: dict) -> object | None:
    try:
        return decode(json.dumps(doc).encode())
    except Rejected:
        return None


def _within(value: float, bound: float) -> bool:
    return math.isfinite(value) and abs(value) <= bound


def _in_time(ts: Micros) -> bool:
    return EARLIEST <= ts < LATEST and bool(format_ts(ts))


@given(_HUGE, _HUGE, st.one_of(st.none(), _HUGE), _TIMES)
@settings(max_examples=500, deadline=None)
def test_no_decoded_fill_holds_a_number_or_time_out_of_bounds(quantity, price, fees, ts) -> None:
    doc = fill("F", BOOK, IID, ts, quantity)
    doc["price"] = price
    if fees is not None:
        doc["fees"] = fees
    event = _accepted(lambda raw: decode_event("fills", raw, ""), doc)
    if event is None:
        return
    assert isinstance(event, Fill)
    assert 0 < event.quantity <= MAX_QUANTITY and 0 < event.price <= MAX_PRICE and 0 <= event.fees <= MAX_AMOUNT
    assert _within(event.quantity * event.price, MAX_AMOUNT) and _in_time(event.ts)


@given(_HUGE, _TIMES)
@settings(max_examples=500, deadline=None)
def test_no_decoded_price_holds_a_number_or_time_out_of_bounds(price, ts) -> None:
    doc = {"instrument_id": IID, "price": price, "ts": ts}
    fast = _accepted(lambda raw: decode_price(raw, IID.encode()), doc)
    general = _accepted(lambda raw: decode_event("prices", raw, ""), doc)
    assert fast == general
    if fast is not None:
        assert isinstance(fast, Price) and 0 < fast.price <= MAX_PRICE and _in_time(fast.ts)


@given(st.lists(_HUGE, max_size=4), st.dictionaries(st.sampled_from(["USD", "EUR", "JPY"]), _HUGE, max_size=3), _TIMES)
@settings(max_examples=300, deadline=None)
def test_no_decoded_snapshot_holds_a_number_or_time_out_of_bounds(quantities, cash, as_of) -> None:
    doc = {"portfolio_id": BOOK, "as_of": as_of, "cash": cash,
           "positions": [{"instrument_id": f"I{i}", "quantity": q} for i, q in enumerate(quantities)]}
    event = _accepted(lambda raw: decode_event("positions", raw, ""), doc)
    if event is None:
        return
    assert isinstance(event, Snapshot) and _in_time(event.as_of)
    assert all(_within(q, MAX_QUANTITY) for q in event.positions.values())
    assert all(_within(c, MAX_AMOUNT) for c in event.cash.values())


@pytest.mark.parametrize("field,value", [("quantity", 1e12 + 1), ("price", 1e9 * 1.01), ("fees", 2e15),
                                         ("quantity", 1e308), ("quantity", 123 * 10**27)])
def test_an_implausible_fill_names_its_field_and_bound(field: str, value: float) -> None:
    doc = fill("F", BOOK, IID, stamp(NOW))
    doc[field] = value
    rejected = refusal("fills", json.dumps(doc).encode(), None)
    assert rejected.code == "impossible_value" and field in rejected.reason


def test_a_fill_whose_notional_is_implausible_is_refused() -> None:
    doc = {**fill("F", BOOK, IID, stamp(NOW), 1e9), "price": 1e7}  # each within bounds, 1e16 together
    rejected = refusal("fills", orjson.dumps(doc), None)
    assert rejected.code == "impossible_value" and "notional" in rejected.reason


_POLICY = {"portfolio_id": BOOK, "version": 1, "base_currency": "USD", "evaluation": {}, "rebalance": {"approval": {}},
           "limits": [{"metric": "weight", "instrument": IID, "target": 0.5,
                       "band": {"type": "absolute", "width": 0.1}}]}


@pytest.mark.parametrize("path", ["evaluation/persistence_seconds", "evaluation/stale_price_seconds",
                                  "evaluation/critical_multiple", "rebalance/schedule_seconds",
                                  "rebalance/approval/ttl_seconds", "rebalance/min_notional", "limits/0/target",
                                  "limits/0/band/width"])
def test_a_policy_number_past_its_bound_is_a_schema_violation_not_a_crash(path: str) -> None:
    """1e308 seconds once overflowed in the policy parser; a 1e308 target made a band edge infinite."""
    doc = json.loads(json.dumps(_POLICY))
    *parents, name = path.split("/")
    node = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[name] = 1e308
    rejected = refusal("policies", orjson.dumps(doc), None)
    assert rejected.code == "schema_violation" and f"/{path}" in rejected.reason
    assert decode_event("policies", orjson.dumps(_POLICY), "")  # the same policy within bounds is fine


# ------------------------------------------------------------------ the worker's market loop


class _Recorder:
    """Stands in for the Emitter: what was dead-lettered."""

    def __init__(self) -> None:
        self.dead: list[tuple[str, int, str]] = []

    async def dead_letter(self, origin, value, rejected) -> None:
        self.dead.append((origin.topic, origin.offset, rejected.code))

    async def events(self, events) -> None:
        pass


def _record(topic: str, offset: int, key: bytes | None, doc: dict) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, key=key, timestamp=1, value=orjson.dumps(doc))


@pytest.fixture
def worker(tmp_path):
    from monitor.stream.worker import Worker

    w = Worker(Settings(data_dir=str(tmp_path)))
    w.emit = _Recorder()
    return w


def test_an_unexpected_failure_on_a_market_message_dead_letters_it_and_the_loop_goes_on(worker, monkeypatch) -> None:
    from aiokafka.structs import TopicPartition

    from monitor.stream import worker as worker_module

    applied = []

    def on_instrument(event):
        if event.instrument_id == "BAD":
            raise ZeroDivisionError("a bug")
        applied.append(event.instrument_id)
        return []

    worker.engine.on_instrument = on_instrument
    real_decode = worker_module.decode_price

    def decode_price(raw, key, not_after):
        if key == b"BUG":
            raise KeyError("a bug")
        return real_decode(raw, key, not_after)

    monkeypatch.setattr(worker_module, "decode_price", decode_price)
    instrument = {"currency": "USD", "asset_class": "equity"}
    ts = stamp(NOW)
    batch = {
        TopicPartition("instruments", 0): [
            _record("instruments", 0, b"BAD", {"instrument_id": "BAD", **instrument}),
            _record("instruments", 1, b"X", {"instrument_id": "Y", **instrument}),
            _record("instruments", 2, b"OK", {"instrument_id": "OK", **instrument})],
        TopicPartition("prices", 0): [
            _record("prices", 0, b"BUG", {"instrument_id": "BUG", "price": 1.0, "ts": ts}),
            _record("prices", 1, None, {"instrument_id": "OK", "price": 1.0, "ts": ts}),
            _record("prices", 2, b"OK", {"instrument_id": "OK", "price": 1.0, "ts": ts})],
    }
    asyncio.run(worker.on_market_records(batch))
    assert worker.emit.dead == [("instruments", 0, "internal_error"), ("instruments", 1, "impossible_value"),
                                ("prices", 0, "internal_error"), ("prices", 1, "impossible_value")]
    assert applied == ["OK"] and len(worker.gate) == 1
