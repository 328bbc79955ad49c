"""`fraudscore run` against the real broker: nothing lost, bad input to the DLQ, restarts, groups, metrics."""

from __future__ import annotations

import json
import subprocess
import time

from confluent_kafka import Consumer, TopicPartition

from fraudscore.bench.scrape import metric_sum
from fraudscore.serving.bundle import load_bundle
from commands import EXE
from kafka_helpers import Sidecar, SidecarProcess, client, drain, four_topics, free_port, produce, transaction_ids, written
from waiting import wait_until

BAD = [
    (b"not json", "bad_json"),
    (b'{"TRANSACTION_ID": "bad-1"}', "missing_field"),
    (b"[1,2,3]", "not_object"),
    (b'{"TRANSACTION_ID": "bad-2", "TX_AMOUNT": "12"}', "wrong_type"),  # first feature checked first
]


def test_every_input_ends_in_scores_or_dead_letters(kafka_bootstrap, small_bundle, transactions, topics) -> None:
    keys, values = transactions
    keys, values = keys[:3000], values[:3000]
    mixed_values = values[:1000] + [b for b, _ in BAD] + [None] + values[1000:]
    mixed_keys = keys[:1000] + [b"bad"] * (len(BAD) + 1) + keys[1000:]
    produce(kafka_bootstrap, topics["in"], mixed_keys, mixed_values)

    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-main")
    sidecar.wait_ready()
    scores = drain(kafka_bootstrap, [topics["out"]], len(values))
    dlq = drain(kafka_bootstrap, [topics["dlq"]], len(BAD) + 1, timeout_s=30)
    alerts = drain(kafka_bootstrap, [topics["alerts"]], 0, timeout_s=5)

    expected_ids = [json.loads(v)["TRANSACTION_ID"] for v in values]
    assert sorted(transaction_ids(scores)) == sorted(expected_ids)  # each exactly once in a clean run
    result = json.loads(scores[0].value())
    assert {"transaction_id", "score", "decision", "model_version", "threshold", "timings"} <= set(result)
    by_id = {json.loads(v)["TRANSACTION_ID"]: k for k, v in zip(keys, values)}
    assert all(m.key() == by_id[json.loads(m.value())["transaction_id"]] for m in scores[:200])  # keyed like the input

    threshold = load_bundle(small_bundle).manifest.threshold
    assert sorted(transaction_ids(alerts)) == sorted(i for i, s in ((json.loads(m.value())["transaction_id"], json.loads(m.value())["score"]) for m in scores) if s >= threshold)

    reasons = {}
    for m in dlq:
        headers = dict(m.headers())
        reasons[m.value()] = headers["fraudscore.reason"].decode()
        assert headers["fraudscore.source.topic"].decode() == topics["in"]
        assert int(headers["fraudscore.source.offset"]) >= 0 and int(headers["fraudscore.source.partition"]) in (0, 1, 2)
    assert reasons == {**{b: r for b, r in BAD}, None: "empty"}  # a tombstone stays a tombstone

    status, metrics = sidecar.get("/metrics")
    assert status == 200
    for series in ("fraudscore_messages_consumed_total", "fraudscore_transactions_scored_total 3000.0",
                   'fraudscore_dead_letters_total{reason="bad_json"} 1.0', "fraudscore_end_to_end_latency_seconds_bucket",
                   "fraudscore_inference_duration_seconds_bucket", "fraudscore_batch_size_bucket", "fraudscore_score_bucket",
                   "fraudscore_model_info{", "fraudscore_alerts_total", "fraudscore_produce_errors_total 0.0"):
        assert series in metrics, series
    assert sidecar.get("/healthz")[0] == 200

    t0 = time.monotonic()
    code, out = sidecar.stop()
    assert code == 0, out[-2000:]
    assert time.monotonic() - t0 < 30
    # Every input offset is committed: a restart would not re-read anything.
    reader = Consumer(client(kafka_bootstrap) | {"group.id": "g-main"})
    committed = reader.committed([TopicPartition(topics["in"], p) for p in range(3)], timeout=10)
    ends = [reader.get_watermark_offsets(TopicPartition(topics["in"], p), timeout=10)[1] for p in range(3)]
    reader.close()
    assert [c.offset for c in committed] == ends
    # No payloads in the log: not one of the messages (good or bad) appears in it, even in part.
    assert not leaked_payloads(out, values + [b for b, _ in BAD])


