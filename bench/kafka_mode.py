"""The `kafka` mode of `fraudscore bench`: drain rate, fixed-rate latency sweep, naive reference.

Every drain and rate run is measured from outside the sidecar (a consumer of the output
topic) and carries the CPU each process used for it (bench/cpu.py) and what the sidecar's
own /metrics say about its batches (stages, batch size, input age). `--kafka-variant
NAME=ARGS` runs each drain and rate step once per sidecar configuration, repeats interleaved.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .cpu import CpuMeter, broker_pid, per_1000
from .kafka_io import (
    Results,
    collect,
    create_topics,
    end_offsets,
    metrics_ports,
    produce,
    produce_at_rate,
    scrape_metrics,
    sidecar_figures,
    start_sidecar,
    streamed_latencies,
)
from .scrape import sums_by_label
from .workload import simulated_messages

if TYPE_CHECKING:
    from fraudscore.serving.bundle import Bundle

    from .config import BenchConfig

DEFAULT_VARIANT = "default"


# The warm-up's rate at most: the regime a cold broker is slow in is small requests.
WARMUP_RATE_MAX = 2000.0


def variant_label(name: str, workers: int = 1) -> str | None:
    """A row's `variant`: None (left out, so a gate bound's default `fp32` selects it) for the
    default configuration with one worker; else the variant's name and/or `workersN`."""
    parts = ([] if name == DEFAULT_VARIANT else [name]) + ([f"workers{workers}"] if workers > 1 else [])
    return "-".join(parts) or None


def _measured(proc, port: int, workers: int, broker: int | None) -> tuple[CpuMeter, dict]:
    """Start measuring a run: the CPU meter and the sidecar's metrics before it."""
    return CpuMeter(proc.pid, broker), scrape_metrics(metrics_ports(port, workers))


def _finish(meter: CpuMeter, before: dict, port: int, workers: int) -> tuple[dict, dict]:
    """Stop measuring (before the sidecar is stopped): CPU used, and the sidecar's batch figures."""
    used = meter.stop()
    return used, sidecar_figures(before, scrape_metrics(metrics_ports(port, workers)))


def _mean_figures(figures: list[dict]) -> dict:
    """The mean over repeats of each of sidecar_figures()' numbers present in them."""
    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    stages = sorted({s for f in figures for s in f["stages_ms"]})
    return {"stages_ms": {s: mean([f["stages_ms"].get(s) for f in figures]) for s in stages},
            "mean_batch_size": mean([f["mean_batch_size"] for f in figures]),
            "mean_input_age_ms": mean([f["mean_input_age_ms"] for f in figures])}


def _rate(count: int, seconds: np.ndarray) -> float | None:
    """`count` events over the span of their times (seconds); None for fewer than two."""
    if count < 2 or len(seconds) < 2:
        return None
    span = float(seconds.max() - seconds.min())
    return count / span if span > 0 else None


class RateRepeat:
    """The latency figures of one fixed-rate run: every message sent after the warm-up,
    by id, from its input timestamp to its result's first arrival."""

    def __init__(self, sent_at: dict, results: Results, warm_s: float, sent: int) -> None:
        start = min(sent_at.values()) if sent_at else 0.0
        latencies = streamed_latencies(sent_at, results)
        self.latency_ms = np.array([s for i, s in latencies.items() if sent_at[i] >= start + warm_s]) * 1e3
        self.missing = sent - len(latencies)  # without a result (or whose input was not read back)
        self.input_rate = _rate(len(sent_at), np.array(list(sent_at.values())))
        first_arrivals = {}
        for arrived, tx in zip(results.arrival.tolist(), results.ids):
            if tx in sent_at:
                first_arrivals.setdefault(tx, arrived)
        self.output_rate = _rate(len(first_arrivals), np.array(list(first_arrivals.values())))


