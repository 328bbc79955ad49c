"""Delivery of one batch's outputs, and the offsets that follow them.

At least once: results, alerts and dead letters are produced, the producer is flushed,
and only when every one of them was acknowledged may the batch's next offsets be
committed (asynchronously, every `--commit-interval` or once a batch limit's worth of
messages waits uncommitted, whichever comes first; synchronously on revoke and at shutdown).
Exactly once: the outputs and the offsets go in one Kafka transaction. Either way a
failure commits nothing: the batch's partitions are rewound to its first offsets and the
batch is read again.

    delivery = Delivery(config, consumer, producer)
    delivery.begin()
    delivery.send(results_topic_payloads...)         # produce, never blocks for ever
    delivery.dead_letter(message, "bad_json", "...", "v3")
    if not delivery.finish(messages, assignment):    # flush + commit, or rewind
        ...                                          # the batch will be read again

A key longer than MAX_KEY_BYTES is the caller's to reject (`oversized_key`); a dead
letter's value is cut to its first TRUNCATED_DLQ_BYTES when it would not fit the
dead-letter topic (header `fraudscore.truncated` = original length; the source offset
headers point at the full message), so no input can make a batch undeliverable for ever.

Delivered dead letters are also summed up in the log (`DeadLetterLog`): counts by reason
and where the first one came from, never a payload, at most one line every 30 s.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np

from fraudscore.errors import FraudscoreError
from fraudscore.serving import wire
from fraudscore.serving.kafka import produce_waiting
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.wire import DLQ_MAX_BYTES, MAX_KEY_BYTES, TRUNCATED_DLQ_BYTES

log = logging.getLogger(__name__)

_MSG_SIZE_TOO_LARGE = 10  # confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, without importing it at start-up
_NO_OFFSET = -168  # confluent_kafka.KafkaError._NO_OFFSET: nothing to commit
DLQ_LOG_INTERVAL_S = 30.0
COMMIT_ANSWER_S = 10.0  # an asynchronous commit unanswered this long is taken as lost


class DeadLetterLog:
    """A log line for dead letters: the first batch that has any at once, then at most one
    summary every `interval_s` for what was dead-lettered since (counts by reason and the
    source of the first one, never payloads, which may hold card data). `close` writes
    what is still held.

        dead = DeadLetterLog("tx-dlq")
        dead.add(Counter(missing_field=3), "tx-in[2]@1041")   # logged now
        dead.add(Counter(bad_json=1), "tx-in[0]@77")          # held until 30 s have passed
        dead.tick()                                           # every loop pass: writes it once they have
    """

    def __init__(self, dlq_topic: str, interval_s: float = DLQ_LOG_INTERVAL_S, clock=time.monotonic):
        self.dlq_topic = dlq_topic
        self.interval_s = interval_s
        self.clock = clock
        self.held: Counter = Counter()
        self.first: str | None = None
        self.since = clock()
        self.last_line = -float("inf")

    def add(self, reasons: Counter, first: str | None) -> None:
        """Dead letters of one delivered batch."""
        if not reasons:
            return
        if not self.held:
            self.since = self.clock()
            self.first = first
        self.held.update(reasons)
        if self.clock() - self.last_line >= self.interval_s:
            self.write()

    def tick(self) -> None:
        """Write what is held once `interval_s` has passed since the last line, even when no
        dead letter follows (the loop calls this every pass; a clock check, nothing more)."""
        if self.held and self.clock() - self.last_line >= self.interval_s:
            self.write()

    def write(self) -> None:
        """Log what is held, if anything, and start counting again."""
        if not self.held:
            return
        total = sum(self.held.values())
        counts = ", ".join(f"{reason} {n}" for reason, n in self.held.most_common())
        log.warning("dead-lettered %d message%s to %s in the last %.0f s (%s); first from %s; "
                    "reasons and details are in each dead letter's headers", total, "" if total == 1 else "s",
                    self.dlq_topic, max(0.0, self.clock() - self.since), counts, self.first)
        self.held = Counter()
        self.last_line = self.clock()

    close = write


class Delivery:
    """Produces a batch's outputs and moves its offsets only after they are acknowledged.

    `consumer` and `producer` are confluent_kafka clients (or objects with the same
    methods); the producer's `on_delivery` must call `Delivery.on_delivery`.
    """

    def __init__(self, config: SidecarConfig, consumer, producer):
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.failures: list = []  # delivery errors of the batch in flight
        self.done: dict[tuple[str, int], object] = {}  # partition -> next offset, fully delivered
        self.dlq_limit = DLQ_MAX_BYTES  # lowered when the broker refuses a dead letter as too large
        self.dead_letters = DeadLetterLog(config.dlq_topic)
        self.uncommitted: set[tuple[str, int]] = set()  # partitions delivered further than last committed
        self.uncommitted_messages = 0  # messages delivered since the last commit request
        self.last_commit = -float("inf")  # time.monotonic() of the last commit request
        self.commit_pending = False  # an asynchronous commit not answered yet (`on_commit`)
        # Seconds a flush or a transaction may wait: --drain-timeout, or, while the sidecar
        # stops, what is left of it (the sidecar sets this to its stop budget).
        self.budget = lambda: config.drain_timeout_s
        self.ack_wait_s = 0.0  # the last finish(): seconds flush() waited for acknowledgements
        self.commit_s = 0.0  # ... and seconds the commit (request, or transaction) took
        self._batch_dead: Counter = Counter()  # reasons of the batch in flight, logged once it is delivered
        self._batch_first_dead: str | None = None

    def begin(self) -> None:
        """Start a batch: forget the last one's failures; open its transaction in exactly-once mode."""
        self.failures = []
        self._batch_dead = Counter()
        self._batch_first_dead = None
        if self.config.exactly_once:
            self.producer.begin_transaction()

    def send_results(self, keys: list, payloads: list[bytes], alerts: list[bool]) -> None:
        """Each result to the scores topic, and those that alert to the alerts topic too, keyed like the input."""
        from confluent_kafka import KafkaException

        c, send = self.config, self.producer.produce
        for key, payload, alert in zip(keys, payloads, alerts):
            try:
                send(c.output_topic, payload, key)
            except (BufferError, KafkaException):
                self.produce(c.output_topic, payload, key, None)
            if alert:
                self.produce(c.alerts_topic, payload, key, None)

    def dead_letter(self, msg, reason: str, detail: str, model_version: str) -> None:
        """The original value and key, with the reason and where the message came from."""
        value, key = msg.value(), msg.key()
        headers = [
            (wire.REASON, reason.encode()),
            (wire.DETAIL, detail[:500].encode()),
            (wire.SOURCE_TOPIC, msg.topic().encode()),
            (wire.SOURCE_PARTITION, str(msg.partition()).encode()),
            (wire.SOURCE_OFFSET, str(msg.offset()).encode()),
            (wire.MODEL_VERSION, model_version.encode()),
        ]
        if value is not None and len(value) > self.dlq_limit:
            headers.append((wire.TRUNCATED, str(len(value)).encode()))
            value = value[:TRUNCATED_DLQ_BYTES]
        if key is not None and len(key) > MAX_KEY_BYTES:
            headers.append((wire.KEY_TRUNCATED, str(len(key)).encode()))
            key = key[:MAX_KEY_BYTES]
        self.produce(self.config.dlq_topic, value, key, headers)
        self._batch_dead[reason] += 1
        if self._batch_first_dead is None:
            self._batch_first_dead = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"

    def on_delivery(self, err, msg) -> None:
        """The producer's delivery callback (called for failures only)."""
        if err is not None:
            self.failures.append(err)
            if err.code() == _MSG_SIZE_TOO_LARGE and msg.topic() == self.config.dlq_topic:
                # The dead-letter topic takes less than the input topic: from now on dead letters
                # carry a prefix of the value; the rewound batch then goes through.
                self.dlq_limit = TRUNCATED_DLQ_BYTES

    def produce(self, topic: str, value: bytes | None, key, headers) -> None:
        """produce(), waiting while the local queue is full; a local refusal fails the batch."""
        from confluent_kafka import KafkaException

        try:
            produce_waiting(self.producer, topic, value, key, headers=headers)
        except KafkaException as exc:  # refused locally (e.g. too large): the batch is rewound
            self.failures.append(exc.args[0])

    def finish(self, messages: list, assignment: set[tuple[str, int]], rewind_also: Iterable = ()) -> bool:
        """Flush and commit the batch (or commit its transaction); on any failure rewind it,
        together with `rewind_also` (messages consumed after it, not produced). True if delivered.

        At least once, the offsets of delivered batches are committed asynchronously
        (`commit_due`)."""
        offsets = next_offsets(self.config.input_topic, messages)
        started = time.perf_counter()
        self.commit_s = 0.0
        if self.config.exactly_once:
            self.ack_wait_s = 0.0
            ok = self._commit_transaction(offsets)
            self.commit_s = time.perf_counter() - started
        else:
            left = self.producer.flush(self.budget())
            self.ack_wait_s = time.perf_counter() - started
            ok = not left and not self.failures
            if ok:
                # Everything in the batch is acknowledged: its offsets may be committed.
                self.done.update({(tp.topic, tp.partition): tp for tp in offsets})
                self.uncommitted.update((tp.topic, tp.partition) for tp in offsets)
                self.uncommitted_messages += len(messages)
                self.commit_due()
        if ok:
            self.dead_letters.add(self._batch_dead, self._batch_first_dead)
        else:
            self.rewind([*messages, *rewind_also], assignment)
        return ok

    def commit_due(self) -> None:
        """Commit the delivered offsets not committed yet, asynchronously, once
        `commit_interval_s` has passed since the last commit or `batch_size` delivered
        messages wait uncommitted, whichever comes first, and the last asynchronous commit
        was answered (offsets only move forward; revoke and shutdown commit synchronously,
        `commit_done`).

        The interval (0.1 s by default) keeps the group coordinator's load flat: at moderate
        rates adaptive batching makes batches of a few messages, and a commit after each
        was hundreds of OffsetCommit requests a second, each a write to __consumer_offsets.
        At 1,000 tx/s on the 2-core VM that was half the broker's CPU (1,084 against 545
        broker CPU-ms per 1,000 tx with 0.1 s; p99 26.6 against 10.7 ms; docs/performance.md).
        The message count keeps what a hard kill can repeat near one batch limit of delivered
        messages at any rate, on top of the batches in flight and what the commit on its way
        covers (while a commit waits for its answer, delivered messages wait with it).

        One commit at a time: a commit per batch queued on the coordinator's connection,
        which the broker answers one after the other; the heartbeats queued behind them and
        the group session timed out. A commit that has had no answer for COMMIT_ANSWER_S is
        taken as lost."""
        now = time.monotonic()
        if not self.uncommitted:
            return
        if (now - self.last_commit < self.config.commit_interval_s
                and self.uncommitted_messages < self.config.batch_size):
            return
        if self.commit_pending:
            if now - self.last_commit < COMMIT_ANSWER_S:
                return
            self.uncommitted.update(self.done)  # no answer: taken as lost, everything delivered goes again
        started = time.perf_counter()
        self.commit_pending = True  # before the call: its answer is served by a later poll, or at once
        self.last_commit = now
        self.consumer.commit(offsets=[self.done[key] for key in sorted(self.uncommitted) if key in self.done], asynchronous=True)
        self.commit_s += time.perf_counter() - started
        self.uncommitted.clear()
        self.uncommitted_messages = 0

    def on_commit(self, err, partitions) -> None:
        """The consumer's commit callback: the asynchronous commit was answered (a failure is
        logged, and every delivered offset is committed again at the next `commit_due`)."""
        self.commit_pending = False
        if err is not None and err.code() != _NO_OFFSET:
            log.warning("offset commit failed (the next one retries): %s", err)
            # Commit them again even if no more traffic comes for these partitions.
            self.uncommitted.update(key for key in self.done if key not in self.uncommitted)

    def rewind(self, messages: Iterable, assignment: set[tuple[str, int]]) -> None:
        """Seek each assigned partition of the batch back to its first offset in the batch."""
        from confluent_kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            first[key] = min(first.get(key, msg.offset()), msg.offset())
        for (t, p), o in first.items():
            if (t, p) in assignment:
                self.consumer.seek(TopicPartition(t, p, o))

    def commit_done(self, only: set[tuple[str, int]] | None = None) -> bool:
        """Synchronously commit the delivered offsets (of `only` these partitions): on revoke, at
        shutdown and before a snapshot. True when every one of them is committed (always, with
        exactly-once: its offsets go with each transaction)."""
        if self.config.exactly_once or not self.done:
            return True
        offsets = [tp for key, tp in self.done.items() if only is None or key in only]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                self.uncommitted -= {(tp.topic, tp.partition) for tp in offsets}
                if not self.uncommitted:
                    self.uncommitted_messages = 0
            except Exception as exc:  # nothing to commit, or the group is gone: logged, not fatal
                if getattr(exc.args[0] if exc.args else None, "code", lambda: None)() == _NO_OFFSET:
                    return True  # nothing new since the last commit: they are committed
                log.warning("commit of finished offsets failed: %s", exc)
                return False
        return True

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop what is known about partitions this instance no longer owns."""
        for key in partitions:
            self.done.pop(key, None)
            self.uncommitted.discard(key)

    def _commit_transaction(self, offsets: list) -> bool:
        from confluent_kafka import KafkaException

        timeout = self.budget()
        try:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), timeout)
            self.producer.commit_transaction(timeout)
            return True
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                return self._abort(timeout)
            if error.retriable():
                try:
                    self.producer.commit_transaction(timeout)
                    return True
                except KafkaException:
                    return self._abort(timeout)
            raise FraudscoreError(f"fatal transaction error (fenced by a newer instance?): {error.str()}") from None

    def _abort(self, timeout: float) -> bool:
        """Abort the open transaction; False (the batch is rewound). An abort that cannot finish in
        time (a stop whose budget is spent, a broker gone) is logged: the transaction commits
        nothing either way, and the next instance with this transactional.id aborts it."""
        from confluent_kafka import KafkaException

        try:
            self.producer.abort_transaction(timeout)
        except KafkaException as exc:
            log.warning("transaction not aborted within %.1f s (%s); it commits nothing", timeout, exc)
        return False


def next_offsets(topic: str, messages: list) -> list:
    """The offset after the last message of each partition in the batch (one input topic)."""
    from confluent_kafka import TopicPartition

    partitions = np.fromiter((m.partition() for m in messages), dtype=np.int64, count=len(messages))
    offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
    return [TopicPartition(topic, p, int(offsets[partitions == p].max()) + 1) for p in np.unique(partitions).tolist()]
