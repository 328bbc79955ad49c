"""The `kafka` mode of `fraudscore bench`: drain rate, fixed-rate latency sweep, naive reference."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .kafka_io import collect, create_topics, produce, produce_at_rate, start_sidecar, streamed_latencies
from .workload import simulated_messages

if TYPE_CHECKING:
    from fraudscore.serving.bundle import Bundle

    from .harness import BenchConfig


def run_kafka(config: BenchConfig, bundle: Bundle, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The Kafka results (drain, one per rate, naive) and ratios (highest rate under the SLO, speed-up over naive)."""
    bootstrap = config.bootstrap_servers
    rate_total = int(sum(config.kafka_rates) * config.kafka_rate_seconds) if config.kafka_rates else 0
    budget = config.kafka_messages + max(rate_total, 4 * config.kafka_messages) + config.naive_messages
    keys, values = simulated_messages(bundle.features, budget, seed=11)
    backlog = slice(0, config.kafka_messages)
    results, ratios = [], {}

    # Every worker count drains the same backlog; repeats interleave the counts, so a slow
    # moment of the shared machine does not land on one of them only.
    drains: dict[int, list[float]] = {w: [] for w in config.kafka_workers}
    partitions = max(2, 2 * max(config.kafka_workers))  # the same topic layout for every worker count
    lost: dict[int, int] = {w: 0 for w in config.kafka_workers}
    for repeat in range(config.kafka_repeats):
        for workers in config.kafka_workers:
            say(f"kafka drain of {config.kafka_messages:,} messages, {workers} worker(s) "
                f"({repeat + 1}/{config.kafka_repeats})")
            topics = create_topics(bootstrap, partitions)
            produce(bootstrap, topics["in"], keys[backlog], values[backlog])
            proc, _ = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size,
                                    extra=("--workers", str(workers)) if workers > 1 else ())
            try:
                _, stamps, ids, _ = collect(bootstrap, topics["out"], config.kafka_messages, timeout_s=900)
            finally:
                proc.terminate()
                proc.wait(120)
            drains[workers].append(len(ids) / max(1e-9, (stamps.max() - stamps.min()) / 1e3) if len(ids) > 1 else 0.0)
            lost[workers] += config.kafka_messages - len(set(ids))
    for workers, rates_seen in drains.items():
        results.append({"mode": "kafka-drain", "device": "cpu", "batch_size": config.kafka_batch_size, "p50_ms": None,
                        "p99_ms": None, "throughput_per_s": float(np.median(rates_seen)), "workers": workers,
                        # a gate bound selects a worker count's row by its variant (`workers2`)
                        **({"variant": f"workers{workers}"} if workers > 1 else {}),
                        "messages": config.kafka_messages, "lost": lost[workers], "repeats": len(rates_seen),
                        "spread": {"throughput_per_s": [min(rates_seen), max(rates_seen)]}})
    first = config.kafka_workers[0]
    first_extra = ("--workers", str(first)) if first > 1 else ()
    drain = float(np.median(drains[first]))
    for workers in config.kafka_workers[1:]:
        ratios[f"kafka_drain_workers_{workers}_over_{first}"] = float(np.median(drains[workers])) / drain if drain else float("nan")

    rates = config.kafka_rates or tuple(round(drain * f) for f in (0.25, 0.5, 0.75))
    cursor = config.kafka_messages
    best = 0.0
    for rate in rates:
        n = min(max(100, int(rate * config.kafka_rate_seconds)), len(values) - cursor - config.naive_messages)
        stream = slice(cursor, cursor + n)
        cursor += n
        p50s, p99s, missing = [], [], 0
        for repeat in range(config.kafka_repeats):
            say(f"kafka at {rate:,.0f} msg/s for {config.kafka_rate_seconds:g} s ({repeat + 1}/{config.kafka_repeats})")
            topics = create_topics(bootstrap, partitions)
            proc, _ = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size,
                                    extra=first_extra)
            collected: dict = {}
            try:
                reader = threading.Thread(target=lambda out=topics["out"], count=n, box=collected: box.update(
                    results=collect(bootstrap, out, count, config.kafka_rate_seconds + 120)))
                reader.start()
                sent_at = produce_at_rate(bootstrap, topics["in"], keys[stream], values[stream], rate)
                reader.join()
            finally:
                proc.terminate()
                proc.wait(60)
            # Warm-up: the first quarter of the run (at most 2 s) is left out of the latency
            # figures; a sidecar's first second on fresh topics runs several times slower.
            start = min(sent_at.values()) if sent_at else 0.0
            warm = min(2.0, config.kafka_rate_seconds / 4)
            latency = np.array([s for i, s in streamed_latencies(sent_at, collected["results"]).items()
                                if sent_at[i] >= start + warm]) * 1e3
            missing += n - len(set(collected["results"].ids) & set(sent_at))
            if len(latency):
                p50s.append(float(np.median(latency)))
                p99s.append(float(np.quantile(latency, 0.99)))
        p50 = float(np.median(p50s)) if p50s else None
        p99 = float(np.median(p99s)) if p99s else None
        results.append({"mode": "kafka-rate", "device": "cpu", "batch_size": config.kafka_batch_size, "rate_per_s": rate,
                        "p50_ms": p50, "p99_ms": p99, "throughput_per_s": float(rate), "messages": n, "lost": missing,
                        "repeats": config.kafka_repeats,
                        "spread": {"p50_ms": [min(p50s), max(p50s)], "p99_ms": [min(p99s), max(p99s)]} if p50s else {}})
        if p99 is not None and p99 <= config.slo_ms and missing == 0:
            best = max(best, float(rate))
    ratios["kafka_max_rate_under_slo"] = best

    say(f"naive reference on {config.naive_messages:,} messages")
    topics = create_topics(bootstrap, 1)
    naive = slice(cursor, cursor + config.naive_messages)
    produce(bootstrap, topics["in"], keys[naive], values[naive])
    done = subprocess.run([sys.executable, "-m", "fraudscore.bench.naive", str(config.bundle), bootstrap, topics["in"],
                           topics["out"], f"naive-{uuid.uuid4().hex[:6]}", str(config.naive_messages)],
                          capture_output=True, text=True, timeout=900)
    _, stamps, ids, _ = collect(bootstrap, topics["out"], config.naive_messages, timeout_s=60)
    naive_rate = len(ids) / max(1e-9, (stamps.max() - stamps.min()) / 1e3) if len(ids) > 1 else 0.0
    results.append({"mode": "kafka-naive", "device": "cpu", "batch_size": 1, "p50_ms": None, "p99_ms": None,
                    "throughput_per_s": naive_rate, "messages": len(ids), "exit_code": done.returncode})
    ratios["kafka_speedup_vs_naive"] = drain / naive_rate if naive_rate else float("nan")
    if "raw" in config.modes:
        results += run_kafka_raw(config, say)
    return results, ratios


