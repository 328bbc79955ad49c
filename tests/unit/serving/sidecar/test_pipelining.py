"""The sidecar loop's pipelined delivery and adaptive batching, without a broker.

Small fakes of the two Kafka clients and of the pipeline pin the order of events: batch
k+1 is consumed and scored while batch k's outputs are outstanding; batch k's offsets
move only after its flush; a failure rewinds batch k and the batch consumed after it
together; a rebalance completes the batch in flight first. The same loop runs against a
real broker in tests/kafka/ (test_sidecar.py, test_reliability.py, test_raw_mode.py, test_workers_group.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from fakes import Message
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.loop import Sidecar
from fraudscore.serving.sidecar.models import Models


def Msg(partition: int, offset: int) -> Message:
    return Message(partition, offset, timestamp_ms=1_700_000_000_000)


@dataclass
class Result:
    n: int
    index: np.ndarray = field(init=False)

    def __post_init__(self):
        self.index = np.arange(self.n)
        self.payloads = [b"r"] * self.n
        self.alerts = np.zeros(self.n, bool)
        self.scores = np.zeros(self.n)
        self.matrix = np.zeros((self.n, 0), np.float32)
        self.rejections = []
        self.inference_seconds = 1e-5
        self.partial = None  # feature mode
        self.model_version = "v1"
        self.challenger_version, self.challenger_seconds = None, 0.0  # no --challenger


class Events:
    def __init__(self):
        self.log: list[tuple] = []


class FakePipeline:
    model_version = "v1"

    def __init__(self, events: Events):
        self.events = events

    def score_batch(self, values):
        self.events.log.append(("score", len(values)))
        return Result(len(values))


class FakeProducer:
    def __init__(self, events: Events, fail_flushes: int = 0):
        self.events, self.fail_flushes = events, fail_flushes
        self.timeouts: list[float] = []  # flush() timeouts, in order
        self.during_flush = None  # called inside flush(), as if it were waiting

    def produce(self, topic, value, key, headers=None):
        self.events.log.append(("produce", topic))

    def poll(self, timeout):
        pass

    def __len__(self):  # messages waiting for acknowledgement
        return 0

    def flush(self, timeout):
        self.events.log.append(("flush",))
        self.timeouts.append(timeout)
        if self.during_flush is not None:
            self.during_flush()
        if self.fail_flushes:
            self.fail_flushes -= 1
            return 1
        return 0


@dataclass
class Revoke:
    """A script entry: the consumer call revokes `partition` (the sidecar's callback runs
    inside it, as in librdkafka), then returns `then`."""

    partition: int
    then: list


class FakeConsumer:
    """consume()/poll() hand out scripted batches, or revoke a partition first (`Revoke`)."""

    def __init__(self, events: Events, script: list):
        self.events, self.script = events, list(script)
        self.answer = None  # the commit callback: asynchronous commits are answered at once unless None

    def _next(self):
        if not self.script:
            return []
        entry = self.script.pop(0)
        if isinstance(entry, Revoke):
            self.on_revoke(None, [TopicPartition("tx-in", entry.partition)])
            return entry.then
        return entry

    def consume(self, num_messages, timeout):
        self.events.log.append(("consume", timeout))
        return list(self._next())

    def poll(self, timeout):
        self.events.log.append(("poll", timeout))
        batch = self._next()
        return batch[0] if batch else None

    def commit(self, offsets, asynchronous):
        self.events.log.append(("commit", sorted((tp.partition, tp.offset) for tp in offsets), asynchronous))
        if asynchronous and self.answer is not None:
            self.answer(None, offsets)

    def seek(self, tp: TopicPartition):
        self.events.log.append(("seek", tp.partition, tp.offset))


def sidecar(monkeypatch, script: list, fail_flushes: int = 0, **settings) -> tuple[Sidecar, Events]:
    events = Events()
    monkeypatch.setattr(Models, "load", lambda self, serving=None: FakePipeline(events))
    config = SidecarConfig(bundle=Path("b"), bootstrap_servers="x:1", input_topic="tx-in", output_topic="tx-scores",
                           alerts_topic="tx-alerts", dlq_topic="tx-dlq", group_id="g",
                           **({"commit_interval_s": 0.0} | settings))
    s = Sidecar(config)
    s._attach(FakeConsumer(events, script), FakeProducer(events, fail_flushes))
    s.consumer.answer = s.delivery.on_commit
    s.consumer.on_revoke = s.assignment.on_revoke
    s.assignment.partitions |= {("tx-in", 0), ("tx-in", 1), ("tx-in", 2)}
    return s, events


def step(s: Sidecar) -> None:
    messages = s._take()
    if messages:
        s._process(messages)


def kinds(events: Events) -> list:
    """The log without the (many) empty consume calls' timeouts."""
    return [e[0] if e[0] in ("consume", "poll", "flush", "score") else e for e in events.log]


