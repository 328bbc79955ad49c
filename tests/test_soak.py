"""The soak harness (`python -m fraudscore.bench.soak`): a short soak through a real broker, and its flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraudscore.bench.cpu import process_tree
from fraudscore.bench.soak import cpu_seconds, rss_mb
from waiting import wait_until

SOAK = [sys.executable, "-m", "fraudscore.bench.soak"]


@pytest.mark.kafka
def test_a_short_soak_samples_rss_cpu_and_latency_and_loses_nothing(kafka_bootstrap: str, small_bundle: Path,
                                                                     tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    done = subprocess.run([*SOAK, "--bundle", str(small_bundle), "--bootstrap-servers", kafka_bootstrap,
                           "--rate", "500", "--minutes", "0.3", "--partitions", "3", "--sample-s", "5",
                           "--sidecar-arg", "--batch-size 512", "--json", str(report_path), "--quiet"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    verdict, samples = report["verdict"], report["samples"]
    assert report["config"]["messages"] == 9000 and report["config"]["sidecar_args"] == ["--batch-size", "512"]
    assert verdict["messages_in"] == 9000 and verdict["distinct_out"] == 9000 and verdict["lost"] == 0
    # 18 s of load sampled every 5 s, then the drain's last sample.
    assert len(samples) >= 4
    assert sum(s["messages_out"] for s in samples) == 9000
    assert sum(s["messages_in"] for s in samples) == 9000
    assert all(s["rss_mb"] > 20 for s in samples)  # a Python process with ONNX Runtime loaded
    cpu = [s["sidecar_cpu_s"] for s in samples]
    assert cpu == sorted(cpu) and cpu[-1] > 0
    # The test broker is a local kafka.Kafka JVM unless FRAUDSCORE_TEST_BOOTSTRAP points elsewhere.
    if not os.environ.get("FRAUDSCORE_TEST_BOOTSTRAP"):
        assert report["broker_pid"] is not None and samples[-1]["broker_cpu_s"] > 0
    with_results = [s for s in samples if s["messages_out"]]
    assert all(0 <= s["p50_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"] for s in with_results)
    assert verdict["sidecar_cpu_us_per_tx"] is not None and verdict["sidecar_cpu_us_per_tx"] > 0
    assert verdict["rss_slope_mb_per_h"] is not None and verdict["rss_range_after_warmup_mb"] is not None
    assert "soak: PASS, nothing lost" in done.stdout and "µs/tx" in done.stdout


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
