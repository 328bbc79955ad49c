"""What raw mode's state costs at start, restart and rebalance, at a chosen size.

    python -m fraudscore.bench.restart --bundle out/ci-bundle --bootstrap-servers 127.0.0.1:9092 \\
        --customers 50000 --terminals 100000 --days 40 --partitions 2 --json restart.json

One run, on fresh topics made as `fraudscore topics create` makes them (with `--state-topic`
unless `--no-state`): a simulated stream and its confirmations replayed to Kafka as fast as
possible (not timed), then

1. first start: a sidecar on a fresh group, the whole stream as its backlog: seconds to
   `/readyz` 200, seconds until every transaction has a result (the drain), peak RSS during it
   (VmHWM) and RSS after it;
2. restart: SIGTERM, the same command again: seconds to ready, RSS once ready;
3. rebalance: a second instance joins the group: seconds from its assignment to its
   readiness (its log's "assigned" and "ready" lines), and the first instance's results
   while it joins (cooperative-sticky keeps its unmoved partition scoring);
4. the sidecars' own figures from /metrics: state bytes by kind, snapshot sizes, restores.

Exit codes: 0 done, 1 a step did not finish in time, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

from . import procfs
from .kafka_io import free_port
from .soak import rss_mb

SLICE_TRANSACTIONS = 2_000_000  # replayed at a time: the Python objects of ~2 M messages take a few GB
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class Instance:
    """`fraudscore run --input raw` as a subprocess, its log in a file."""

    def __init__(self, args: argparse.Namespace, topics: dict, group: str, member: str):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"restart-{member}-", suffix=".log", delete=False)
        exe = str(Path(sys.executable).with_name("fraudscore"))
        cmd = [exe, "run", "--bundle", str(args.bundle), "--bootstrap-servers", args.bootstrap_servers,
               "--input", "raw", "--input-topic", topics["in"], "--labels-topic", topics["labels"],
               "--output-topic", topics["out"], "--alerts-topic", topics["alerts"], "--dlq-topic", topics["dlq"],
               "--group-id", group, "--metrics-port", str(self.port), "--log-level", "INFO",
               *(("--state-topic", topics["state"]) if "state" in topics else ()), *args.sidecar_args]
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except OSError as exc:
            return getattr(exc, "code", 0) or 0, ""

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from start to /readyz 200."""
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if self.get("/readyz")[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise TimeoutError(f"sidecar not ready in {timeout_s:g} s:\n{self.output()[-3000:]}")

    def stop(self, timeout_s: float = 120) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout_s)
        return time.monotonic() - t0

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def logged_at(self, needle: str) -> float | None:
        """Wall-clock time (epoch s) of the first log line matching the regular expression `needle`."""
        for line in self.output().splitlines():
            if re.search(needle, line):
                m = LOG_TIME.match(line)
                if m:
                    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for family in text_string_to_metric_families(self.get("/metrics")[1]):
            for s in family.samples:
                if s.name.startswith(("fraudscore_state", "fraudscore_scored", "fraudscore_terminal")):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


def results_count(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex[:6]}"})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def peak_rss_mb(pid: int) -> float:
    """The process's peak RSS so far (VmHWM), MB (10^6 bytes); 0 once it has gone."""
    return (procfs.status_kb(pid, "VmHWM") or 0) * 1024 / 1e6