B1 = [Msg(0, 10), Msg(1, 5)]
B2 = [Msg(0, 11), Msg(2, 3)]


def test_the_next_batch_is_consumed_and_scored_before_the_one_in_flight_is_flushed(monkeypatch) -> None:
    s, events = sidecar(monkeypatch, [B1, B2])
    step(s)
    step(s)
    assert kinds(events) == [
        "consume", "score", ("produce", "tx-scores"), ("produce", "tx-scores"),
        "consume", "score",
        "flush", ("commit", [(0, 11), (1, 6)], True),  # batch 1's offsets, after its flush
        ("produce", "tx-scores"), ("produce", "tx-scores"),  # then batch 2's outputs
    ]
    assert s.checkpoint.in_flight is not None and s.checkpoint.in_flight.messages == B2
    # Nothing queued: the batch in flight is completed before waiting for traffic.
    events.log.clear()
    step(s)
    assert kinds(events)[:3] == ["consume", "flush", ("commit", [(0, 12), (2, 4)], True)]
    assert s.checkpoint.in_flight is None
    assert s.metrics.scored._value.get() == 4


def test_adaptive_batching_takes_what_is_queued_without_waiting(monkeypatch) -> None:
    s, events = sidecar(monkeypatch, [B1])
    step(s)
    assert events.log[0] == ("consume", 0)  # never waits for a full batch
    s, events = sidecar(monkeypatch, [[], [Msg(0, 1)], [Msg(0, 2)]], batch_wait_ms=7.0)
    step(s)
    # Idle: one wait for a first message, then --batch-wait-ms for more.
    assert [e for e in events.log if e[0] in ("consume", "poll")] == [("consume", 0), ("poll", 0.1), ("consume", 0.007)]
    assert [e for e in events.log if e[0] == "score"] == [("score", 2)]


def test_a_failed_batch_in_flight_is_rewound_with_the_batch_consumed_after_it(monkeypatch) -> None:
    s, events = sidecar(monkeypatch, [B1, B2], fail_flushes=1)
    step(s)
    step(s)
    seeks = sorted(e[1:] for e in events.log if e[0] == "seek")
    assert seeks == [(0, 10), (1, 5), (2, 3)]  # partition 0 back to batch 1's first offset, not batch 2's
    assert [e for e in events.log if e[0] == "commit"] == []
    assert sum(e[0] == "produce" for e in events.log) == 2  # batch 2 was never produced
    assert s.checkpoint.in_flight is None and s.metrics.produce_errors._value.get() == 1


def test_a_rebalance_completes_the_batch_in_flight_before_the_partitions_go(monkeypatch) -> None:
    s, events = sidecar(monkeypatch, [B1, Revoke(0, [Msg(1, 6)])], commit_interval_s=30.0)
    step(s)
    events.log.clear()
    step(s)
    log = kinds(events)
    flush = log.index("flush")
    commits = [e for e in log if e[0] == "commit"]
    # Batch 1 is flushed inside the callback, then partition 0's offset is committed synchronously.
    assert ("commit", [(0, 11)], False) in commits and log.index(("commit", [(0, 11)], False)) > flush
    assert ("tx-in", 0) not in s.assignment.partitions
    assert [e for e in log if e == "score"] == ["score"]  # the message of the partition kept is scored


