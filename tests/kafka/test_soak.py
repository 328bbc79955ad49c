"""The soak harness (`python -m fraudscore.bench.soak`): a short soak through a real broker
samples RSS, CPU and latency and loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path




SOAK = [sys.executable, "-m", "fraudscore.bench.soak"]


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
