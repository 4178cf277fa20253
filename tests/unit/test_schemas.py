"""The topic contract: schemas are sound, examples hold, refusals name the right field.

Examples live in tests/examples/<topic>/ (valid) and tests/examples/invalid/<topic>/
(invalid, with the expected JSON pointer of each in tests/examples/invalid/expected.yaml).
Any other example anywhere under tests/ in a directory named after a topic is checked
too, so fixtures written for other tests cannot drift from the contract.
"""

from __future__ import annotations

import json
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from monitor import contract
from monitor.contract import TOPICS_WITH_SCHEMAS, ContractError, validate, validator
from monitor.engine import Price, Rejected
from monitor.ops.config import ALL_TOPICS

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
EXAMPLES = TESTS / "examples"
INVALID = EXAMPLES / "invalid"
EXPECTED_PATHS: dict[str, str] = yaml.safe_load((INVALID / "expected.yaml").read_text())


def _load(path: Path) -> Any:
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(path.read_text())
    return json.loads(path.read_bytes())


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _topic_examples() -> list[Path]:
    """Example files under tests/ whose directory is named after a topic (invalid/ excluded).

    JSON everywhere; YAML only for policies, which are also written as YAML files.
    """
    found = []
    for path in sorted(TESTS.rglob("*")):
        if not path.is_file() or path.parent.name not in TOPICS_WITH_SCHEMAS:
            continue
        if "invalid" in path.relative_to(TESTS).parts:
            continue
        if path.suffix == ".json" or (path.parent.name == "policies" and path.suffix in (".yaml", ".yml")):
            found.append(path)
    return found


def _invalid_examples() -> list[Path]:
    return sorted(p for p in INVALID.rglob("*.json"))


# ---------------------------------------------------------------- the schemas themselves


def test_every_topic_of_the_contract_has_a_schema() -> None:
    assert set(ALL_TOPICS) <= set(TOPICS_WITH_SCHEMAS)
    files = {p.name for p in (REPO / "schemas").glob("*.json")}
    assert files == {f"{t}.v1.schema.json" for t in TOPICS_WITH_SCHEMAS}