def test_a_batch_in_flight_that_fails_in_a_rebalance_takes_the_returned_batch_back_with_it(monkeypatch) -> None:
    s, events = sidecar(monkeypatch, [B1, Revoke(0, [Msg(1, 7)])], fail_flushes=1)
    step(s)
    events.log.clear()
    step(s)
    assert all((0, 11) not in e[1] and (1, 6) not in e[1] for e in events.log if e[0] == "commit")  # not delivered
    seeks = [e[1:] for e in events.log if e[0] == "seek"]
    assert (0, 10) not in seeks  # a revoked partition is not sought: the next owner starts at its commit
    assert seeks and all(p == 1 and o == 5 for p, o in seeks)  # partition 1 back to batch 1's offset, not 7
    assert "score" not in kinds(events)  # what consume() returned after the failure is read again, not scored


@pytest.mark.parametrize("settings", [{"pipelining": False}, {"exactly_once": True, "transactional_id": "t"}])
def test_without_pipelining_each_batch_is_completed_before_the_next_is_consumed(monkeypatch, settings) -> None:
    s, events = sidecar(monkeypatch, [B1, B2], **settings)
    s.producer.begin_transaction = lambda: None
    s.producer.send_offsets_to_transaction = lambda *a: events.log.append(("send_offsets",))
    s.producer.commit_transaction = lambda *a: events.log.append(("commit_transaction",))
    s.consumer.consumer_group_metadata = lambda: object()
    step(s)
    step(s)
    log = [e if isinstance(e, str) else e[0] for e in kinds(events)]
    done = "commit_transaction" if settings.get("exactly_once") else "flush"
    assert log.index(done) < log.index("consume", 1)
    assert s.checkpoint.in_flight is None


def test_offsets_are_committed_at_most_every_commit_interval_and_all_at_exit(monkeypatch) -> None:
    s, events = sidecar(monkeypatch, [B1, B2, [Msg(0, 12)]], commit_interval_s=30.0)
    for _ in range(4):
        step(s)
    commits = [e for e in events.log if e[0] == "commit"]
    assert commits == [("commit", [(0, 11), (1, 6)], True)]  # the first at once, the rest not due yet
    s.delivery.commit_done()
    assert events.log[-1] == ("commit", [(0, 13), (1, 6), (2, 4)], False)


def test_a_batch_limit_of_delivered_messages_is_committed_before_the_interval(monkeypatch) -> None:
    """Whatever the rate, a hard kill repeats at most one --batch-size of delivered messages."""
    s, events = sidecar(monkeypatch, [B1, B2, [Msg(0, 12)]], commit_interval_s=30.0, batch_size=3)
    for _ in range(4):
        step(s)
    commits = [e for e in events.log if e[0] == "commit"]
    # B1 at once; B2 (2 messages) waits; with Msg(0, 12) three wait: committed, interval or not.
    assert commits == [("commit", [(0, 11), (1, 6)], True), ("commit", [(0, 13), (2, 4)], True)]
    assert s.delivery.uncommitted_messages == 0


def test_the_default_interval_commits_small_batches_together(monkeypatch) -> None:
    import time

    from fraudscore.serving.sidecar import delivery

    clock = [1000.0]
    monkeypatch.setattr(delivery, "time", SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter))
    s, events = sidecar(monkeypatch, [B1, B2, [Msg(0, 12)]], commit_interval_s=SidecarConfig.commit_interval_s)
    for _ in range(4):
        step(s)
    assert len([e for e in events.log if e[0] == "commit"]) == 1  # within the interval: one commit, not three
    clock[0] += SidecarConfig.commit_interval_s
    s.delivery.commit_due()
    assert events.log[-1] == ("commit", [(0, 13), (2, 4)], True)


