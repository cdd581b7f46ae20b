"""deploy/prometheus: the rules pass `promtool check rules` and their `promtool test rules` unit
tests (exact numbers, tests/rules-test.yml), every alert is tested firing, documented, labelled;
and the checks themselves fail on a broken rule or a wrong expectation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_harness import binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
RULE_FILES = [RULES / "recording-rules.yml", RULES / "alerting-rules.yml"]
RULE_TESTS = RULES / "tests" / "rules-test.yml"

pytestmark = pytest.mark.prometheus


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_rule_files_pass_promtool_check() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 20 rules found" in result.stdout
    assert "SUCCESS: 16 rules found" in result.stdout


def test_example_config_loads_the_rules() -> None:
    result = promtool("check", "config", str(RULES / "prometheus.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n- name: g\n  rules:\n"
        "  - record: x:y:rate5m\n    expr: sum by (flag) (rate(trafficsplit_requests_total[5m])\n"
    )
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "unclosed left parenthesis" in result.stdout + result.stderr


def test_a_wrong_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    text = RULE_TESTS.read_text().replace("value: 0.1875", "value: 0.19")
    text = re.sub(r"- \.\./(\S+)", lambda m: f"- {RULES / m.group(1)}", text)
    wrong = tmp_path / "wrong-test.yml"
    wrong.write_text(text)
    result = promtool("test", "rules", str(wrong))
    assert result.returncode != 0
    assert "1.875E-01" in result.stdout + result.stderr  # what the rule really gives


def test_every_alert_is_tested_firing_labelled_and_documented() -> None:
    alerts = rules(RULES / "alerting-rules.yml")
    names = {a["alert"] for a in alerts}
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == names
    docs = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert set(alert["annotations"]) == {"summary", "runbook"}, alert["alert"]
        assert f"`{alert['alert']}`" in docs, f"{alert['alert']} missing from docs/operations.md"


def test_recording_rules_follow_the_naming_convention_and_are_documented() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules(RULES / "recording-rules.yml"):
        assert re.fullmatch(r"[a-z_]+:trafficsplit_[a-z0-9_]+:[a-z0-9_]+", rule["record"])
        assert f"`{rule['record']}`" in docs, f"{rule['record']} missing from docs/operations.md"
