"""`fraudscore quality`: the results and labels topics read into a Ledger (fraudscore.serving.quality),
and the matured days as Prometheus series.

    monitor = QualityMonitor(kafka, "tx-scores", "tx-labels", delay_s=7 * 86_400, top_k=100,
                             history_s=9 * 86_400, metrics=QualityMetrics())
    monitor.run()   # until request_stop()

It reads every partition of both topics without a consumer group, from `history_s` back by
Kafka timestamp, so a restart rebuilds the ledger from Kafka. Days mature on the slowest
results partition's event time (watermark()). They are evaluated only once it has read what
the topics held at its start; a day whose end plus the delay is not past the watermark of
those first results is counted, an earlier one (evaluated before the restart) only sets the
last-day gauges.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from fraudscore.serving.quality import DAY_S, ROLES, DayQuality, Ledger, decode_results

log = logging.getLogger(__name__)
MAX_SKEW_S = DAY_S  # a result more than this far in the future (by the wall clock) is not used
IDLE_S = 300.0  # a results partition with nothing new this long, at its end, no longer holds days back
LOG_EVERY_S = 60.0  # consume errors: one line at most this often


class QualityMetrics:
    """The series of `fraudscore quality`, in their own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = self.registry = CollectorRegistry()
        labels = ["role", "model_version"]
        self.transactions = Counter(
            "fraudscore_quality_transactions", "Matured transactions, by model, decision at the model's own threshold "
            "and outcome (fraud: confirmed within the delay; genuine: not).", [*labels, "decision", "outcome"], registry=r)
        self.top_cards = Counter("fraudscore_quality_top_cards", "Cards among each matured day's k highest-scored "
                                 "cards (card precision@k's denominator).", labels, registry=r)
        self.top_cards_compromised = Counter(
            "fraudscore_quality_top_cards_compromised", "Of those, cards with a fraud confirmed that day.", labels, registry=r)
        self.days = Counter("fraudscore_quality_days", "Days of event time evaluated, by model.", labels, registry=r)
        self.day_value = Gauge("fraudscore_quality_last_day", "The last matured day's precision, recall, "
                               "card_precision_at_k, alert_rate and transactions, by model (absent when undefined: "
                               "no alert, no fraud).", [*labels, "metric"], registry=r)
        self.day_start = Gauge("fraudscore_quality_last_day_timestamp_seconds",
                               "Start of the last matured day (UTC), by model.", labels, registry=r)
        self.results = Counter("fraudscore_quality_results", "Results read, by outcome: used, unreadable, late (their "
                               "day had matured), future (event time over a day ahead of the clock).", ["outcome"],
                               registry=r)
        self.confirmations = Counter("fraudscore_quality_confirmations", "Confirmations read, by outcome: used, "
                                     "genuine (TX_FRAUD 0), unreadable.", ["outcome"], registry=r)
        self.errors = Counter("fraudscore_quality_kafka_errors", "Errors reading the topics (logged once a minute at most).",
                              registry=r)
        self.pending = Gauge("fraudscore_quality_pending_results", "Results held until their day matures.", registry=r)
        self.bytes = Gauge("fraudscore_quality_bytes", "Memory held by pending results and confirmations.", registry=r)
        self.watermark = Gauge("fraudscore_quality_watermark_seconds", "Newest event time read from the results.", registry=r)
        self.caught_up = Gauge("fraudscore_quality_caught_up", "1 once the topics were read to where they ended at start.",
                               registry=r)
        self.delay = Gauge("fraudscore_quality_delay_seconds", "The confirmation delay (--delay).", registry=r)

    def touch(self, role: str, version: str) -> None:
        """A model seen for the first time: its counters exist at 0 from now on, so that the first
        day it matures is an increase Prometheus sees (not a series born at its value)."""
        for decision in ("alert", "pass"):
            for outcome in ("fraud", "genuine"):
                self.transactions.labels(role, version, decision, outcome)
        for counter in (self.top_cards, self.top_cards_compromised, self.days):
            counter.labels(role, version)

    def publish(self, day: DayQuality, count: bool) -> None:
        """A matured day: its gauges, and with `count` its counters (not for days re-read at start)."""
        labels = (day.role, day.version)
        if count:
            t = self.transactions
            t.labels(*labels, "alert", "fraud").inc(day.true_positives)
            t.labels(*labels, "alert", "genuine").inc(day.false_positives)
            t.labels(*labels, "pass", "fraud").inc(day.false_negatives)
            t.labels(*labels, "pass", "genuine").inc(day.transactions - day.alerts - day.false_negatives)
            self.top_cards.labels(*labels).inc(day.top_cards)
            self.top_cards_compromised.labels(*labels).inc(day.top_cards_compromised)
            self.days.labels(*labels).inc()
        values = {"precision": day.precision, "recall": day.recall, "card_precision_at_k": day.card_precision,
                  "alert_rate": day.alerts / day.transactions if day.transactions else float("nan"),
                  "transactions": float(day.transactions)}
        for name, value in values.items():
            if np.isfinite(value):
                self.day_value.labels(*labels, name).set(value)
            else:
                try:
                    self.day_value.remove(*labels, name)
                except KeyError:
                    pass
        self.day_start.labels(*labels).set(day.day * DAY_S)


