"""The repository as the tests see it, at any depth of tests/: its root, the test fixtures,
the declared extras and the shipped alert rules.

    from project import ROOT, alert_rules
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"  # the shipped Prometheus alert and recording rules
# The extra combinations the README and .ci/run install, each resolved on the package index by
# tests/integration/test_package_install.py. Together they hold every extra, and an extra that
# resolves with others resolves alone (fewer constraints), so the extras alone are not resolved
# again (each resolution is ~9 s against the index).
EXTRA_SETS = ["cpu,train,dev,tracking", "gpu,parquet", "cpu,parquet"]


def extras() -> dict[str, list[str]]:
    """pyproject.toml's optional dependencies, by extra."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def alert_rules() -> list[dict]:
    """Every alerting rule of RULES (recording rules left out)."""
    import yaml

    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
