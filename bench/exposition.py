"""Bench figures as Prometheus metrics: pushed to a Pushgateway or written for a textfile collector."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile


def registry_for(report: dict) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = ["mode", "device", "variant", "batch_size"]
    latency = Gauge("fraudscore_bench_latency_seconds", "Batch latency quantiles measured by fraudscore bench.",
                    labels + ["quantile"], registry=registry)
    throughput = Gauge("fraudscore_bench_throughput_per_second", "Transactions a second measured by fraudscore bench.",
                       labels, registry=registry)
    ratio = Gauge("fraudscore_bench_ratio", "Same-run ratios (pipeline overhead, speed-up over the naive loop, ...).",
                  ["name"], registry=registry)
    info = Gauge("fraudscore_bench_info", "The bench run (value 1).", ["model_version", "schema"], registry=registry)
    for r in report["results"]:
        values = [r["mode"], r.get("device", "cpu"), r.get("variant", "fp32"), str(r["batch_size"])]
        for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
            if r.get(key) is not None:
                latency.labels(*values, q).set(r[key] / 1e3)
        throughput.labels(*values).set(r["throughput_per_s"])
    for name, value in report.get("ratios", {}).items():
        ratio.labels(name).set(value)
    info.labels(report["bundle"]["model_version"], report["schema"]).set(1)
    return registry


def push(report: dict, url: str, job: str = "fraudscore_bench", instance: str | None = None) -> None:
    push_to_gateway(url, job=job, registry=registry_for(report),
                    grouping_key={"instance": instance or os.environ.get("HOSTNAME") or socket.gethostname()})


def write_textfile(report: dict, path: Path) -> None:
    write_to_textfile(str(path), registry_for(report))
