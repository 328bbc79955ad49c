"""The Prometheus tools that the set-up script installs answer; later suites test alert rules with them."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.mark.parametrize("tool", ["promtool", "prometheus", "prometheus-alertmanager", "prometheus-pushgateway"])
def test_prometheus_tool_is_installed(tool: str) -> None:
    path = shutil.which(tool)
    assert path, f"{tool} not found; run scripts/setup.sh (installs Debian's prometheus packages)"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "version" in (out.stdout + out.stderr).lower()