def leaked_payloads(log: str, values: list[bytes]) -> list[bytes]:
    """The messages whose first 24 characters (or whole text, if shorter) appear in `log`.

    >>> leaked_payloads('bad message {"TRANSACTION_ID": 7, "TX_AMOUNT": 1.5} dropped', [b'{"TRANSACTION_ID": 7, "TX_AMOUNT": 1.5}'])
    [b'{"TRANSACTION_ID": 7, "TX_AMOUNT": 1.5}']
    >>> leaked_payloads("bad_json at offset 3", [b'{"TRANSACTION_ID": 7, "TX_AMOUNT": 1.5}'])
    []
    """
    return [v for v in values if v.decode(errors="replace")[:24] in log]


def test_restart_after_hard_kill_loses_nothing(kafka_bootstrap, small_bundle, transactions, topics) -> None:
    from test_reliability import unique_copies

    keys, values = unique_copies(*transactions, copies=6)  # a backlog of a few seconds' scoring
    produce(kafka_bootstrap, topics["in"], keys, values)
    first = Sidecar(kafka_bootstrap, small_bundle, topics, "g-kill")
    first.wait_ready()
    at = wait_until(lambda: written(kafka_bootstrap, topics["out"]), 60, "a first result written",  # killed once
                    interval_s=0.02)  # results flow, not before
    assert at < len(values), f"the kill would fall after the end: {at} of {len(values)} results written"
    first.proc.kill()
    first.proc.wait(10)
    second = Sidecar(kafka_bootstrap, small_bundle, topics, "g-kill")
    second.wait_ready()
    scores = drain(kafka_bootstrap, [topics["out"]], len(values))
    ids = transaction_ids(scores)
    assert set(ids) == {json.loads(v)["TRANSACTION_ID"] for v in values}  # none lost
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= 3 * 500  # at most the batches in flight when killed (batch 500, 3 partitions)
    assert second.stop()[0] == 0


def test_two_instances_split_partitions_and_lose_nothing(kafka_bootstrap, small_bundle, transactions, make_topic) -> None:
    topics = four_topics(make_topic, partitions=4)
    keys, values = transactions
    half = len(values) // 2
    a = Sidecar(kafka_bootstrap, small_bundle, topics, "g-pair")
    a.wait_ready()
    produce(kafka_bootstrap, topics["in"], keys[:half], values[:half])
    b = Sidecar(kafka_bootstrap, small_bundle, topics, "g-pair")  # joins: a rebalance under load
    produce(kafka_bootstrap, topics["in"], keys[half:], values[half:])
    b.wait_ready()
    scores = drain(kafka_bootstrap, [topics["out"]], len(values))
    assert set(transaction_ids(scores)) == {json.loads(v)["TRANSACTION_ID"] for v in values}
    assigned = []
    for s in (a, b):
        assigned.append(metric_sum(s.get("/metrics")[1], "fraudscore_assigned_partitions"))
    assert sorted(assigned) == [2.0, 2.0]
    assert a.stop()[0] == 0 and b.stop()[0] == 0


def test_exactly_once_results_are_transactional(kafka_bootstrap, small_bundle, transactions, topics) -> None:
    keys, values = transactions
    keys, values = keys[:2000], values[:2000]
    produce(kafka_bootstrap, topics["in"], keys, values)
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-eos", "--exactly-once", "--transactional-id", f"t-{time.time_ns()}")
    sidecar.wait_ready()
    scores = drain(kafka_bootstrap, [topics["out"]], len(values), committed_only=True)
    assert sorted(transaction_ids(scores)) == sorted(json.loads(v)["TRANSACTION_ID"] for v in values)
    assert sidecar.stop()[0] == 0


