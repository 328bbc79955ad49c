"""The dead-letter topic for the on-call: read dead letters with their headers, and replay
them to the input topic once the producer is fixed (`fraudscore dlq show|replay`).

A dead letter is the original value and key of a rejected input with the headers the
sidecar wrote (`serving/sidecar/delivery.py`): `fraudscore.reason`, `.detail`,
`.source.topic`, `.source.partition`, `.source.offset`, `.model.version`, and
`fraudscore.truncated` / `fraudscore.key.truncated` (the original length) when the value
or key was cut to fit the dead-letter topic.

    kafka = connection(bootstrap_servers="127.0.0.1:9092")
    letters = read_dead_letters(kafka, "tx-dlq", Selection(reasons=frozenset({"bad_json"})))
    for letter in letters:
        print(letter.line())
    report = replay(kafka, letters, to_topic=None, execute=True)   # back to each source partition

Reading assigns every partition of the topic (no consumer group, nothing committed) and
stops at the end offsets seen when it started, so it always finishes. Replaying produces
each selected letter's value and key to its source topic and partition (or `--to` a
topic, partitioned by key) with a `fraudscore.replayed.from` header naming the dead
letter, and skips, counted and listed, letters whose value or key was truncated: the
full message is still at its source offset, and replaying a prefix would only be
rejected again (or worse, accepted).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from fraudscore.errors import FraudscoreError, UsageError
from fraudscore.serving import wire
from fraudscore.serving.kafka import produce_waiting
from fraudscore.serving.sidecar.config import read_config_file, read_sources

REPLAYED_HEADER = wire.REPLAYED_FROM
PAYLOAD_CHARS = 120
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class DlqUnavailable(FraudscoreError):
    """The broker could not be reached, the topic is missing, or a replay was not acknowledged."""

    exit_code = 3


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter topic, its headers parsed."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str = ""
    detail: str = ""
    source_topic: str = ""
    source_partition: int | None = None
    source_offset: int | None = None
    model_version: str = ""
    truncated: int | None = None  # the value's original length when it was cut
    key_truncated: int | None = None
    replayed_from: str = ""  # set on a message that is itself a replay

    @classmethod
    def from_message(cls, msg) -> DeadLetter:
        """From a confluent_kafka Message (or anything with the same methods)."""
        headers: dict[str, str] = {}
        for name, raw in msg.headers() or []:
            headers[name] = raw.decode("utf-8", "replace") if raw is not None else ""
        ts_type, ts = msg.timestamp()
        return cls(
            partition=msg.partition(), offset=msg.offset(), timestamp_ms=ts if ts_type else 0,
            key=msg.key(), value=msg.value(),
            reason=headers.get(wire.REASON, ""), detail=headers.get(wire.DETAIL, ""),
            source_topic=headers.get(wire.SOURCE_TOPIC, ""),
            source_partition=_int_or_none(headers.get(wire.SOURCE_PARTITION)),
            source_offset=_int_or_none(headers.get(wire.SOURCE_OFFSET)),
            model_version=headers.get(wire.MODEL_VERSION, ""),
            truncated=_int_or_none(headers.get(wire.TRUNCATED)),
            key_truncated=_int_or_none(headers.get(wire.KEY_TRUNCATED)),
            replayed_from=headers.get(REPLAYED_HEADER, ""),
        )

    @property
    def source(self) -> str:
        """topic/partition/offset of the rejected input, as far as the headers say."""
        return f"{self.source_topic or '?'}/{_or_q(self.source_partition)}/{_or_q(self.source_offset)}"

    def time(self) -> str:
        return dt.datetime.fromtimestamp(self.timestamp_ms / 1000, dt.UTC).isoformat(timespec="seconds") if self.timestamp_ms else "?"

    def line(self, payload_chars: int = PAYLOAD_CHARS) -> str:
        """One line for a terminal: where, when, why, from where, and the start of the payload."""
        cut = f" TRUNCATED(value was {self.truncated:,} bytes)" if self.truncated is not None else ""
        cut += f" KEY-TRUNCATED(key was {self.key_truncated:,} bytes)" if self.key_truncated is not None else ""
        return (f"p{self.partition}@{self.offset} {self.time()} reason={self.reason or '?'} source={self.source} "
                f"key={_preview(self.key, 40)} detail={self.detail!r}{cut} value={_preview(self.value, payload_chars)}")

    def to_json(self, payload_chars: int = 0) -> dict:
        """For scripts: every header; value and key as UTF-8 text (`*_base64` when not UTF-8);
        `payload_chars` > 0 cuts the value's text, 0 keeps it whole."""
        out = {"partition": self.partition, "offset": self.offset, "timestamp": self.time(),
               "reason": self.reason, "detail": self.detail, "source_topic": self.source_topic,
               "source_partition": self.source_partition, "source_offset": self.source_offset,
               "model_version": self.model_version, "truncated": self.truncated, "key_truncated": self.key_truncated,
               "value_bytes": None if self.value is None else len(self.value)}
        if self.replayed_from:
            out["replayed_from"] = self.replayed_from
        for name, data in (("key", self.key), ("value", self.value)):
            if data is None:
                out[name] = None
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # "value": null with "value_bytes" set means: see value_base64
                out[name], out[name + "_base64"] = None, base64.b64encode(data).decode()
                continue
            out[name] = text[:payload_chars] if payload_chars and name == "value" else text
        return out


