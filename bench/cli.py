"""`fraudscore bench`: registered on the command line by the `fraudscore.commands` entry point.

This module stays light (Typer only): the harness, Kafka clients and matplotlib are imported inside the command, so
`fraudscore --help` answers at once and the runtime package never imports this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fraudscore.console import int_list, reports_errors, say
from fraudscore.errors import UsageError


def register(app: typer.Typer) -> None:
    """Add `fraudscore bench` to the command line."""
    app.command(name="bench")(reports_errors(bench))


def bench(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle directory to measure.")],
    mode: Annotated[Optional[list[str]], typer.Option("--mode", help="model, pipeline (feature mode), raw (raw mode: online features at the reference size) or kafka; repeat for several [default: model and pipeline].")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the versioned report (docs/bench.md) here.")] = None,
    gate: Annotated[Optional[Path], typer.Option(help="Bounds to enforce (TOML or YAML, checked strictly); exit 1 when one fails.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Earlier report for the gate's relative bounds; without it they are skipped with a notice.")] = None,
    pushgateway: Annotated[Optional[str], typer.Option(help="Push fraudscore_bench_* metrics to this Pushgateway URL (group job/run_id/commit).")] = None,
    prom_file: Annotated[Optional[Path], typer.Option(help="Write the metrics in text format for a node-exporter textfile collector.")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Name of this run in the report and metrics [default: the CI's run id, else local-HOST-TIME].")] = None,
    commit: Annotated[Optional[str], typer.Option(help="Commit measured [default: the CI's commit, else git rev-parse HEAD].")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write latency and throughput against batch size, and Kafka latency against offered rate, as a PNG (matplotlib).")] = None,
    bootstrap_servers: Annotated[Optional[str], typer.Option(help="Broker for --mode kafka.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes of the model/pipeline sweep.")] = "1,8,64,512,4096",
    device: Annotated[Optional[list[str]], typer.Option("--device", help="cpu, cuda or auto; repeat to compare [default: cpu].")] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats of each case; figures are medians, spread is min-max.")] = 3,
    seconds: Annotated[float, typer.Option(min=0.01, help="Seconds of back-to-back calls per repeat.")] = 1.0,
    kafka_messages: Annotated[int, typer.Option(min=100, help="Backlog size for the Kafka drain run.")] = 100_000,
    kafka_rates: Annotated[str, typer.Option(help="Comma-separated msg/s for the latency sweep [default: 25/50/75 % of the drain rate].")] = "",
    kafka_rate_seconds: Annotated[float, typer.Option(min=1, help="Seconds of each fixed-rate run.")] = 8.0,
    kafka_warmup_seconds: Annotated[float, typer.Option(min=0, help="Seconds of a discarded run at the first rate before the rate sweep: a freshly started broker answers its first seconds of small requests several times slower (0: none).")] = 10.0,
    naive_messages: Annotated[int, typer.Option(min=10, help="Messages for the naive per-message reference.")] = 5_000,
    kafka_repeats: Annotated[int, typer.Option(min=1, help="Repeats of each Kafka drain and rate run (median and spread).")] = 1,
    kafka_workers: Annotated[str, typer.Option(help="Comma-separated worker counts: the same backlog drained by `fraudscore run --workers N` for each, repeats interleaved (e.g. 1,2); the rate sweep uses the first.")] = "1",
    kafka_variant: Annotated[Optional[list[str]], typer.Option("--kafka-variant", help="NAME=ARGS: a sidecar configuration, ARGS extra `fraudscore run` arguments (shell words), e.g. 'linger5=-X linger.ms=5'; repeat to compare several in one run, repeats interleaved [default: one, `default`, no extra arguments].")] = None,
    slo_ms: Annotated[float, typer.Option(help="p99 latency objective for the highest sustainable rate.")] = 50.0,
    challenger: Annotated[Optional[Path], typer.Option(help="A second bundle: with --mode pipeline, the pipeline is also measured with it shadow-scored (`fraudscore run --challenger`), as rows of variant shadow and the ratio shadow_overhead.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no results table; only the gate's table and verdict.")] = False,
) -> None:
    """Measure p50/p99 latency and throughput (model, pipeline, Kafka); export them; gate CI on them.

    The results table, the gate's table and its verdict go to stdout; progress to stderr.
    Exit codes: 0 measured (and every checked gate bound held), 1 a gate bound failed, 2 usage error.
    """
    import json

    from fraudscore.bench.gate import (baseline_problem, check, format_outcomes, load_gate, load_report,
                                       require_checked_bounds, verdict)
    from fraudscore.bench.harness import SCHEMA, BenchConfig, format_table, run_bench
    from fraudscore.bench.provenance import run_identity

    from fraudscore.progress import progress_wanted

    modes = tuple(mode or ("model", "pipeline"))
    unknown = set(modes) - {"model", "pipeline", "raw", "kafka"}
    if unknown:
        raise UsageError(f"--mode {', '.join(sorted(unknown))}: choose model, pipeline, raw or kafka")
    if challenger is not None and "pipeline" not in modes:
        raise UsageError("--challenger is measured in the pipeline mode: add --mode pipeline")
    bounds = load_gate(gate) if gate else None
    base = load_report(baseline) if baseline else None
    if bounds is not None:
        # Before measuring: a gate that would check nothing must not pass silently.
        require_checked_bounds(bounds, baseline_problem(base, SCHEMA), str(gate))
    run = run_identity(run_id, commit)
    config = BenchConfig(
        bundle=bundle, modes=modes, batch_sizes=int_list(batch_sizes, "--batch-sizes"),
        devices=tuple(device or ("cpu",)), threads=threads, repeats=repeats, seconds=seconds,
        bootstrap_servers=bootstrap_servers, kafka_messages=kafka_messages,
        kafka_rates=tuple(float(r) for r in kafka_rates.split(",") if r.strip()), kafka_rate_seconds=kafka_rate_seconds,
        kafka_warmup_seconds=kafka_warmup_seconds, naive_messages=naive_messages, slo_ms=slo_ms, kafka_repeats=kafka_repeats,
        kafka_workers=int_list(kafka_workers, "--kafka-workers"),
        kafka_variants=kafka_variants(kafka_variant or ()), challenger=challenger,
    )
    talk = not quiet and progress_wanted()
    report = run_bench(config, say=(lambda m: say(f"bench: {m}")) if talk else (lambda m: None), run=run)
    if not quiet:
        typer.echo(format_table(report))
    if json_path:
        from fraudscore.atomic import write_bytes

        write_bytes(json_path, (json.dumps(report, indent=2) + "\n").encode())
    if prom_file:
        from fraudscore.bench.exposition import write_textfile

        write_textfile(report, prom_file)
    if pushgateway:
        from fraudscore.bench.exposition import push

        try:
            push(report, pushgateway)
        except OSError as exc:
            raise UsageError(f"--pushgateway {pushgateway}: push failed ({exc})") from None
    if plot:
        from fraudscore.bench.plot import plot_report

        plot_report(report, plot)
    if bounds is not None:
        outcomes = check(report, bounds, base)
        typer.echo(format_outcomes(outcomes))
        if all(o.status == "SKIP" for o in outcomes):
            raise UsageError(f"--gate {gate}: no bound was checked (every one skipped, see the table); "
                             "add an absolute or ratio bound, or pass a --baseline of this report's schema")
        typer.echo(verdict(outcomes))
        if not all(o.ok for o in outcomes):
            raise typer.Exit(1)


def kafka_variants(specs: list[str] | tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`--kafka-variant NAME=ARGS` values as (name, arguments); one `default` without arguments when none."""
    import re
    import shlex

    out: list[tuple[str, tuple[str, ...]]] = []
    for spec in specs:
        name, sep, args = spec.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.]+", name):
            raise UsageError(f"--kafka-variant {spec!r}: write NAME=ARGS, NAME of letters, digits, '_' or '.', "
                             "e.g. --kafka-variant 'linger5=-X linger.ms=5' (ARGS may be empty: 'default=')")
        if name in {n for n, _ in out}:
            raise UsageError(f"--kafka-variant {name}: given twice; give each variant its own name")
        try:
            words = tuple(shlex.split(args))
        except ValueError as exc:
            raise UsageError(f"--kafka-variant {spec!r}: {exc}; quote ARGS as a shell would") from None
        out.append((name, words))
    return tuple(out) or (("default", ()),)