class QualityMonitor:
    """Reads the results and labels topics from `history_s` back (by Kafka timestamp) and keeps
    the ledger and metrics current. `run()` until `request_stop()`."""

    def __init__(self, kafka: dict, output_topic: str, labels_topic: str, delay_s: int, top_k: int, history_s: int,
                 metrics: QualityMetrics):
        self.kafka, self.topics = kafka, (output_topic, labels_topic)
        self.ledger = Ledger(delay_s, top_k)
        self.metrics, self.history_s = metrics, history_s
        self._stop = False
        self._start_ends: dict[tuple[str, int], int] = {}  # high watermarks at start
        self._starts: dict[tuple[str, int], int] = {}  # where reading began
        # The end of each partition as its last end-of-partition event said: with transactional
        # producers (the sidecar's --exactly-once) the high watermark lies past a commit marker
        # that no position ever reaches.
        self._eof: dict[tuple[str, int], int] = {}
        # Event time, per results partition: the newest read, the newest of what it held at start,
        # and when its last result was read. Days mature on the slowest partition's (watermark()):
        # the sidecars' partitions run days apart while a backlog drains.
        self._newest: dict[int, int] = {}
        self._newest_at_start: dict[int, int] = {}
        self._last_read: dict[int, float] = {}
        self.start_watermark_s = 0  # watermark() over what the topics held at start, once caught up
        self.caught_up = False
        self._errors, self._errors_logged = 0, -float("inf")
        metrics.delay.set(delay_s)

    def request_stop(self, *_args) -> None:
        self._stop = True

    def _consumer(self):
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        from fraudscore.serving.sidecar.clients import KafkaUnavailable, kafka_log, quiet_repeats

        quiet_repeats()  # librdkafka's lines through logging, a repeated one once (as the sidecar's)
        consumer = Consumer(self.kafka | {"logger": kafka_log, "group.id": "fraudscore-quality", "enable.auto.commit": False,
                                          "auto.offset.reset": "earliest", "enable.partition.eof": True})
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            consumer.close()
            raise KafkaUnavailable(f"cannot reach the broker at {self.kafka.get('bootstrap.servers')}: {exc}") from None
        missing = [t for t in self.topics if t not in metadata.topics or metadata.topics[t].error is not None]
        if missing:
            consumer.close()
            raise KafkaUnavailable(f"topic(s) {', '.join(missing)} not found; create them (`fraudscore topics create`) "
                                   "or fix --output-topic / --labels-topic")
        since_ms = int((time.time() - self.history_s) * 1000)
        wanted = [TopicPartition(t, p, since_ms) for t in self.topics for p in sorted(metadata.topics[t].partitions)]
        starts = consumer.offsets_for_times(wanted, timeout=10)
        for tp in starts:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            if tp.offset < 0:  # nothing that recent: start at the end
                tp.offset = high
            self._start_ends[(tp.topic, tp.partition)] = high
            self._starts[(tp.topic, tp.partition)] = tp.offset
        consumer.assign(starts)
        log.info("reading %s and %s from %s back: %d results and confirmations to read first",
                 *self.topics, f"{self.history_s / DAY_S:g} days",
                 sum(max(0, self._start_ends[(tp.topic, tp.partition)] - tp.offset) for tp in starts))
        return consumer

    def run(self) -> int:
        consumer = self._consumer()
        labels_checked, labels_done = 0.0, False
        try:
            while not self._stop:
                messages = self._read(consumer.consume(2000, 0.2))
                positions = self._positions(consumer)
                if not self.caught_up and all(self._reached(k, end, positions) for k, end in self._start_ends.items()):
                    self.caught_up = True
                    self.start_watermark_s = min(self._newest_at_start.values(), default=0)
                    self.metrics.caught_up.set(1)
                    log.info("caught up: results to event time %s, %d pending, %d confirmations held",
                             _day_text(self.ledger.watermark_s), self.ledger.pending, self.ledger.confirmations)
                if time.monotonic() - labels_checked >= 1.0 or not messages:
                    # A day matures only once every confirmation written so far has been read.
                    labels_checked = time.monotonic()
                    labels_done = self._labels_read(consumer, positions)
                watermark = self.watermark()
                if self.caught_up and labels_done and watermark:
                    for day in self.ledger.mature(watermark):
                        self._publish(day)
                self.metrics.pending.set(self.ledger.pending)
                self.metrics.bytes.set(self.ledger.nbytes)
                self.metrics.watermark.set(watermark or 0)
        finally:
            consumer.close()
        return 0

    def _read(self, messages: list) -> list:
        """Results into the ledger, confirmations into it; the readable messages."""
        from confluent_kafka import KafkaError

        from fraudscore.serving.transactions import decode_labels

        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
                self._eof.pop((m.topic(), m.partition()), None)
            elif err.code() == KafkaError._PARTITION_EOF:
                self._eof[(m.topic(), m.partition())] = m.offset()
            else:
                self._consume_error(err)
        labels = [m.value() for m in good if m.topic() == self.topics[1]]
        if labels:
            batch = decode_labels(labels)
            self.ledger.confirm(batch.ids, batch.seconds)
            self.metrics.confirmations.labels("used").inc(len(batch.ids))
            self.metrics.confirmations.labels("genuine").inc(batch.genuine)
            self.metrics.confirmations.labels("unreadable").inc(batch.unreadable)
        results = [m for m in good if m.topic() == self.topics[0]]
        if results:
            self._add_results(results)
        return good

    def _add_results(self, results: list) -> None:
        known = len(self.ledger.versions)
        batch = decode_results(results, self.ledger.versions)
        if len(self.ledger.versions) > known:  # new models: their counters exist at 0 from now on
            names = {i: v for v, i in self.ledger.versions.items()}
            for column, role in enumerate(ROLES):
                for v in np.unique(batch.versions[:, column]).tolist():
                    if v >= known:
                        self.metrics.touch(role, names[v])
        future = batch.seconds > time.time() + MAX_SKEW_S  # a clock gone wrong must not mature every day
        if future.any():
            self.metrics.results.labels("future").inc(int(future.sum()))
            batch = batch.take(np.flatnonzero(~future))
        now = time.monotonic()
        for row, second in zip(batch.source.tolist(), batch.seconds.tolist()):
            m = results[row]
            p = m.partition()
            self._newest[p] = max(self._newest.get(p, second), second)
            self._last_read[p] = now
            if m.offset() < self._start_ends[(m.topic(), p)]:
                # What the topics held at start: the days that had matured by then were counted before.
                self._newest_at_start[p] = max(self._newest_at_start.get(p, second), second)
        late = self.ledger.late_results
        self.ledger.add_results(batch)
        late = self.ledger.late_results - late
        self.metrics.results.labels("used").inc(len(batch.ids) - late)
        self.metrics.results.labels("late").inc(late)
        self.metrics.results.labels("unreadable").inc(batch.unreadable)

    def watermark(self) -> int | None:
        """The event time up to which every results partition has been read: the slowest partition's
        newest, leaving out partitions at their end with nothing new for IDLE_S (a partition that
        no instance writes to any more); None before any result."""
        now = time.monotonic()
        active = [s for p, s in self._newest.items()
                  if not (self._eof.get((self.topics[0], p), -1) >= 0 and now - self._last_read[p] > IDLE_S)]
        return min(active) if active else (max(self._newest.values()) if self._newest else None)

    def _publish(self, day: DayQuality) -> None:
        count = (day.day + 1) * DAY_S + self.ledger.delay_s > self.start_watermark_s
        self.metrics.publish(day, count=count)
        log.info("%s %s %s: %d transactions, %d alerts, precision %.3f, recall %.3f, card precision@%d %.3f%s",
                 _day_text(day.day * DAY_S), day.role, day.version, day.transactions, day.alerts, day.precision,
                 day.recall, self.ledger.top_k, day.card_precision,
                 "" if count else " (evaluated before the restart: not counted again)")

    def _positions(self, consumer) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition

        # Before its first message a partition has no position yet: it is where reading began.
        return {(tp.topic, tp.partition): max(tp.offset, self._starts[(tp.topic, tp.partition)])
                for tp in consumer.position([TopicPartition(t, p) for t, p in self._start_ends])}

    def _reached(self, key: tuple[str, int], end: int, positions: dict) -> bool:
        return positions[key] >= end or self._eof.get(key, -1) >= end

    def _labels_read(self, consumer, positions: dict) -> bool:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            return all(self._reached((t, p), consumer.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1], positions)
                       for t, p in self._start_ends if t == self.topics[1])
        except KafkaException as exc:  # the broker away for a moment: no day matures until it is back
            self._consume_error(exc)
            return False

    def _consume_error(self, err) -> None:
        self._errors += 1
        self.metrics.errors.inc()
        if time.monotonic() - self._errors_logged >= LOG_EVERY_S:
            self._errors_logged = time.monotonic()
            log.warning("Kafka: %s (%d errors since the last report)", err, self._errors)
            self._errors = 0


def _day_text(seconds: int | None) -> str:
    return "none" if seconds is None else str(np.datetime64(int(seconds), "s"))
