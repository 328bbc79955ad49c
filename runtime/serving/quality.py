"""Live model quality: the results topic joined with the labels topic's confirmations.

`fraudscore quality` reads what the sidecars wrote (each result's transaction id, card = the
message key, event time, the champion's score and decision, and with `--challenger` the
challenger's) and the fraud confirmations, and, once a day of event time is older than the
confirmation delay, evaluates it per model version with the protocol of the training
handbook: a transaction confirmed by then is a fraud, any other is genuine. Per model
version and role it exports the day's confusion counts at the model's own threshold, and
card precision@k (the k cards with the highest score that day, the share of them with a
confirmed fraud that day).

    ledger = Ledger(delay_s=7 * 86_400, top_k=100)
    ledger.add_results(batch)            # ResultBatch from decode_results
    ledger.confirm(ids, seconds)         # from decode_labels
    for day in ledger.mature(watermark_s): ...

What it holds: every result of the days not matured yet (42 bytes a result: the delay plus
one day of traffic) and the confirmations of those days. A restart reads the topics again
from that far back (by Kafka timestamp), so nothing else needs saving; see docs/operations.md,
"Live model quality".
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

DAY_S = 86_400
ROLES = ("champion", "challenger")
log = logging.getLogger("fraudscore.quality")


@dataclass
class ResultBatch:
    """Decoded results: one row per readable result, versions as indices into `versions`."""

    ids: np.ndarray  # int64 transaction ids
    cards: np.ndarray  # int64: the message key (CUSTOMER_ID in raw mode), or a hash of it
    seconds: np.ndarray  # int64 event time (raw mode's event_time, else the result's Kafka timestamp)
    versions: np.ndarray  # int32 (rows, 2): champion, challenger version index (-1: no challenger score)
    scores: np.ndarray  # float32 (rows, 2), NaN where there is none
    alerts: np.ndarray  # bool (rows, 2)
    unreadable: int = 0


def _card(key: bytes | None) -> int:
    if key and key.isdigit() and len(key) <= 18:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key or b"", digest_size=8).digest(), "little", signed=True)


def decode_results(messages: list, versions: dict[str, int]) -> ResultBatch:
    """Results (Kafka messages of the output topic) as columns; `versions` maps model versions to
    indices and grows. A result that is not a JSON object with an integer transaction_id, a
    finite score and a decision is unreadable (labels join on integer ids)."""
    ids, cards, seconds, vers, scores, alerts, stamps = [], [], [], [], [], [], []
    unreadable = 0
    for msg in messages:
        try:
            doc = orjson.loads(msg.value() or b"")
            tx, score, version = doc["transaction_id"], doc["score"], doc["model_version"]
            if type(tx) is not int or type(score) not in (float, int) or not isinstance(version, str):
                raise ValueError
            shadow = doc.get("challenger")
            if shadow is not None:
                other = shadow["version"]
                chal_score = float("nan") if shadow["score"] is None else float(shadow["score"])
                chal_version, chal_alert = versions.setdefault(other, len(versions)), shadow["decision"] == "alert"
            else:
                chal_version, chal_score, chal_alert = -1, float("nan"), False
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            unreadable += 1
            continue
        ids.append(tx)
        cards.append(_card(msg.key()))
        stamps.append(doc.get("event_time"))
        seconds.append(msg.timestamp()[1] // 1000)
        vers.append((versions.setdefault(version, len(versions)), chal_version))
        scores.append((float(score), chal_score))
        alerts.append((doc.get("decision") == "alert", chal_alert))
    event = np.array(seconds, np.int64)
    given = [i for i, s in enumerate(stamps) if isinstance(s, str)]
    if given:  # raw mode: "2018-04-01T07:19:05Z" (UTC)
        texts = [stamps[i].rstrip("Z") for i in given]
        try:
            event[given] = np.array(texts, "datetime64[s]").astype(np.int64)
        except ValueError:
            for i, text in zip(given, texts):
                try:
                    event[i] = np.datetime64(text, "s").astype(np.int64)
                except ValueError:
                    pass  # keeps the Kafka timestamp
    n = len(ids)
    return ResultBatch(np.array(ids, np.int64), np.array(cards, np.int64), event,
                       np.array(vers, np.int32).reshape(n, 2), np.array(scores, np.float32).reshape(n, 2),
                       np.array(alerts, bool).reshape(n, 2), unreadable)


@dataclass(frozen=True)
class DayQuality:
    """One matured day of one model version."""

    day: int  # days since 1970-01-01 (UTC)
    role: str
    version: str
    transactions: int
    true_positives: int  # alerted, confirmed
    false_positives: int  # alerted, not confirmed within the delay
    false_negatives: int  # confirmed, not alerted
    top_cards: int  # min(k, cards scored that day)
    top_cards_compromised: int

    @property
    def alerts(self) -> int:
        return self.true_positives + self.false_positives

    @property
    def frauds(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def precision(self) -> float:
        return self.true_positives / self.alerts if self.alerts else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.frauds if self.frauds else float("nan")

    @property
    def card_precision(self) -> float:
        return self.top_cards_compromised / self.top_cards if self.top_cards else float("nan")


@dataclass
class Ledger:
    """Results by event day until the day matures (its end plus `delay_s` reached by the event-time
    watermark), and the confirmed frauds of those days."""

    delay_s: int
    top_k: int = 100
    versions: dict[str, int] = field(default_factory=dict)
    matured_through: int | None = None  # the last day evaluated
    _days: dict[int, list[ResultBatch]] = field(default_factory=dict)
    _confirmed: dict[int, int] = field(default_factory=dict)  # transaction id -> its event second
    late_results: int = 0
    late_confirmations: int = 0

    def add_results(self, batch: ResultBatch) -> None:
        if not len(batch.ids):
            return
        day = batch.seconds // DAY_S
        if self.matured_through is not None:
            late = day <= self.matured_through
            if late.any():
                self.late_results += int(late.sum())
                keep = np.flatnonzero(~late)
                batch = ResultBatch(batch.ids[keep], batch.cards[keep], batch.seconds[keep], batch.versions[keep],
                                    batch.scores[keep], batch.alerts[keep])
                day = day[keep]
        for d in np.unique(day).tolist():
            rows = np.flatnonzero(day == d)
            self._days.setdefault(d, []).append(
                batch if len(rows) == len(day) else
                ResultBatch(batch.ids[rows], batch.cards[rows], batch.seconds[rows], batch.versions[rows],
                            batch.scores[rows], batch.alerts[rows]))

    def confirm(self, ids: np.ndarray, seconds: np.ndarray) -> None:
        """Fraud confirmations (transaction ids and their TX_DATETIME seconds)."""
        for tx, s in zip(ids.tolist(), seconds.tolist()):
            if self.matured_through is not None and s // DAY_S <= self.matured_through:
                self.late_confirmations += 1  # after the delay: the protocol counted it genuine
            else:
                self._confirmed[tx] = s

    def due(self, watermark_s: int) -> list[int]:
        """Days whose confirmation delay has passed at this event-time watermark."""
        return sorted(d for d in self._days if (d + 1) * DAY_S + self.delay_s <= watermark_s)

    def mature(self, watermark_s: int) -> list[DayQuality]:
        """Evaluate and drop every day due at this watermark, oldest first."""
        out = []
        for d in self.due(watermark_s):
            out += self._evaluate(d, self._days.pop(d))
            self.matured_through = d if self.matured_through is None else max(self.matured_through, d)
        if out:
            self._confirmed = {tx: s for tx, s in self._confirmed.items() if s // DAY_S > self.matured_through}
        return out

    def _evaluate(self, day: int, chunks: list[ResultBatch]) -> list[DayQuality]:
        ids = np.concatenate([c.ids for c in chunks])
        cards = np.concatenate([c.cards for c in chunks])
        versions = np.concatenate([c.versions for c in chunks])
        scores = np.concatenate([c.scores for c in chunks])
        alerts = np.concatenate([c.alerts for c in chunks])
        confirmed = np.fromiter(self._confirmed, np.int64, len(self._confirmed))
        names = {i: v for v, i in self.versions.items()}
        out = []
        for column, role in enumerate(ROLES):
            for v in np.unique(versions[:, column]).tolist():
                if v < 0:
                    continue
                rows = np.flatnonzero((versions[:, column] == v) & np.isfinite(scores[:, column]))
                # At least once: a result read twice is one transaction (its first copy counts).
                _, first = np.unique(ids[rows], return_index=True)
                rows = rows[np.sort(first)]
                out.append(self._day_quality(day, role, names[v], ids[rows], cards[rows], scores[rows, column],
                                             alerts[rows, column], confirmed))
        return out

    def _day_quality(self, day: int, role: str, version: str, ids, cards, scores, alerts, confirmed) -> DayQuality:
        fraud = np.isin(ids, confirmed)
        tp = int((alerts & fraud).sum())
        order = np.argsort(cards, kind="stable")
        sorted_cards = cards[order]
        starts = np.flatnonzero(np.r_[True, sorted_cards[1:] != sorted_cards[:-1]]) if len(cards) else np.empty(0, np.int64)
        top_cards = compromised = 0
        if len(starts):
            best = np.maximum.reduceat(scores[order], starts)
            hit = np.logical_or.reduceat(fraud[order], starts)
            top = np.argsort(-best, kind="stable")[:self.top_k]
            top_cards, compromised = len(top), int(hit[top].sum())
        return DayQuality(day, role, version, len(ids), tp, int((alerts & ~fraud).sum()), int((~alerts & fraud).sum()),
                          top_cards, compromised)

    @property
    def pending(self) -> int:
        return sum(len(c.ids) for chunks in self._days.values() for c in chunks)

    @property
    def nbytes(self) -> int:
        held = sum(c.ids.nbytes + c.cards.nbytes + c.seconds.nbytes + c.versions.nbytes + c.scores.nbytes + c.alerts.nbytes
                   for chunks in self._days.values() for c in chunks)
        return held + 100 * len(self._confirmed)  # a dict entry of two ints: ~100 bytes

    @property
    def confirmations(self) -> int:
        return len(self._confirmed)


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
                               "day had matured).", ["outcome"], registry=r)
        self.confirmations = Counter("fraudscore_quality_confirmations", "Confirmations read, by outcome: used, "
                                     "late (after the delay), genuine, unreadable.", ["outcome"], registry=r)
        self.pending = Gauge("fraudscore_quality_pending_results", "Results held until their day matures.", registry=r)
        self.bytes = Gauge("fraudscore_quality_bytes", "Memory held by pending results and confirmations.", registry=r)
        self.watermark = Gauge("fraudscore_quality_watermark_seconds", "Newest event time read from the results.", registry=r)
        self.caught_up = Gauge("fraudscore_quality_caught_up", "1 once the topics were read to where they ended at start.",
                               registry=r)
        self.delay = Gauge("fraudscore_quality_delay_seconds", "The confirmation delay (--delay).", registry=r)

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
        self.watermark_s: int | None = None
        self._stop = False
        self._start_ends: dict[tuple[str, int], int] = {}  # high watermarks at start
        self._starts: dict[tuple[str, int], int] = {}  # where reading began
        self.caught_up = False
        metrics.delay.set(delay_s)

    def request_stop(self, *_args) -> None:
        self._stop = True

    def _consumer(self):
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        from fraudscore.serving.sidecar.clients import KafkaUnavailable, kafka_log, quiet_repeats

        quiet_repeats()  # librdkafka's lines through logging, a repeated one once (as the sidecar's)
        consumer = Consumer(self.kafka | {"logger": kafka_log, "group.id": "fraudscore-quality", "enable.auto.commit": False,
                                          "auto.offset.reset": "earliest", "enable.partition.eof": False})
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
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
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
        from confluent_kafka import TopicPartition

        from fraudscore.serving.transactions import decode_labels

        consumer = self._consumer()
        labels_checked, labels_done = 0.0, False
        try:
            while not self._stop:
                messages = [m for m in consumer.consume(2000, 0.2) if m.error() is None]
                results = [m for m in messages if m.topic() == self.topics[0]]
                labels = [m.value() for m in messages if m.topic() == self.topics[1]]
                if labels:
                    batch = decode_labels(labels)
                    late = self.ledger.late_confirmations
                    self.ledger.confirm(batch.ids, batch.seconds)
                    late = self.ledger.late_confirmations - late
                    self.metrics.confirmations.labels("used").inc(len(batch.ids) - late)
                    self.metrics.confirmations.labels("late").inc(late)
                    self.metrics.confirmations.labels("genuine").inc(batch.genuine)
                    self.metrics.confirmations.labels("unreadable").inc(batch.unreadable)
                if results:
                    batch = decode_results(results, self.ledger.versions)
                    late = self.ledger.late_results
                    self.ledger.add_results(batch)
                    late = self.ledger.late_results - late
                    self.metrics.results.labels("used").inc(len(batch.ids) - late)
                    self.metrics.results.labels("late").inc(late)
                    self.metrics.results.labels("unreadable").inc(batch.unreadable)
                    if len(batch.seconds):
                        newest = int(batch.seconds.max())
                        self.watermark_s = newest if self.watermark_s is None else max(self.watermark_s, newest)
                # Before its first message a partition has no position yet: it is where reading began.
                positions = {(tp.topic, tp.partition): max(tp.offset, self._starts[(tp.topic, tp.partition)])
                             for tp in consumer.position([TopicPartition(t, p) for t, p in self._start_ends])}
                if not self.caught_up and all(positions[k] >= end for k, end in self._start_ends.items()):
                    self.caught_up = True
                    self.metrics.caught_up.set(1)
                    log.info("caught up: results to event time %s, %d pending, %d confirmations held",
                             _day_text(self.watermark_s), self.ledger.pending, self.ledger.confirmations)
                if time.monotonic() - labels_checked >= 1.0 or not messages:
                    # A day matures only once every confirmation written so far has been read.
                    labels_checked = time.monotonic()
                    labels_done = all(positions[(t, p)] >= consumer.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
                                      for t, p in self._start_ends if t == self.topics[1])
                if labels_done and self.watermark_s is not None:
                    for day in self.ledger.mature(self.watermark_s):
                        self.metrics.publish(day, count=self.caught_up)
                        log.info("%s %s %s: %d transactions, %d alerts, precision %.3f, recall %.3f, card precision@%d "
                                 "%.3f%s", _day_text(day.day * DAY_S), day.role, day.version, day.transactions,
                                 day.alerts, day.precision, day.recall, self.ledger.top_k, day.card_precision,
                                 "" if self.caught_up else " (re-read at start: not counted)")
                self.metrics.pending.set(self.ledger.pending)
                self.metrics.bytes.set(self.ledger.nbytes)
                if self.watermark_s is not None:
                    self.metrics.watermark.set(self.watermark_s)
        finally:
            consumer.close()
        return 0


def _day_text(seconds: int | None) -> str:
    return "none" if seconds is None else str(np.datetime64(int(seconds), "s"))
