"""`fraudscore dlq show|replay` against the broker: the on-call reads dead letters with their
headers and, after a fix, replays them to be scored; a missing topic or broker is reported."""

from __future__ import annotations

from functools import partial

import json

import orjson
from confluent_kafka import Consumer, TopicPartition

from commands import fraudscore
from kafka_helpers import Sidecar, client, drain, four_topics, produce, transaction_ids


dlq = partial(fraudscore, "dlq", timeout_s=120)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(client(bootstrap) | {"group.id": "offsets-probe"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


def test_show_lists_dead_letters_and_replay_after_a_fix_scores_them(kafka_bootstrap, small_bundle, transactions,
                                                                      make_topic, tmp_path) -> None:
    topics = four_topics(make_topic, partitions=2)
    keys, values = transactions
    good, big = values[:40], values[40:45]
    # Valid transactions made large by a field the sidecar ignores: a sidecar whose message
    # limit is too low dead-letters them as `oversized`; the fix is a sidecar with the default.
    padded = [orjson.dumps(json.loads(v) | {"note": "x" * 1500}) for v in big]
    bad = [b"not json", b'{"TRANSACTION_ID": "bad-1"}']
    produce(kafka_bootstrap, topics["in"], keys[:40] + keys[40:45] + [b"k1", b"k2"], good + padded + bad)
    low_limit = tmp_path / "low-limit.toml"
    low_limit.write_text("max_message_bytes = 1000\n")
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-dlq", "--config", str(low_limit))
    sidecar.wait_ready()
    assert len(drain(kafka_bootstrap, [topics["out"]], len(good), timeout_s=60)) == len(good)
    assert len(drain(kafka_bootstrap, [topics["dlq"]], 7, timeout_s=30)) == 7
    assert sidecar.stop()[0] == 0

    common = ["--bootstrap-servers", kafka_bootstrap, "--dlq-topic", topics["dlq"]]
    shown = dlq("show", *common)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 7
    assert sum("reason=oversized" in line for line in lines) == 5
    assert sum("reason=bad_json" in line for line in lines) == 1 and sum("reason=missing_field" in line for line in lines) == 1
    assert all(f"source={topics['in']}/" in line for line in lines)
    assert "7 dead letters" in shown.stderr and "oversized 5" in shown.stderr

    as_json = dlq("show", *common, "--reason", "oversized", "--json")
    letters = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(letters) == 5 and {d["reason"] for d in letters} == {"oversized"}
    assert sorted(json.loads(d["value"])["TRANSACTION_ID"] for d in letters) == sorted(json.loads(v)["TRANSACTION_ID"] for v in big)
    assert all(d["source_topic"] == topics["in"] and d["source_offset"] >= 0 for d in letters)
    first_two = dlq("show", *common, "--json", "--limit", "2")
    assert len(first_two.stdout.splitlines()) == 2

    before = end_offsets(kafka_bootstrap, topics["in"], 2)
    dry = dlq("replay", *common, "--reason", "oversized")
    assert dry.returncode == 0, dry.stderr
    assert "would replay 5 dead letters" in dry.stdout and "dry run" in dry.stdout
    assert end_offsets(kafka_bootstrap, topics["in"], 2) == before  # a dry run sends nothing

    # The fix: a sidecar with the default message limit, same group (continues where the other stopped).
    fixed = Sidecar(kafka_bootstrap, small_bundle, topics, "g-dlq")
    fixed.wait_ready()
    done = dlq("replay", *common, "--reason", "oversized", "--execute")
    assert done.returncode == 0, done.stderr
    assert f"replayed 5 dead letters: 5 to {topics['in']}" in done.stdout
    assert f"from {topics['dlq']} partition 0 offsets" in done.stdout
    scores = drain(kafka_bootstrap, [topics["out"]], len(good) + len(big), timeout_s=60)
    assert sorted(transaction_ids(scores)) == sorted(json.loads(v)["TRANSACTION_ID"] for v in good + big)
    assert sum(before) + 5 == sum(end_offsets(kafka_bootstrap, topics["in"], 2))
    # Each went back to the partition it came from, marked with the dead letter it replays.
    replayed = drain(kafka_bootstrap, [topics["in"]], len(good) + len(big) + len(bad) + 5, timeout_s=30)
    marks = {m.value(): (m.partition(), dict(m.headers() or [])) for m in replayed if m.headers()}
    assert len(marks) == 5
    for d in letters:
        partition, headers = marks[d["value"].encode()]
        assert partition == d["source_partition"]
        assert headers["fraudscore.replayed.from"].decode() == f"{topics['dlq']}/{d['partition']}/{d['offset']}"
    assert fixed.stop()[0] == 0


def test_missing_topic_and_broker_are_reported(kafka_bootstrap) -> None:
    absent = dlq("show", "--bootstrap-servers", kafka_bootstrap, "--dlq-topic", "no-such-dlq-topic", "--timeout", "10")
    assert absent.returncode == 3 and "does not exist" in absent.stderr and "Traceback" not in absent.stderr
    unreachable = dlq("show", "--bootstrap-servers", "127.0.0.1:9", "--dlq-topic", "x", "--timeout", "2")
    assert unreachable.returncode == 3 and "cannot reach Kafka" in unreachable.stderr
