"""The shipped Prometheus rules and Alertmanager routing, checked by Prometheus's own tools:
promtool checks the config and rules and runs deploy/prometheus/rules.test.yml; amtool checks
deploy/alertmanager/alertmanager.yml and says which receiver each alert of the rules reaches.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.monitoring import ALERTMANAGER_CONFIG, PROMETHEUS_DIR, run_tool, tool

RULES = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
RULE_TESTS = yaml.safe_load((PROMETHEUS_DIR / "rules.test.yml").read_text())
ALERT_RULES = {rule["alert"]: rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule}


def _ok(result: Any) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"


def test_promtool_checks_the_config_and_its_rules() -> None:
    _ok(run_tool(tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")))
    _ok(run_tool(tool("promtool"), "check", "rules", str(PROMETHEUS_DIR / "rules.yml")))


def test_promtool_rule_unit_tests_pass() -> None:
    result = run_tool(tool("promtool"), "test", "rules", str(PROMETHEUS_DIR / "rules.test.yml"))
    _ok(result)
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("alertname", sorted(ALERT_RULES))
def test_every_alert_rule_has_a_firing_and_a_quiet_case(alertname: str) -> None:
    cases = [case for test in RULE_TESTS["tests"] for case in test.get("alert_rule_test", [])
             if case["alertname"] == alertname]
    assert any(case.get("exp_alerts") for case in cases), f"rules.test.yml never expects {alertname} to fire"
    assert any(not case.get("exp_alerts") for case in cases), f"rules.test.yml never expects {alertname} quiet"


def test_promtool_rule_tests_can_fail(tmp_path) -> None:
    """The harness sees a wrong expectation (the tests above do not pass vacuously)."""
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules.test.yml").read_text())
    case = next(c for t in tests["tests"] for c in t["alert_rule_test"] if c["alertname"] == "DriftBookCritical"
                and c.get("exp_alerts"))
    case["exp_alerts"] = []
    tests["rule_files"] = [str(PROMETHEUS_DIR / f) for f in tests["rule_files"]]
    broken = tmp_path / "rules.test.yml"
    broken.write_text(yaml.safe_dump(tests))
    assert run_tool(tool("promtool"), "test", "rules", str(broken)).returncode != 0


def test_amtool_checks_the_alertmanager_config() -> None:
    result = run_tool(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    _ok(result)
    assert "SUCCESS" in result.stdout


# Which receiver each shipped alert reaches: a desk's books by severity, the monitor's health to SRE.
ROUTES = [
    ({"alertname": "DriftBookBreach", "severity": "BREACH", "portfolio_id": "BOOK-ELS-01"}, "equity-desk"),
    ({"alertname": "DriftBookCritical", "severity": "CRITICAL", "portfolio_id": "BOOK-ELS-01"}, "equity-desk-page"),
    ({"alertname": "DriftBookBreach", "severity": "BREACH", "portfolio_id": "BOOK-007"}, "equity-desk"),
    ({"alertname": "DriftBookCritical", "severity": "CRITICAL", "portfolio_id": "BOOK-007"}, "equity-desk-page"),
    ({"alertname": "DriftBookBreach", "severity": "BREACH", "portfolio_id": "BOOK-GM-01"}, "macro-desk"),
    ({"alertname": "DriftBookCritical", "severity": "CRITICAL", "portfolio_id": "BOOK-GM-01"}, "macro-desk-page"),
    ({"alertname": "DriftBookBreach", "severity": "BREACH", "portfolio_id": "NEW-BOOK"}, "risk"),
    ({"alertname": "DriftBookCritical", "severity": "CRITICAL", "portfolio_id": "NEW-BOOK"}, "risk-page"),
    ({"alertname": "DriftMonitorCriticalDrift", "severity": "page", "state": "OPEN"}, "risk-page"),
    ({"alertname": "DriftMonitorWorkerDown", "severity": "page"}, "sre-page"),
    ({"alertname": "DriftMonitorEventLagHigh", "severity": "page", "topic": "prices"}, "sre-page"),
    ({"alertname": "DriftMonitorDeadLetters", "severity": "ticket", "topic": "fills", "reason": "unknown_book"},
     "sre-ticket"),
    ({"alertname": "DriftMonitorReconciliationBreak", "severity": "ticket"}, "sre-ticket"),
]


@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[f"{l['alertname']}-{l.get('portfolio_id', '')}" for l, _ in ROUTES])
def test_alertmanager_routes(labels: dict[str, str], receiver: str) -> None:
    result = run_tool(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                      *(f"{k}={v}" for k, v in labels.items()))
    _ok(result)
    assert result.stdout.strip() == receiver


def test_routes_cover_every_rule_and_receiver() -> None:
    """Each shipped alert rule with its own labels is in ROUTES, and each receiver is reached."""
    routed = {(labels["alertname"], labels["severity"]) for labels, _ in ROUTES}
    assert {(name, rule["labels"]["severity"]) for name, rule in ALERT_RULES.items()} <= routed
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert {r["name"] for r in config["receivers"]} == {receiver for _, receiver in ROUTES}


def test_critical_inhibits_breach_of_the_same_book() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    severities = {rule["labels"]["severity"] for rule in ALERT_RULES.values() if "portfolio_id" in rule["expr"]}
    assert severities == {"BREACH", "CRITICAL"}
    assert {"source_matchers": ['severity="CRITICAL"'], "target_matchers": ['severity="BREACH"'],
            "equal": ["portfolio_id"]} in config["inhibit_rules"]
