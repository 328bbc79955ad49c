"""`fraudscore bench`: latency and throughput of the model, the in-process pipeline and the Kafka path.

Modes (each case is warmed up, then measured `repeats` times; a case's figure is the
median over repeats, with the spread (min-max) beside it):

- `model`: the bundle's ONNX Runtime session alone on float32 matrices, a sweep of batch
  sizes, per device;
- `pipeline`: raw message bytes -> decode -> one ORT call -> encoded results, the same
  sweep; its overhead is reported as a ratio to `model` measured in the same run;
- `raw`: raw transaction bytes -> decode -> online features (state warmed with 30 days
  of the handbook's reference size) -> one ORT call -> encoded results (bench/raw_pipeline.py);
  its cost is reported as a ratio to `pipeline` (feature mode) measured in the same run;
- `kafka`: through a real broker with `fraudscore run` as a subprocess: the drain rate
  of a backlog, then a sweep of fixed rates (Poisson arrivals) reporting p50/p99 from the
  input's timestamp to the result's arrival, and the highest rate whose p99 stays under
  `slo_ms`; and a naive reference (poll one message, json.loads, score one row,
  produce, commit: the program a user would otherwise write) on the same broker, model
  and backlog, reported as a throughput ratio.

Test hook: FRAUDSCORE_BENCH_INJECT_DELAY_MS adds that many milliseconds of busy wait to
every measured model and pipeline call. It exists so that tests can prove the gate fails
on a slowed scorer; never set it otherwise.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .workload import simulated_messages

SCHEMA = "fraudscore.bench/1"
INJECT_ENV = "FRAUDSCORE_BENCH_INJECT_DELAY_MS"
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


@dataclass(frozen=True)
class BenchConfig:
    """What `fraudscore bench` measures, built once from its flags; the fields mirror them."""

    bundle: Path
    modes: tuple[str, ...] = ("model", "pipeline")
    batch_sizes: tuple[int, ...] = (1, 8, 64, 512, 4096)
    devices: tuple[str, ...] = ("cpu",)
    threads: int = 1
    repeats: int = 3
    seconds: float = 1.0
    warmup_s: float = 0.2
    bootstrap_servers: str | None = None
    kafka_messages: int = 100_000
    kafka_rates: tuple[float, ...] = ()
    kafka_rate_seconds: float = 8.0
    kafka_batch_size: int = 4096
    kafka_repeats: int = 1
    naive_messages: int = 5_000
    slo_ms: float = 50.0


def _busy_wait(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def _timed_runs(fn: Callable[[], object], seconds: float, warmup_s: float, min_runs: int = 10) -> np.ndarray:
    inject = float(os.environ.get(INJECT_ENV, "0") or 0)
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < min_runs:
        t0 = time.perf_counter()
        fn()
        if inject:
            _busy_wait(inject)
        times.append(time.perf_counter() - t0)
    return np.array(times)


def _summarise(mode: str, device: str, batch: int, repeats: list[np.ndarray], variant: str = "fp32") -> dict:
    p50 = [float(np.median(t) * 1e3) for t in repeats]
    p99 = [float(np.quantile(t, 0.99) * 1e3) for t in repeats]
    tput = [batch / float(np.median(t)) for t in repeats]
    return {
        "mode": mode,
        "device": device,
        "variant": variant,
        "batch_size": batch,
        "p50_ms": statistics.median(p50),
        "p99_ms": statistics.median(p99),
        "throughput_per_s": statistics.median(tput),
        "spread": {"p50_ms": [min(p50), max(p50)], "p99_ms": [min(p99), max(p99)],
                   "throughput_per_s": [min(tput), max(tput)]},
        "repeats": len(repeats),
        "runs_per_repeat": [len(t) for t in repeats],
        # The latency distribution over all repeats, for plots and closer reading.
        "percentiles_ms": {str(q): float(np.percentile(np.concatenate(repeats), q) * 1e3) for q in PERCENTILES},
    }


def machine_info() -> dict:
    import importlib.metadata as md

    info = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": platform.processor()}
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
        info["cpu_model"] = model
    except OSError:
        pass
    libs = {}
    for name in ("fraudscore", "numpy", "onnxruntime", "onnxruntime-gpu", "confluent-kafka", "msgspec", "orjson"):
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        import confluent_kafka

        libs["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return {"machine": info, "libraries": libs}


def run_bench(config: BenchConfig, say: Callable[[str], None] = lambda m: None) -> dict:
    from fraudscore.serving.bundle import load_bundle
    from fraudscore.serving.decode import decode_batch
    from fraudscore.serving.pipeline import Pipeline
    from fraudscore.serving.scorer import Scorer

    bundle = load_bundle(config.bundle)
    results: list[dict] = []
    ratios: dict[str, float] = {}
    needs_messages = {"model", "pipeline"} & set(config.modes)
    _, values = simulated_messages(bundle.features, max(config.batch_sizes) * 8) if needs_messages else ([], [])

    for device in config.devices:
        scorer = Scorer(bundle, device=device, intra_op_threads=config.threads)
        pipeline = Pipeline(bundle.manifest, scorer)
        for batch in config.batch_sizes:
            batches = [values[i : i + batch] for i in range(0, len(values) - batch + 1, batch)][:8]
            cases = {}
            if "model" in config.modes:
                matrix = decode_batch(batches[0], bundle.features).matrix
                cases["model"] = lambda m=matrix: scorer.score(m)
            if "pipeline" in config.modes:
                state = {"i": 0}

                def one(bs=batches, st=state):
                    pipeline.score_batch(bs[st["i"] % len(bs)])
                    st["i"] += 1

                cases["pipeline"] = one
            for mode, fn in cases.items():
                say(f"{mode} {device} batch {batch}")
                repeats = [_timed_runs(fn, config.seconds, config.warmup_s) for _ in range(config.repeats)]
                results.append(_summarise(mode, device, batch, repeats))
            if "model" in cases and "pipeline" in cases:
                model_p50 = results[-2]["p50_ms"]
                ratios[f"pipeline_overhead.{device}.b{batch}"] = results[-1]["p50_ms"] / model_p50

    if "raw" in config.modes:
        from .raw_pipeline import run_raw_pipeline

        raw_results, _ = run_raw_pipeline(config, bundle, say)
        results += raw_results
        feature_mode = {(r["device"], r["batch_size"]): r for r in results if r["mode"] == "pipeline"}
        for r in raw_results:
            base = feature_mode.get((r["device"], r["batch_size"]))
            if base:
                ratios[f"raw_overhead.{r['device']}.b{r['batch_size']}"] = r["p50_ms"] / base["p50_ms"]

    if "kafka" in config.modes:
        if not config.bootstrap_servers:
            from fraudscore.errors import UsageError

            raise UsageError("--mode kafka needs --bootstrap-servers HOST:PORT (deploy/kafka/local.sh start gives one)")
        from .kafka_mode import run_kafka  # here, not at the top: the model and pipeline modes need no Kafka client

        kafka_results, kafka_ratios = run_kafka(config, bundle, say)
        results += kafka_results
        ratios.update(kafka_ratios)

    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **machine_info(),
        "bundle": {"path": str(config.bundle), "model_version": bundle.manifest.model_version,
                   "model_kind": bundle.manifest.model_kind, "sha256": bundle.manifest.model_sha256},
        "config": {"modes": list(config.modes), "batch_sizes": list(config.batch_sizes), "devices": list(config.devices),
                   "threads": config.threads, "repeats": config.repeats, "seconds": config.seconds,
                   "slo_ms": config.slo_ms, "inject_delay_ms": float(os.environ.get(INJECT_ENV, "0") or 0)},
        "results": results,
        "ratios": ratios,
    }


def format_table(report: dict) -> str:
    lines = [f"{'mode':<16} {'device':<6} {'batch':>6} {'p50 ms':>9} {'p99 ms':>9} {'p99 spread':>17} {'tx/s':>12}"]
    for r in report["results"]:
        p50 = "" if r.get("p50_ms") is None else f"{r['p50_ms']:.3f}"
        p99 = "" if r.get("p99_ms") is None else f"{r['p99_ms']:.3f}"
        spread = r.get("spread", {}).get("p99_ms")
        spread_text = f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else ""
        lines.append(f"{r['mode']:<16} {r.get('device', 'cpu'):<6} {r['batch_size']:>6} {p50:>9} {p99:>9} "
                     f"{spread_text:>17} {r['throughput_per_s']:>12,.0f}")
    for name, value in report.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value:.2f}")
    return "\n".join(lines)