@dataclass(frozen=True)
class Selection:
    """Which dead letters to show or replay. Offsets are inclusive and apply to every partition
    read (`partitions`: all when empty); `since_ms` is a broker timestamp in milliseconds."""

    reasons: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()
    from_offset: int | None = None
    to_offset: int | None = None
    since_ms: int | None = None
    limit: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether `letter` is selected (the limit aside)."""
        return ((not self.reasons or letter.reason in self.reasons)
                and (not self.partitions or letter.partition in self.partitions)
                and (self.from_offset is None or letter.offset >= self.from_offset)
                and (self.to_offset is None or letter.offset <= self.to_offset)
                and (self.since_ms is None or letter.timestamp_ms >= self.since_ms))


def parse_since(value: str | None, now: dt.datetime | None = None, flag: str = "--since") -> int | None:
    """`--since` (or `flag`): an ISO date or time (UTC unless it says otherwise) or a duration
    back from now (30m, 2h, 1d); milliseconds since the epoch."""
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    now = now or dt.datetime.now(dt.UTC)
    if match:
        when = now - dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    else:
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise UsageError(f"{flag} must be a time like 2026-11-29T10:00:00 (UTC) or a duration like 30m, 2h, "
                             f"1d; got {value!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def connection(*, bootstrap_servers: str | None, config_file: Path | None = None,
               properties_file: Path | None = None, kafka_flags: list[str] | None = None,
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings the way `fraudscore run` builds them (`read_sources`): -X over
    FRAUDSCORE_KAFKA_* variables over the properties file over the [kafka] table of --config;
    the bootstrap servers from the flag (or FRAUDSCORE_BOOTSTRAP_SERVERS) over --config's."""
    settings, kafka = read_sources({"bootstrap_servers": bootstrap_servers}, config_file=config_file,
                                   properties_file=properties_file, kafka_flags=kafka_flags, environ=environ)
    servers = settings.get("bootstrap_servers")
    if not servers:
        raise UsageError("missing --bootstrap-servers (flag, FRAUDSCORE_BOOTSTRAP_SERVERS or --config)")
    return {"bootstrap.servers": str(servers)} | kafka


def dlq_topic_from(topic: str | None, config_file: Path | None) -> str:
    """The dead-letter topic: the flag (or FRAUDSCORE_DLQ_TOPIC), else --config's dlq_topic."""
    if topic:
        return topic
    if config_file:
        found = read_config_file(config_file).get("dlq_topic")
        if found:
            return str(found)
    raise UsageError("missing --dlq-topic (flag, FRAUDSCORE_DLQ_TOPIC or --config)")


