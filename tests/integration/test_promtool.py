"""The alert rules through Prometheus's own tool: `promtool` checks the rules, the config and the
rule unit tests; the runbook base is set at deploy time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from project import ROOT, RULES, alert_rules






# The minute-scale alerts, and the day-scale ones on a 10-minute grid (promtool evaluates every
# rule at each step of each test: days at 1 minute took most of the time).
TESTS = [ROOT / "deploy" / "prometheus" / "tests" / name for name in ("alerts_test.yml", "quality_alerts_test.yml")]


PROMTOOL = shutil.which("promtool")


RUNBOOK_BASE = "https://github.com/fraudscore/fraudscore/blob/main/docs/operations.md"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/setup.sh installs Debian's prometheus")
def test_promtool_checks_rules_config_and_unit_tests() -> None:
    for args in (["check", "rules", str(RULES)], ["check", "config", str(RULES.parent / "prometheus.yml")],
                 ["test", "rules", *map(str, TESTS)]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_runbook_base_is_configurable_at_deploy_time(tmp_path: Path) -> None:
    script = RULES.parent / "runbook-base.sh"
    done = subprocess.run([str(script), "https://runbooks.example.com/fraudscore/ops/"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    urls = [r["annotations"]["runbook_url"] for g in rendered["groups"] for r in g["rules"] if "alert" in r]
    assert urls == [f"https://runbooks.example.com/fraudscore/ops#{a['alert'].lower()}" for a in alert_rules()]
    # Nothing else changed.
    assert done.stdout.replace("https://runbooks.example.com/fraudscore/ops#", f"{RUNBOOK_BASE}#") == RULES.read_text()
    refused = subprocess.run([str(script), "docs/operations.md"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "http" in refused.stderr
    if PROMTOOL:
        (tmp_path / "rules.yml").write_text(done.stdout)
        checked = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
