"""`fraudscore results`: what became of each input. The input topic is read over a range
and reconciled with the scores and dead-letter topics, one outcome per input message:

- **dead-lettered**: a dead letter names its (partition, offset) in its source headers;
- **scored**: a result carries its transaction id;
- **missing**: neither (the number that must be 0 once the sidecars have caught up).

Results beyond one per scored input are duplicates (at least once: a kill or a broker
outage repeats what was delivered but not committed); results whose id is not among the
inputs read belong to inputs outside the range.

    kafka = connection(bootstrap_servers="127.0.0.1:9092")
    report = reconcile(kafka, Topics(input="tx-in", output="tx-scores", dlq="tx-dlq"))
    print("\\n".join(report.lines()))   # inputs, scored, duplicates, dead letters by reason, missing

Every read assigns partitions (no consumer group, nothing committed), is `read_committed`
(results of an aborted exactly-once batch were never delivered) and stops at the end
offsets seen when it started, so it always finishes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from fraudscore.errors import UsageError
from fraudscore.serving.dlq import DeadLetter
from fraudscore.serving.sidecar.clients import KafkaUnavailable

MISSING_SHOWN = 10  # missing inputs listed by (partition, offset, id)


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str


@dataclass
class Reconciliation:
    """The outcome of every input message in the range, counted."""

    topics: Topics
    since_ms: int | None = None
    until_ms: int | None = None
    inputs: int = 0
    scored: int = 0
    dead_letters: Counter = field(default_factory=Counter)  # reason -> inputs dead-lettered
    missing: int = 0
    missing_shown: list[tuple[int, int, object]] = field(default_factory=list)  # (partition, offset, id or None)
    results: int = 0  # result messages for the inputs read
    duplicates: int = 0  # results beyond one per scored input
    duplicated_ids: int = 0  # transactions with more results than inputs
    alerts: int = 0  # distinct scored transactions whose result was an alert
    repeated_inputs: int = 0  # input messages whose id an earlier input of the range had
    outside: int = 0  # results whose id is not among the inputs read

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def complete(self) -> bool:
        """Every input has an outcome."""
        return self.missing == 0

    def lines(self) -> list[str]:
        t = self.topics
        span = "" if self.since_ms is None and self.until_ms is None else (
            f" written {_when(self.since_ms) or 'from the start'} to {_when(self.until_ms) or 'now'}")
        out = [f"inputs        {self.inputs:>10,}  on {t.input}{span}"
               + (f" ({self.repeated_inputs:,} repeat an earlier id)" if self.repeated_inputs else ""),
               f"scored        {self.scored:>10,}  {self.results:,} results on {t.output}: {self.duplicates:,} duplicates "
               f"of {self.duplicated_ids:,} transactions; {self.alerts:,} alerts",
               f"dead letters  {self.dead_lettered:>10,}  on {t.dlq}"
               + (": " + ", ".join(f"{r} {n:,}" for r, n in self.dead_letters.most_common()) if self.dead_letters else ""),
               f"missing       {self.missing:>10,}  " + ("every input has an outcome" if self.complete else
                                                      "inputs with neither a result nor a dead letter")]
        out += [f"  missing: {t.input} partition {p} offset {o}, transaction_id {i if i is not None else '(unreadable)'}"
                for p, o, i in self.missing_shown]
        if self.missing > len(self.missing_shown):
            out.append(f"  ... and {self.missing - len(self.missing_shown):,} more")
        if self.outside:
            out.append(f"({self.outside:,} results on {t.output} are for inputs outside the range)")
        return out

    def to_json(self) -> dict:
        return {"input_topic": self.topics.input, "output_topic": self.topics.output, "dlq_topic": self.topics.dlq,
                "since_ms": self.since_ms, "until_ms": self.until_ms, "inputs": self.inputs, "scored": self.scored,
                "dead_lettered": self.dead_lettered, "dead_letters": dict(self.dead_letters), "missing": self.missing,
                "missing_shown": [{"partition": p, "offset": o, "transaction_id": i} for p, o, i in self.missing_shown],
                "results": self.results, "duplicates": self.duplicates, "duplicated_ids": self.duplicated_ids,
                "alerts": self.alerts, "repeated_inputs": self.repeated_inputs, "outside": self.outside,
                "complete": self.complete}


def _when(ms: int | None) -> str:
    import datetime as dt

    return "" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def reconcile(kafka: dict, topics: Topics, *, since_ms: int | None = None, until_ms: int | None = None,
              timeout_s: float = 30.0) -> Reconciliation:
    """Read the inputs written in [since_ms, until_ms) (Kafka timestamps; None: no bound), every
    result and every dead letter, and count each input's outcome."""
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise UsageError("--until must be after --since")
    report = Reconciliation(topics, since_ms, until_ms)
    _count(report, *_read_topics(kafka, topics, since_ms, until_ms, timeout_s))
    return report


