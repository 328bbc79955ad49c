"""`fraudscore results`: every input's outcome, reconciled from the real topics.

A synthetic stream of 100,000 inputs whose outcomes are known exactly (dead letters,
duplicates, missing results, alerts, two days of Kafka timestamps) checks the counts; a
sidecar run checks that the real results and dead letters reconcile with nothing missing.
"""

from __future__ import annotations

import json
import subprocess
import time

import orjson
import pytest
from confluent_kafka import Producer

from fraudscore.serving.kafka import produce_waiting
from commands import EXE, fraudscore
from kafka_helpers import Sidecar, client, drain, four_topics, produce
from test_reliability import metric
from waiting import wait_until

DAY1_MS, DAY2_MS = 1_767_225_600_000, 1_767_312_000_000  # 2026-01-01, 2026-01-02 (UTC)


def produce_with_offsets(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int]]) -> list[tuple[int, int]]:
    """(key, value, timestamp ms) each to `topic`; the (partition, offset) each got."""
    producer = Producer(client(bootstrap) | {"linger.ms": 5, "enable.idempotence": True})
    where: dict[int, tuple[int, int]] = {}
    for i, (key, value, ts) in enumerate(messages):
        def done(err, msg, i=i):
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())
        produce_waiting(producer, topic, value, key, timestamp=ts, on_delivery=done)
    assert producer.flush(60) == 0
    return [where[i] for i in range(len(messages))]


def results_command(bootstrap: str, topics: dict, *extra: str) -> subprocess.CompletedProcess:
    return fraudscore("results", "--bootstrap-servers", bootstrap, "--input-topic", topics["in"],
                      "--output-topic", topics["out"], "--dlq-topic", topics["dlq"], *extra, timeout_s=180)


def dead_letter(reason: str, source: tuple[int, int], topic: str, value: bytes) -> tuple[bytes, bytes, list]:
    headers = [("fraudscore.reason", reason.encode()), ("fraudscore.detail", b"test"),
               ("fraudscore.source.topic", topic.encode()), ("fraudscore.source.partition", str(source[0]).encode()),
               ("fraudscore.source.offset", str(source[1]).encode()), ("fraudscore.model.version", b"v")]
    return b"k", value, headers


@pytest.mark.timeout(600)
def test_a_stream_of_100000_is_reconciled_exactly(kafka_bootstrap, make_topic) -> None:
    topics = four_topics(make_topic, partitions=3)
    n = 100_000
    inputs = [(str(i % 997).encode(), orjson.dumps({"TRANSACTION_ID": i, "TX_AMOUNT": 1.0}), DAY1_MS if i < n // 2 else DAY2_MS)
              for i in range(n)]
    bad = [(b"x", b"{not json", DAY2_MS)] * 8
    again = [(b"42", orjson.dumps({"TRANSACTION_ID": 42, "TX_AMOUNT": 1.0}), DAY2_MS)]  # a retry, one result for both
    where = produce_with_offsets(kafka_bootstrap, topics["in"], inputs + bad + again)
    rejected = {n // 2 + 10 + k: "out_of_range" for k in range(4)}  # valid ids, dead-lettered
    missing = {7, n // 2 + 1234, n - 1}  # neither a result nor a dead letter
    duplicated = {3: 1, 60_000: 1, 70_000: 2, 99_000: 1, 99_001: 1}  # id -> extra results
    alerts = {i for i in range(0, n, 1000)} - missing - set(rejected)
    results = []
    for i in range(n):
        if i in missing or i in rejected:
            continue
        doc = orjson.dumps({"transaction_id": i, "score": 0.9 if i in alerts else 0.1,
                            "decision": "alert" if i in alerts else "pass"})
        results += [doc] * (1 + duplicated.get(i, 0))
    produce(kafka_bootstrap, topics["out"], [b"k"] * len(results), results)
    letters = [dead_letter("bad_json", where[n + k], topics["in"], b"{not json") for k in range(8)]
    letters += [dead_letter(reason, where[i], topics["in"], inputs[i][1]) for i, reason in rejected.items()]
    producer = Producer(client(kafka_bootstrap))
    for key, value, headers in letters:
        producer.produce(topics["dlq"], value, key, headers=headers)
    assert producer.flush(30) == 0

    t0 = time.monotonic()
    done = results_command(kafka_bootstrap, topics, "--json")
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stderr  # some are missing
    report = json.loads(done.stdout)
    assert report["inputs"] == n + 9
    assert report["dead_letters"] == {"bad_json": 8, "out_of_range": 4}
    assert report["missing"] == 4 and sorted(m["transaction_id"] for m in report["missing_shown"]) == sorted(missing | {42})
    assert report["scored"] == n - len(missing) - len(rejected)
    assert report["duplicates"] == sum(duplicated.values()) and report["duplicated_ids"] == len(duplicated)
    assert report["results"] == len(results) and report["outside"] == 0
    assert report["alerts"] == len(alerts) and report["repeated_inputs"] == 1 and report["complete"] is False

    # The second day only: the first day's results are outside the range.
    day2 = json.loads(results_command(kafka_bootstrap, topics, "--json", "--since", "2026-01-02T00:00:00").stdout)
    # Day 2 holds the retry of 42 but not its first input: the one result goes to the retry.
    assert day2["inputs"] == n // 2 + 9 and day2["missing"] == 2 and day2["dead_lettered"] == 12
    assert day2["outside"] == sum(1 + duplicated.get(i, 0) for i in range(n // 2) if i not in missing and i != 42)
    day1 = results_command(kafka_bootstrap, topics, "--until", "2026-01-02T00:00:00")
    assert day1.returncode == 1 and "missing                1" in day1.stdout, day1.stdout
    print(f"\nresults: {n + 9:,} inputs reconciled in {took:.1f} s (the command, start to exit)\n{done.stderr}")


def test_a_sidecar_run_reconciles_with_nothing_missing(kafka_bootstrap, small_bundle, transactions, topics) -> None:
    keys, values = transactions
    bad = [b"{not json", b'{"TRANSACTION_ID": 5}'] * 10
    produce(kafka_bootstrap, topics["in"], list(keys) + [b"bad"] * len(bad), list(values) + bad)
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-results")
    drain(kafka_bootstrap, [topics["dlq"]], len(bad), timeout_s=60)
    wait_until(lambda: metric(sidecar, "fraudscore_transactions_scored_total") >= len(values), 60,
               "every valid input scored", interval_s=0.2)
    done = results_command(kafka_bootstrap, topics)
    code, log = sidecar.stop()
    assert code == 0, log[-2000:]
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout
    assert f"inputs        {len(values) + len(bad):>10,}" in lines
    assert f"scored        {len(values):>10,}" in lines
    assert f"dead letters  {len(bad):>10,}" in lines and "bad_json 10" in lines and "missing_field 10" in lines
    assert "missing                0  every input has an outcome" in lines


def test_bad_options_say_how_to_fix_them() -> None:
    done = subprocess.run([EXE, "results", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "a",
                           "--output-topic", "b"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "missing --dlq-topic" in done.stderr, done.stderr
    done = subprocess.run([EXE, "results", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "a", "--output-topic", "b",
                           "--dlq-topic", "c", "--until", "yesterday"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--until must be a time like" in done.stderr, done.stderr