def rate_row(mode: str, rate: float, n: int, repeats: list[RateRepeat], lost: int, config: BenchConfig,
             variant: str | None, used: list[dict], figures: list[dict], notes: dict) -> dict:
    """One kafka-rate or kafka-raw-rate row: per-repeat figures, their medians and spread."""
    def per_repeat(q: float | None) -> list[float]:
        return [float(np.quantile(r.latency_ms, q) if q is not None else r.latency_ms.max())
                for r in repeats if len(r.latency_ms)]

    p50s, p99s, p999s, maxes = per_repeat(0.5), per_repeat(0.99), per_repeat(0.999), per_repeat(None)
    def med(xs: list[float]) -> float | None:
        return float(np.median(xs)) if xs else None

    input_rates = [r.input_rate for r in repeats if r.input_rate]
    output_rates = [r.output_rate for r in repeats if r.output_rate]
    return {"mode": mode, "device": "cpu", "batch_size": config.kafka_batch_size,
            **({"variant": variant} if variant else {}), "rate_per_s": rate,
            "p50_ms": med(p50s), "p99_ms": med(p99s), "p999_ms": med(p999s), "max_ms": max(maxes) if maxes else None,
            "throughput_per_s": float(rate), "achieved_input_per_s": med(input_rates),
            "achieved_output_per_s": med(output_rates), "messages": n, "lost": lost, "repeats": len(repeats),
            "spread": {"p50_ms": [min(p50s), max(p50s)], "p99_ms": [min(p99s), max(p99s)],
                       "p999_ms": [min(p999s), max(p999s)]} if p50s else {},
            **per_1000(used, n * len(repeats)), **notes, **_mean_figures(figures)}


