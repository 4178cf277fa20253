"""Policy files: the shipped ones are valid and show every metric; a bad one says file, field, why."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.contract import schema
from monitor.engine import PolicyError
from monitor.ops.policy_files import load_policy_file

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "deploy" / "policies").glob("*.yaml"))


def test_shipped_policies_are_valid_and_show_every_metric():
    assert SHIPPED
    metrics = set()
    for path in SHIPPED:
        _, policy = load_policy_file(path)
        metrics |= {limit.metric for limit in policy.limits}
    limit_schema = schema("policies")["$defs"]
    enum = next(v["properties"]["metric"]["enum"] for v in limit_schema.values()
                if isinstance(v, dict) and "metric" in v.get("properties", {}))
    assert metrics == set(enum)


@pytest.mark.parametrize(("text", "field", "words"), [
    ("portfolio_id: B\nversion: 1\nbase_currency: USD\nlimits: [\n", "/", "not valid YAML at line"),
    ("portfolio_id: B\nversion: 1\nbase_currency: USD\nlimits:\n"
     "  - {metric: weight, instrument: A, target: 0, band: {type: relative, width: 0.1}}\n",
     "/limits/0/target", "relative band"),
    ("portfolio_id: B\nversion: 1\nbase_currency: USD\nlimits:\n"
     "  - {id: x, metric: weight, instrument: A, target: 0.1, band: {width: 0.01}}\n"
     "  - {id: x, metric: weight, instrument: B, target: 0.1, band: {width: 0.01}}\n",
     "/limits/1/id", "duplicate limit id"),
    ("portfolio_id: B\nversion: 1\nbase_currency: USD\nlimits:\n"
     "  - {metric: var, target: 0.1, band: {width: 0.01}}\n", "/limits/0/metric", "var"),
    ("portfolio_id: B\nversion: 1\nbase_currency: USD\nevaluation: {hysteresis: 1.5}\nlimits:\n"
     "  - {metric: gross_leverage, target: 1, band: {width: 0.1}}\n", "/evaluation/hysteresis", "1.5"),
])
def test_a_bad_policy_file_is_refused_with_file_field_and_reason(tmp_path, text, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert words in message, message
    result = CliRunner().invoke(main, ["policy", "check", str(SHIPPED[0]), str(path)])
    assert result.exit_code == 1
    assert f"ok {SHIPPED[0]}" in result.output and f"refused {path}: {field}" in result.output
