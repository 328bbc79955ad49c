"""Timing helpers every in-process bench mode shares: timed calls, the percentile summary of a
case, and the test hook that injects delays (FRAUDSCORE_BENCH_INJECT_DELAY_MS, see harness)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

INJECT_ENV = "FRAUDSCORE_BENCH_INJECT_DELAY_MS"
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


def busy_wait(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def injected_delays() -> dict[str, float]:
    """The test hook's delays by mode, from FRAUDSCORE_BENCH_INJECT_DELAY_MS (empty when unset)."""
    text = os.environ.get(INJECT_ENV, "").strip()
    if not text:
        return {}
    delays: dict[str, float] = {}
    try:
        for part in text.split(","):
            mode, _, ms = part.rpartition("=")
            names = [mode.strip()] if mode else ["model", "pipeline", "raw"]
            if not set(names) <= {"model", "pipeline", "raw"}:
                raise ValueError(mode)
            for name in names:
                delays[name] = float(ms)
    except ValueError:
        from fraudscore.errors import UsageError

        raise UsageError(f"{INJECT_ENV}={text!r}: write milliseconds (5) or MODE=MS pairs of model, pipeline "
                         "or raw (pipeline=5,model=1)") from None
    return {mode: ms for mode, ms in delays.items() if ms}


def timed_runs(fn: Callable[[], object], seconds: float, warmup_s: float, min_runs: int = 10,
               inject_ms: float = 0.0) -> np.ndarray:
    """Seconds of each call of `fn`: `warmup_s` of calls discarded, then calls for `seconds`
    (at least `min_runs`), each followed by `inject_ms` of busy wait (the test hook)."""
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < min_runs:
        t0 = time.perf_counter()
        fn()
        if inject_ms:
            busy_wait(inject_ms)
        times.append(time.perf_counter() - t0)
    return np.array(times)


def summarise(mode: str, device: str, batch: int, repeats: list[np.ndarray], variant: str = "fp32") -> dict:
    """One result row. Every latency figure is a percentile of all timed calls of all repeats
    pooled (`p50_ms` is `percentiles_ms["50"]`, `p99_ms` is `percentiles_ms["99"]`);
    `spread` is the min-max of the same figure computed within each repeat alone."""
    pooled = np.concatenate(repeats) * 1e3
    percentiles = {percentile_key(q): float(np.percentile(pooled, q)) for q in PERCENTILES}
    per_repeat_p50 = [float(np.percentile(t * 1e3, 50)) for t in repeats]
    per_repeat_p99 = [float(np.percentile(t * 1e3, 99)) for t in repeats]
    per_repeat_tput = [batch / (p / 1e3) for p in per_repeat_p50]
    return {
        "mode": mode,
        "device": device,
        "variant": variant,
        "batch_size": batch,
        "p50_ms": percentiles["50"],
        "p99_ms": percentiles["99"],
        # Transactions a second of back-to-back calls at the median batch latency.
        "throughput_per_s": batch / (percentiles["50"] / 1e3),
        "spread": {"p50_ms": [min(per_repeat_p50), max(per_repeat_p50)],
                   "p99_ms": [min(per_repeat_p99), max(per_repeat_p99)],
                   "throughput_per_s": [min(per_repeat_tput), max(per_repeat_tput)]},
        "repeats": len(repeats),
        "runs_per_repeat": [len(t) for t in repeats],
        "percentiles_ms": percentiles,
    }


def percentile_key(q: float) -> str:
    return f"{q:g}"
