"""Alert rules: valid, unit-tested firing and not firing for every alert, documented with a runbook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
TESTS = ROOT / "deploy" / "prometheus" / "tests" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")


def _alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/setup.sh installs Debian's prometheus")
def test_promtool_checks_rules_config_and_unit_tests() -> None:
    for args in (["check", "rules", str(RULES)], ["check", "config", str(RULES.parent / "prometheus.yml")],
                 ["test", "rules", str(TESTS)]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing, quiet = set(), set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def test_every_alert_has_severity_text_and_a_runbook() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for alert in _alerts():
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert alert["annotations"].get(key), (alert["alert"], key)
        assert alert["annotations"]["runbook_url"] == f"docs/operations.md#{alert['alert'].lower()}"
        assert f"### {alert['alert']}\n" in operations, alert["alert"]


def test_rules_only_use_metrics_the_runtime_and_bench_export() -> None:
    import re

    from fraudscore.serving.metrics import SidecarMetrics

    exported = set()
    for metric in SidecarMetrics().registry.collect():
        exported.add(metric.name)
        exported.update(s.name for s in metric.samples)
    exported |= {"fraudscore_bench_throughput_per_second", "fraudscore_bench_latency_seconds", "fraudscore_bench_ratio", "up"}
    text = RULES.read_text()
    used = set(re.findall(r"\b(fraudscore_[a-z_]+|up)\b(?=[{\[\s)])", text))
    assert used - exported == set()