def test_a_stop_completes_the_batch_in_flight_within_what_is_left_of_its_budget(monkeypatch) -> None:
    """After SIGTERM the flush of the batch in flight waits only what is left of --drain-timeout
    (counted from the signal), not a whole new --drain-timeout; the overdue report names it."""
    import time

    s, _ = sidecar(monkeypatch, [B1], drain_timeout_s=30.0)
    step(s)  # B1 produced: in flight
    assert s.producer.timeouts == [] and s.checkpoint.in_flight is not None
    seen = []
    s.producer.during_flush = lambda: seen.append(s.stop_report())
    s.stop_signalled(time.monotonic() - 29.0)  # the signal came 29 s ago: about 1 s left
    s.request_stop()
    assert s._complete()
    assert 0 < s.producer.timeouts[-1] <= 1.0
    assert "a batch of 2 being completed" in seen[0]
    assert "no batch in flight" in s.stop_report()


def test_while_running_a_flush_may_wait_the_whole_drain_timeout(monkeypatch) -> None:
    s, _ = sidecar(monkeypatch, [B1, B2], drain_timeout_s=30.0)
    step(s)
    step(s)
    assert s.producer.timeouts == [30.0]


def test_stage_timings_are_recorded_per_batch(monkeypatch) -> None:
    s, _ = sidecar(monkeypatch, [B1, B2])
    for _ in range(3):
        step(s)
    for stage in ("decode", "inference", "produce", "ack_wait", "commit"):
        assert s.metrics.registry.get_sample_value("fraudscore_stage_seconds_count", {"stage": stage}) == 2, stage
    assert s.metrics.registry.get_sample_value("fraudscore_batch_input_age_seconds_count") == 2


def test_one_asynchronous_commit_at_a_time(monkeypatch) -> None:
    """Small batches must not queue a commit each on the coordinator's connection: the next
    commit waits for the answer to the last (the heartbeats queue behind commits)."""
    s, events = sidecar(monkeypatch, [B1, B2, [Msg(0, 12)]])
    s.consumer.answer = None  # the broker has not answered yet
    for _ in range(4):
        step(s)
    assert [e for e in events.log if e[0] == "commit"] == [("commit", [(0, 11), (1, 6)], True)]
    s.delivery.on_commit(None, [])  # answered: what was delivered since goes in one commit
    s.delivery.commit_due()
    assert events.log[-1] == ("commit", [(0, 13), (2, 4)], True)


def test_messages_of_a_partition_revoked_later_in_the_same_take_are_not_scored(monkeypatch) -> None:
    """The first call returns one message of partition 0; the follow-up call (which takes what
    came with it) revokes partition 0. That message is not this instance's to score."""
    s, events = sidecar(monkeypatch, [[Msg(0, 20)], Revoke(0, [Msg(1, 9)])])
    step(s)
    assert [e for e in events.log if e[0] == "score"] == [("score", 1)]  # only partition 1's message
    assert ("seek", 0, 20) not in events.log  # partition 0 is gone: its next owner reads it from the commit
    assert all((0, 21) not in e[1] for e in events.log if e[0] == "commit")


def test_a_failed_commit_is_made_again_without_new_traffic(monkeypatch) -> None:
    from confluent_kafka import KafkaError

    s, events = sidecar(monkeypatch, [B1])
    s.consumer.answer = None
    step(s)
    step(s)  # nothing queued: batch 1 is completed and its offsets committed
    commits = [e for e in events.log if e[0] == "commit"]
    assert commits == [("commit", [(0, 11), (1, 6)], True)]
    s.delivery.on_commit(KafkaError(KafkaError.REQUEST_TIMED_OUT), [])
    s.delivery.commit_due()
    assert [e for e in events.log if e[0] == "commit"] == [("commit", [(0, 11), (1, 6)], True)] * 2
