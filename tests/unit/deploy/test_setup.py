"""What set-up leaves behind: no policy-rc.d of its own and no Prometheus service enabled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


# The units Debian's prometheus packages enable on install; fraudscore needs only their binaries.
PROMETHEUS_UNITS = {"prometheus.service", "prometheus-alertmanager.service", "prometheus-pushgateway.service"}


def enabled_units() -> set[str]:
    """Units enabled for boot: the names of the symlinks in /etc/systemd/system/*.wants/."""
    return {p.name for p in Path("/etc/systemd/system").glob("*.wants/*")}


def test_setup_leaves_no_policy_rc_d_of_its_own() -> None:
    policy = Path("/usr/sbin/policy-rc.d")
    assert not policy.exists() or "fraudscore" not in policy.read_text(), "scripts/setup.sh left its policy-rc.d behind"


@pytest.mark.skipif(os.environ.get("CI") != "true",
                    reason="only on CI's fresh machine: elsewhere the machine's owner may have enabled these services")
def test_setup_leaves_no_prometheus_service_enabled() -> None:
    assert not enabled_units() & PROMETHEUS_UNITS


