"""Alert rules read as data: every alert is unit-tested firing and not firing, has a severity,
text and a clickable runbook, and uses only metrics the runtime and bench export."""

from __future__ import annotations

import re

import yaml
from project import ROOT, RULES, alert_rules

# The minute-scale alerts, and the day-scale ones on a 10-minute grid (promtool evaluates every
# rule at each step of each test: days at 1 minute took most of the time).
TESTS = [ROOT / "deploy" / "prometheus" / "tests" / name for name in ("alerts_test.yml", "quality_alerts_test.yml")]
RUNBOOK_BASE = "https://github.com/fraudscore/fraudscore/blob/main/docs/operations.md"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing, quiet = set(), set()
    for case in [case for path in TESTS for case in yaml.safe_load(path.read_text())["tests"]]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def _anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub (and mkdocs) make: lower case, spaces to hyphens, punctuation dropped."""
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)}


def test_every_alert_has_severity_text_and_a_clickable_runbook() -> None:
    anchors = _anchors((ROOT / "docs" / "operations.md").read_text())
    for alert in alert_rules():
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert alert["annotations"].get(key), (alert["alert"], key)
        # Absolute: a relative path is not a link in an Alertmanager notification.
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{alert['alert'].lower()}", url
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: docs/operations.md has no heading for #{url.split('#', 1)[1]}"


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