def run_kafka(config: BenchConfig, bundle: Bundle, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The Kafka results (drain, one per rate, naive) and ratios (highest rate under the SLO, speed-up over naive)."""
    bootstrap = config.bootstrap_servers
    variants = config.kafka_variants
    rate_total = int(sum(config.kafka_rates) * config.kafka_rate_seconds) if config.kafka_rates else 0
    budget = config.kafka_messages + max(rate_total, 4 * config.kafka_messages) + config.naive_messages
    keys, values = simulated_messages(bundle.features, budget, seed=11, recorded_spec=bundle.manifest.feature_spec)
    backlog = slice(0, config.kafka_messages)
    results, ratios = [], {}
    broker, found = broker_pid(bootstrap)
    notes = {} if broker else {"cpu_note": f"broker CPU not measured: {found}"}

    # Every worker count and variant drains the same backlog; repeats interleave them, so a
    # slow moment of the shared machine does not land on one of them only.
    cases = [(w, name, args) for w in config.kafka_workers for name, args in variants]
    drains: dict[tuple[int, str], list[float]] = {(w, name): [] for w, name, _ in cases}
    used: dict[tuple[int, str], list[dict]] = {(w, name): [] for w, name, _ in cases}
    figures: dict[tuple[int, str], list[dict]] = {(w, name): [] for w, name, _ in cases}
    partitions = max(2, 2 * max(config.kafka_workers))  # the same topic layout for every worker count
    lost = {(w, name): 0 for w, name, _ in cases}
    for repeat in range(config.kafka_repeats):
        for workers, name, args in cases:
            say(f"kafka drain of {config.kafka_messages:,} messages, {workers} worker(s)"
                f"{f', {name}' if name != DEFAULT_VARIANT else ''} ({repeat + 1}/{config.kafka_repeats})")
            topics = create_topics(bootstrap, partitions)
            produce(bootstrap, topics["in"], keys[backlog], values[backlog])
            extra = (("--workers", str(workers)) if workers > 1 else ()) + tuple(args)
            proc, port = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size,
                                       extra=extra)
            try:
                meter, before = _measured(proc, port, workers, broker)
                _, stamps, ids, _ = collect(bootstrap, topics["out"], config.kafka_messages, timeout_s=900)
                spent, seen = _finish(meter, before, port, workers)
            finally:
                proc.terminate()
                proc.wait(120)
            key = (workers, name)
            drains[key].append(len(ids) / max(1e-9, (stamps.max() - stamps.min()) / 1e3) if len(ids) > 1 else 0.0)
            lost[key] += config.kafka_messages - len(set(ids))
            used[key].append(spent)
            figures[key].append(seen)
    for workers, name, _ in cases:
        key = (workers, name)
        label = variant_label(name, workers)
        results.append({"mode": "kafka-drain", "device": "cpu", "batch_size": config.kafka_batch_size, "p50_ms": None,
                        "p99_ms": None, "throughput_per_s": float(np.median(drains[key])), "workers": workers,
                        # a gate bound selects a worker count's or variant's row by its variant (`workers2`)
                        **({"variant": label} if label else {}),
                        "messages": config.kafka_messages, "lost": lost[key], "repeats": len(drains[key]),
                        "spread": {"throughput_per_s": [min(drains[key]), max(drains[key])]},
                        **per_1000(used[key], config.kafka_messages * len(drains[key])), **notes,
                        **_mean_figures(figures[key])})
    first, first_name = config.kafka_workers[0], variants[0][0]
    drain = float(np.median(drains[(first, first_name)]))
    for workers in config.kafka_workers[1:]:
        ratios[f"kafka_drain_workers_{workers}_over_{first}"] = (
            float(np.median(drains[(workers, first_name)])) / drain if drain else float("nan"))
    for name, _ in variants[1:]:
        ratios[f"kafka_drain_{name}_over_{first_name}"] = (
            float(np.median(drains[(first, name)])) / drain if drain else float("nan"))

    rates = config.kafka_rates or tuple(round(drain * f) for f in (0.25, 0.5, 0.75))
    cursor = config.kafka_messages
    best = {name: 0.0 for name, _ in variants}
    worker_args = ("--workers", str(first)) if first > 1 else ()
    warm_rate = min(rates[0], WARMUP_RATE_MAX) if rates else 0
    warm = min(int(warm_rate * config.kafka_warmup_seconds), len(values) - cursor)
    if warm >= 100:
        # A freshly started broker answers its first seconds of small requests (produce at
        # linger 1 ms, fetches, offset commits) several times slower: on the 2-core VM the
        # input itself reached another consumer up to a second late for 4-8 s, whatever the
        # sidecar did (2026-12-03). Such a run measures the broker's JIT, not the sidecar.
        # The warm-up reuses the first rate's messages on topics of its own.
        say(f"kafka warm-up at {warm_rate:,.0f} msg/s for {config.kafka_warmup_seconds:g} s (not measured)")
        topics = create_topics(bootstrap, partitions)
        proc, _ = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size,
                                extra=worker_args + tuple(variants[0][1]))
        try:
            reader = threading.Thread(target=lambda out=topics["out"]: collect(
                bootstrap, out, warm, config.kafka_warmup_seconds + 60))
            reader.start()
            produce(bootstrap, topics["in"], keys[cursor:cursor + warm], values[cursor:cursor + warm], rate=warm_rate)
            reader.join()
        finally:
            proc.terminate()
            proc.wait(60)
    for rate in rates:
        n = min(max(100, int(rate * config.kafka_rate_seconds)), len(values) - cursor - config.naive_messages)
        stream = slice(cursor, cursor + n)
        cursor += n
        runs = {name: [] for name, _ in variants}
        spent = {name: [] for name, _ in variants}
        seen = {name: [] for name, _ in variants}
        for repeat in range(config.kafka_repeats):
            for name, args in variants:
                say(f"kafka at {rate:,.0f} msg/s for {config.kafka_rate_seconds:g} s"
                    f"{f', {name}' if name != DEFAULT_VARIANT else ''} ({repeat + 1}/{config.kafka_repeats})")
                topics = create_topics(bootstrap, partitions)
                proc, port = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size,
                                           extra=worker_args + tuple(args))
                collected: dict = {}
                try:
                    meter, before = _measured(proc, port, first, broker)
                    reader = threading.Thread(target=lambda out=topics["out"], count=n, box=collected: box.update(
                        results=collect(bootstrap, out, count, config.kafka_rate_seconds + 120)))
                    reader.start()
                    sent_at = produce_at_rate(bootstrap, topics["in"], keys[stream], values[stream], rate)
                    reader.join()
                    used_now, figures_now = _finish(meter, before, port, first)
                finally:
                    proc.terminate()
                    proc.wait(60)
                # Warm-up: the first quarter of the run (at most 2 s) is left out of the latency
                # figures; a sidecar's first second on fresh topics runs several times slower.
                runs[name].append(RateRepeat(sent_at, collected["results"], min(2.0, config.kafka_rate_seconds / 4), n))
                spent[name].append(used_now)
                seen[name].append(figures_now)
        for name, _ in variants:
            lost_here = sum(r.missing for r in runs[name])
            row = rate_row("kafka-rate", rate, n, runs[name], lost_here, config, variant_label(name, first),
                           spent[name], seen[name], notes)
            if first > 1:
                row["workers"] = first
            results.append(row)
            if row["p99_ms"] is not None and row["p99_ms"] <= config.slo_ms and lost_here == 0:
                best[name] = max(best[name], float(rate))
    ratios["kafka_max_rate_under_slo"] = best[first_name]
    for name, _ in variants[1:]:
        ratios[f"kafka_max_rate_under_slo.{name}"] = best[name]

    say(f"naive reference on {config.naive_messages:,} messages")
    topics = create_topics(bootstrap, 1)
    naive = slice(cursor, cursor + config.naive_messages)
    produce(bootstrap, topics["in"], keys[naive], values[naive])
    done = subprocess.run([sys.executable, "-m", "fraudscore.bench.naive", str(config.bundle), bootstrap, topics["in"],
                           topics["out"], f"naive-{uuid.uuid4().hex[:6]}", str(config.naive_messages)],
                          capture_output=True, text=True, timeout=900, check=False)
    _, stamps, ids, _ = collect(bootstrap, topics["out"], config.naive_messages, timeout_s=60)
    naive_rate = len(ids) / max(1e-9, (stamps.max() - stamps.min()) / 1e3) if len(ids) > 1 else 0.0
    results.append({"mode": "kafka-naive", "device": "cpu", "batch_size": 1, "p50_ms": None, "p99_ms": None,
                    "throughput_per_s": naive_rate, "messages": len(ids), "exit_code": done.returncode})
    ratios["kafka_speedup_vs_naive"] = drain / naive_rate if naive_rate else float("nan")
    if "raw" in config.modes:
        results += run_kafka_raw(config, say, rates, broker, notes)
    return results, ratios


def run_kafka_raw(config: BenchConfig, say: Callable[[str], None], rates: tuple[float, ...] = (),
                  broker: int | None = None, notes: dict | None = None) -> list[dict]:
    """Raw mode through the broker: the drain of 30 days of the reference size (transactions
    and confirmations, 2 input partitions); then, on the same warmed sidecar, the days that
    follow streamed at each of `rates` for `kafka_rate_seconds` (kafka-raw-rate rows, the same
    figures as kafka-rate); then the recovery of a second instance that takes over the group:
    customer windows replayed from the input topic, the terminal table read whole."""
    import time
    import urllib.request

    from fraudscore import simulate
    from fraudscore.data.replay import raw_stream, replay

    from .raw_pipeline import REFERENCE, WARMUP_DAYS, raw_stream_values

    bootstrap = config.bootstrap_servers
    notes = notes or {}
    name, args = config.kafka_variants[0]
    variant = variant_label(name)
    wanted = sum(max(100, int(rate * config.kafka_rate_seconds)) for rate in rates)
    # One simulation of the history and the days after it, split by time: the streamed days
    # continue the customers' and terminals' histories the sidecar has in its state.
    per_day = 9_000  # about 9,700 transactions a day at the reference size, with a margin
    days = WARMUP_DAYS + (math.ceil(wanted / per_day) + 1 if wanted else 0)
    whole = simulate(**(REFERENCE | {"days": days})).transactions
    when = whole["TX_DATETIME"].astype("datetime64[s]")
    cutoff = when.min().astype("datetime64[D]") + np.timedelta64(WARMUP_DAYS, "D")
    table = whole.take(when < cutoff)
    events = raw_stream(table)
    n = len(table)
    topics = create_topics(bootstrap, 2, labels=True)
    say(f"kafka raw drain of {n:,} transactions ({WARMUP_DAYS} days of 5,000 customers)")
    replay(events, {"bootstrap.servers": bootstrap}, topics["in"], topics["labels"])
    group = f"bench-raw-{uuid.uuid4().hex[:6]}"
    extra = ("--input", "raw", "--labels-topic", topics["labels"], *args)
    proc, port = start_sidecar(bootstrap, config.bundle, topics, batch_size=config.kafka_batch_size, group=group,
                               extra=extra, ready_timeout_s=300)
    rows, streamed = [], 0
    try:
        meter, before = _measured(proc, port, 1, broker)
        _, stamps, ids, _ = collect(bootstrap, topics["out"], n, timeout_s=900)
        drain_used, drain_seen = _finish(meter, before, port, 1)
        if rates:
            later = whole.take(when >= cutoff)
            keys, values, _ = raw_stream_values(later)
            cursor = 0
            for rate in rates:
                count = min(max(100, int(rate * config.kafka_rate_seconds)), len(values) - cursor)
                if count < 2:  # the simulated days ran out (not expected: they are sized for the sweep)
                    break
                stream = slice(cursor, cursor + count)
                cursor += count
                say(f"kafka raw at {rate:,.0f} tx/s for {config.kafka_rate_seconds:g} s")
                start = end_offsets(bootstrap, topics["out"])  # only this step's results
                collected: dict = {}
                meter, before_step = _measured(proc, port, 1, broker)
                # Bounded: a sidecar that cannot keep up is given a few seconds past the step,
                # and what has not arrived by then is counted lost.
                reader = threading.Thread(target=lambda count=count, start=start, box=collected: box.update(
                    results=collect(bootstrap, topics["out"], count, config.kafka_rate_seconds + 30, start=start)))
                reader.start()
                sent_at = produce_at_rate(bootstrap, topics["in"], keys[stream], values[stream], rate)
                reader.join()
                step_used, step_seen = _finish(meter, before_step, port, 1)
                run = RateRepeat(sent_at, collected["results"], min(2.0, config.kafka_rate_seconds / 4), count)
                rows.append(rate_row("kafka-raw-rate", rate, count, [run], run.missing, config, variant,
                                     [step_used], [step_seen], notes))
                streamed += count
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
    series = sums_by_label(metrics, "kind", prefix="fraudscore_state_")  # {(name, kind or ""): value}
    history = n + streamed  # the rate steps' transactions are history for the second instance too
    return [
        {"mode": "kafka-raw-drain", "device": "cpu", "batch_size": config.kafka_batch_size,
         **({"variant": variant} if variant else {}), "p50_ms": None,
         "p99_ms": None, "throughput_per_s": drain, "messages": n, "lost": n - len(set(ids)), "repeats": 1,
         **per_1000([drain_used], n), **notes, **_mean_figures([drain_seen])},
        *rows,
        {"mode": "kafka-raw-restore", "device": "cpu", "batch_size": config.kafka_batch_size,
         **({"variant": variant} if variant else {}), "p50_ms": None,
         # Transactions of history brought back per second of recovery (start to ready).
         "p99_ms": None, "throughput_per_s": history / ready_s, "history_days": WARMUP_DAYS,
         "history_transactions": history, "ready_after_s": ready_s,
         "customer_restore_s": series.get(("fraudscore_state_restore_duration_seconds_sum", "")),
         "restored_messages": series.get(("fraudscore_state_restored_messages_total", "")),
         "state_bytes": {kind: v for (name, kind), v in series.items() if name == "fraudscore_state_bytes" and kind}},
    ]


def format_kafka_table(results: list[dict]) -> str:
    """The Kafka rows again with what the main table has no room for: the latency tail, the
    achieved rates, and CPU milliseconds per 1,000 transactions of each process."""
    def num(value, fmt: str = ",.0f") -> str:
        return "" if value is None else format(value, fmt)

    header = (f"{'kafka run':<34} {'p99.9 ms':>9} {'max ms':>9} {'in tx/s':>9} {'out tx/s':>9} "
              f"{'sidecar':>8} {'broker':>8} {'bench':>8}  (CPU ms per 1,000 tx)")
    lines = [header]
    for r in results:
        if not r["mode"].startswith("kafka-") or "cpu_ms_per_1000_tx" not in r:
            continue
        what = " ".join(str(p) for p in (r["mode"], r.get("variant"),
                                         f"@{r['rate_per_s']:,.0f}/s" if r.get("rate_per_s") else None) if p)
        cpu = r["cpu_ms_per_1000_tx"]
        lines.append(f"{what:<34} {num(r.get('p999_ms'), '.1f'):>9} {num(r.get('max_ms'), '.1f'):>9} "
                     f"{num(r.get('achieved_input_per_s')):>9} {num(r.get('achieved_output_per_s')):>9} "
                     f"{num(cpu['sidecar'], '.1f'):>8} {num(cpu['broker'], '.1f'):>8} {num(cpu['bench_process'], '.1f'):>8}")
    return "\n".join(lines)