@pytest.mark.parametrize("topic", TOPICS_WITH_SCHEMAS)
def test_schema_is_valid_2020_12(topic: str) -> None:
    doc = json.loads(contract.schema_path(topic).read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://drift-monitor.local/schemas/{topic}.v1.schema.json"
    assert doc["title"] and doc["description"]


@pytest.mark.parametrize("topic", TOPICS_WITH_SCHEMAS)
def test_every_top_level_field_is_described_and_schema_version_allowed(topic: str) -> None:
    doc = contract.schema(topic)
    assert "schema_version" in doc["properties"]
    for name, prop in doc["properties"].items():
        described = "description" in prop or ("$ref" in prop and "description" in doc["$defs"][prop["$ref"].split("/")[-1]])
        assert described, f"{topic}: property {name!r} has no description"


@pytest.mark.parametrize("topic", TOPICS_WITH_SCHEMAS)
def test_validator_is_compiled_once(topic: str) -> None:
    assert contract.validator(topic) is contract.validator(topic)


def test_inlined_validator_judges_like_the_schema_file() -> None:
    # contract.validator expands $refs once for speed; it must agree with the file as written.
    examples = _topic_examples() + _invalid_examples()
    assert examples
    for path in examples:
        topic = path.parent.name
        plain = Draft202012Validator(contract.schema(topic), format_checker=contract.validator(topic).format_checker)
        doc = _load(path)
        for message in doc if isinstance(doc, list) else [doc]:
            fast = sorted(e.message for e in contract.validator(topic).iter_errors(message))
            slow = sorted(e.message for e in plain.iter_errors(message))
            assert fast == slow, _rel(path)


def test_unknown_topic_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        validate("no-such-topic", {})


# ---------------------------------------------------------------- examples


def test_there_are_examples_for_every_topic() -> None:
    for topic in TOPICS_WITH_SCHEMAS:
        assert list((EXAMPLES / topic).glob("*.json")), f"no example for {topic}"


@pytest.mark.parametrize("path", _topic_examples(), ids=_rel)
def test_example_is_valid(path: Path) -> None:
    doc = _load(path)
    # A file may hold one message or a JSON array of messages.
    for message in doc if isinstance(doc, list) else [doc]:
        validate(path.parent.name, message)


def test_every_invalid_example_has_an_expected_path() -> None:
    on_disk = {p.relative_to(INVALID).as_posix() for p in _invalid_examples()}
    assert on_disk == set(EXPECTED_PATHS)


@pytest.mark.parametrize("path", _invalid_examples(), ids=_rel)
def test_invalid_example_is_refused_at_its_field(path: Path) -> None:
    topic = path.parent.name
    with pytest.raises(ContractError) as caught:
        validate(topic, _load(path))
    error = caught.value
    assert error.topic == topic
    assert error.path == EXPECTED_PATHS[path.relative_to(INVALID).as_posix()], str(error)
    assert "\n" not in error.reason


# ---------------------------------------------------------------- targeted refusals


def _fill(**changes: Any) -> dict[str, Any]:
    return {**_load(EXAMPLES / "fills" / "buy-aapl.json"), **changes}


def _policy(*limits: dict[str, Any]) -> dict[str, Any]:
    return {"portfolio_id": "BOOK-001", "version": 1, "base_currency": "USD", "limits": list(limits)}


def test_negative_fill_quantity_names_quantity() -> None:
    with pytest.raises(ContractError) as caught:
        validate("fills", _fill(quantity=-5))
    assert caught.value.path == "/quantity"
    assert str(caught.value) == "fills: /quantity: -5 is less than or equal to the minimum of 0"


def test_weight_limit_without_instrument_is_refused() -> None:
    with pytest.raises(ContractError) as caught:
        validate("policies", _policy({"metric": "weight", "target": 0.1, "band": {"width": 0.02}}))
    assert caught.value.path == "/limits/0/instrument"


def test_band_with_width_and_lower_is_refused() -> None:
    limit = {"metric": "weight", "instrument": "AAPL", "target": 0.1, "band": {"width": 0.02, "lower": 0.01}}
    with pytest.raises(ContractError) as caught:
        validate("policies", _policy(limit))
    assert caught.value.path == "/limits/0/band/lower"


@pytest.mark.parametrize("band", [{"lower": 0.01}, {"upper": 0.01}, {}, {"type": "relative"}])
def test_incomplete_band_is_refused(band: dict[str, Any]) -> None:
    limit = {"metric": "weight", "instrument": "AAPL", "target": 0.1, "band": band}
    with pytest.raises(ContractError) as caught:
        validate("policies", _policy(limit))
    assert caught.value.path == "/limits/0/band"


@pytest.mark.parametrize("ts", ["2025-06-02T13:30:00", "2025-06-02 13:30:00Z", "2025-06-02", "1748871000", "2025-06-02T13:30:00+0000"])
def test_timestamp_without_zone_or_in_another_shape_is_refused(ts: str) -> None:
    with pytest.raises(ContractError) as caught:
        validate("prices", {"instrument_id": "AAPL", "price": 1.0, "ts": ts})
    assert caught.value.path == "/ts"


@pytest.mark.parametrize("ts", ["2025-06-02T13:30:00Z", "2025-06-02T13:30:00.123456Z", "2025-06-02T09:30:00-04:00"])
def test_zoned_timestamps_are_accepted(ts: str) -> None:
    validate("prices", {"instrument_id": "AAPL", "price": 1.0, "ts": ts})


def test_calendar_is_checked_not_only_the_shape() -> None:
    with pytest.raises(ContractError) as caught:
        validate("prices", {"instrument_id": "AAPL", "price": 1.0, "ts": "2025-13-01T00:00:00Z"})
    assert caught.value.path == "/ts"


def test_instrument_extra_attributes_must_be_strings() -> None:
    base = {"instrument_id": "AAPL", "currency": "USD", "asset_class": "equity"}
    validate("instruments", {**base, "country": "US"})
    with pytest.raises(ContractError) as caught:
        validate("instruments", {**base, "country": None})
    assert caught.value.path == "/country"


def test_positions_may_be_short_or_flat() -> None:
    doc = _load(EXAMPLES / "positions" / "book-001.json")
    doc["positions"] = [{"instrument_id": "AAPL", "quantity": -10}, {"instrument_id": "TSLA", "quantity": 0}]
    validate("positions", doc)


def test_selectors_that_do_not_apply_to_the_metric_are_refused() -> None:
    limit = {"metric": "gross_leverage", "instrument": "AAPL", "target": 1.5, "band": {"width": 0.2}}
    with pytest.raises(ContractError) as caught:
        validate("policies", _policy(limit))
    assert caught.value.path == "/limits/0/instrument"


def test_unexpected_field_is_named_rather_than_the_field_it_replaces() -> None:
    doc = _fill(qty=5)
    del doc["quantity"]
    with pytest.raises(ContractError) as caught:
        validate("fills", doc)
    assert caught.value.path == "/qty"


def test_pointer_escapes_slash_and_tilde() -> None:
    doc = _load(EXAMPLES / "risk-models" / "us-equity-daily.json")
    doc["specific_var"] = {"BRK/B~1": -1.0}
    with pytest.raises(ContractError) as caught:
        validate("risk-models", doc)
    assert caught.value.path == "/specific_var/BRK~1B~01"


# ---------------------------------------------------------------- ContractError itself


def test_contract_error_api() -> None:
    with pytest.raises(ContractError) as caught:
        validate("fills", [])
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.topic, error.path) == ("fills", "")
    assert str(error) == f"fills: {error.reason}"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.topic, clone.path, clone.reason) == (error.topic, error.path, error.reason)


def test_reason_is_one_bounded_line() -> None:
    doc = _load(EXAMPLES / "drift-alerts" / "open-breach.json")
    doc["message"] = "x" * 2000 + "\n"
    with pytest.raises(ContractError) as caught:
        validate("drift-alerts", doc)
    assert "\n" not in caught.value.reason
    assert len(caught.value.reason) <= 300


