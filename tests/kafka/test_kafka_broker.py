"""The real broker that deploy/kafka/local.sh starts: produce, consume in a group, commit, resume."""

from __future__ import annotations

import os
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_helpers import LOCAL_KAFKA, client


def _consume(consumer: Consumer, expected: int, timeout_s: float = 30.0) -> list:
    import time

    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            assert msg.error() is None, msg.error()
            got.append(msg)
    return got


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        client(bootstrap) | {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def test_produce_consume_commit_and_resume(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic(partitions=3)
    producer = Producer(client(kafka_bootstrap) | {"enable.idempotence": True})
    delivered = []
    for i in range(300):
        producer.produce(topic, key=str(i % 17).encode(), value=f"tx-{i}".encode(),
                         on_delivery=lambda err, msg: delivered.append(err is None))
    assert producer.flush(30) == 0
    assert len(delivered) == 300 and all(delivered)

    group = f"{topic}-group"
    first = _consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    got = _consume(first, 300)
    assert sorted(m.value().decode() for m in got) == sorted(f"tx-{i}" for i in range(300))
    # Messages with one key stay in one partition, in order.
    by_key: dict[bytes, list[int]] = {}
    for m in got:
        by_key.setdefault(m.key(), []).append(int(m.value().decode().split("-")[1]))
    assert all(v == sorted(v) for v in by_key.values())
    first.commit(asynchronous=False)
    committed = first.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    assert sum(tp.offset for tp in committed) == 300
    first.close()

    for i in range(300, 350):
        producer.produce(topic, key=str(i % 17).encode(), value=f"tx-{i}".encode())
    assert producer.flush(30) == 0

    # The same group resumes from its committed offsets: only the new messages arrive.
    second = _consumer(kafka_bootstrap, group)
    second.subscribe([topic])
    resumed = _consume(second, 50)
    assert sorted(m.value().decode() for m in resumed) == sorted(f"tx-{i}" for i in range(300, 350))
    assert _consume(second, 1, timeout_s=2.0) == []
    second.close()


def test_missing_topics_are_not_created_by_producers(kafka_bootstrap: str) -> None:
    # auto.create.topics.enable=false: a typo in a topic name is an error, not a new topic.
    from confluent_kafka.admin import AdminClient

    producer = Producer(client(kafka_bootstrap) | {"message.timeout.ms": 3000})
    errors = []
    producer.produce("no-such-topic-fraudscore", value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None
    topics = AdminClient(client(kafka_bootstrap)).list_topics(timeout=10).topics
    assert "no-such-topic-fraudscore" not in topics


@pytest.mark.skipif("FRAUDSCORE_TEST_BOOTSTRAP" in os.environ, reason="broker not started by local.sh")
def test_local_sh_status_reports_the_running_broker(kafka_bootstrap: str, tmp_path_factory) -> None:
    # The session fixture started the broker with a state dir; status must find it by that dir.
    state_dirs = [p for p in tmp_path_factory.getbasetemp().iterdir() if p.name.startswith("kafka")]
    port = kafka_bootstrap.rsplit(":", 1)[1]
    env = dict(os.environ, KAFKA_PORT=port, KAFKA_STATE_DIR=str(state_dirs[0]))
    status = subprocess.run([str(LOCAL_KAFKA), "status"], env=env, capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip().splitlines()[-1] == kafka_bootstrap