def _read_topics(kafka: dict, topics: Topics, since_ms: int | None, until_ms: int | None,
                 timeout_s: float) -> tuple[dict, dict, Counter, set]:
    """The inputs in range ((partition, offset) -> id, None when the value is not a JSON object
    with one), the dead letters of the input topic ((partition, offset) -> reason), the results
    by id and the ids alerted on."""
    from confluent_kafka import Consumer

    consumer = Consumer({"logger": logging.getLogger("fraudscore.kafka")} | kafka | {
        "group.id": f"fraudscore-results-{os.getpid()}", "enable.auto.commit": False, "enable.auto.offset.store": False,
        "enable.partition.eof": True, "isolation.level": "read_committed",
        # An offset deleted by retention between the watermark query and the fetch is an error,
        # never a silent jump to the end (which would report a partition's inputs as none).
        "auto.offset.reset": "error",
    })
    inputs: dict[tuple[int, int], object] = {}
    dead: dict[tuple[int, int], str] = {}
    results: Counter = Counter()
    alerted: set = set()

    def take_inputs(msgs: list) -> None:
        for m in msgs:
            inputs[(m.partition(), m.offset())] = _transaction_id(m.value())

    def take_dead(msgs: list) -> None:
        for m in msgs:
            letter = DeadLetter.from_message(m)
            if letter.source_topic == topics.input and letter.source_partition is not None and letter.source_offset is not None:
                dead.setdefault((letter.source_partition, letter.source_offset), letter.reason or "unknown")

    def take_results(msgs: list) -> None:
        for m in msgs:
            try:
                doc = orjson.loads(m.value() or b"")
                tx = doc["transaction_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # not a fraudscore result: nothing to reconcile it with
            results[_hashable(tx)] += 1
            if doc.get("decision") == "alert":
                alerted.add(_hashable(tx))

    try:
        _read(consumer, topics.input, take_inputs, timeout_s, since_ms, until_ms)
        _read(consumer, topics.dlq, take_dead, timeout_s)
        _read(consumer, topics.output, take_results, timeout_s)
    finally:
        consumer.close()
    return inputs, dead, results, alerted


def _count(report: Reconciliation, inputs: dict, dead: dict, results: Counter, alerted: set) -> None:
    """Each input's outcome. Results are shared out among the inputs with their id, in offset
    order: two inputs with one id and one result are one scored and one missing, not two scored."""
    scored_inputs: Counter = Counter()  # id -> inputs of the range scored with that id
    seen: set = set()
    for (p, o), tx in sorted(inputs.items()):
        report.inputs += 1
        if tx is not None:
            if tx in seen:
                report.repeated_inputs += 1
            seen.add(tx)
        if (p, o) in dead:
            report.dead_letters[dead[(p, o)]] += 1
        elif tx is not None and scored_inputs[tx] < results[tx]:
            report.scored += 1
            scored_inputs[tx] += 1
        else:
            report.missing += 1
            if len(report.missing_shown) < MISSING_SHOWN:
                report.missing_shown.append((p, o, tx))
    for tx, n in results.items():
        if tx not in seen:
            report.outside += n
            continue
        report.results += n
        extra = n - scored_inputs[tx]
        if extra > 0:
            report.duplicates += extra
            report.duplicated_ids += 1
    report.alerts = len(alerted & set(scored_inputs))


def _transaction_id(value: bytes | None) -> object:
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    tx = doc.get("TRANSACTION_ID")
    return _hashable(tx) if isinstance(tx, (int, str)) and not isinstance(tx, bool) else None


def _hashable(tx: object) -> object:
    """Ids as results carry them: an integer id stays an integer, a string a string."""
    return tx if isinstance(tx, (int, str)) else orjson.dumps(tx)


def _read(consumer, topic: str, take: Callable[[list], None], timeout_s: float,
          since_ms: int | None = None, until_ms: int | None = None) -> None:
    """Feed `take` every message of `topic` from `since_ms` (or the first retained offset) to
    `until_ms` (or the end offsets seen now), in batches."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot reach Kafka within {timeout_s:g} s ({exc.args[0].str() if exc.args else exc}); "
                             "check --bootstrap-servers and -X") from None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise KafkaUnavailable(f"topic {topic} does not exist; check the topic names (the same as `fraudscore run`'s)")
    partitions = sorted(meta.partitions)
    starts, ends = {}, {}
    for p in partitions:
        starts[p], ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
    for bound, target in ((since_ms, starts), (until_ms, ends)):
        if bound is None:
            continue
        for tp in consumer.offsets_for_times([TopicPartition(topic, p, bound) for p in partitions], timeout=timeout_s):
            if tp.error is not None:
                raise KafkaUnavailable(f"{topic} partition {tp.partition}: no offset for the time asked ({tp.error})")
            if tp.offset >= 0:  # -1: nothing at or after that time
                target[tp.partition] = max(starts[tp.partition], min(tp.offset, ends[tp.partition]))
            elif target is starts:
                starts[tp.partition] = ends[tp.partition]
    todo = {p for p in partitions if starts[p] < ends[p]}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(todo)])
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"reading {topic} stalled for {timeout_s:g} s (partitions {sorted(todo)} "
                                     "unfinished); raise --timeout")
            batch = []
            for m in consumer.consume(5000, 0.5):
                if m.topic() is not None and m.topic() != topic:
                    continue  # left from this consumer's read of another topic
                p = m.partition()
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(p)
                        continue
                    raise KafkaUnavailable(f"reading {topic}: {m.error().str()}")
                if p not in todo or m.offset() >= ends[p]:
                    todo.discard(p)
                    continue
                batch.append(m)
                if m.offset() >= ends[p] - 1:
                    todo.discard(p)
            if batch:
                take(batch)
                deadline = time.monotonic() + timeout_s  # progress: the timeout is for a stall
    finally:
        consumer.unassign()