def test_schema_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = contract.schema_path("prices")
    (tmp_path / src.name).write_text(src.read_text())
    monkeypatch.setenv("MONITOR_SCHEMA_DIR", str(tmp_path))
    assert contract.schema_path("prices") == tmp_path / src.name
    assert contract.schema_dir() == tmp_path


def test_dlq_example_reason_matches_contract_error_format() -> None:
    # The dead-letter example quotes a ContractError; keep the two in step.
    dlq = _load(EXAMPLES / "monitor-dlq" / "schema-violation.json")
    with pytest.raises(ContractError) as caught:
        validate("fills", json.loads(dlq["original"]))
    assert str(caught.value) == dlq["reason"]
    assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", dlq["original_base64"])


# ---------------------------------------------------------------- the price fast path

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=4), st.text(min_size=127, max_size=130),  # about the identifiers' bound
                    st.sampled_from(["2026-01-05T14:30:00Z", "2026-01-05T14:30:00.5+01:00", "2026-02-30T14:30:00Z",
                                     "2026-01-05T14:30:00", "2026-01-05 14:30:00Z", "EQ0001", ""]))
_KEYS = st.sampled_from(["instrument_id", "price", "ts", "schema_version", "extra"])


@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
@settings(max_examples=2_000, deadline=None)
def test_the_price_fast_path_never_accepts_what_the_schema_refuses(doc):
    from monitor.contract import plain_price

    if plain_price(doc):
        assert validator("prices").is_valid(doc), doc


@given(st.text(min_size=1, max_size=12), st.floats(min_value=1e-9, max_value=1e9),
       st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(timezone.utc)), st.booleans())
@settings(max_examples=300, deadline=None)
def test_the_price_fast_path_takes_every_ordinary_price(iid, price, moment, versioned):
    from monitor.contract import plain_price

    doc = {"instrument_id": iid, "price": price, "ts": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    if versioned:
        doc["schema_version"] = 1
    assert validator("prices").is_valid(doc) and plain_price(doc)


_ORDINARY_FILL = st.fixed_dictionaries(
    {"fill_id": st.text(min_size=1, max_size=8), "portfolio_id": st.text(min_size=1, max_size=8),
     "instrument_id": st.text(min_size=1, max_size=8), "side": st.sampled_from(["BUY", "SELL"]),
     "quantity": st.one_of(st.integers(1, 10**9), st.floats(1e-6, 1e9)), "price": st.floats(1e-9, 1e9),
     "ts": st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(timezone.utc)).map(
         lambda m: m.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))},
    optional={"fees": st.floats(0, 1e6), "schema_version": st.just(1)})
_FILL_KEYS = st.sampled_from(["fill_id", "portfolio_id", "instrument_id", "side", "quantity", "price", "ts",
                              "fees", "schema_version", "extra"])
_FILL_VALUES = st.one_of(_VALUES, st.sampled_from(["BUY", "SELL", "buy", "F-1", 1.0]), st.floats(-1, 1e6))


@given(_ORDINARY_FILL, st.lists(st.tuples(_FILL_KEYS, st.one_of(st.just(None), _FILL_VALUES), st.booleans()),
                                max_size=2))
@settings(max_examples=3_000, deadline=None)
def test_the_fill_fast_path_never_accepts_what_the_schema_refuses(doc, edits):
    """An ordinary fill with a field or two replaced by anything, removed or added."""
    from monitor.contract import plain_fill

    for key, value, remove in edits:
        if remove:
            doc.pop(key, None)
        else:
            doc[key] = value
    if plain_fill(doc):
        assert validator("fills").is_valid(doc), doc


@given(_ORDINARY_FILL)
@settings(max_examples=300, deadline=None)
def test_the_fill_fast_path_takes_every_ordinary_fill(doc):
    from monitor.contract import plain_fill

    assert validator("fills").is_valid(doc) and plain_fill(doc)


def _decoded(decode, raw):
    try:
        return decode(raw)
    except Rejected as rejected:
        return rejected.code


_PLAIN = st.fixed_dictionaries({"instrument_id": st.text(min_size=1, max_size=6), "price": st.floats(1e-9, 1e9),
                                "ts": st.sampled_from(["2026-01-05T14:30:00Z", "2026-01-05T14:30:00.5+01:00"])})


@given(st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=5).map(json.dumps), _PLAIN.map(json.dumps),
                 st.sampled_from(["", "[1]", "{", "null", '{"instrument_id": "A", "price": 1e999, "ts": '
                                  '"2026-01-05T14:30:00Z"}']),
                 st.binary(max_size=8).map(lambda b: b.decode("latin-1"))).map(str.encode) | st.none())
@settings(max_examples=2_000, deadline=None)
def test_the_price_decoder_gives_what_the_general_decoder_gives(raw):
    """decode_price is decode_event for prices, faster: the same Price, or refused with the same code."""
    from monitor.stream.codec import decode_event, decode_price

    general = _decoded(lambda r: decode_event("prices", r, ""), raw)
    assert _decoded(decode_price, raw) == general
    assert isinstance(general, (Price, str))