def read_dead_letters(kafka: dict, topic: str, selection: Selection = Selection(), *,
                      timeout_s: float = 30.0) -> list[DeadLetter]:
    """The selected dead letters of `topic`, partition by partition in offset order, up to the
    end offsets seen at the start (later ones are left for the next run)."""
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer({"logger": logging.getLogger("fraudscore.kafka")} | kafka | {
        # No group membership and no commits: assign() reads, nothing moves for anyone else.
        "group.id": f"fraudscore-dlq-reader-{os.getpid()}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": True,
        # Dead letters of an aborted exactly-once batch were never delivered; do not show them.
        "isolation.level": "read_committed",
    })
    try:
        try:
            md = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise DlqUnavailable(f"cannot reach Kafka at {kafka.get('bootstrap.servers')} within {timeout_s:g} s "
                                 f"({exc.args[0].str() if exc.args else exc}); check --bootstrap-servers and -X") from None
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise DlqUnavailable(f"topic {topic} does not exist on {kafka.get('bootstrap.servers')}; check --dlq-topic")
        partitions = sorted(p for p in meta.partitions if not selection.partitions or p in selection.partitions)
        if selection.partitions - set(meta.partitions):
            missing = ", ".join(map(str, sorted(selection.partitions - set(meta.partitions))))
            raise UsageError(f"--partition {missing}: {topic} has partitions 0..{len(meta.partitions) - 1}")
        starts, ends = _start_offsets(consumer, topic, partitions, selection, timeout_s)
        todo = {p for p in partitions if starts[p] < ends[p]}
        if not todo:
            return []
        # With --limit, one partition at a time (in the order letters are listed), stopping as soon
        # as enough match: `dlq show --limit 5` on a month of dead letters reads a few, not all.
        groups = [[p] for p in sorted(todo)] if selection.limit is not None else [sorted(todo)]
        letters: list[DeadLetter] = []
        for group in groups:
            if selection.limit is not None and len(letters) >= selection.limit:
                break
            letters += _read_partitions(consumer, topic, group, starts, ends, selection, timeout_s,
                                        None if selection.limit is None else selection.limit - len(letters))
        return letters
    finally:
        consumer.close()


def _read_partitions(consumer, topic: str, partitions: list[int], starts: dict[int, int], ends: dict[int, int],
                     selection: Selection, timeout_s: float, limit: int | None) -> list[DeadLetter]:
    """The selected letters of `partitions` from their start offsets to their end offsets, in
    partition then offset order; stops once `limit` (if any) letters of the first partition
    read matched (`limit` is only given for one partition at a time)."""
    from confluent_kafka import KafkaError, TopicPartition

    todo = set(partitions)
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in partitions])
    found: dict[int, list[DeadLetter]] = {p: [] for p in partitions}
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if time.monotonic() > deadline:
                raise DlqUnavailable(f"reading {topic} did not reach its end offsets within {timeout_s:g} s "
                                     f"(partitions {sorted(todo)} unfinished); raise --timeout")
            for msg in consumer.consume(500, 0.5):
                p = msg.partition()
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(p)
                        continue
                    raise DlqUnavailable(f"reading {topic}: {msg.error().str()}")
                if p not in todo:
                    continue
                if msg.offset() >= ends[p] - 1:
                    todo.discard(p)
                if msg.offset() < ends[p]:
                    letter = DeadLetter.from_message(msg)
                    if selection.matches(letter):
                        found[p].append(letter)
                        if limit is not None and len(found[p]) >= limit:
                            todo.discard(p)
                deadline = time.monotonic() + timeout_s  # progress: the timeout is for a stall
    finally:
        consumer.unassign()
    letters = [letter for p in partitions for letter in found[p]]
    return letters if limit is None else letters[:limit]


