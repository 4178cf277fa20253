"""The topic contract: JSON Schemas of every message, and validation against them.

The schemas in the repository's top-level ``schemas/`` directory are the public
contract (one ``<logical-topic>.v1.schema.json`` per topic). This module is the one
place that loads them, so the worker, the simulator, the CLI and the tests all judge
a message by the same rules.

Validation sits on the hot path of every consumed message, so each schema is read
and compiled once per process and the compiled validator is cached. A valid message
costs one pass of the validator; the work of choosing and formatting the most
relevant error is only done for messages that fail.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match, by_relevance

__all__ = ["MAX_DEPTH", "MAX_MESSAGE_BYTES", "TOPICS_WITH_SCHEMAS", "ContractError", "TooDeep", "nested_deeper_than",
           "schema", "schema_dir", "schema_path", "validate", "validator"]

# Logical topic names that have a schema, in the order of the contract table.
# "approvals" is an input topic of the (later) rebalance approval flow.
TOPICS_WITH_SCHEMAS: tuple[str, ...] = (
    "prices",
    "fills",
    "instruments",
    "positions",
    "policies",
    "risk-models",
    "drift-alerts",
    "rebalance-signals",
    "approvals",
    "monitor-dlq",
)

SCHEMA_VERSION = 1
# Bounds every input message is held to before its content is looked at. The largest real message
# is a risk model (~420 KB for 20,000 instruments), and 1 MiB is also what a broker accepts by
# default (message.max.bytes). No message of the contract nests deeper than 4 levels (a policy's
# limit's band); 16 leaves room, and stays far below where a recursive validator would overflow
# Python's stack (about 1,000 frames, a few per level).
MAX_MESSAGE_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_ID = 128  # characters of an identifier (the schemas' `identifier`): ids become record keys and labels
# Longest reason kept; a dead-letter reason is one line, not a dump of the message.
_MAX_REASON = 300
# Between errors at the same place, an unexpected field beats the missing one it most
# likely misspells ("qty" sent, "quantity" missing): the typo is what to fix.
_RELEVANCE = by_relevance(strong=frozenset({"additionalProperties"}))


class ContractError(ValueError):
    """A message that breaks its topic's schema.

    ``path`` is a JSON pointer to the offending field ("/positions/0/quantity"; "" for
    the message as a whole): it is what a producer needs to fix the message, and it
    is stable across jsonschema versions, unlike the full message text. For a missing
    required field the path names the missing field itself, and for an unexpected
    field the unexpected one, since that is the field to fix.
    """

    def __init__(self, topic: str, path: str, reason: str) -> None:
        self.topic = topic
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path:
            return f"{self.topic}: {self.path}: {self.reason}"
        return f"{self.topic}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (the default would call __init__ with one argument).
        return (type(self), (self.topic, self.path, self.reason))


class TooDeep(ContractError):
    """A message nested deeper than MAX_DEPTH: refused before the validator recurses into it."""


def nested_deeper_than(doc: object, limit: int) -> bool:
    """True if `doc` has more than `limit` levels of objects and arrays; level by level, without
    recursion, and it stops at the first level past the limit."""
    level = [doc]
    for _ in range(limit):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return False
    return any(isinstance(node, (dict, list)) for node in level)


def schema_dir() -> Path:
    """Directory holding the schemas.

    Defaults to the repository's ``schemas/``; MONITOR_SCHEMA_DIR overrides it for an
    installed package (site-packages has no ``schemas/`` next to ``monitor/``), such as
    the Docker image.
    """
    override = os.environ.get("MONITOR_SCHEMA_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "schemas"


def schema_path(topic: str) -> Path:
    """Path of the schema file of a logical topic."""
    if topic not in TOPICS_WITH_SCHEMAS:
        raise KeyError(f"no schema for topic {topic!r}; known: {', '.join(TOPICS_WITH_SCHEMAS)}")
    return schema_dir() / f"{topic}.v{SCHEMA_VERSION}.schema.json"


@lru_cache(maxsize=None)
def schema(topic: str) -> dict[str, Any]:
    """The parsed schema document of a logical topic (cached; do not mutate)."""
    with schema_path(topic).open("rb") as f:
        return json.load(f)


def _is_rfc3339(value: object) -> bool:
    # jsonschema only checks "date-time" when the optional rfc3339-validator package is
    # installed; without it the format would be silently ignored. The schemas' pattern
    # already pins the shape (and requires a zone); this adds the calendar check
    # (no month 13, no February 30) using only the standard library.
    if not isinstance(value, str):
        return True  # format applies to strings only; "type" reports the rest
    return _is_rfc3339_text(value)


def _is_rfc3339_text(value: str) -> bool:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


_FORMAT_CHECKER = FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(_is_rfc3339)


@lru_cache(maxsize=None)
def validator(topic: str) -> Draft202012Validator:
    """Compiled validator of a logical topic, built once per process.

    Date-time formats are asserted (see ``_is_rfc3339``). The cache is keyed by topic
    only; call ``validator.cache_clear()`` and ``schema.cache_clear()`` after changing
    MONITOR_SCHEMA_DIR at run time.
    """
    doc = schema(topic)
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(_inline_local_refs(doc, doc.get("$defs", {})), format_checker=_FORMAT_CHECKER)


# Keywords that only annotate: merging them into an inlined definition changes nothing.
_ANNOTATIONS = frozenset({"description", "title", "examples", "default", "$comment"})


def _inline_local_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace each ``{"$ref": "#/$defs/name"}`` with the definition itself.

    The schema files use $defs so that shared shapes (timestamp, identifier) are
    written once; jsonschema resolves a $ref on every message, which doubles the cost
    of a small message. Our definitions are local and not recursive, so they can be
    expanded once here. A $ref with non-annotation siblings keeps 2020-12 semantics
    (both apply) through allOf.
    """
    if isinstance(node, list):
        return [_inline_local_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and ref.count("/") == 2:
        target = _inline_local_refs(defs[ref.rsplit("/", 1)[1]], defs)
        siblings = {k: _inline_local_refs(v, defs) for k, v in node.items() if k != "$ref"}
        if set(siblings) <= _ANNOTATIONS and isinstance(target, dict):
            return {**target, **siblings}
        own_all_of = siblings.pop("allOf", [])
        return {**siblings, "allOf": [target, *own_all_of]}
    return {k: (v if k == "$defs" else _inline_local_refs(v, defs)) for k, v in node.items()}


_TIMESTAMP = re.compile(schema("prices")["$defs"]["timestamp"]["pattern"])


def plain_price(doc: object) -> bool:
    """True only for a price the prices schema accepts, checked in about a microsecond.

    The price feed is the one hot topic: jsonschema costs ~20 us a message there. This
    check is sufficient, not necessary: a document it does not vouch for (an error, or
    an unusual but valid shape such as schema_version 1.0) goes through jsonschema,
    which decides and names the field. A property test holds it to the schema.
    """
    if type(doc) is not dict:
        return False
    if len(doc) != 3 and not (len(doc) == 4 and type(doc.get("schema_version")) is int
                              and doc["schema_version"] == 1):
        return False
    iid, price, ts = doc.get("instrument_id"), doc.get("price"), doc.get("ts")
    return (type(iid) is str and 0 < len(iid) <= MAX_ID and type(price) in (int, float) and price > 0
            and type(ts) is str and _plain_ts(ts))


@lru_cache(maxsize=4096)  # a feed stamps many prices with the same millisecond
def _plain_ts(ts: str) -> bool:
    return _TIMESTAMP.match(ts) is not None and _is_rfc3339_text(ts)


_FILL_REQUIRED = frozenset({"fill_id", "portfolio_id", "instrument_id", "side", "quantity", "price", "ts"})
_FILL_ALLOWED = _FILL_REQUIRED | {"fees", "schema_version"}


def plain_fill(doc: object) -> bool:
    """True only for a fill the fills schema accepts, the shape an execution system sends; like
    `plain_price`, sufficient and not necessary (anything else goes through jsonschema, which
    decides and names the field). jsonschema was ~6% of the worker's time under a fill burst."""
    if type(doc) is not dict:
        return False
    keys = doc.keys()
    if not (_FILL_REQUIRED <= keys <= _FILL_ALLOWED):
        return False
    if "schema_version" in doc and not (type(doc["schema_version"]) is int and doc["schema_version"] == 1):
        return False
    if "fees" in doc and not (type(fees := doc["fees"]) in (int, float) and fees >= 0):
        return False
    quantity, price, ts = doc["quantity"], doc["price"], doc["ts"]
    return (all(type(doc[f]) is str and 0 < len(doc[f]) <= MAX_ID for f in ("fill_id", "portfolio_id", "instrument_id"))
            and doc["side"] in ("BUY", "SELL") and type(doc["side"]) is str
            and type(quantity) in (int, float) and quantity > 0 and type(price) in (int, float) and price > 0
            and type(ts) is str and _plain_ts(ts))


_FAST_PATHS = {"prices": plain_price, "fills": plain_fill}


def validate(topic: str, doc: object) -> None:
    """Check one decoded message against its topic's schema.

    Raises ContractError naming the most relevant offending field (TooDeep for a message
    nested deeper than MAX_DEPTH), KeyError for a topic without a schema.
    """
    fast = _FAST_PATHS.get(topic)
    if fast is not None and fast(doc):
        return
    if nested_deeper_than(doc, MAX_DEPTH):
        raise TooDeep(topic, "", f"nested deeper than {MAX_DEPTH} levels of objects and arrays")
    errors = validator(topic).iter_errors(doc)
    first = next(errors, None)
    if first is None:
        return
    error = best_match(itertools.chain((first,), errors), key=_RELEVANCE)
    assert error is not None
    raise ContractError(topic, _pointer(error), _reason(error))


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _pointer(error: ValidationError) -> str:
    parts = list(error.absolute_path)
    field = _offending_member(error)
    if field is not None:
        parts.append(field)
    return "".join(f"/{_escape(p)}" for p in parts)


def _offending_member(error: ValidationError) -> str | None:
    """Name of the member a "required" or "additionalProperties" error is about.

    jsonschema reports both at the enclosing object; the member is what to fix.
    """
    instance = error.instance
    if not isinstance(instance, dict):
        return None
    if error.validator == "required":
        for name in error.validator_value:
            if name not in instance and error.message.startswith(repr(name)):
                return name
    elif error.validator == "additionalProperties" and error.validator_value is False:
        declared = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        if patterns:
            return None  # rare in our schemas; the object path is precise enough
        extras = [name for name in instance if name not in declared]
        if extras:
            return extras[0]
    return None


def _reason(error: ValidationError) -> str:
    if error.validator in ("not", "oneOf", "anyOf") and isinstance(error.schema, dict) and error.schema.get("description"):
        # jsonschema's own text for these repeats the whole instance and says little;
        # the schemas describe what was expected instead.
        message = str(error.schema["description"])
    elif error.validator == "format" and error.validator_value == "date-time":
        message = f"{error.instance!r} is not an RFC 3339 timestamp with a zone (e.g. 2024-03-15T14:30:00Z)"
    else:
        message = error.message
    one_line = " ".join(message.split())
    if len(one_line) > _MAX_REASON:
        one_line = one_line[: _MAX_REASON - 3] + "..."
    return one_line
