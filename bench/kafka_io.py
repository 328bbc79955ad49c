"""Kafka plumbing for the bench's `kafka` mode and the demo: fresh topics, a sidecar subprocess, load, results.

Broker, sidecar and load generator share the machine.

    topics = create_topics(bootstrap, partitions=2)
    produce(bootstrap, topics["in"], keys, values)
    proc, port = start_sidecar(bootstrap, bundle_dir, topics, batch_size=4096)
    results = collect(bootstrap, topics["out"], len(values), timeout_s=60)
    latency_s = streamed_latencies(sent_at, results)   # sent_at: produce_at_rate's {id: input time}
"""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from fraudscore.serving.kafka import produce_waiting

from .scrape import sums_by_label

KAFKA_LOG = logging.getLogger("fraudscore.kafka")  # librdkafka's lines via logging, never raw on stderr
ROLES = ("in", "out", "alerts", "dlq")  # input, scores, alerts, dead letters: the keys of a topics dict


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; 32768..60999 elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that nothing uses at the moment of asking.

    Chosen outside the kernel's ephemeral range: a port from there (what binding port 0 gives)
    can be taken in the meantime as the local end of any outgoing connection, a Kafka client's
    for one, and a sidecar told to listen on it then fails to start (`--workers N` needs N+1)."""
    low, high = _ephemeral_range()
    spans = [(1024, low - 1), (high + 1, 65535)]
    rng = random.Random()
    for _ in range(200):
        first, last = rng.choice([s for s in spans if s[1] - s[0] >= count] or [(1024, 65535)])
        base = rng.randint(first, last - count + 1)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free TCP ports found on 127.0.0.1")


def create_topics(bootstrap: str, partitions: int, tag: str | None = None,
                  names: Mapping[str, str] | None = None, labels: bool = False) -> dict[str, str]:
    """Create the topics of one run and return them by role ("in", "out", "alerts", "dlq", and
    "labels" for a raw-mode run with `labels`).

    Only the input topic gets `partitions`; the others have one. Each name is `names[role]`
    (default `bench-<role>`) followed by `-<tag>` (default: a random one), so a run starts clean.
    """
    tag = tag or uuid.uuid4().hex[:8]
    roles = ROLES + (("labels",) if labels else ())
    bases = {role: f"bench-{role}" for role in roles} | dict(names or {})
    topics = {role: f"{bases[role]}-{tag}" for role in roles}
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": KAFKA_LOG})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions if role == "in" else 1, replication_factor=1)
                                   for role, name in topics.items()])
    for future in futures.values():
        future.result(30)
    return topics


def start_sidecar(bootstrap: str, bundle: Path, topics: Mapping[str, str], *, batch_size: int | None = None,
                  group: str | None = None, metrics_port: int | None = None,
                  ready_timeout_s: float = 60, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """Start `fraudscore run` on `topics` and wait until its /readyz answers 200; return it and its metrics port.

    A sidecar that is not ready within `ready_timeout_s` is killed and a RuntimeError raised.
    The caller stops it (terminate or SIGTERM, then wait).
    """
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
    port = metrics_port or free_port(1 + (workers if workers > 1 else 0))
    exe = str(Path(sys.executable).with_name("fraudscore"))
    args = [exe, "run", "--bundle", str(bundle), "--bootstrap-servers", bootstrap,
            "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--group-id", group or f"bench-{uuid.uuid4().hex[:6]}",
            "--metrics-port", str(port), "--log-level", "WARNING",
            *(extra if "--input" in extra else ("--input", "features", *extra))]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    proc = subprocess.Popen(args)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"sidecar not ready in {ready_timeout_s:g} s")


# Measuring readers' fetch.wait.max.ms (see collect).
READER_FETCH_WAIT_MS = 100


def produce(bootstrap: str, topic: str, keys, values, rate: float | None = None, poisson_seed: int | None = None) -> None:
    """Produce as fast as possible, or at `rate` a second: evenly spaced, or Poisson arrivals with a seed."""
    producer = Producer({"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, "linger.ms": 1 if rate else 5, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000})
    # Learn the topic's partitions and leaders before the clock starts: otherwise the first
    # messages wait for metadata and that wait is counted as latency.
    producer.list_topics(topic, timeout=30)
    due = None
    if rate:
        gaps = (np.random.default_rng(poisson_seed).exponential(1.0 / rate, size=len(values))
                if poisson_seed is not None else np.full(len(values), 1.0 / rate))
        due = np.cumsum(gaps)
    start = time.perf_counter()
    for i, (k, v) in enumerate(zip(keys, values)):
        if due is not None:
            ahead = start + due[i] - time.perf_counter()
            if ahead > 0.0005:
                time.sleep(ahead)
        produce_waiting(producer, topic, v, k, poll_s=0.01)
        if i % 500 == 0:
            producer.poll(0)
    producer.flush(120)


def produce_at_rate(bootstrap: str, topic: str, keys, values, rate: float) -> dict:
    """Produce at `rate` (Poisson) and return each transaction id's input timestamp in seconds.

    The timestamps are read back from the topic, from where it ended before the first send,
    and only for the ids sent here: earlier messages (a history, a backlog, a warm-up) are
    never taken for these, so every latency is measured against its own message."""
    wanted = {json.loads(v)["TRANSACTION_ID"] for v in values}
    start = end_offsets(bootstrap, topic)
    produce(bootstrap, topic, keys, values, rate=rate, poisson_seed=0)
    consumer = Consumer({"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, "group.id": f"ts-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign(start)
    sent: dict = {}
    misses = 0
    while len(sent) < len(wanted) and misses < 5:
        batch = consumer.consume(5000, 1.0)
        misses = misses + 1 if not batch else 0
        for m in batch:
            if m.error() is None:
                tx = json.loads(m.value())["TRANSACTION_ID"]
                if tx in wanted:
                    sent[tx] = m.timestamp()[1] / 1e3
    consumer.close()
    return sent


class Results(NamedTuple):
    """Result messages as a reader saw them, in arrival order (duplicates kept)."""

    arrival: np.ndarray  # seconds (time.time()) when the reader got each result
    stamps: np.ndarray  # each result message's Kafka timestamp, ms
    ids: list  # each result's transaction_id
    alerts: np.ndarray  # each result's decision == "alert"


def end_offsets(bootstrap: str, topic: str) -> list[TopicPartition]:
    """Every partition of `topic` at its current end: where a reader of only what comes next starts."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, "group.id": f"ends-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        out = []
        for p in sorted(partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            out.append(TopicPartition(topic, p, high))
        return out
    finally:
        consumer.close()


def collect(bootstrap: str, topic: str, expected: int, timeout_s: float,
            start: list[TopicPartition] | None = None) -> Results:
    """The first `expected` results on `topic` (fewer if `timeout_s` passes first), read from its
    beginning, or from `start` (end_offsets taken earlier) to skip what was there before."""
    # READER_FETCH_WAIT_MS: a fetch returns as soon as one result is there (fetch.min.bytes 1),
    # so a long wait adds no latency; a 5 ms wait cost the shared broker about half a core at
    # 1,000 tx/s on the 2-core VM, CPU taken from the sidecar being measured.
    consumer = Consumer({"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, "group.id": f"bench-reader-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": READER_FETCH_WAIT_MS})
    if start is None:
        consumer.subscribe([topic])
    else:
        consumer.assign(start)
    arrival, stamps, ids, alerts = [], [], [], []
    deadline = time.monotonic() + timeout_s

    def take(batch: list, now: float) -> None:
        for m in batch:
            if m.error() is None:
                result = json.loads(m.value())
                arrival.append(now)
                stamps.append(m.timestamp()[1])
                ids.append(result["transaction_id"])
                alerts.append(result.get("decision") == "alert")

    while len(ids) < expected and time.monotonic() < deadline:
        # Arrival is stamped when a call returns, so no call may wait for more messages once
        # one is there: librdkafka's consume(n, timeout) waits the whole timeout unless n
        # messages come, which would add up to that timeout to every measured latency. So:
        # what is already fetched (consume, no wait); if nothing, wait for one message
        # (poll returns as soon as one is there), then whatever came with it.
        batch = consumer.consume(1000, 0)
        if batch:
            take(batch, time.time())
            continue
        first = consumer.poll(0.05)
        if first is None:
            continue
        now = time.time()
        take([first], now)
        take(consumer.consume(999, 0), time.time())
    consumer.close()
    return Results(np.array(arrival), np.array(stamps, dtype=np.float64), ids, np.array(alerts, dtype=bool))


def streamed_latencies(sent_at: Mapping, results: Results) -> dict:
    """{transaction id: seconds from its input timestamp to the first arrival of its result}, for
    exactly the ids of `sent_at`: results of anything else on the topic (a history, a backlog, a
    warm-up) are left out, and a redelivered result counts at its first arrival."""
    out: dict = {}
    for arrived, tx in zip(results.arrival.tolist(), results.ids):
        if tx in sent_at and tx not in out:
            out[tx] = arrived - sent_at[tx]
    return out


def metrics_ports(port: int, workers: int = 1) -> list[int]:
    """The ports whose /metrics hold a sidecar's batch figures: its own, or with `--workers N`
    (N > 1) those of its workers, P+1..P+N (the supervisor's own /metrics has none)."""
    return [port] if workers <= 1 else [port + 1 + i for i in range(workers)]


def scrape_metrics(ports: list[int], timeout_s: float = 5) -> dict[tuple[str, str], float]:
    """{(sample name, its `stage` label or ""): value} summed over `ports` and over every other
    label; {} for a port that does not answer (a sidecar already gone)."""
    out: dict[tuple[str, str], float] = {}
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
                text = r.read().decode()
        except OSError:
            continue
        parse_metrics(text, out)
    return out


def parse_metrics(text: str, into: dict[tuple[str, str], float] | None = None) -> dict[tuple[str, str], float]:
    """The `fraudscore_*` samples of a Prometheus text exposition as scrape_metrics() gives them,
    added to `into` when given."""
    return sums_by_label(text, "stage", into=into)


def sidecar_figures(before: Mapping[tuple[str, str], float], after: Mapping[tuple[str, str], float]) -> dict:
    """What the sidecar's /metrics say about the batches between two scrapes:

    `stages_ms`: mean milliseconds per batch of each `fraudscore_stage_seconds{stage=...}`
    (sum / count of the difference); `mean_batch_size` (`fraudscore_batch_size`);
    `mean_input_age_ms` (`fraudscore_batch_input_age_seconds`). A histogram the sidecar does
    not export (or that saw no batch) is left out: {} and None."""
    def delta(name: str, stage: str = "") -> tuple[float, float]:
        return (after.get((f"{name}_sum", stage), 0.0) - before.get((f"{name}_sum", stage), 0.0),
                after.get((f"{name}_count", stage), 0.0) - before.get((f"{name}_count", stage), 0.0))

    def mean(name: str, scale: float = 1.0) -> float | None:
        total, count = delta(name)
        return total / count * scale if count > 0 else None

    stages = {}
    for name, stage in sorted(after):
        if name == "fraudscore_stage_seconds_count" and stage:
            total, count = delta("fraudscore_stage_seconds", stage)
            if count > 0:
                stages[stage] = total / count * 1e3
    return {"stages_ms": stages, "mean_batch_size": mean("fraudscore_batch_size"),
            "mean_input_age_ms": mean("fraudscore_batch_input_age_seconds", 1e3)}
