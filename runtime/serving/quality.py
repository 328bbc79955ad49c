"""Live model quality, the pure part: results and confirmations in, matured days out (the Kafka
reader and its metrics: fraudscore.serving.quality_monitor).

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

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from fraudscore.serving.transactions import parse_time, parse_times

DAY_S = 86_400
ROLES = ("champion", "challenger")


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
    source: np.ndarray | None = None  # int64: each row's position in the decoded messages

    def take(self, rows: np.ndarray) -> ResultBatch:
        return ResultBatch(self.ids[rows], self.cards[rows], self.seconds[rows], self.versions[rows], self.scores[rows],
                           self.alerts[rows], source=None if self.source is None else self.source[rows])


def _card(key: bytes | None) -> int:
    if key and key.isdigit() and len(key) <= 18:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key or b"", digest_size=8).digest(), "little", signed=True)


def decode_results(messages: list, versions: dict[str, int]) -> ResultBatch:
    """Results (Kafka messages of the output topic) as columns; `versions` maps model versions to
    indices and grows. A result that is not a JSON object with an integer transaction_id, a
    numeric score and a model_version is unreadable (labels join on integer ids); a missing
    decision reads as "pass". The card is the message key (decimal: the CUSTOMER_ID of raw mode;
    other keys are hashed; an empty key makes one card of all, which card precision@k cannot
    use)."""
    ids, cards, seconds, vers, scores, alerts, stamps, source = [], [], [], [], [], [], [], []
    unreadable = 0
    for position, msg in enumerate(messages):
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
        source.append(position)
        cards.append(_card(msg.key()))
        stamps.append(doc.get("event_time"))
        seconds.append(msg.timestamp()[1] // 1000)
        vers.append((versions.setdefault(version, len(versions)), chal_version))
        scores.append((float(score), chal_score))
        alerts.append((doc.get("decision") == "alert", chal_alert))
    event = np.array(seconds, np.int64)
    given = [i for i, s in enumerate(stamps) if isinstance(s, str)]
    if given:  # raw mode: "2018-04-01T07:19:05Z" (UTC), read by the input's own TX_DATETIME parser
        texts = [stamps[i].rstrip("Z") for i in given]
        parsed = parse_times(texts)
        if parsed is None:  # one is not a time: each alone, the unreadable ones keep the Kafka timestamp
            parsed = [parse_time(text) for text in texts]
            given, parsed = [i for i, p in zip(given, parsed) if p is not None], [p for p in parsed if p is not None]
        event[given] = parsed
    n = len(ids)
    return ResultBatch(np.array(ids, np.int64), np.array(cards, np.int64), event,
                       np.array(vers, np.int32).reshape(n, 2), np.array(scores, np.float32).reshape(n, 2),
                       np.array(alerts, bool).reshape(n, 2), unreadable, np.array(source, np.int64))


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
    watermark), and the confirmed frauds not matched yet.

        ledger = Ledger(delay_s=7 * 86_400, top_k=100)
        ledger.add_results(decode_results(messages, ledger.versions))
        ledger.confirm(label_batch.ids, label_batch.seconds)
        days = ledger.mature(watermark_s)   # DayQuality per day, role and model version

    A confirmation is kept until a maturing day holds its transaction, or, unmatched (a
    transaction this results topic never had), until the watermark is `delay_s` plus two days
    past the later of its TX_DATETIME and the watermark when it was read. It is matched by
    transaction id only: in feature mode a result's day is its Kafka timestamp's, which need not
    be its TX_DATETIME's."""

    delay_s: int
    top_k: int = 100
    versions: dict[str, int] = field(default_factory=dict)
    matured_through: int | None = None  # the last day evaluated
    watermark_s: int = 0  # the newest event time added
    _days: dict[int, list[ResultBatch]] = field(default_factory=dict)
    _confirmed: dict[int, int] = field(default_factory=dict)  # transaction id -> max(TX_DATETIME, watermark when read)
    late_results: int = 0

    def add_results(self, batch: ResultBatch) -> None:
        if not len(batch.ids):
            return
        batch = dataclasses.replace(batch, source=None)  # held: 42 bytes a result, not 50
        day = batch.seconds // DAY_S
        if self.matured_through is not None:
            late = day <= self.matured_through
            if late.any():
                self.late_results += int(late.sum())
                batch, day = batch.take(np.flatnonzero(~late)), day[~late]
        if len(day):
            self.watermark_s = max(self.watermark_s, int(batch.seconds.max()))
        for d in np.unique(day).tolist():
            rows = np.flatnonzero(day == d)
            self._days.setdefault(d, []).append(batch if len(rows) == len(day) else batch.take(rows))

    def confirm(self, ids: np.ndarray, seconds: np.ndarray) -> None:
        """Fraud confirmations: their transaction ids and TX_DATETIME seconds. One that matches
        nothing is forgotten `delay_s` plus two days after the later of its TX_DATETIME and the
        watermark when it was read: a confirmation read before its result (the labels topic
        read faster than the results) waits for it."""
        for tx, second in zip(ids.tolist(), seconds.tolist()):
            self._confirmed[tx] = max(self.watermark_s, second)

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
            forget_before = watermark_s - self.delay_s - 2 * DAY_S
            self._confirmed = {tx: s for tx, s in self._confirmed.items() if s >= forget_before}
        return out

    def _evaluate(self, day: int, chunks: list[ResultBatch]) -> list[DayQuality]:
        ids = np.concatenate([c.ids for c in chunks])
        cards = np.concatenate([c.cards for c in chunks])
        versions = np.concatenate([c.versions for c in chunks])
        scores = np.concatenate([c.scores for c in chunks])
        alerts = np.concatenate([c.alerts for c in chunks])
        confirmed = np.fromiter(self._confirmed, np.int64, len(self._confirmed))
        for tx in ids[np.isin(ids, confirmed)].tolist():  # matched: done with
            self._confirmed.pop(tx, None)
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
