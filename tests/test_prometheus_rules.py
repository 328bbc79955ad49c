"""Alert rules: valid, unit-tested firing and not firing for every alert, documented with a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
# The minute-scale alerts, and the day-scale ones on a 10-minute grid (promtool evaluates every
# rule at each step of each test: days at 1 minute took most of the time).
TESTS = [ROOT / "deploy" / "prometheus" / "tests" / name for name in ("alerts_test.yml", "quality_alerts_test.yml")]
PROMTOOL = shutil.which("promtool")
RUNBOOK_BASE = "https://github.com/fraudscore/fraudscore/blob/main/docs/operations.md"


def _alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/setup.sh installs Debian's prometheus")
def test_promtool_checks_rules_config_and_unit_tests() -> None:
    for args in (["check", "rules", str(RULES)], ["check", "config", str(RULES.parent / "prometheus.yml")],
                 ["test", "rules", *map(str, TESTS)]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing, quiet = set(), set()
    for case in [case for path in TESTS for case in yaml.safe_load(path.read_text())["tests"]]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def _anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub (and mkdocs) make: lower case, spaces to hyphens, punctuation dropped."""
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)}


def test_every_alert_has_severity_text_and_a_clickable_runbook() -> None:
    anchors = _anchors((ROOT / "docs" / "operations.md").read_text())
    for alert in _alerts():
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert alert["annotations"].get(key), (alert["alert"], key)
        # Absolute: a relative path is not a link in an Alertmanager notification.
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{alert['alert'].lower()}", url
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: docs/operations.md has no heading for #{url.split('#', 1)[1]}"


def test_runbook_base_is_configurable_at_deploy_time(tmp_path: Path) -> None:
    script = RULES.parent / "runbook-base.sh"
    done = subprocess.run([str(script), "https://runbooks.example.com/fraudscore/ops/"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    urls = [r["annotations"]["runbook_url"] for g in rendered["groups"] for r in g["rules"] if "alert" in r]
    assert urls == [f"https://runbooks.example.com/fraudscore/ops#{a['alert'].lower()}" for a in _alerts()]
    # Nothing else changed.
    assert done.stdout.replace("https://runbooks.example.com/fraudscore/ops#", f"{RUNBOOK_BASE}#") == RULES.read_text()
    refused = subprocess.run([str(script), "docs/operations.md"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "http" in refused.stderr
    if PROMTOOL:
        (tmp_path / "rules.yml").write_text(done.stdout)
        checked = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_only_use_metrics_the_runtime_and_bench_export() -> None:
    from fraudscore.serving.metrics import SidecarMetrics
    from fraudscore.serving.quality_monitor import QualityMetrics

    exported = set()
    for metric in [*SidecarMetrics().registry.collect(), *QualityMetrics().registry.collect()]:
        exported.add(metric.name)
        exported.update(s.name for s in metric.samples)
        if metric.type == "counter":  # a counter with no series yet (drift bins before a model is set)
            exported.add(f"{metric.name}_total")
    exported |= {"fraudscore_bench_throughput_per_second", "fraudscore_bench_latency_p50_seconds", "fraudscore_bench_latency_p99_seconds", "fraudscore_bench_ratio", "up"}
    text = RULES.read_text()
    used = set(re.findall(r"\b(fraudscore_[a-z_]+|up)\b(?=[{\[\s)])", text))
    assert used - exported == set()
