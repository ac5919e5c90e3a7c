"""deploy/prometheus: the config and rules load (`promtool check`), every alert fires on
its case and not on the one next to it (`promtool test rules`), and every alert has a
test and a runbook entry. `.ci/run` installs promtool (Debian's prometheus package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (apt-get install prometheus; CI installs it)",
)


def _promtool(*args: str) -> str:
    assert PROMTOOL, "promtool is not installed: .ci/run installs Debian's prometheus package"
    out = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _alerts() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_the_config_and_the_rules_load():
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in _promtool("check", "rules", "alerts.yml")


@needs_promtool
def test_every_alert_passes_its_unit_tests():
    assert "SUCCESS" in _promtool("test", "rules", "alerts.test.yml")


def test_every_alert_is_tested_firing_and_has_a_runbook_entry():
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("### ")
    }
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) >= 8
    for name in names:
        assert name in fired and name in quiet, name
        assert name.lower() in anchors, f"docs/runbook.md has no '### {name}' section"
        rule = next(r for r in _alerts() if r["alert"] == name)
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{name.lower()}"
