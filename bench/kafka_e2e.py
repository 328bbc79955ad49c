"""Kafka plumbing for `fraudscore bench --mode kafka`: fresh topics, a sidecar subprocess, load, results.

Broker, sidecar and load generator share the machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _topics(bootstrap: str, partitions: int) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = {k: f"bench-{k}-{tag}" for k in ("in", "out", "alerts", "dlq")}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions if k == "in" else 1, replication_factor=1)
                                   for k, n in names.items()])
    for f in futures.values():
        f.result(30)
    return names


def _sidecar(bootstrap: str, bundle: Path, topics: dict[str, str], batch: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    exe = str(Path(sys.executable).with_name("fraudscore"))
    proc = subprocess.Popen([exe, "run", "--bundle", str(bundle), "--bootstrap-servers", bootstrap,
                             "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
                             "--dlq-topic", topics["dlq"], "--group-id", f"bench-{uuid.uuid4().hex[:6]}",
                             "--metrics-port", str(port), "--batch-size", str(batch), "--log-level", "WARNING"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("sidecar not ready in 60 s")


def _produce(bootstrap: str, topic: str, keys, values, rate: float | None = None, poisson_seed: int | None = None) -> None:
    """Produce as fast as possible, or at `rate` a second: evenly spaced, or Poisson arrivals with a seed."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1 if rate else 5, "batch.num.messages": 10000,
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
        while True:
            try:
                producer.produce(topic, v, k)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 500 == 0:
            producer.poll(0)
    producer.flush(120)


def _collect(bootstrap: str, topic: str, expected: int, timeout_s: float) -> tuple[np.ndarray, np.ndarray, list]:
    """(arrival seconds, result timestamps ms, transaction ids) of `expected` results."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-reader-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    consumer.subscribe([topic])
    arrival, stamps, ids = [], [], []
    deadline = time.monotonic() + timeout_s
    while len(ids) < expected and time.monotonic() < deadline:
        # A short timeout: arrival is stamped per returned batch, so a long wait to fill a
        # batch would be counted as latency.
        batch = consumer.consume(1000, 0.005)
        now = time.time()
        for m in batch:
            if m.error() is None:
                arrival.append(now)
                stamps.append(m.timestamp()[1])
                ids.append(json.loads(m.value())["transaction_id"])
    consumer.close()
    return np.array(arrival), np.array(stamps, dtype=np.float64), ids
