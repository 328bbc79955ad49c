"""In-process pipeline figures: raw message bytes -> decode -> one ONNX Runtime call -> encoded results.

    python -m fraudscore.bench.pipeline --bundle DIR [--seconds 3] [--json PATH]

One core (ONNX Runtime with one intra-op thread). For each batch size, batches of
simulated transactions run back to back for `--seconds`; reported per batch size: the
median and p99 batch latency and the throughput in transactions per second. The model
alone (the same ORT session on the already-decoded matrix) is measured in the same run,
so the pipeline's overhead over the model is a same-run ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fraudscore import add_baseline_features, simulate
from fraudscore.bundle import load_bundle
from fraudscore.decode import decode_batch
from fraudscore.messages import transaction_messages
from fraudscore.pipeline import Pipeline
from fraudscore.scorer import Scorer


def _measure(fn, seconds: float, min_runs: int = 20) -> np.ndarray:
    fn()  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < min_runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.array(times)


def run(bundle_dir: Path, batch_sizes: list[int], seconds: float) -> dict:
    bundle = load_bundle(bundle_dir)
    pipeline = Pipeline(bundle, Scorer(bundle, intra_op_threads=1))
    table = add_baseline_features(simulate(customers=2000, terminals=4000, days=40, seed=3).transactions)
    _, values = transaction_messages(table, bundle.features)
    results = []
    for size in batch_sizes:
        batches = [values[i : i + size] for i in range(0, min(len(values), 64 * size), size)]
        batches = [b for b in batches if len(b) == size]
        state = {"i": 0}

        def one_pipeline():
            pipeline.run(batches[state["i"] % len(batches)])
            state["i"] += 1

        matrix = decode_batch(batches[0], bundle.features).matrix

        def one_model():
            pipeline.scorer.score(matrix)

        for mode, fn in (("pipeline", one_pipeline), ("model", one_model)):
            t = _measure(fn, seconds)
            results.append({
                "mode": mode, "batch_size": size, "runs": len(t),
                "p50_ms": float(np.median(t) * 1e3), "p99_ms": float(np.quantile(t, 0.99) * 1e3),
                "throughput_per_s": float(size / np.median(t)),
            })
    return {"schema": "fraudscore.pipeline-bench/1", "bundle": str(bundle_dir), "model": bundle.manifest.model_version,
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="1,64,1024,4096")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.bundle, [int(x) for x in args.batch_sizes.split(",")], args.seconds)
    print(f"{'mode':<9} {'batch':>6} {'p50 ms':>9} {'p99 ms':>9} {'tx/s':>12}")
    for r in report["results"]:
        print(f"{r['mode']:<9} {r['batch_size']:>6} {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['throughput_per_s']:>12,.0f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
