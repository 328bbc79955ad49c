"""`fraudscore run --workers N` against the real broker: two workers split the partitions, a
killed one is restarted, and they stop together."""

from __future__ import annotations

import json
import os
import re
import signal

from confluent_kafka import Consumer, TopicPartition

from kafka_helpers import Sidecar, client, drain, four_topics, http_get, produce, transaction_ids
from waiting import wait_until


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_two_workers_split_the_partitions_restart_a_killed_one_and_stop_together(
        kafka_bootstrap, small_bundle, transactions, make_topic) -> None:
    topics = four_topics(make_topic, partitions=4)
    keys, values = transactions
    keys, values = keys[:4000], values[:4000]
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-workers", "--workers", "2")
    sidecar.wait_ready(timeout_s=90)  # the supervisor is ready when both workers are
    ports = [sidecar.port + 1, sidecar.port + 2]
    assigned = [_metric(http_get(p, "/metrics")[1], "fraudscore_assigned_partitions") for p in ports]
    assert sorted(assigned) == [2.0, 2.0], assigned  # the group split the 4 partitions between the processes

    produce(kafka_bootstrap, topics["in"], keys[:2000], values[:2000])
    scores = drain(kafka_bootstrap, [topics["out"]], 2000)
    expected = [json.loads(v)["TRANSACTION_ID"] for v in values]
    assert sorted(transaction_ids(scores)) == sorted(expected[:2000])
    scored = [_metric(http_get(p, "/metrics")[1], "fraudscore_transactions_scored_total") for p in ports]
    assert all(n > 0 for n in scored) and sum(scored) == 2000, scored  # both processes scored

    # A worker killed outright is started again; what it had in flight is read again by the group.
    pid = int(re.search(r"worker 1 started: pid (\d+)", sidecar.output()).group(1))
    os.kill(pid, signal.SIGKILL)
    produce(kafka_bootstrap, topics["in"], keys[2000:], values[2000:])
    scores = drain(kafka_bootstrap, [topics["out"]], 4000, timeout_s=120)
    assert set(transaction_ids(scores)) == set(expected)  # at least once: nothing lost
    wait_until(lambda: http_get(sidecar.port, "/readyz")[0] == 200, 60, "the supervisor ready again", interval_s=0.5)
    supervisor = sidecar.get("/metrics")[1]
    assert 'fraudscore_worker_restarts_total{worker="1"} 1.0' in supervisor
    assert _metric(supervisor, "fraudscore_workers_alive") == 2.0

    code, out = sidecar.stop(timeout_s=90)
    assert code == 0, out[-3000:]
    assert "worker 1 died (exit code -9)" in out
    reader = Consumer(client(kafka_bootstrap) | {"group.id": "g-workers"})
    parts = [TopicPartition(topics["in"], p) for p in range(4)]
    committed = [c.offset for c in reader.committed(parts, timeout=10)]
    ends = [reader.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    reader.close()
    assert committed == ends  # every worker committed what it scored before exiting
