"""`fraudscore dlq show|replay`: the on-call reads dead letters with their headers and, after a
fix, sends them back to the input topic. Against the real broker and a real sidecar, plus
broker-free tests of the selection and replay rules."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from fraudscore.errors import UsageError
from fraudscore.serving.dlq import DeadLetter, ReplayReport, Selection, parse_since, plan
from kafka_helpers import EXE, Sidecar, client, drain, four_topics, produce, transaction_ids


def dlq(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "dlq", *map(str, args)], capture_output=True, text=True, timeout=120, env=env, check=False)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(client(bootstrap) | {"group.id": "offsets-probe"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


@pytest.mark.kafka
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


@pytest.mark.kafka
def test_missing_topic_and_broker_are_reported(kafka_bootstrap) -> None:
    absent = dlq("show", "--bootstrap-servers", kafka_bootstrap, "--dlq-topic", "no-such-dlq-topic", "--timeout", "10")
    assert absent.returncode == 3 and "does not exist" in absent.stderr and "Traceback" not in absent.stderr
    unreachable = dlq("show", "--bootstrap-servers", "127.0.0.1:9", "--dlq-topic", "x", "--timeout", "2")
    assert unreachable.returncode == 3 and "cannot reach Kafka" in unreachable.stderr


def test_options_come_from_the_config_file_and_are_checked(tmp_path) -> None:
    no_topic = dlq("show", "--bootstrap-servers", "127.0.0.1:9")
    assert no_topic.returncode == 2 and "missing --dlq-topic" in no_topic.stderr
    no_servers = dlq("show", "--dlq-topic", "x", env={"PATH": "/usr/bin:/bin"})
    assert no_servers.returncode == 2 and "missing --bootstrap-servers" in no_servers.stderr
    bad_x = dlq("show", "--bootstrap-servers", "127.0.0.1:9", "--dlq-topic", "x", "-X", "sasl.password")
    assert bad_x.returncode == 2 and "-X number 1 is not key=value" in bad_x.stderr
    bad_since = dlq("show", "--bootstrap-servers", "127.0.0.1:9", "--dlq-topic", "x", "--since", "yesterday")
    assert bad_since.returncode == 2 and "--since must be" in bad_since.stderr
    from fraudscore.serving.dlq import connection, dlq_topic_from

    config = tmp_path / "sidecar.toml"
    config.write_text('bootstrap_servers = "b:9092"\ndlq_topic = "tx-dlq"\n[kafka]\n"security.protocol" = "SSL"\n')
    kafka = connection(bootstrap_servers=None, config_file=config, kafka_flags=["client.id=oncall"], environ={})
    assert kafka == {"bootstrap.servers": "b:9092", "security.protocol": "SSL", "client.id": "oncall"}
    assert dlq_topic_from(None, config) == "tx-dlq" and dlq_topic_from("other", config) == "other"
    with pytest.raises(UsageError, match="missing --dlq-topic"):
        dlq_topic_from(None, None)


def letter(offset: int, reason: str = "bad_json", **fields) -> DeadLetter:
    base = {"partition": 0, "offset": offset, "timestamp_ms": 1_700_000_000_000 + offset, "key": b"k",
            "value": b'{"a": 1}', "reason": reason, "source_topic": "tx-in", "source_partition": 1, "source_offset": 90 + offset}
    return DeadLetter(**(base | fields))


def test_replay_never_sends_truncated_letters_and_says_why() -> None:
    letters = [letter(1), letter(2, "oversized", truncated=2_000_000), letter(3, "oversized_key", key_truncated=9000),
               letter(4, value=None, reason="empty"), letter(5, source_topic="", source_partition=None), letter(6)]
    send, skipped = plan(letters, to_topic=None)
    assert [(d.offset, t, p) for d, t, p in send] == [(1, "tx-in", 1), (6, "tx-in", 1)]
    why = {d.offset: reason for d, reason in skipped}
    assert "value truncated (was 2,000,000 bytes)" in why[2] and "tx-in/1/92" in why[2]
    assert "key truncated" in why[3] and "tombstone" in why[4] and "--to TOPIC" in why[5]
    to_other, _ = plan(letters, to_topic="tx-retry")
    assert [(d.offset, t, p) for d, t, p in to_other] == [(1, "tx-retry", None), (5, "tx-retry", None), (6, "tx-retry", None)]
    report = ReplayReport(executed=False, sent={"tx-in": 2}, ranges={0: (1, 6)}, skipped=skipped)
    text = "\n".join(report.lines("tx-dlq"))
    assert "would replay 2 dead letters: 2 to tx-in" in text and "partition 0 offsets 1..6" in text
    assert text.count("skipped p0@") == 4


def test_selection_by_reason_partition_offsets_and_time() -> None:
    selection = Selection(reasons=frozenset({"late"}), from_offset=2, to_offset=4)
    assert [o for o in range(6) if selection.matches(letter(o, "late"))] == [2, 3, 4]
    assert not selection.matches(letter(3, "bad_json"))
    assert not Selection(partitions=frozenset({1})).matches(letter(0))
    assert Selection(since_ms=1_700_000_000_003).matches(letter(3)) and not Selection(since_ms=1_700_000_000_003).matches(letter(2))
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    assert parse_since("2h", now) == int(dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC).timestamp() * 1000)
    assert parse_since("2026-11-29T10:00:00", now) == parse_since("2026-11-29T11:00:00+01:00", now)
    with pytest.raises(UsageError, match="--since"):
        parse_since("soon", now)


def test_a_dead_letter_prints_on_one_line_and_as_json() -> None:
    binary = letter(7, value=b"\xff\xfe\nraw", detail="not UTF-8", truncated=70_000)
    line = binary.line(payload_chars=4)
    assert "\n" not in line and "TRUNCATED(value was 70,000 bytes)" in line and "source=tx-in/1/97" in line
    record = binary.to_json()
    assert record["value"] is None and record["value_bytes"] == 6
    assert record["value_base64"] == "//4KcmF3" and record["truncated"] == 70_000 and record["source_offset"] == 97
    text = letter(8, value=b'{"TRANSACTION_ID": 1, "pad": "' + b"y" * 300 + b'"}').to_json(payload_chars=10)
    assert text["value"] == '{"TRANSACT' and text["value_bytes"] == 332
