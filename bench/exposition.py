"""Bench figures as Prometheus metrics: pushed to a Pushgateway or written for a textfile collector.

Every figure is a gauge (the bench reports measured values, not a live distribution), so
latency quantiles are separate gauges named after them rather than a `quantile` label,
which the exposition format reserves for summaries (`promtool check metrics` refuses it):

| metric | labels |
|---|---|
| `fraudscore_bench_latency_p50_seconds`, `fraudscore_bench_latency_p99_seconds` | mode, device, variant, batch_size |
| `fraudscore_bench_throughput_per_second` | mode, device, variant, batch_size |
| `fraudscore_bench_ratio` | name |
| `fraudscore_bench_info` (value 1) | model_version, schema |

`variant` is `fp32`, or `workersN` for the kafka-drain row of `--kafka-workers N` (N > 1).

Every series also carries `run_id` and `commit` (fraudscore.bench.provenance): in the
textfile as labels, on a Pushgateway as the grouping key (the Pushgateway adds them to
every series of the group, and refuses pushed series that carry them themselves).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

JOB = "fraudscore_bench"
RUN_LABELS = ("run_id", "commit")


def run_labels(report: dict) -> dict[str, str]:
    """The labels that identify the report's run: `{"run_id": ..., "commit": ...}`."""
    run = report.get("run") or {}
    return {"run_id": run.get("id") or "unknown", "commit": run.get("commit") or "unknown"}


def registry_for(report: dict, with_run_labels: bool = True) -> CollectorRegistry:
    """A registry holding the report's figures; `with_run_labels=False` leaves out run_id/commit (for a push)."""
    registry = CollectorRegistry()
    extra = run_labels(report) if with_run_labels else {}
    names = list(extra)
    labels = ["mode", "device", "variant", "batch_size", *names]
    p50 = Gauge("fraudscore_bench_latency_p50_seconds", "Median batch latency measured by fraudscore bench "
                "(the report's p50_ms).", labels, registry=registry)
    p99 = Gauge("fraudscore_bench_latency_p99_seconds", "99th percentile batch latency measured by fraudscore bench "
                "(the report's p99_ms).", labels, registry=registry)
    throughput = Gauge("fraudscore_bench_throughput_per_second", "Transactions a second measured by fraudscore bench.",
                       labels, registry=registry)
    ratio = Gauge("fraudscore_bench_ratio", "Same-run ratios (pipeline overhead over the model, speed-up over the "
                  "naive loop, ...).", ["name", *names], registry=registry)
    info = Gauge("fraudscore_bench_info", "The bench run (value 1).", ["model_version", "schema", *names],
                 registry=registry)
    tail = list(extra.values())
    for r in report["results"]:
        values = [r["mode"], r.get("device", "cpu"), r.get("variant", "fp32"), str(r["batch_size"]), *tail]
        for gauge, key in ((p50, "p50_ms"), (p99, "p99_ms")):
            if r.get(key) is not None:
                gauge.labels(*values).set(r[key] / 1e3)
        throughput.labels(*values).set(r["throughput_per_s"])
    for name, value in report.get("ratios", {}).items():
        ratio.labels(name, *tail).set(value)
    info.labels(report["bundle"]["model_version"], report["schema"], *tail).set(1)
    return registry


def push(report: dict, url: str, job: str = JOB) -> None:
    """Push the report's figures as the group job/run_id/commit (replacing only that run's group)."""
    push_to_gateway(url, job=job, registry=registry_for(report, with_run_labels=False), grouping_key=run_labels(report))


def write_textfile(report: dict, path: Path) -> None:
    """Write the report's figures, labelled with run_id and commit, for a node-exporter textfile collector."""
    write_to_textfile(str(path), registry_for(report))