def test_missing_topic_and_unreachable_broker_exit_with_a_clear_error(kafka_bootstrap, small_bundle, topics) -> None:
    args = ["run", "--bundle", str(small_bundle), "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--group-id", "g-missing", "--metrics-port", "0", "--input", "features"]
    done = subprocess.run([EXE, *args, "--bootstrap-servers", kafka_bootstrap, "--input-topic", "no-such-topic"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "no-such-topic" in done.stderr and "--wait" in done.stderr
    t0 = time.monotonic()
    done = subprocess.run([EXE, *args, "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--input-topic", topics["in"],
                           "--startup-timeout", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "cannot reach Kafka" in done.stderr
    assert time.monotonic() - t0 < 20


def test_bundle_hash_mismatch_refuses_to_start(kafka_bootstrap, small_bundle, topics, tmp_path) -> None:
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(small_bundle, bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"\0")
    done = subprocess.run([EXE, "run", "--bundle", str(bad), "--bootstrap-servers", kafka_bootstrap,
                           "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
                           "--dlq-topic", topics["dlq"], "--group-id", "g-hash", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "bundle hash mismatch" in done.stderr


def test_config_file_and_environment(kafka_bootstrap, small_bundle, topics, tmp_path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'bootstrap_servers = "{kafka_bootstrap}"\ninput_topic = "{topics["in"]}"\noutput_topic = "{topics["out"]}"\n'
        f'alerts_topic = "{topics["alerts"]}"\ndlq_topic = "{topics["dlq"]}"\ninput = "features"\n'
        '[kafka]\n"sasl.password" = "hunter2"\n"client.rack" = "r1"\n'
    )
    port = free_port()
    env = {"FRAUDSCORE_BUNDLE": str(small_bundle), "FRAUDSCORE_GROUP_ID": "g-env", "FRAUDSCORE_METRICS_PORT": str(port)}
    sidecar = SidecarProcess(["run", "--config", str(config)], port, env=env)
    # Started: it has read the file and the environment, logged its settings and joined its group.
    sidecar.wait_ready()
    code, out = sidecar.stop()
    assert code == 0, out[-2000:]
    assert "hunter2" not in out and "'sasl.password': '***'" in out
    assert "group g-env" in out


def test_a_committed_offset_below_the_retained_log_is_counted_and_logged_not_skipped_silently(
        kafka_bootstrap, small_bundle, transactions, make_topic) -> None:
    """issue 24: retention deleted messages above the group's committed offset while the group was
    down. The sidecar says so (an error naming both offsets and the count, and
    fraudscore_input_skipped_messages_total), scores every message still retained, and commits
    where it resumed, so the next owner does not report the same gap again."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    keys, values = transactions
    topics = four_topics(make_topic, partitions=2)
    group = f"g-retention-{time.time_ns()}"
    producer = Producer(client(kafka_bootstrap))
    for i in range(120):  # partition 0: 100 messages; partition 1: 20
        producer.produce(topics["in"], values[i], keys[i], partition=0 if i < 100 else 1)
    assert producer.flush(30) == 0
    # The group read 10 (and 5) messages, then went away; retention then deleted the first 60 of
    # partition 0 and all of partition 1.
    committer = Consumer(client(kafka_bootstrap) | {"group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topics["in"], 0, 10), TopicPartition(topics["in"], 1, 5)],
                     asynchronous=False)
    committer.close()
    admin = AdminClient(client(kafka_bootstrap))  # kept: its futures need the client alive
    cut = [TopicPartition(topics["in"], 0, 60), TopicPartition(topics["in"], 1, 20)]
    for future in admin.delete_records(cut).values():
        assert future.result(timeout=30).low_watermark in (60, 20)
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, group)
    sidecar.wait_ready()
    results = drain(kafka_bootstrap, [topics["out"]], 40, timeout_s=60)
    _, metrics = sidecar.get("/metrics")
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    ids = {json.loads(m.value())["transaction_id"] for m in results}
    assert ids == {json.loads(v)["TRANSACTION_ID"] for v in values[60:100]}
    assert "the group's committed offset 10 is below the first retained offset 60: 50 messages" in log, log[-3000:]
    assert "the group's committed offset 5 is below the first retained offset 20: 15 messages" in log
    assert "scoring resumes at the first retained message" in log
    assert 'fraudscore_input_skipped_messages_total{partition="0",reason="retention"} 50.0' in metrics
    assert 'fraudscore_input_skipped_messages_total{partition="1",reason="retention"} 15.0' in metrics
    # Partition 1 had nothing left to score, so only the resume commit moved its offset: the next
    # owner reports no gap again.
    again = Sidecar(kafka_bootstrap, small_bundle, topics, group)
    again.wait_ready()
    _, metrics = again.get("/metrics")
    code, log = again.stop()
    assert code == 0, log[-3000:]
    assert "below the first retained offset" not in log and "fraudscore_input_skipped_messages_total{" not in metrics
