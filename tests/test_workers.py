"""`fraudscore run --workers N`: N sidecar processes in one group under a supervisor, against the real broker."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from fraudscore.errors import UsageError
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.workers import worker_configs
from kafka_helpers import Sidecar, client, drain, four_topics, http_get, produce, transaction_ids


def config(**kw) -> SidecarConfig:
    return SidecarConfig(bundle=Path("b"), bootstrap_servers="x:1", input_topic="tx-in", output_topic="tx-scores",
                         alerts_topic="tx-alerts", dlq_topic="tx-dlq", group_id="g", **kw)


def test_each_worker_has_its_own_port_and_transactional_id() -> None:
    workers = worker_configs(config(workers=3, metrics_port=9464, exactly_once=True, transactional_id="fs-a"))
    assert [w.metrics_port for w in workers] == [9465, 9466, 9467]
    assert [w.transactional_id for w in workers] == ["fs-a-w0", "fs-a-w1", "fs-a-w2"]
    assert all(w.workers == 1 and w.group_id == "g" for w in workers)
    free = worker_configs(config(workers=2, metrics_port=0))
    assert len({w.metrics_port for w in free}) == 2 and all(w.metrics_port > 0 for w in free)
    assert [w.transactional_id for w in worker_configs(config(workers=2))] == ["", ""]  # at least once: none


@pytest.mark.parametrize("settings, words", [({"workers": 0}, "--workers must be from 1"),
                                             ({"workers": 4, "metrics_port": 65533}, "lower --metrics-port")])
def test_impossible_worker_settings_are_refused(settings, words) -> None:
    with pytest.raises(UsageError, match=words):
        config(**settings).validate()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


@pytest.mark.kafka
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and http_get(sidecar.port, "/readyz")[0] != 200:
        time.sleep(0.5)
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


def test_a_taken_worker_port_stops_every_worker_with_exit_2(small_bundle) -> None:
    # A worker that cannot start is not restarted for ever: exit 2, as a single process would.
    import socket
    import subprocess

    from kafka_helpers import EXE, free_port

    port = free_port(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))  # worker 0's port
        taken.listen()
        done = subprocess.run([EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", "127.0.0.1:1",
                               "--input-topic", "a", "--output-topic", "b", "--alerts-topic", "c", "--dlq-topic", "d",
                               "--group-id", "g", "--input", "features", "--workers", "2", "--metrics-port", str(port),
                               "--startup-timeout", "30"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"--metrics-port {port + 1}: cannot listen" in done.stderr
    assert "stopping every worker" in done.stderr
