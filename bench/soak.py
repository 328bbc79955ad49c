"""A soak of `fraudscore run`: a steady offered rate for minutes or hours, sampled as it goes.

    python -m fraudscore.bench.soak --bundle out/ci-bundle --bootstrap-servers 127.0.0.1:9092 \\
        --rate 3000 --minutes 60 --json soak.json

One run: fresh topics (`kafka_io.create_topics`), a sidecar on them (`kafka_io.start_sidecar`), a
load generator in its own process producing `--rate` tx/s for `--minutes` (`kafka_io.produce`, one
chunk a minute, each chunk started on the run's clock so the chunks do not drift), and this
process reading the input and the output topic at once. Every `--sample-s` it records the
sidecar's RSS and CPU seconds (its process tree, from /proc), the broker's CPU seconds (when the
broker is a local `kafka.Kafka` JVM listening on the bootstrap port), the messages in and out in
that window, and the latency of the results that arrived in it (arrival − the input message's
Kafka timestamp). At the end: every window in a table and in the `--json` report, and a verdict:
RSS slope over the second half (MB/hour) and its range after the warm-up, sidecar CPU-µs per
transaction in steady state, and the transactions without a result (distinct ids out vs in).

Exit codes: 0 nothing lost, 1 a transaction without a result, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fraudscore.errors import UsageError

from . import procfs
from .cpu import broker_pid, process_tree

CHUNK_S = 60.0  # the load generator's chunk: bounded memory for an hour at any rate
WARMUP_S = 300.0  # RSS range and CPU per transaction are read after this (or a quarter of a short run)
ID_FIELD = b'{"TRANSACTION_ID":'  # transaction_messages puts the id first
OUT_FIELD = b'{"transaction_id":'


@dataclass(frozen=True)
class SoakConfig:
    """What one soak runs: the flags, validated."""

    bundle: Path
    bootstrap_servers: str
    rate: float = 3000.0
    minutes: float = 60.0
    partitions: int = 6
    sample_s: float = 30.0
    poisson: bool = False
    sidecar_args: tuple[str, ...] = ()
    drain_timeout_s: float = 120.0

    @property
    def messages(self) -> int:
        return round(self.rate * self.minutes * 60)


@dataclass
class Sample:
    """One window of the soak, from `t_s - window_s` to `t_s` seconds after the load started."""

    t_s: float
    window_s: float
    rss_mb: float
    sidecar_cpu_s: float  # cumulative
    broker_cpu_s: float | None  # cumulative; None when the broker is not a local process
    messages_in: int  # input messages read back in this window (what the load generator got onto the topic)
    messages_out: int  # first results of distinct ids that arrived in this window
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None


@dataclass
class Verdict:
    """The end of the report: RSS flatness, steady-state CPU per transaction, and losses."""

    messages_in: int
    distinct_out: int
    lost: int
    duplicates: int
    rss_first_mb: float
    rss_last_mb: float
    rss_slope_mb_per_h: float | None  # least squares over the second half of the samples
    rss_range_after_warmup_mb: float | None  # max - min of the samples after the warm-up
    warmup_s: float
    sidecar_cpu_us_per_tx: float | None  # CPU-µs per result after the warm-up
    broker_cpu_us_per_tx: float | None
    p50_ms: float | None  # every result after the warm-up
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    notes: list[str] = field(default_factory=list)


# -- /proc ---------------------------------------------------------------------------------------

def rss_mb(pids: list[int], proc: Path = procfs.PROC) -> float:
    """Sum of VmRSS over `pids`, MB (10^6 bytes); a process that has gone counts 0."""
    return sum(procfs.status_kb(pid, "VmRSS", proc) or 0 for pid in pids) * 1024 / 1e6


def cpu_seconds(pids: list[int], proc: Path = procfs.PROC) -> float:
    """utime + stime of `pids` and of their waited-for children (cutime + cstime), seconds."""
    stats = [procfs.stat(pid, proc) for pid in pids]
    return sum(st.cpu_s + st.children_cpu_s for st in stats if st is not None)


# -- load ----------------------------------------------------------------------------------------

def message_pool(bundle: Path, size: int) -> tuple[list[bytes], list[bytes]]:
    """Keys and the bodies after the id of `size` simulated transactions carrying the bundle's features."""
    from fraudscore.serving.bundle import load_bundle

    from .workload import simulated_messages

    loaded = load_bundle(bundle)
    keys, values = simulated_messages(loaded.features, size, seed=13, recorded_spec=loaded.manifest.feature_spec)
    tails = []
    for v in values:
        if not v.startswith(ID_FIELD):
            raise RuntimeError("soak: simulated messages no longer start with TRANSACTION_ID; update soak.ID_FIELD")
        tails.append(v[v.index(b",", len(ID_FIELD)):])
    return keys, tails


