"""Bytes to engine events and back, at the edge of the system.

Decoding is where bad input is caught, and it is bounded before it is trusted: a message over
MAX_MESSAGE_BYTES or nested deeper than MAX_DEPTH is refused before it is validated, and the
engine's builders refuse numbers and times outside their plausibility bounds (engine/model.py).
Invalid JSON, a schema violation, an impossible value, a key that is not the message's own id or,
live, an event time too far ahead of the wall clock raise `Rejected` with a contract reason code;
`dead_letter` writes the bounded dead-letter record of a refused message.
"""

from __future__ import annotations

import base64
import codecs
from typing import Any, Callable

import orjson

from monitor.contract import MAX_MESSAGE_BYTES, ContractError, TooDeep, plain_price, validate
from monitor.engine import Fill, Instrument, Policy, PolicyError, Price, Rejected, Snapshot, parse_policy
from monitor.engine.model import LATEST, MAX_PRICE, Micros, RiskModel, format_ts, parse_ts
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
# The field a market topic's message key must equal (the book topics' key is the portfolio_id,
# checked by the worker).
_KEY_FIELDS = {"prices": "instrument_id", "instruments": "instrument_id", "risk-models": "model_id"}
# Default of `key`: the caller does not check keys (replay, the paper trader).
ANY_KEY: Any = object()

# A dead-letter record keeps the first EXCERPT_BYTES of the original value and the first
# KEY_EXCERPT_BYTES of its key; the whole message stays at its source coordinates. With the reason
# cut to MAX_REASON characters, no record exceeds MAX_DEAD_LETTER_BYTES, whatever was refused.
EXCERPT_BYTES = 8 * 1024
KEY_EXCERPT_BYTES = 1024
MAX_REASON = 500
MAX_DEAD_LETTER_BYTES = 96 * 1024


def decode_json(topic: str, raw: bytes | None) -> dict[str, Any]:
    """Parse and schema-check one message value of a logical topic."""
    if raw is None:
        raise Rejected("schema_violation", f"{topic}: empty message value")
    _check_size(topic, raw)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Rejected("invalid_json", f"invalid JSON: {e}") from None
    _validate(topic, doc)
    return doc


def decode_event(topic: str, raw: bytes | None, source: str, key: bytes | None = ANY_KEY,
                 not_after: Micros = LATEST) -> Event:
    """One message of an input topic as an engine event; `source` names it in policy errors.

    A market topic's `key` must be the message's instrument_id (model_id for risk models), and an
    event time must not be after `not_after` (live: the wall clock plus the allowed skew)."""
    return _checked(topic, event_from_doc(topic, decode_json(topic, raw), source), key, not_after)


def decode_price(raw: bytes | None, key: bytes | None = ANY_KEY, not_after: Micros = LATEST) -> Price:
    """A price message as a Price: what decode_event("prices", ...) gives, in a few calls for the
    plain shape a feed sends (`plain_price`), with the right key and time. Anything else goes the
    general way, which decides and says why it refuses."""
    try:
        if len(raw) > MAX_MESSAGE_BYTES:  # type: ignore[arg-type]
            _check_size("prices", raw)  # type: ignore[arg-type]
        doc = orjson.loads(raw)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        return decode_event("prices", raw, "")  # type: ignore[return-value]
    if plain_price(doc) and (price := doc["price"]) <= MAX_PRICE:
        iid, ts = doc["instrument_id"], parse_ts(doc["ts"])
        if (key is ANY_KEY or key == iid.encode()) and ts <= not_after:
            return Price(iid, float(price), ts)
    general = event_from_doc("prices", doc, "", validated=False)
    return _checked("prices", general, key, not_after)  # type: ignore[return-value]


def event_from_doc(topic: str, doc: Any, source: str, validated: bool = True) -> Event:
    """A parsed document of an input topic as an engine event (schema-checked unless `validated`)."""
    if not validated:
        _validate(topic, doc)
    if topic == "policies":
        try:
            return parse_policy(doc, source)
        except PolicyError as e:
            raise Rejected("invalid_policy", str(e)) from None
    return _BUILDERS[topic](doc)


def _check_size(topic: str, raw: bytes) -> None:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Rejected("too_large", f"{topic}: message of {len(raw):,} bytes is over the limit of "
                                    f"{MAX_MESSAGE_BYTES:,}")


def _validate(topic: str, doc: Any) -> None:
    try:
        validate(topic, doc)
    except TooDeep as e:
        raise Rejected("too_deep", str(e)) from None
    except ContractError as e:
        raise Rejected("schema_violation", str(e)) from None
    except RecursionError:  # not expected past the depth check; refused all the same
        raise Rejected("too_deep", f"{topic}: nested too deep to validate") from None


def _checked(topic: str, event: Event, key: bytes | None, not_after: Micros) -> Event:
    """`event`, if its message key (unless ANY_KEY) and its event time are what they must be."""
    if key is not ANY_KEY:
        field = _KEY_FIELDS[topic]
        own = getattr(event, field)
        if key is None or key != own.encode():
            shown = key if key is None or len(key) <= 32 else key[:32] + b"..."
            raise Rejected("impossible_value", f"message key {shown!r} is not its {field} {own[:32]!r}")
    if (ts := _event_time(event)) > not_after:
        raise Rejected("future_timestamp", f"{topic}: event time {format_ts(ts)} is after {format_ts(not_after)}, "
                                           f"the wall clock plus the allowed skew")
    return event


def _event_time(event: Event) -> Micros:
    """The event time that moves the clock: a price's, fill's or approval's ts, a snapshot's as_of;
    0 for the rest (policies, instruments, and risk models, whose as_of may name a day ahead)."""
    if isinstance(event, Snapshot):
        return event.as_of
    return event.ts if isinstance(event, (Price, Fill, Decision)) else 0


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
    """The monitor-dlq record: where the message came from, why it was refused, and the first
    EXCERPT_BYTES of it (at most MAX_DEAD_LETTER_BYTES in all)."""
    original = raw or b""
    excerpt = original[:EXCERPT_BYTES]
    try:
        # A cut may split the last character: the incremental decoder leaves an incomplete tail out.
        text: str | None = codecs.getincrementaldecoder("utf-8")().decode(excerpt, final=excerpt == original)
    except UnicodeDecodeError:
        text = None
    shown_key = dead_letter_key(key)
    reason = (rejected.reason.splitlines() or [""])[0].strip() or rejected.code
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    return encode({
        "schema_version": 1,
        "reason": reason,
        "reason_code": rejected.code,
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": shown_key.decode("utf-8", "replace") if shown_key is not None else None,
            "timestamp": timestamp_ms,
        },
        "original": text,
        "original_base64": base64.b64encode(excerpt).decode("ascii"),
        "original_bytes": len(original),
        "truncated": len(excerpt) < len(original),
        "rejected_at": format_ts(now),
    })


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The key a dead-letter record is sent with: the original's, cut to KEY_EXCERPT_BYTES."""
    return None if key is None else key[:KEY_EXCERPT_BYTES]
