"""`BenchConfig`: what `fraudscore bench` measures, shared by every bench mode (no mode imports another's
module for it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    # Before the rate sweep: a discarded run at its first rate (a fresh sidecar on fresh
    # topics), so a cold broker's first seconds of small requests are not measured.
    kafka_warmup_seconds: float = 10.0
    kafka_batch_size: int = 4096
    kafka_repeats: int = 1
    kafka_workers: tuple[int, ...] = (1,)
    # (name, extra `fraudscore run` arguments) per sidecar configuration, `--kafka-variant NAME=ARGS`
    kafka_variants: tuple[tuple[str, tuple[str, ...]], ...] = (("default", ()),)
    naive_messages: int = 5_000
    slo_ms: float = 50.0
    # --challenger: with the pipeline mode, the same pipeline with this bundle shadow-scored beside
    # the model too (rows of variant "shadow"; ratio shadow_overhead = their p50 / the pipeline's)
    challenger: Path | None = None
