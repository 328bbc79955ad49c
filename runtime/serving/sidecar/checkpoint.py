"""Where the sidecar stands between consuming a batch and committing it (`Checkpoint`).

Three things are owed at any moment, and this object names them:

- the batch in flight (`in_flight`): its outputs were produced, their acknowledgements are
  not known yet; completing it (`complete`) flushes, and only then may its offsets be
  committed (Delivery keeps what may be committed and commits it);
- what a rebalance must finish before partitions go (`revoke`): the batch in flight is
  completed first, then the delivered offsets of the revoked partitions are committed
  synchronously;
- what a take must not score (`settle`): the messages consumed after a batch whose
  completion failed inside a rebalance (read again with it), and those of a partition
  revoked later in the same take (the next owner reads them from the committed offset).

    checkpoint = Checkpoint(delivery, metrics)
    checkpoint.start_take()
    messages = checkpoint.settle(consumer.consume(...), assignment)   # what is ours to score
    ...                                                                # score, produce
    checkpoint.complete(assignment, rewind_also=messages)              # the batch before: delivered?
    checkpoint.hand_over(InFlight(messages, result, reasons, started))
    committed = checkpoint.revoke(revoked, assignment)                 # inside on_revoke
    offsets = checkpoint.committed_offsets([0, 1], committed)          # what a snapshot covers
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fraudscore.serving.sidecar.delivery import Delivery

log = logging.getLogger(__name__)

Partitions = set[tuple[str, int]]


@dataclass
class InFlight:
    """A batch whose outputs were produced, not yet known to be acknowledged."""

    messages: list  # every consumed message of the batch: its offsets, and what a rewind reads again
    result: object  # the pipeline's BatchResult
    reasons: list  # dead-letter reasons
    started: float  # time.perf_counter() when the batch was taken


class Checkpoint:
    """The batch in flight, what a revoke must finish and what a take must not score; the
    offsets that may be committed are Delivery's (`delivery.done`)."""

    def __init__(self, delivery: Delivery, metrics, on_delivered: Callable[[InFlight], None] = lambda flight: None):
        self.delivery = delivery
        self.metrics = metrics
        self.on_delivered = on_delivered  # each batch once delivered (the partial-state report)
        self.in_flight: InFlight | None = None
        self.completing: InFlight | None = None  # the batch finish() is waiting on (`report`)
        self.stale: list | None = None  # a batch in flight failed inside a rebalance: rewind what comes next too
        self.revoked_in_take: Partitions = set()  # partitions revoked during the current take

    def start_take(self) -> None:
        self.revoked_in_take = set()

    def settle(self, messages: list, assignment: Partitions) -> list:
        """What of a take's messages is this instance's to score now: none after a batch in
        flight failed during a rebalance inside the take (they come after it, so they are read
        again with it), and none of a partition revoked by a later call of the same take (an
        earlier call returned them before the partition went)."""
        if self.stale is not None:
            self.delivery.rewind([*self.stale, *messages], assignment)
            self.stale, messages = None, []
        if self.revoked_in_take and messages:
            gone = [m for m in messages if (m.topic(), m.partition()) in self.revoked_in_take]
            if gone:
                messages = [m for m in messages if (m.topic(), m.partition()) not in self.revoked_in_take]
                self.delivery.rewind(gone, assignment)  # only partitions assigned again are sought
        return messages

    def hand_over(self, flight: InFlight) -> None:
        """This batch's outputs are produced: it is the one in flight now."""
        self.in_flight = flight

    def complete(self, assignment: Partitions, rewind_also: list = ()) -> bool:
        """Wait for the batch in flight's acknowledgements and move its offsets (or rewind it,
        with `rewind_also`, the batch consumed after it); its metrics once delivered. True if
        delivered (or nothing was in flight)."""
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return True
        m, delivery = self.metrics, self.delivery
        self.completing = flight
        try:
            ok = delivery.finish(flight.messages, assignment, rewind_also)
        finally:
            self.completing = None
        m.stage_seconds.labels("ack_wait").observe(delivery.ack_wait_s)
        m.stage_seconds.labels("commit").observe(delivery.commit_s)
        if not ok:
            m.produce_errors.inc(max(1, len(delivery.failures)))
            log.error("batch of %d not fully delivered (%s); rewound to reprocess it%s", len(flight.messages),
                      delivery.failures[0] if delivery.failures else "timeout",
                      f" with the {len(rewind_also)} consumed after it" if len(rewind_also) else "")
            return False
        m.observe_batch(flight.messages, flight.result, flight.reasons)
        m.batch_seconds.observe(time.perf_counter() - flight.started)
        self.on_delivered(flight)
        return True

    def revoke(self, revoked: Partitions, assignment: Partitions) -> bool:
        """Inside the revoke callback (within consume()/poll()): the batch in flight is completed
        (its outputs acknowledged) before the partitions go, then the delivered offsets of the
        revoked partitions are committed synchronously. True when that commit succeeded."""
        self.revoked_in_take |= revoked
        if self.in_flight is not None:
            flight = self.in_flight
            if not self.complete(assignment - revoked):
                self.stale = flight.messages  # what this consume() returns came after it: read again too
        return self.delivery.commit_done(revoked)

    def committed_offsets(self, partitions: list[int], commit_ok: bool) -> dict[int, int] | None:
        """The input topic's committed offset of each partition (what a snapshot may cover), or
        None when it is not known: at least once, the delivered offsets just committed
        (`commit_ok`: that synchronous commit succeeded); exactly once, the broker's (the
        offsets went with each batch's transaction)."""
        from confluent_kafka import KafkaException, TopicPartition

        config, topic = self.delivery.config, self.delivery.config.input_topic
        if config.exactly_once:
            try:
                answer = self.delivery.consumer.committed([TopicPartition(topic, p) for p in partitions],
                                                          timeout=min(5.0, config.drain_timeout_s))
            except KafkaException as exc:
                log.warning("snapshots skipped: committed offsets unavailable (%s)", exc)
                return None
            return {tp.partition: tp.offset for tp in answer if tp.error is None and tp.offset >= 0}
        if not commit_ok:
            log.warning("snapshots skipped: the delivered offsets could not be committed")
            return None
        done = self.delivery.done
        return {p: done[(topic, p)].offset for p in partitions if (topic, p) in done}

    def report(self) -> str:
        """The batch a stop is waiting on, for StopBound's log line."""
        flight, completing = self.in_flight, self.completing
        return (f"a batch of {len(completing.messages)} being completed" if completing is not None else
                f"a batch of {len(flight.messages)} in flight" if flight is not None else "no batch in flight")