def run_kafka_raw(config: BenchConfig, say: Callable[[str], None]) -> list[dict]:
    """Raw mode through the broker: the drain of 30 days of the reference size (transactions
    and confirmations, 2 input partitions), then the recovery of a second instance that takes
    over the group: customer windows replayed from the input topic, the terminal table read whole."""
    import time
    import urllib.request

    from fraudscore import simulate
    from fraudscore.data.replay import raw_stream, replay

    from .raw_pipeline import REFERENCE, WARMUP_DAYS

    bootstrap = config.bootstrap_servers
    table = simulate(**(REFERENCE | {"days": WARMUP_DAYS})).transactions
    events = raw_stream(table)
    n = len(table)
    topics = create_topics(bootstrap, 2, labels=True)
    say(f"kafka raw drain of {n:,} transactions ({WARMUP_DAYS} days of 5,000 customers)")
    replay(events, {"bootstrap.servers": bootstrap}, topics["in"], topics["labels"])
    group = f"bench-raw-{uuid.uuid4().hex[:6]}"
    extra = ("--input", "raw", "--labels-topic", topics["labels"])
    proc, _ = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size, group=group,
                            extra=extra, ready_timeout_s=300)
    try:
        _, stamps, ids, _ = collect(bootstrap, topics["out"], n, timeout_s=900)
    finally:
        proc.terminate()
        proc.wait(60)
    drain = len(ids) / max(1e-9, (stamps.max() - stamps.min()) / 1e3) if len(ids) > 1 else 0.0
    say("kafka raw recovery: a second instance restores the state of the first")
    started = time.monotonic()
    proc, port = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size, group=group,
                               extra=extra, ready_timeout_s=600)
    ready_s = time.monotonic() - started
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(60)
    series = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("fraudscore_state_") and " " in line}
    return [
        {"mode": "kafka-raw-drain", "device": "cpu", "batch_size": config.kafka_batch_size, "p50_ms": None,
         "p99_ms": None, "throughput_per_s": drain, "messages": n, "lost": n - len(set(ids)), "repeats": 1},
        {"mode": "kafka-raw-restore", "device": "cpu", "batch_size": config.kafka_batch_size, "p50_ms": None,
         # Transactions of history brought back per second of recovery (start to ready).
         "p99_ms": None, "throughput_per_s": n / ready_s, "history_days": WARMUP_DAYS, "history_transactions": n,
         "ready_after_s": ready_s,
         "customer_restore_s": series.get("fraudscore_state_restore_duration_seconds_sum"),
         "restored_messages": series.get("fraudscore_state_restored_messages_total"),
         "state_bytes": {k.split('"')[1]: v for k, v in series.items() if k.startswith("fraudscore_state_bytes{")}},
    ]
