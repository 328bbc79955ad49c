"""Retention gaps: committed offsets below their partition's first retained offset.

When retention passed while the group was down, the messages between the committed offset
and the first retained one are gone and are never scored. Checked when a partition is
assigned; counted in fraudscore_input_skipped_messages_total{reason="retention"} and logged
with what the consumer does next (--offset-reset earliest resumes at the first retained
message, latest at the end, and the retained ones passed over are counted too, reason
"reset_latest"). In at-least-once mode the resume offset is then committed, so the gap is
reported once, not again at every assignment; each process also reports a (partition,
offset) only once (`reported`).
"""

from __future__ import annotations

import logging
import time

from fraudscore.serving.sidecar.config import SidecarConfig

log = logging.getLogger(__name__)


def report_retention_gaps(consumer, partitions: list, config: SidecarConfig, metrics,
                          reported: set[tuple[str, int, int]]) -> None:
    """Check the newly assigned `partitions` (TopicPartitions) for retention gaps, within 10 s
    (or --startup-timeout) in all; `reported` holds the (topic, partition, committed offset)
    already reported by this process."""
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + min(10.0, config.startup_timeout_s)
    left = lambda: max(0.1, min(5.0, deadline - time.monotonic()))  # noqa: E731
    try:
        committed = consumer.committed([TopicPartition(p.topic, p.partition) for p in partitions], timeout=left())
    except KafkaException as exc:
        log.warning("committed offsets of %s unavailable (%s): a retention gap would go unreported",
                    sorted(p.partition for p in partitions), exc)
        return
    for tp in committed:
        if tp.error is not None or tp.offset < 0 or (tp.topic, tp.partition, tp.offset) in reported:
            continue  # no commit yet: --offset-reset decides, as documented
        if time.monotonic() >= deadline:
            log.warning("retention check of partition %d skipped: out of time", tp.partition)
            continue
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=left(),
                                                       cached=False)
        except KafkaException as exc:
            log.warning("partition %d: watermarks unavailable (%s): a retention gap would go unreported",
                        tp.partition, exc)
            continue
        if tp.offset < low:
            reported.add((tp.topic, tp.partition, tp.offset))
            _report(consumer, tp, low, high, config, metrics)


def _report(consumer, tp, low: int, high: int, config: SidecarConfig, metrics) -> None:
    from confluent_kafka import KafkaException, TopicPartition

    metrics.skipped.labels(str(tp.partition), "retention").inc(low - tp.offset)
    latest = config.offset_reset == "latest"
    if latest:
        metrics.skipped.labels(str(tp.partition), "reset_latest").inc(max(0, high - low))
    log.error("partition %d of %s: the group's committed offset %d is below the first retained offset %d: %d "
              "messages were deleted by retention before any member read them and will never be scored; %s. "
              "Keep the input's retention longer than the longest outage (docs/operations.md, "
              "FraudscoreInputSkipped)", tp.partition, tp.topic, tp.offset, low, low - tp.offset,
              f"--offset-reset latest resumes at the end, passing over the {high - low} retained ones too"
              if latest else "scoring resumes at the first retained message")
    if not config.exactly_once:
        resume = high if latest else low
        try:
            consumer.commit(offsets=[TopicPartition(tp.topic, tp.partition, resume)], asynchronous=False)
        except KafkaException as exc:
            log.warning("partition %d: could not commit the resume offset %d (%s); the gap may be reported "
                        "again by the next owner", tp.partition, resume, exc)
