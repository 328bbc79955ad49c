"""`fraudscore bench --mode kafka` end to end against the broker: drain rates per worker count and
the naive consumer's ratio (the report's other fields: tests/integration/test_bench.py)."""

from __future__ import annotations

from functools import partial

import json
from pathlib import Path


from commands import fraudscore


bench = partial(fraudscore, "bench", timeout_s=900)


def test_kafka_mode_reports_drain_rates_and_the_naive_ratio(kafka_bootstrap, small_bundle, tmp_path: Path) -> None:
    out = tmp_path / "kafka.json"
    done = bench("--bundle", small_bundle, "--mode", "kafka", "--bootstrap-servers", kafka_bootstrap, "--kafka-messages", "20000",
                 "--kafka-rates", "300,600", "--kafka-rate-seconds", "2", "--naive-messages", "300", "--slo-ms", "5000",
                 "--kafka-repeats", "2", "--kafka-workers", "1,2", "--kafka-warmup-seconds", "1",
                 "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    modes = [r["mode"] for r in report["results"]]
    assert modes == ["kafka-drain", "kafka-drain", "kafka-rate", "kafka-rate", "kafka-naive"]
    for drain, workers in zip(report["results"][:2], (1, 2)):  # `fraudscore run --workers 2` drains it all too
        assert drain["workers"] == workers and drain.get("variant", "fp32") == ("fp32" if workers == 1 else "workers2")
        assert drain["messages"] == 20000 and drain["lost"] == 0 and drain["throughput_per_s"] > 0
        assert drain["repeats"] == 2 and drain["spread"]["throughput_per_s"][0] <= drain["spread"]["throughput_per_s"][1]
    assert report["ratios"]["kafka_drain_workers_2_over_1"] > 0
    for r in report["results"][2:4]:
        assert r["lost"] == 0 and r["max_ms"] >= r["p999_ms"] >= r["p99_ms"] >= r["p50_ms"] > 0
        assert r["achieved_input_per_s"] > 0 and r["achieved_output_per_s"] > 0
    # CPU of each process, the workers' included (tests/kafka/test_bench_kafka.py has more). /proc counts in
    # 10 ms ticks: a drain of 3,000 messages split over 2 workers takes tens of ms, and read 0 in CI
    # twice (CI 40, 41); 20,000 give every process ticks to count.
    for r in report["results"][:4]:
        assert r["cpu_s"]["sidecar"] > 0 and r["cpu_s"]["broker"] > 0 and r["cpu_ms_per_1000_tx"]["bench_process"] > 0, \
            (r["mode"], r.get("workers"), r["cpu_s"], r["cpu_ms_per_1000_tx"])
    assert report["ratios"]["kafka_max_rate_under_slo"] == 600
    assert report["ratios"]["kafka_speedup_vs_naive"] > 1