def produce_load(bundle: str, bootstrap: str, topic: str, rate: float, total: int, poisson: bool,
                 ready, start) -> None:
    """The load generator's process: ids 0..total-1 at `rate`, a chunk a minute.

    Once its messages are built it puts the run's start (wall clock) into `start` and sets `ready`."""
    from .kafka_io import produce

    keys, tails = message_pool(Path(bundle), min(total, 50_000))
    t0 = time.time() + 0.5
    start.value = t0
    ready.set()
    per_chunk = max(1, int(rate * CHUNK_S))
    for k, first in enumerate(range(0, total, per_chunk)):
        ids = range(first, min(total, first + per_chunk))
        chunk_keys = [keys[i % len(keys)] for i in ids]
        chunk_values = [ID_FIELD + str(i).encode() + tails[i % len(tails)] for i in ids]
        # Each chunk starts on the run's clock, not after the previous one's flush.
        ahead = t0 + k * CHUNK_S - time.time()
        if ahead > 0:
            time.sleep(ahead)
        produce(bootstrap, topic, chunk_keys, chunk_values, rate=rate, poisson_seed=k if poisson else None)


def _id_after(value: bytes, prefix: bytes) -> int | None:
    if not value.startswith(prefix):
        return None
    end = value.find(b",", len(prefix))
    try:
        return int(value[len(prefix):end])
    except ValueError:
        return None


# -- the run -------------------------------------------------------------------------------------

def _percentiles(latency_ms: list[float] | np.ndarray) -> dict:
    if len(latency_ms) == 0:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    a = np.asarray(latency_ms)
    p50, p99, p999 = np.quantile(a, [0.5, 0.99, 0.999]).tolist()
    return {"p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": float(a.max())}


def check_config(config: SoakConfig) -> None:
    """Usage errors, before anything starts, each saying how to fix it."""
    if not (config.bundle / "manifest.json").is_file():
        raise UsageError(f"--bundle {config.bundle}: no manifest.json there; give a bundle directory "
                         "(`fraudscore export` writes one; scripts/ci-bench.sh builds out/ci-bundle)")
    if config.rate <= 0:
        raise UsageError(f"--rate {config.rate:g}: give the offered rate in transactions a second, above 0 (e.g. 3000)")
    if config.minutes <= 0:
        raise UsageError(f"--minutes {config.minutes:g}: give the soak's length in minutes, above 0 (e.g. 60, or 0.5)")
    if config.partitions < 1:
        raise UsageError(f"--partitions {config.partitions}: the input topic needs at least 1 partition")
    if config.sample_s <= 0:
        raise UsageError(f"--sample-s {config.sample_s:g}: give the sampling interval in seconds, above 0 (e.g. 30)")
    if config.messages < 1:
        raise UsageError(f"--rate {config.rate:g} for --minutes {config.minutes:g} offers no message; raise either")
    from confluent_kafka.admin import AdminClient

    from .kafka_io import KAFKA_LOG

    try:
        AdminClient({"bootstrap.servers": config.bootstrap_servers, "logger": KAFKA_LOG}).list_topics(timeout=10)
    except Exception as exc:  # KafkaException: broker down, bad address
        raise UsageError(f"--bootstrap-servers {config.bootstrap_servers}: no broker answered in 10 s ({exc}); "
                         "start one with deploy/kafka/local.sh start (its last line is the address)") from None


