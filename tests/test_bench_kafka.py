"""`fraudscore bench --mode kafka`'s measurements: per-process CPU, the sidecar's stage figures,
sidecar variants, the latency-versus-rate curve (test_bench.py holds the drain/worker/naive test)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fraudscore.bench.cli import kafka_variants
from fraudscore.bench.cpu import CpuMeter, broker_pid, per_1000, process_tree
from fraudscore.bench.kafka_io import parse_metrics, sidecar_figures
from fraudscore.bench.plot import plot_report
from fraudscore.errors import UsageError
from kafka_helpers import EXE

ROOT = Path(__file__).resolve().parents[1]

# A child that starts a grandchild; the grandchild burns CPU, then writes what getrusage says it
# used and waits to be killed: the meter must see it through the child it sits under.
FAMILY = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", '''
import resource, sys, time
x = 0
for i in range(8_000_000):
    x += i
u = resource.getrusage(resource.RUSAGE_SELF)
print(u.ru_utime + u.ru_stime, flush=True)
time.sleep(60)
'''], stdout=sys.stdout)
grandchild.wait()
"""


def documented_fields() -> set[str]:
    """The fields of docs/bench.md's tables: every `name` in a row's first cell (some rows name several)."""
    cells = re.findall(r"^\| ([^|]+) \|", (ROOT / "docs" / "bench.md").read_text(), re.MULTILINE)
    return {name for cell in cells for name in re.findall(r"`([a-z_0-9.\[\]\"*]+)`", cell)}


