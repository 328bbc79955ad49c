"""What set-up leaves behind and prints: no system service enabled by its Debian packages, no
policy-rc.d of its own, no terminal escape codes from Maven, one plain line when there is
nothing to do (scripts/setup.sh, deploy/kafka/local.sh fetch)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kafka_helpers import LOCAL_KAFKA, ROOT

SETUP = ROOT / "scripts" / "setup.sh"
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


def test_kafka_jar_fetch_prints_its_own_lines_only(tmp_path: Path) -> None:
    """Maven writes terminal escape codes even in batch mode; they stay in its log."""
    done = subprocess.run([str(LOCAL_KAFKA), "fetch"], env=os.environ | {"FRAUDSCORE_CACHE": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr
    assert all(line.startswith("local-kafka: ") for line in done.stderr.splitlines()), done.stderr
    assert Path(done.stdout.strip()).is_dir() and list(Path(done.stdout.strip()).glob("kafka_*.jar"))


def test_setup_with_nothing_to_do_prints_one_plain_line() -> None:
    stamp = ROOT / ".venv" / ".fraudscore-installed"
    want = f"cpu,train,dev,tracking {hashlib.sha256((ROOT / 'pyproject.toml').read_bytes()).hexdigest()}"
    if not stamp.exists() or stamp.read_text().strip() != want:
        pytest.skip("scripts/setup.sh has work to do here (pyproject.toml changed since .venv was installed)")
    if not all(map(shutil.which, ("promtool", "prometheus-alertmanager", "prometheus-pushgateway", "java", "mvn"))):
        pytest.skip("scripts/setup.sh has Debian packages to install here")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FRAUDSCORE_CONTAINERS", "FRAUDSCORE_EXTRAS", "VENV")}
    t0 = time.monotonic()
    done = subprocess.run([str(SETUP)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 10
    assert done.stdout.splitlines() == [
        "setup: ready: Debian packages, .venv with fraudscore[cpu,train,dev,tracking], Kafka jars, MLflow server "
        "(nothing to do)"], done.stdout
    assert done.stderr == ""
