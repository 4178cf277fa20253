"""Bytes to engine events and back, at the edge of the system.

Decoding is where bad input is caught: invalid JSON, a schema violation, an
impossible value or an invalid policy raise `Rejected` with a contract reason code,
and `dead_letter` wraps the original bytes with that reason for the dead-letter topic.
"""

from __future__ import annotations

import base64
from math import isfinite
from typing import Any, Callable

import orjson

from monitor.contract import ContractError, plain_price, validate
from monitor.engine import Fill, Instrument, Policy, PolicyError, Price, Rejected, Snapshot, parse_policy
from monitor.engine.model import Micros, RiskModel, format_ts, parse_ts
from monitor.engine.signals import Decision

Event = Instrument | Price | Fill | Snapshot | Policy | RiskModel | Decision

_BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "prices": Price.from_message,
    "fills": Fill.from_message,
    "instruments": Instrument.from_message,
    "positions": Snapshot.from_message,
    "risk-models": RiskModel.from_message,
    "approvals": Decision.from_message,
}


def decode_json(topic: str, raw: bytes | None) -> dict[str, Any]:
    """Parse and schema-check one message value of a logical topic."""
    if raw is None:
        raise Rejected("schema_violation", f"{topic}: empty message value")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Rejected("invalid_json", f"invalid JSON: {e}") from None
    try:
        validate(topic, doc)
    except ContractError as e:
        raise Rejected("schema_violation", str(e)) from None
    return doc


def decode_event(topic: str, raw: bytes | None, source: str) -> Event:
    """One message of an input topic as an engine event; `source` names it in policy errors."""
    return event_from_doc(topic, decode_json(topic, raw), source)


def decode_price(raw: bytes | None) -> Price:
    """A price message as a Price: what decode_event("prices", ...) gives, in a few calls for the
    plain shape a feed sends (`plain_price`). Anything else goes the general way, which decides
    and says why it refuses."""
    try:
        doc = orjson.loads(raw)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        return decode_event("prices", raw, "")  # type: ignore[return-value]
    if plain_price(doc) and isfinite(price := doc["price"]):
        return Price(doc["instrument_id"], float(price), parse_ts(doc["ts"]))
    return event_from_doc("prices", doc, "", validated=False)  # type: ignore[return-value]


def event_from_doc(topic: str, doc: Any, source: str, validated: bool = True) -> Event:
    """A parsed document of an input topic as an engine event (schema-checked unless `validated`)."""
    if not validated:
        try:
            validate(topic, doc)
        except ContractError as e:
            raise Rejected("schema_violation", str(e)) from None
    if topic == "policies":
        try:
            return parse_policy(doc, source)
        except PolicyError as e:
            raise Rejected("invalid_policy", str(e)) from None
    return _BUILDERS[topic](doc)


def encode(doc: Any) -> bytes:
    return orjson.dumps(doc)


def dead_letter(
    raw: bytes | None,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    rejected: Rejected,
    now: Micros,
) -> bytes:
    """The monitor-dlq record: the original bytes, where they came from, and why they were refused."""
    original = raw or b""
    try:
        text: str | None = original.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return encode({
        "schema_version": 1,
        "reason": rejected.reason.splitlines()[0] if rejected.reason else rejected.code,
        "reason_code": rejected.code,
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "timestamp": timestamp_ms,
        },
        "original": text,
        "original_base64": base64.b64encode(original).decode("ascii"),
        "rejected_at": format_ts(now),
    })