def test_the_cpu_meter_counts_the_processes_under_the_sidecar() -> None:
    child = subprocess.Popen([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True)
    try:
        meter = CpuMeter(child.pid, None, interval_s=0.05)
        own = float(child.stdout.readline())  # the grandchild's own count, once it is done burning
        used = meter.stop()
    finally:
        for pid in reversed(process_tree(child.pid)):  # the grandchild first, then the child
            os.kill(pid, signal.SIGKILL)
        child.wait(10)
    # Ticks are 10 ms; what the grandchild used after the meter's start is at most `own`,
    # and everything but its interpreter's start-up, which came before the meter could see it.
    assert used["cpu_s"]["sidecar"] >= own - 0.3 > 0
    assert used["cpu_s"]["broker"] is None and used["cpu_s"]["bench_process"] >= 0 and used["wall_s"] > 0
    figures = per_1000([used, used], 2000)
    assert figures["cpu_ms_per_1000_tx"]["sidecar"] == pytest.approx(2 * used["cpu_s"]["sidecar"] * 1e6 / 2000)
    assert figures["cpu_ms_per_1000_tx"]["broker"] is None


def test_the_broker_is_the_process_listening_on_the_bootstrap_port() -> None:
    listen = ("import socket, sys, time\n"
              "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
              "print(s.getsockname()[1], flush=True); time.sleep(60)")
    listener = subprocess.Popen([sys.executable, "-c", listen],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        assert broker_pid(f"127.0.0.1:{port}") == (listener.pid, f"the process listening on port {port}")
        assert broker_pid(f"localhost:{port},other:9092")[0] == listener.pid
    finally:
        listener.kill()
        listener.wait(10)
    pid, note = broker_pid("broker.example.invalid:9092")
    assert pid is None and "not this host" in note


EXPOSITION = """# HELP fraudscore_stage_seconds Time of one batch in each stage.
# TYPE fraudscore_stage_seconds histogram
fraudscore_stage_seconds_bucket{le="0.001",stage="decode"} 3.0
fraudscore_stage_seconds_sum{stage="decode"} 0.012
fraudscore_stage_seconds_count{stage="decode"} 4.0
fraudscore_stage_seconds_sum{stage="ack_wait"} 0.5
fraudscore_stage_seconds_count{stage="ack_wait"} 4.0
fraudscore_batch_size_sum 2048.0
fraudscore_batch_size_count 4.0
fraudscore_batch_input_age_seconds_sum 0.04
fraudscore_batch_input_age_seconds_count 4.0
python_gc_objects_collected_total{generation="0"} 10.0
"""


def test_stage_figures_are_the_means_of_what_a_window_added() -> None:
    before = parse_metrics(EXPOSITION.replace("_count{stage=\"decode\"} 4.0", "_count{stage=\"decode\"} 2.0")
                           .replace("_sum{stage=\"decode\"} 0.012", "_sum{stage=\"decode\"} 0.002"))
    after = parse_metrics(EXPOSITION)
    figures = sidecar_figures(before, after)
    assert figures["stages_ms"] == {"decode": pytest.approx(5.0)}  # ack_wait added no batch in the window
    assert sidecar_figures({}, after)["stages_ms"] == {"ack_wait": pytest.approx(125.0), "decode": pytest.approx(3.0)}
    assert sidecar_figures({}, after)["mean_batch_size"] == 512 and sidecar_figures({}, after)["mean_input_age_ms"] == 10
    # Two workers' endpoints add up; a sidecar without these histograms gives {} and None.
    both = parse_metrics(EXPOSITION, parse_metrics(EXPOSITION))
    assert sidecar_figures({}, both)["mean_batch_size"] == 512
    assert sidecar_figures({}, {}) == {"stages_ms": {}, "mean_batch_size": None, "mean_input_age_ms": None}


def test_kafka_variants_are_shell_split_and_misspelt_ones_say_how_to_write_them() -> None:
    assert kafka_variants([]) == (("default", ()),)
    assert kafka_variants(["default=", "serial=--no-pipelining --batch-wait-ms 5", "l5=-X 'linger.ms=5'"]) == (
        ("default", ()), ("serial", ("--no-pipelining", "--batch-wait-ms", "5")), ("l5", ("-X", "linger.ms=5")))
    for bad, says in (("linger", "NAME=ARGS"), ("a-b=-X x=1", "NAME=ARGS"), ("q=-X 'open", "quote")):
        with pytest.raises(UsageError, match=says):
            kafka_variants([bad])
    with pytest.raises(UsageError, match="given twice"):
        kafka_variants(["a=", "a=-X linger.ms=5"])


def test_the_plot_has_a_latency_versus_rate_panel_for_kafka_rate_rows(tmp_path: Path) -> None:
    import matplotlib.image

    rows = [{"mode": "kafka-rate", "batch_size": 4096, "rate_per_s": rate, "p50_ms": p50, "p99_ms": 3 * p50,
             "p999_ms": 5 * p50, "throughput_per_s": rate, **({"variant": variant} if variant else {})}
            for variant in (None, "linger5") for rate, p50 in ((1000, 2.0), (5000, 4.0), (10000, 30.0))]
    report = {"bundle": {"model_version": "v"}, "config": {"slo_ms": 50}, "results": rows}
    plot_report(report, tmp_path / "with.png")
    plot_report(report | {"results": []}, tmp_path / "without.png")
    # A fourth panel: the figure is wider than the three-panel one.
    assert matplotlib.image.imread(tmp_path / "with.png").shape[1] > matplotlib.image.imread(tmp_path / "without.png").shape[1]


@pytest.mark.kafka
def test_kafka_rows_carry_cpu_per_process_stages_the_latency_tail_and_each_variant(
        kafka_bootstrap, small_bundle, tmp_path: Path) -> None:
    out, png = tmp_path / "kafka.json", tmp_path / "kafka.png"
    done = subprocess.run([EXE, "bench", "--bundle", str(small_bundle), "--mode", "kafka", "--bootstrap-servers",
                           kafka_bootstrap, "--kafka-messages", "2000", "--kafka-rates", "400", "--kafka-rate-seconds",
                           "2", "--kafka-warmup-seconds", "0", "--naive-messages", "100", "--slo-ms", "5000", "--kafka-variant", "default=",
                           "--kafka-variant", "linger5=-X linger.ms=5", "--json", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["mode"], r.get("variant")): r for r in report["results"]}
    assert list(rows) == [("kafka-drain", None), ("kafka-drain", "linger5"), ("kafka-rate", None),
                          ("kafka-rate", "linger5"), ("kafka-naive", None)]
    for (mode, _), r in rows.items():
        if mode == "kafka-naive":
            continue
        assert r["lost"] == 0
        assert r["cpu_s"]["bench_process"] > 0 and r["wall_s"] > 0
        # The test's broker runs on this host, started by deploy/kafka/local.sh: both are measured.
        # The kernel counts a process's CPU in clock ticks (10 ms), and a drain of these 2,000
        # messages can take 0.2 s of wall time and less than a tick of the sidecar's (a CI run
        # read 0.0): above zero is asserted for the rate rows, seconds long.
        assert r["cpu_s"]["sidecar"] >= 0 and r["cpu_s"]["broker"] >= 0 and "cpu_note" not in r
        if mode == "kafka-rate":
            assert r["cpu_s"]["sidecar"] > 0 and r["cpu_s"]["broker"] > 0
        assert r["cpu_ms_per_1000_tx"]["sidecar"] == pytest.approx(r["cpu_s"]["sidecar"] * 1e6 / r["messages"])
        assert r["mean_batch_size"] is None or 1 <= r["mean_batch_size"] <= 4096
        assert isinstance(r["stages_ms"], dict) and all(v >= 0 for v in r["stages_ms"].values())
    for variant in (None, "linger5"):
        r = rows[("kafka-rate", variant)]
        assert r["max_ms"] >= r["p999_ms"] >= r["p99_ms"] >= r["p50_ms"] > 0
        # Poisson arrivals at 400/s for 2 s: the achieved rates are near it, not equal to it.
        assert 200 < r["achieved_input_per_s"] < 800 and 200 < r["achieved_output_per_s"] < 800
    assert set(report["ratios"]) >= {"kafka_drain_linger5_over_default", "kafka_max_rate_under_slo.linger5",
                                     "kafka_max_rate_under_slo", "kafka_speedup_vs_naive"}
    assert "p99.9 ms" in done.stdout and "linger5" in done.stdout  # the second table
    assert png.read_bytes()[:4] == b"\x89PNG"
    fields = {f"results[].{k}" for r in report["results"] for k in r}
    assert fields - documented_fields() == set(), "add these to docs/bench.md's table of report fields"
