"""Flame graphs of `fraudscore run` under load, recorded with py-spy (the `dev` extra installs it).

    python -m fraudscore.bench.profile --bundle out/ci-bundle --bootstrap-servers 127.0.0.1:9092 \\
        --rate 10000 --seconds 30 --out out/profile
    python -m fraudscore.bench.profile ... --drain 600000 --out out/profile-drain   # a backlog drain instead

scripts/profile-sidecar.sh does the same against a throw-away local broker. One run: fresh topics
and a sidecar (bench/kafka_io.py), then either a steady `--rate` from the soak's load generator
(bench/soak.py), profiled after `--warmup-s`, or a backlog of `--drain` messages produced before
the sidecar starts, profiled from the moment the sidecar is ready. py-spy samples the sidecar's
process (and its workers', `--subprocesses`) for `--seconds`, twice at once: into `sidecar.svg` (a
flame graph) and into `sidecar.txt` (collapsed stacks, one `frame;frame;... count` line per stack). `summary.txt` holds the shares of the samples that `summarise` reads from the
collapsed stacks: inclusive (samples with the function anywhere on the stack) and self (at the top).

py-spy attaches with ptrace: run as root or with CAP_SYS_PTRACE (or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fraudscore.errors import UsageError


def summarise(collapsed: str, top: int = 25) -> str:
    """Shares of the samples by function, inclusive and self, from py-spy's collapsed (`--format raw`) stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # A frame is "function (file:line)", counted without its line; the first entry names the
        # process (`--subprocesses`) and is not a frame.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]] or [stack.split(";")[0]]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "inclusive (on the stack; frames on every sample left out)"]
    lines += [f"{100 * n / total:6.1f} %  {name}" for name, n in
              [(name, n) for name, n in inclusive.most_common() if n < total][:top]]
    lines += ["", "self (top of the stack)"]
    lines += [f"{100 * n / total:6.1f} %  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


def _py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise UsageError("py-spy is not installed; pip install 'fraudscore[dev]' (or pip install py-spy)")
    return exe


def record(pid: int, seconds: float, out: Path, rate_hz: int) -> None:
    """Two py-spy recordings of `pid` and its children over the same seconds: a flame graph SVG and
    collapsed stacks. `--nonblocking` reads the process's memory without stopping it, so the two do
    not take turns at ptrace and the sidecar is not paused for each sample."""
    exe = _py_spy()
    runs = [subprocess.Popen([exe, "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate_hz),
                              "--duration", str(int(seconds)), "--format", fmt, "--output", str(out / name),
                              "--nonblocking"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for fmt, name in (("flamegraph", "sidecar.svg"), ("raw", "sidecar.txt"))]
    for run in runs:
        _, err = run.communicate(timeout=seconds + 120)
        if run.returncode != 0:
            raise RuntimeError(f"py-spy record failed ({run.returncode}): {err.strip()[-800:]} "
                               "(py-spy needs ptrace: root, CAP_SYS_PTRACE or kernel.yama.ptrace_scope=0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fraudscore.bench.profile",
                                     description="Record py-spy flame graphs of `fraudscore run` under a steady "
                                                 "rate or during a backlog drain.")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory the sidecar serves")
    parser.add_argument("--bootstrap-servers", required=True, help="broker address")
    parser.add_argument("--rate", type=float, default=10_000.0, help="offered tx/s of the steady load [10000]")
    parser.add_argument("--drain", type=int, default=0, metavar="N",
                        help="instead of a steady rate: a backlog of N messages, profiled while it drains")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds recorded [30]")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="steady load before recording starts [10]")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the input topic [6]")
    parser.add_argument("--sample-hz", type=int, default=100, help="py-spy samples a second [100]")
    parser.add_argument("--sidecar-arg", action="append", default=[], metavar="ARGS",
                        help="extra `fraudscore run` arguments, split like a shell; repeatable")
    parser.add_argument("--out", type=Path, required=True, help="directory for sidecar.svg, sidecar.txt, summary.txt")
    args = parser.parse_args(argv)
    import shlex

    from .kafka_io import create_topics, produce, start_sidecar
    from .soak import SoakConfig, message_pool, check_config, produce_load

    extra = tuple(a for chunk in args.sidecar_arg for a in shlex.split(chunk))
    try:
        _py_spy()
        if args.seconds < 1:
            raise UsageError(f"--seconds {args.seconds:g}: record at least 1 s")
        if args.drain < 0:
            raise UsageError(f"--drain {args.drain}: give a backlog size (e.g. 600000), or leave it out for a steady rate")
        check_config(SoakConfig(bundle=args.bundle, bootstrap_servers=args.bootstrap_servers, rate=args.rate,
                                minutes=(args.warmup_s + args.seconds + 10) / 60, partitions=args.partitions))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    topics = create_topics(args.bootstrap_servers, args.partitions, names={"in": "profile-in"})
    load = None
    if args.drain:
        keys, tails = message_pool(args.bundle, min(args.drain, 50_000))
        values = [b'{"TRANSACTION_ID":' + str(i).encode() + tails[i % len(tails)] for i in range(args.drain)]
        print(f"profile: producing a backlog of {args.drain:,} messages", file=sys.stderr)
        produce(args.bootstrap_servers, topics["in"], [keys[i % len(keys)] for i in range(args.drain)], values)
    proc, _ = start_sidecar(args.bootstrap_servers, args.bundle, topics, extra=extra, ready_timeout_s=300)
    try:
        if not args.drain:
            total = int(args.rate * (args.warmup_s + args.seconds + 10))
            ctx = multiprocessing.get_context("spawn")
            ready, start = ctx.Event(), ctx.Value("d", 0.0)
            load = ctx.Process(target=produce_load, args=(str(args.bundle), args.bootstrap_servers, topics["in"],
                                                          args.rate, total, False, ready, start), daemon=True)
            load.start()
            ready.wait(300)
            time.sleep(max(0.0, start.value - time.time()) + args.warmup_s)
        what = f"a drain of {args.drain:,}" if args.drain else f"{args.rate:,.0f} tx/s"
        print(f"profile: recording sidecar pid {proc.pid} under {what} for {args.seconds:g} s", file=sys.stderr)
        record(proc.pid, args.seconds, args.out, args.sample_hz)
    finally:
        if load is not None and load.is_alive():
            load.terminate()
            load.join(10)
        proc.terminate()
        proc.wait(60)
    summary = summarise((args.out / "sidecar.txt").read_text())
    (args.out / "summary.txt").write_text(summary)
    print(summary)
    print(f"profile: {args.out / 'sidecar.svg'}, {args.out / 'sidecar.txt'}, {args.out / 'summary.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