def run_soak(config: SoakConfig, say=lambda m: None) -> dict:
    """Run one soak and return its report (see the module docstring)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from .kafka_io import KAFKA_LOG, READER_FETCH_WAIT_MS, create_topics, start_sidecar

    check_config(config)
    total = config.messages
    topics = create_topics(config.bootstrap_servers, config.partitions, names={"in": "soak-in", "out": "soak-out",
                                                                               "alerts": "soak-alerts", "dlq": "soak-dlq"})
    say(f"topics {topics['in']} ({config.partitions} partitions) -> {topics['out']}")
    proc, metrics_port = start_sidecar(config.bootstrap_servers, config.bundle, topics, extra=config.sidecar_args,
                                       ready_timeout_s=300)
    broker, _ = broker_pid(config.bootstrap_servers)
    reader = Consumer({"bootstrap.servers": config.bootstrap_servers, "logger": KAFKA_LOG,
                       "group.id": f"soak-reader-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                       "fetch.wait.max.ms": READER_FETCH_WAIT_MS})
    meta = reader.list_topics(timeout=30).topics
    reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in (topics["in"], topics["out"])
                   for p in meta[t].partitions])
    ctx = multiprocessing.get_context("spawn")  # not fork: this process holds Kafka clients' threads
    ready, start = ctx.Event(), ctx.Value("d", 0.0)
    load = ctx.Process(target=produce_load, args=(str(config.bundle), config.bootstrap_servers, topics["in"],
                                                  config.rate, total, config.poisson, ready, start), daemon=True)
    load.start()
    if not ready.wait(300):
        load.terminate()
        proc.terminate()
        raise RuntimeError("soak: the load generator did not get its messages ready in 300 s")
    t0 = start.value
    say(f"sidecar pid {proc.pid}, metrics :{metrics_port}; broker pid {broker or 'not local'}; "
        f"{total:,} transactions at {config.rate:,.0f}/s for {config.minutes:g} min")

    sent_ms: dict[int, float] = {}  # input timestamp of ids whose result has not arrived yet
    early: dict[int, float] = {}  # arrival of results read before their input (rare: two topics, one reader)
    seen_in = np.zeros(total, dtype=bool)
    seen_out = np.zeros(total, dtype=bool)
    duplicates = foreign = 0
    window: list[float] = []
    after_warmup: list[float] = []
    warmup_s = min(WARMUP_S, config.minutes * 60 / 4)
    samples: list[Sample] = []
    count_in = count_out = total_in = total_out = 0
    next_sample = t0 + config.sample_s
    drain_deadline = None
    last_t = t0
    try:
        while True:
            # Arrival is stamped when a call returns, so no call waits once a message is there
            # (consume(n, timeout) waits its whole timeout unless n messages come): what is
            # fetched already; if nothing, one message as soon as it comes, and what came with it.
            batch = reader.consume(2000, 0)
            if not batch:
                first = reader.poll(0.01)
                batch = [first] + reader.consume(1999, 0) if first is not None else []
            now = time.time()
            for m in batch:
                if m.error() is not None:
                    continue
                if m.topic() == topics["in"]:
                    tx = _id_after(m.value(), ID_FIELD)
                    if tx is None or not 0 <= tx < total or seen_in[tx]:
                        continue
                    seen_in[tx] = True
                    count_in += 1
                    total_in += 1
                    stamp = m.timestamp()[1]
                    if tx in early:
                        lat = (early.pop(tx) - stamp / 1e3) * 1e3
                        window.append(lat)
                        if stamp / 1e3 >= t0 + warmup_s:
                            after_warmup.append(lat)
                    else:
                        sent_ms[tx] = stamp
                    continue
                tx = _id_after(m.value(), OUT_FIELD)
                if tx is None or not 0 <= tx < total:
                    foreign += 1
                    continue
                if seen_out[tx]:
                    duplicates += 1
                    continue
                seen_out[tx] = True
                count_out += 1
                total_out += 1
                stamp = sent_ms.pop(tx, None)
                if stamp is None:
                    early[tx] = now
                    continue
                lat = now * 1e3 - stamp
                window.append(lat)
                if stamp / 1e3 >= t0 + warmup_s:
                    after_warmup.append(lat)
            finished = drain_deadline is not None and ((total_in >= total and total_out >= total)
                                                       or now >= drain_deadline)
            if now >= next_sample or finished:
                pids = process_tree(proc.pid)
                samples.append(Sample(t_s=now - t0, window_s=now - last_t, rss_mb=rss_mb(pids),
                                      sidecar_cpu_s=cpu_seconds(pids),
                                      broker_cpu_s=cpu_seconds([broker]) if broker else None,
                                      messages_in=count_in, messages_out=count_out, **_percentiles(window)))
                s = samples[-1]
                say(f"t={s.t_s:6.0f} s  rss {s.rss_mb:6.1f} MB  in {count_in:7,}  out {count_out:7,}  "
                    f"p99 {_ms(s.p99_ms)}  max {_ms(s.max_ms)}")
                count_in = count_out = 0
                window = []
                last_t = now
                next_sample = now + config.sample_s
            if finished:
                break
            if drain_deadline is None and not load.is_alive():
                if load.exitcode != 0:
                    raise RuntimeError(f"soak: the load generator failed (exit code {load.exitcode})")
                drain_deadline = now + config.drain_timeout_s
            if proc.poll() is not None:
                raise RuntimeError(f"soak: the sidecar exited with code {proc.returncode} during the run")
    finally:
        if load.is_alive():
            load.terminate()
        load.join(10)
        reader.close()
        proc.terminate()
        proc.wait(60)

    verdict = _verdict(samples, seen_in, seen_out, duplicates, after_warmup, warmup_s)
    if foreign:
        verdict.notes.append(f"{foreign} result(s) on the output topic with an id this soak did not send")
    return {"schema": "fraudscore.soak/1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {**asdict(config), "bundle": str(config.bundle), "messages": total},
            "topics": topics, "broker_pid": broker, "sidecar_pid": proc.pid,
            "samples": [asdict(s) for s in samples], "verdict": asdict(verdict)}


def _ms(value: float | None) -> str:
    return "    -" if value is None else f"{value:7.1f}"


def _verdict(samples: list[Sample], seen_in: np.ndarray, seen_out: np.ndarray, duplicates: int,
             after_warmup: list[float], warmup_s: float) -> Verdict:
    total = len(seen_in)
    notes = []
    t = np.array([s.t_s for s in samples])
    rss = np.array([s.rss_mb for s in samples])
    half = t >= t[-1] / 2
    slope = None
    if half.sum() >= 3:
        slope = float(np.polyfit(t[half], rss[half], 1)[0] * 3600)
    else:
        notes.append("RSS slope: fewer than 3 samples in the second half (a longer run or a smaller --sample-s)")
    steady = t >= warmup_s
    rss_range = float(rss[steady].max() - rss[steady].min()) if steady.sum() >= 2 else None
    # CPU per transaction: the CPU used between the first sample after the warm-up and the last,
    # over the results that arrived in between (the drain at the end included).
    cpu_us = broker_us = None
    idx = np.flatnonzero(steady)
    if len(idx) >= 2:
        a, b = samples[idx[0]], samples[idx[-1]]
        out = sum(s.messages_out for s in samples[idx[0] + 1: idx[-1] + 1])
        if out:
            cpu_us = (b.sidecar_cpu_s - a.sidecar_cpu_s) / out * 1e6
            if a.broker_cpu_s is not None and b.broker_cpu_s is not None:
                broker_us = (b.broker_cpu_s - a.broker_cpu_s) / out * 1e6
    else:
        notes.append("CPU per transaction: fewer than 2 samples after the warm-up")
    lost = int(seen_in.sum() - (seen_in & seen_out).sum())
    if int(seen_in.sum()) < total:
        notes.append(f"{total - int(seen_in.sum())} of {total} transactions never reached the input topic "
                     "(the load generator fell behind or failed)")
    return Verdict(messages_in=int(seen_in.sum()), distinct_out=int(seen_out.sum()), lost=lost, duplicates=duplicates,
                   rss_first_mb=float(rss[0]), rss_last_mb=float(rss[-1]), rss_slope_mb_per_h=slope,
                   rss_range_after_warmup_mb=rss_range, warmup_s=warmup_s, sidecar_cpu_us_per_tx=cpu_us,
                   broker_cpu_us_per_tx=broker_us, notes=notes, **_percentiles(after_warmup))


def format_report(report: dict) -> str:
    """The samples as a table, then the verdict."""
    rows = [("t_s", "rss_mb", "sidecar_cpu_s", "broker_cpu_s", "in", "out", "p50_ms", "p99_ms", "p99.9_ms", "max_ms")]
    for s in report["samples"]:
        rows.append((f"{s['t_s']:.0f}", f"{s['rss_mb']:.1f}", f"{s['sidecar_cpu_s']:.2f}",
                     "-" if s["broker_cpu_s"] is None else f"{s['broker_cpu_s']:.2f}", f"{s['messages_in']:,}",
                     f"{s['messages_out']:,}", *(_ms(s[k]).strip() for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    v = report["verdict"]

    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    lines += [
        "",
        f"transactions: {v['messages_in']:,} in, {v['distinct_out']:,} distinct out, lost {v['lost']}, "
        f"duplicates {v['duplicates']}",
        f"RSS: {v['rss_first_mb']:.1f} MB first sample, {v['rss_last_mb']:.1f} MB last; slope over the second half "
        f"{num(v['rss_slope_mb_per_h'], '+.1f')} MB/h; max-min after {v['warmup_s']:.0f} s "
        f"{num(v['rss_range_after_warmup_mb'], '.1f')} MB",
        f"CPU after {v['warmup_s']:.0f} s: sidecar {num(v['sidecar_cpu_us_per_tx'], '.1f')} µs/tx, "
        f"broker {num(v['broker_cpu_us_per_tx'], '.1f')} µs/tx",
        f"latency after {v['warmup_s']:.0f} s: p50 {num(v['p50_ms'], '.1f')} ms, p99 {num(v['p99_ms'], '.1f')} ms, "
        f"p99.9 {num(v['p999_ms'], '.1f')} ms, max {num(v['max_ms'], '.1f')} ms",
        *(f"note: {n}" for n in v["notes"]),
        f"soak: {'PASS, nothing lost' if v['lost'] == 0 else 'FAIL, ' + str(v['lost']) + ' transaction(s) without a result'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[SoakConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m fraudscore.bench.soak",
        description="Soak `fraudscore run` at a steady rate; sample RSS, CPU and latency; report and judge them.",
        epilog="Example: --bundle out/ci-bundle --bootstrap-servers 127.0.0.1:9092 --rate 3000 --minutes 60 "
               "--json soak.json --sidecar-arg '--workers 2'. Exit codes: 0 nothing lost, 1 lost, 2 usage error.")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory the sidecar serves")
    parser.add_argument("--bootstrap-servers", required=True, help="broker address (deploy/kafka/local.sh start prints one)")
    parser.add_argument("--rate", type=float, default=3000.0, help="offered transactions a second [3000]")
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes of load [60]")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the input topic [6]")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples [30]")
    parser.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of even spacing")
    parser.add_argument("--sidecar-arg", action="append", default=[], metavar="ARGS",
                        help="extra `fraudscore run` arguments, split like a shell; repeatable "
                             "(--sidecar-arg '--workers 2' or --sidecar-arg=--workers --sidecar-arg=2)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    extra = tuple(a for chunk in args.sidecar_arg for a in shlex.split(chunk))
    for reserved in ("--bundle", "--bootstrap-servers", "--input-topic", "--output-topic", "--metrics-port"):
        if reserved in extra:
            parser.error(f"--sidecar-arg {reserved}: the soak sets that itself; give it to the soak (--bundle, "
                         "--bootstrap-servers) or leave it out")
    config = SoakConfig(bundle=args.bundle, bootstrap_servers=args.bootstrap_servers, rate=args.rate,
                        minutes=args.minutes, partitions=args.partitions, sample_s=args.sample_s,
                        poisson=args.poisson, sidecar_args=extra)
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    if args.json and not args.json.parent.is_dir():
        print(f"error: --json {args.json}: the directory {args.json.parent} does not exist; create it or write "
              "the report elsewhere", file=sys.stderr)
        return 2
    say = (lambda m: None) if args.quiet else (lambda m: print(f"soak: {m}", file=sys.stderr, flush=True))
    try:
        report = run_soak(config, say)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return 0 if report["verdict"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