def _start_offsets(consumer, topic: str, partitions: list[int], selection: Selection,
                   timeout_s: float) -> tuple[dict[int, int], dict[int, int]]:
    """(first offset to read, end offset) of each partition under the selection."""
    from confluent_kafka import TopicPartition

    starts, ends = {}, {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        starts[p] = max(low, selection.from_offset or 0)
        ends[p] = high if selection.to_offset is None else min(high, selection.to_offset + 1)
    if selection.since_ms is not None and partitions:
        found = consumer.offsets_for_times([TopicPartition(topic, p, selection.since_ms) for p in partitions],
                                           timeout=timeout_s)
        for tp in found:
            # -1: nothing at or after that time in this partition.
            starts[tp.partition] = max(starts[tp.partition], tp.offset if tp.offset >= 0 else ends[tp.partition])
    return starts, ends


@dataclass
class ReplayReport:
    """What a replay did (or, dry, would do): counts per target, the dead letters' offset
    ranges per partition, and the letters it would not replay and why."""

    executed: bool
    sent: dict[str, int] = field(default_factory=dict)  # target topic -> count
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # DLQ partition -> (first, last) offset replayed
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def lines(self, dlq_topic: str) -> list[str]:
        """The summary the on-call keeps: what went where, from which offsets, and what did not."""
        verb = "replayed" if self.executed else "would replay"
        targets = ", ".join(f"{n:,} to {t}" for t, n in sorted(self.sent.items())) or "nothing"
        out = [f"{verb} {self.total:,} dead letters: {targets}" + ("" if self.executed else " (dry run; add --execute to send)")]
        out += [f"  from {dlq_topic} partition {p} offsets {a}..{b} (to go on from there: --partition {p} "
                f"--from-offset {b + 1})" for p, (a, b) in sorted(self.ranges.items())]
        for letter, why in self.skipped:
            out.append(f"  skipped p{letter.partition}@{letter.offset} ({letter.reason or '?'}): {why}")
        return out


def plan(letters: Iterable[DeadLetter], to_topic: str | None) -> tuple[list[tuple[DeadLetter, str, int | None]], list[tuple[DeadLetter, str]]]:
    """(letters to send with their target topic and partition, letters skipped with why).

    To its source topic a letter goes back to its source partition (the input's keying,
    whatever partitioner its producer used); to `to_topic` the producer partitions by key."""
    send, skipped = [], []
    for letter in letters:
        if letter.truncated is not None:
            skipped.append((letter, (f"value truncated (was {letter.truncated:,} bytes); the full message is at "
                                     f"{letter.source}; copy it from there")))
        elif letter.key_truncated is not None:
            skipped.append((letter, (f"key truncated (was {letter.key_truncated:,} bytes), so it was rejected as "
                                     "oversized_key and would be again; fix the producer's keys")))
        elif letter.value is None:
            skipped.append((letter, "no value (a tombstone): nothing to score"))
        elif to_topic:
            send.append((letter, to_topic, None))
        elif not letter.source_topic or letter.source_partition is None:
            skipped.append((letter, "no fraudscore.source.* headers; give --to TOPIC"))
        else:
            send.append((letter, letter.source_topic, letter.source_partition))
    return send, skipped


def replay(kafka: dict, letters: list[DeadLetter], dlq_topic: str, *, to_topic: str | None = None,
           execute: bool = False, timeout_s: float = 60.0) -> ReplayReport:
    """Produce the selected letters' original values and keys (see `plan`); only count them
    unless `execute`. Returns after every one is acknowledged (acks=all), or raises."""
    send, skipped = plan(letters, to_topic)
    report = ReplayReport(executed=execute, skipped=skipped)
    for letter, topic, _ in send:
        report.sent[topic] = report.sent.get(topic, 0) + 1
        first, last = report.ranges.get(letter.partition, (letter.offset, letter.offset))
        report.ranges[letter.partition] = (min(first, letter.offset), max(last, letter.offset))
    if not execute or not send:
        return report
    from confluent_kafka import KafkaException, Producer

    errors: list = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"logger": logging.getLogger("fraudscore.kafka")} | kafka | {
        "enable.idempotence": True, "acks": "all", "linger.ms": 5, "on_delivery": delivered})
    for letter, topic, partition in send:
        headers = [(REPLAYED_HEADER, f"{dlq_topic}/{letter.partition}/{letter.offset}".encode())]
        extra = {} if partition is None else {"partition": partition}
        try:
            produce_waiting(producer, topic, letter.value, letter.key, headers=headers, **extra)
        except KafkaException as exc:
            raise DlqUnavailable(f"replay to {topic}: {exc.args[0].str() if exc.args else exc}") from None
    left = producer.flush(timeout_s)
    if left or errors:
        raise DlqUnavailable(f"replay: {left} messages not acknowledged and {len(errors)} refused "
                             f"({errors[0].str() if errors else 'timeout'}); some may have been delivered: "
                             "check the input topic before running it again")
    return report


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _or_q(value) -> str:
    return "?" if value is None else str(value)


def _preview(data: bytes | None, chars: int) -> str:
    if data is None:
        return "null"
    text = data.decode("utf-8", "replace")
    shown = orjson.dumps(text[:chars]).decode()  # quoted and escaped: one line whatever the payload holds
    return shown + (f"...(+{len(text) - chars:,} chars)" if len(text) > chars else "")
