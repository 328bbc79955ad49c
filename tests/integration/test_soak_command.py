"""The soak harness's flags and process accounting: bad flags exit 2 saying how to fix them, a
bundle without a manifest is refused, and RSS and CPU cover the child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraudscore.bench.cpu import process_tree
from fraudscore.bench.soak import cpu_seconds, rss_mb
from waiting import wait_until

SOAK = [sys.executable, "-m", "fraudscore.bench.soak"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--rate", "0"], "--rate 0: give the offered rate"),
    (["--minutes", "-1"], "--minutes -1: give the soak's length"),
    (["--partitions", "0"], "--partitions 0: the input topic needs at least 1"),
    (["--sidecar-arg", "--metrics-port 9000"], "the soak sets that itself"),
])
def test_bad_flags_exit_2_and_say_how_to_fix_them(small_bundle: Path, flags: list[str], message: str) -> None:
    done = subprocess.run([*SOAK, "--bundle", str(small_bundle), "--bootstrap-servers", "127.0.0.1:1", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_a_bundle_without_a_manifest_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([*SOAK, "--bundle", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no manifest.json there" in done.stderr, done.stderr


def test_process_tree_rss_and_cpu_cover_the_children() -> None:
    """A child that burns 0.5 s of CPU, then holds 50 MB: both show in its parent's tree."""
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn + "x = bytearray(50_000_000); time.sleep(30)"])
    try:
        wait_until(lambda: rss_mb([child.pid]) >= 50, 20, "the child's 50 MB in its RSS")
        pids = process_tree(os.getpid())
        assert child.pid in pids
        assert rss_mb(pids) >= rss_mb([os.getpid()]) + 50
        assert cpu_seconds(pids) - cpu_seconds([os.getpid()]) >= 0.4  # the child's 0.5 s, at 10 ms ticks
    finally:
        child.kill()
        child.wait()
