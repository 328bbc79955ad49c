"""The set-up scripts as they run: the Kafka jar fetch prints its own lines only, and a set-up
with nothing to do prints one plain line."""

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
