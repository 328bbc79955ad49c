"""`fraudscore bench`: latency and throughput of the model, the in-process pipeline and the Kafka path.

Modes (each case is warmed up, then measured `repeats` times; a case's p50/p99 are
percentiles of every timed call of every repeat pooled, its spread the min-max of the
same figure within each repeat; docs/bench.md defines every report field):

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

Model and pipeline repeats are interleaved (model, pipeline, model, pipeline, ...), so that
a burst of CPU steal on a shared machine falls on both sides of the same-run ratio.

Test hook: FRAUDSCORE_BENCH_INJECT_DELAY_MS adds milliseconds of busy wait to every
measured call: `5` to model and pipeline calls alike, `pipeline=5` (or `model=1,pipeline=5`)
to the named modes only. It exists so that tests can prove which gate bound catches which
slowdown; never set it otherwise.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable

import numpy as np

from .config import BenchConfig
from .provenance import run_identity
from .timing import INJECT_ENV, PERCENTILES, injected_delays, summarise, timed_runs
from .workload import simulated_messages

__all__ = ["INJECT_ENV", "PERCENTILES", "SCHEMA", "BenchConfig", "format_table", "machine_info", "run_bench"]

SCHEMA = "fraudscore.bench/2"


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


def run_bench(config: BenchConfig, say: Callable[[str], None] = lambda m: None, run: dict | None = None) -> dict:
    """Measure what `config` asks for and return the report (docs/bench.md describes every field).

    `run` identifies the run (`id`, `commit`, `source`); by default it is read from the CI's environment.
    """
    from fraudscore.serving.bundle import load_bundle
    from fraudscore.serving.decode import decode_batch
    from fraudscore.serving.pipeline import Pipeline, load_challenger
    from fraudscore.serving.scorer import Scorer

    bundle = load_bundle(config.bundle)
    delays = injected_delays()
    results: list[dict] = []
    ratios: dict[str, float] = {}
    needs_messages = {"model", "pipeline"} & set(config.modes)
    _, values = simulated_messages(bundle.features, max(config.batch_sizes) * 8,
                                     recorded_spec=bundle.manifest.feature_spec) if needs_messages else ([], [])

    for device in config.devices:
        scorer = Scorer(bundle, device=device, intra_op_threads=config.threads)
        pipeline = Pipeline(bundle.manifest, scorer)
        shadowed = None
        if config.challenger is not None and "pipeline" in config.modes:
            shadowed = Pipeline(bundle.manifest, scorer, challenger=load_challenger(
                config.challenger, bundle.manifest, device=device, threads=config.threads))
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
                if shadowed is not None:
                    shadow_state = {"i": 0}

                    def shadow(bs=batches, st=shadow_state):
                        shadowed.score_batch(bs[st["i"] % len(bs)])
                        st["i"] += 1

                    cases["shadow"] = shadow
            say(f"{' and '.join(cases)} {device} batch {batch}")
            # Interleaved, so that CPU steal on a shared machine hits both sides of the ratio alike.
            timed: dict[str, list[np.ndarray]] = {mode: [] for mode in cases}
            for _ in range(config.repeats):
                for mode, fn in cases.items():
                    timed[mode].append(timed_runs(fn, config.seconds, config.warmup_s,
                                                   inject_ms=delays.get(mode, 0.0)))
            rows = {mode: (summarise("pipeline", device, batch, runs, variant="shadow") if mode == "shadow"
                           else summarise(mode, device, batch, runs)) for mode, runs in timed.items()}
            results += rows.values()
            if "model" in rows and "pipeline" in rows:
                ratios[f"pipeline_overhead.{device}.b{batch}"] = rows["pipeline"]["p50_ms"] / rows["model"]["p50_ms"]
            if "shadow" in rows:
                ratios[f"shadow_overhead.{device}.b{batch}"] = rows["shadow"]["p50_ms"] / rows["pipeline"]["p50_ms"]

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
        "run": dict(run or run_identity()),
        **machine_info(),
        "bundle": {"path": str(config.bundle), "model_version": bundle.manifest.model_version,
                   "model_kind": bundle.manifest.model_kind, "sha256": bundle.manifest.model_sha256},
        "config": {"modes": list(config.modes), "batch_sizes": list(config.batch_sizes), "devices": list(config.devices),
                   "threads": config.threads, "repeats": config.repeats, "seconds": config.seconds,
                   "slo_ms": config.slo_ms, "inject_delay_ms": delays,
                   **({} if config.challenger is None else {"challenger": str(config.challenger)})},
        "results": results,
        "ratios": ratios,
    }


def format_table(report: dict) -> str:
    lines = [f"{'mode':<22} {'device':<6} {'batch':>6} {'p50 ms':>9} {'p99 ms':>9} {'p99 spread':>17} {'tx/s':>12}"]
    for r in report["results"]:
        p50 = "" if r.get("p50_ms") is None else f"{r['p50_ms']:.3f}"
        p99 = "" if r.get("p99_ms") is None else f"{r['p99_ms']:.3f}"
        spread = r.get("spread", {}).get("p99_ms")
        spread_text = f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else ""
        mode = r["mode"] if r.get("workers", 1) == 1 else f"{r['mode']} x{r['workers']}"  # `--kafka-workers`
        variant = r.get("variant", "fp32").removesuffix(f"-workers{r.get('workers', 1)}")  # `--kafka-variant`
        if (r["mode"].startswith("kafka-") or variant == "shadow") and variant not in ("fp32", f"workers{r.get('workers', 1)}"):
            mode = f"{mode} {variant}"
        lines.append(f"{mode:<22} {r.get('device', 'cpu'):<6} {r['batch_size']:>6} {p50:>9} {p99:>9} "
                     f"{spread_text:>17} {r['throughput_per_s']:>12,.0f}")
    for name, value in report.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value:.2f}")
    if any(r["mode"].startswith("kafka-") for r in report["results"]):
        from .kafka_mode import format_kafka_table

        lines += ["", format_kafka_table(report["results"])]
    return "\n".join(lines)