def wait_results(bootstrap: str, topic: str, count: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if results_count(bootstrap, topic) >= count:
            return time.monotonic() - t0
        time.sleep(0.25)
    raise TimeoutError(f"fewer than {count} results on {topic} after {timeout_s:g} s")


def run(args: argparse.Namespace, say=lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    from fraudscore.data.replay import raw_stream, replay
    from fraudscore.data.simulate import simulate
    from fraudscore.serving.topics import TopicsConfig, ensure_topics, plan_topics

    tag = uuid.uuid4().hex[:8]
    topics = {role: f"restart-{role}-{tag}" for role in ("in", "labels", "out", "alerts", "dlq")}
    if not args.no_state:
        topics["state"] = f"restart-state-{tag}"
    config = TopicsConfig(args.bootstrap_servers, topics["in"], topics["out"], topics["alerts"], topics["dlq"],
                          labels_topic=topics["labels"], state_topic=topics.get("state", ""))
    ensure_topics(config, plan_topics(config, args.partitions, 1))
    t0 = time.perf_counter()
    table = simulate(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed).transactions
    n, labels = len(table), 0
    # In slices of whole days, ~2 M transactions each: the Python objects of a whole stream of 10 M transactions or more
    # do not fit this machine's 24 GB. A confirmation whose time falls in the next slice is
    # sent with its own slice, a little early: the sidecar holds it until it counts.
    day = (table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64) - int(
        table["TX_DATETIME"][:1].astype("datetime64[s]").astype(np.int64)[0])) // 86_400
    slice_days = max(1, int(SLICE_TRANSACTIONS * args.days / max(1, n)))
    for first in range(0, args.days, slice_days):
        part = table.take(np.flatnonzero((day >= first) & (day < first + slice_days)))
        events = raw_stream(part, seed=args.seed + first)
        labels += int(events.is_label.sum())
        replay(events, {"bootstrap.servers": args.bootstrap_servers}, topics["in"], topics["labels"])
        del part, events
    say(f"replayed {n:,} transactions and {labels:,} confirmations in {time.perf_counter() - t0:.0f} s")
    del table, day

    report: dict = {"transactions": n, "customers": args.customers, "terminals": args.terminals, "days": args.days,
                    "partitions": args.partitions, "snapshots": not args.no_state, "sidecar_args": args.sidecar_args}
    group = f"restart-{tag}"
    first = Instance(args, topics, group, "first")
    report["first_start_ready_s"] = first.wait_ready(args.timeout_s)
    say(f"first start: ready in {report['first_start_ready_s']:.1f} s")
    report["drain_s"] = wait_results(args.bootstrap_servers, topics["out"], n, args.timeout_s) + report["first_start_ready_s"]
    report["drain_tx_per_s"] = n / report["drain_s"]
    report["peak_rss_drain_mb"] = peak_rss_mb(first.proc.pid)
    time.sleep(args.settle_s)  # a snapshot round after the drain
    report["rss_after_drain_mb"] = rss_mb([first.proc.pid])
    report["metrics_after_drain"] = first.metrics()
    say(f"drain: {report['drain_s']:.1f} s from start ({report['drain_tx_per_s']:,.0f} tx/s), "
        f"peak RSS {report['peak_rss_drain_mb']:.0f} MB, RSS {report['rss_after_drain_mb']:.0f} MB {args.settle_s:g} s after it")
    report["stop_s"] = first.stop()

    again = Instance(args, topics, group, "restart")
    report["restart_ready_s"] = again.wait_ready(args.timeout_s)
    time.sleep(args.settle_s)
    report["rss_after_restart_mb"] = rss_mb([again.proc.pid])
    report["metrics_after_restart"] = again.metrics()
    say(f"restart: ready in {report['restart_ready_s']:.1f} s, RSS {report['rss_after_restart_mb']:.0f} MB")

    before = results_count(args.bootstrap_servers, topics["out"])
    joining = Instance(args, topics, group, "joining")
    joining.wait_ready(args.timeout_s)
    assigned = joining.logged_at(r"assigned \[\d")  # the first non-empty assignment (cooperative: two rounds)
    ready = joining.logged_at("ready: feature state restored")
    report["join_ready_s"] = joining_ready = None if assigned is None or ready is None else ready - assigned
    report["join_start_to_ready_s"] = time.monotonic() - joining.started
    report["revoked_in_first"] = again.output().count("revoked [")
    report["metrics_of_joining"] = joining.metrics()
    report["results_during_join"] = results_count(args.bootstrap_servers, topics["out"]) - before
    say(f"rebalance: the joining instance ready {joining_ready if joining_ready is None else round(joining_ready, 2)} s "
        f"after its assignment ({report['join_start_to_ready_s']:.1f} s after its start)")
    for instance in (again, joining):
        instance.stop()
    report["logs"] = {"first": first.log.name, "restart": again.log.name, "joining": joining.log.name}
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fraudscore.bench.restart", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--customers", type=int, default=50_000)
    p.add_argument("--terminals", type=int, default=100_000)
    p.add_argument("--days", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--no-state", action="store_true", help="No --state-topic: every restore replays the input (the old way).")
    p.add_argument("--sidecar-arg", dest="sidecar_args", action="append", default=[], help="Extra flag for `fraudscore run` (repeat).")
    p.add_argument("--settle-s", type=float, default=3.0, help="Wait before reading RSS after a drain or a restart.")
    p.add_argument("--timeout-s", type=float, default=900.0)
    p.add_argument("--json", type=Path, help="Write the report here.")
    args = p.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        p.error(f"--bundle {args.bundle}: no manifest.json there; export a bundle first")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("metrics") and k != "logs"}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
