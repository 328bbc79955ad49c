"""`fraudscore bench`: the report, Prometheus outputs, and a gate that fails on a real regression only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from kafka_helpers import EXE, free_port

SMALL = ["--mode", "model", "--mode", "pipeline", "--batch-sizes", "1,64", "--seconds", "0.2", "--repeats", "3", "--quiet"]


def bench(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "bench", *map(str, args)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def baseline(small_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "baseline.json"
    done = bench("--bundle", small_bundle, *SMALL, "--json", out)
    assert done.returncode == 0, done.stderr
    return out


def test_report_has_every_case_with_spread_machine_and_versions(baseline: Path) -> None:
    report = json.loads(baseline.read_text())
    assert report["schema"] == "fraudscore.bench/1"
    cases = {(r["mode"], r["batch_size"]) for r in report["results"]}
    assert cases == {("model", 1), ("model", 64), ("pipeline", 1), ("pipeline", 64)}
    for r in report["results"]:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput_per_s"] > 0
        assert r["repeats"] == 3 and r["spread"]["p99_ms"][0] <= r["spread"]["p99_ms"][1]
    assert report["ratios"]["pipeline_overhead.cpu.b64"] > 1
    assert report["machine"]["cpus"] and "onnxruntime" in report["libraries"] and "numpy" in report["libraries"]


def _gate(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_gate_passes_unchanged_and_fails_on_a_slowed_scorer(small_bundle, baseline: Path, tmp_path: Path) -> None:
    gate = _gate(tmp_path / "gate.toml", """
[[bound]]
mode = "pipeline"
batch_size = 64
metric = "p50_ms"
max_increase = 1.5

[[bound]]
mode = "model"
batch_size = 64
metric = "throughput_per_s"
max_decrease = 0.6

[[bound]]
ratio = "pipeline_overhead.cpu.b64"
max = 200
""")
    unchanged = bench("--bundle", small_bundle, *SMALL, "--gate", gate, "--baseline", baseline)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "FAIL" not in unchanged.stdout

    slowed = bench("--bundle", small_bundle, *SMALL, "--gate", gate, "--baseline", baseline,
                   env={"FRAUDSCORE_BENCH_INJECT_DELAY_MS": "5"})
    assert slowed.returncode == 1, slowed.stdout + slowed.stderr
    failing = [line for line in slowed.stdout.splitlines() if line.startswith("FAIL")]
    assert any("pipeline b64 cpu p50_ms vs baseline" in line for line in failing)
    assert any("model b64 cpu throughput_per_s" in line for line in failing)
    assert "bounds failed" in slowed.stderr


def test_absolute_bounds_and_usage_errors(small_bundle, baseline: Path, tmp_path: Path) -> None:
    strict = _gate(tmp_path / "strict.toml", '[[bound]]\nmode = "model"\nbatch_size = 1\nmetric = "p99_ms"\nmax = 0.000001\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", strict)
    assert done.returncode == 1 and "FAIL" in done.stdout and "<= 1e-06" in done.stdout

    relative = _gate(tmp_path / "rel.toml", '[[bound]]\nmode = "model"\nbatch_size = 1\nmetric = "p99_ms"\nmax_increase = 0.1\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", relative)
    assert done.returncode == 2 and "--baseline" in done.stderr
    nothing = _gate(tmp_path / "none.toml", '[[bound]]\nmode = "model"\nbatch_size = 999\nmetric = "p99_ms"\nmax = 1\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", nothing)
    assert done.returncode == 2 and "selects no result" in done.stderr
    assert bench("--bundle", small_bundle, "--mode", "fast").returncode == 2
    assert bench("--bundle", small_bundle, *SMALL, "--gate", tmp_path / "absent.toml").returncode == 2
    done = bench("--bundle", small_bundle, "--mode", "kafka")
    assert done.returncode == 2 and "--bootstrap-servers" in done.stderr


def test_prom_file_plot_and_a_real_pushgateway(small_bundle, tmp_path: Path) -> None:
    gateway = shutil.which("prometheus-pushgateway")
    assert gateway, "prometheus-pushgateway missing: scripts/setup.sh installs it"
    port = free_port()
    proc = subprocess.Popen([gateway, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        prom, png = tmp_path / "bench.prom", tmp_path / "bench.png"
        done = bench("--bundle", small_bundle, *SMALL, "--pushgateway", f"http://127.0.0.1:{port}",
                     "--prom-file", prom, "--plot", png)
        assert done.returncode == 0, done.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            pushed = r.read().decode()
        assert 'fraudscore_bench_throughput_per_second{batch_size="64",device="cpu",instance=' in pushed
        assert 'job="fraudscore_bench"' in pushed and 'fraudscore_bench_ratio{' in pushed
        assert 'quantile="0.99"' in prom.read_text()
        assert png.read_bytes()[:4] == b"\x89PNG"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.kafka
def test_kafka_mode_reports_drain_rates_and_the_naive_ratio(kafka_bootstrap, small_bundle, tmp_path: Path) -> None:
    out = tmp_path / "kafka.json"
    done = bench("--bundle", small_bundle, "--mode", "kafka", "--bootstrap-servers", kafka_bootstrap, "--kafka-messages", "3000",
                 "--kafka-rates", "300,600", "--kafka-rate-seconds", "2", "--naive-messages", "300", "--slo-ms", "5000",
                 "--kafka-repeats", "2",
                 "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    modes = [r["mode"] for r in report["results"]]
    assert modes == ["kafka-drain", "kafka-rate", "kafka-rate", "kafka-naive"]
    drain = report["results"][0]
    assert drain["messages"] == 3000 and drain["lost"] == 0 and drain["throughput_per_s"] > 0
    assert drain["repeats"] == 2 and drain["spread"]["throughput_per_s"][0] <= drain["spread"]["throughput_per_s"][1]
    for r in report["results"][1:3]:
        assert r["lost"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert report["ratios"]["kafka_max_rate_under_slo"] == 600
    assert report["ratios"]["kafka_speedup_vs_naive"] > 1


def test_raw_mode_streams_the_reference_size_with_exact_features(small_bundle, tmp_path: Path) -> None:
    out = tmp_path / "raw.json"
    done = bench("--bundle", small_bundle, "--mode", "pipeline", "--mode", "raw", "--batch-sizes", "4096",
                 "--repeats", "1", "--seconds", "0.3", "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    (raw,) = [r for r in report["results"] if r["mode"] == "raw"]
    assert raw["throughput_per_s"] > 0 and raw["p99_ms"] >= raw["p50_ms"]
    assert raw["parity"]["rows"] >= 4096 and raw["parity"]["max_abs_diff"] == 0.0
    assert raw["state"]["customers"] == 5000 and raw["state"]["customer_bytes"] > 0 and raw["state"]["terminal_bytes"] > 0
    assert "raw_overhead.cpu.b4096" in report["ratios"]
