"""End-to-end figures through a real broker: the sidecar's drain rate and latency at a fixed rate.

    python -m fraudscore.bench.kafka_e2e --bundle DIR --bootstrap-servers HOST:PORT [--messages 300000] [--json PATH]

1. Drain: `--messages` simulated transactions are produced to a fresh input topic first,
   then a sidecar (`fraudscore run`, a subprocess) is started; throughput is results /
   (last result's timestamp - first result's timestamp).
2. Latency: a second sidecar group scores a stream produced at `--rate` messages a second
   (default: half the drain rate) for `--seconds`; latency is a result's arrival at a
   consumer in this process minus its input message's timestamp (both on this clock).
Broker, sidecar and load generator share the machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fraudscore import add_baseline_features, simulate
from fraudscore.bundle import load_bundle
from fraudscore.messages import transaction_messages


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


def _produce(bootstrap: str, topic: str, keys, values, rate: float | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000})
    start = time.perf_counter()
    for i, (k, v) in enumerate(zip(keys, values)):
        if rate and i % 100 == 0:
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, v, k)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
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


def run(bundle: Path, bootstrap: str, messages: int, rate: float | None, seconds: float, batch: int, partitions: int) -> dict:
    features = load_bundle(bundle).features
    # Distinct transactions for both runs: the drain backlog, then the fixed-rate stream.
    days = max(3, int(2 * messages / 9_000) + 1)
    table = add_baseline_features(simulate(customers=5000, terminals=10000, days=days, seed=1).transactions)
    all_keys, all_values = transaction_messages(table, features)
    keys, values = all_keys[:messages], all_values[:messages]
    stream_keys_all, stream_values_all = all_keys[messages:], all_values[messages:]
    results = []

    topics = _topics(bootstrap, partitions)
    _produce(bootstrap, topics["in"], keys, values)
    proc, _ = _sidecar(bootstrap, bundle, topics, batch)
    try:
        _, stamps, ids = _collect(bootstrap, topics["out"], len(values), timeout_s=600)
    finally:
        proc.terminate()
        proc.wait(60)
    span = (stamps.max() - stamps.min()) / 1e3
    drain = len(ids) / span if span > 0 else float("nan")
    results.append({"mode": "kafka-drain", "batch_size": batch, "messages": len(ids), "lost": len(values) - len(set(ids)),
                    "throughput_per_s": drain, "p50_ms": None, "p99_ms": None})

    rate = rate or drain / 2
    n = min(int(rate * seconds), len(stream_values_all))
    topics = _topics(bootstrap, partitions)
    proc, _ = _sidecar(bootstrap, bundle, topics, batch)
    sent_at: dict = {}
    try:
        collector: dict = {}
        thread = threading.Thread(target=lambda: collector.update(zip(("arrival", "stamps", "ids"),
                                                                      _collect(bootstrap, topics["out"], n, seconds + 120))))
        thread.start()
        # Message timestamps are set by the producer at produce(): the input's timestamp.
        stream_keys, stream_values = stream_keys_all[:n], stream_values_all[:n]
        _produce(bootstrap, topics["in"], stream_keys, stream_values, rate=rate)
        thread.join()
    finally:
        proc.terminate()
        proc.wait(60)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ts-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topics["in"]])
    got = 0
    while got < n:
        batch_msgs = consumer.consume(5000, 1.0)
        if not batch_msgs:
            break
        for m in batch_msgs:
            if m.error() is None:
                sent_at.setdefault(json.loads(m.value())["TRANSACTION_ID"], []).append(m.timestamp()[1] / 1e3)
                got += 1
    consumer.close()
    first_sent = {k: min(v) for k, v in sent_at.items()}
    latency = np.array([a - first_sent[i] for a, i in zip(collector["arrival"], collector["ids"]) if i in first_sent]) * 1e3
    results.append({"mode": "kafka-fixed-rate", "batch_size": batch, "rate_per_s": rate, "messages": len(latency),
                    "p50_ms": float(np.median(latency)), "p99_ms": float(np.quantile(latency, 0.99)),
                    "max_ms": float(latency.max()), "throughput_per_s": rate})
    return {"schema": "fraudscore.kafka-e2e/1", "bundle": str(bundle), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rate", type=float, help="messages/s for the latency run (default: half the drain rate)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.bundle, args.bootstrap_servers, args.messages, args.rate, args.seconds, args.batch_size, args.partitions)
    for r in report["results"]:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
