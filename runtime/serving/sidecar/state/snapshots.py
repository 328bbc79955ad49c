"""Snapshots of raw mode's feature state in Kafka, so a restore reads the last snapshot and
only the input written after it, not the whole retained history.

Two kinds, both keyed by name in two compacted topics (`--state-topic NAME` and NAME-index):

- `customers/<p>`: the customer windows of input partition p, written by its owner at the
  group's committed offset (the snapshot covers offsets [first, offset) of p). Any instance
  later assigned p loads it and replays the input from `offset` to the committed offset.
- `terminals`: the terminal table (every partition's transactions and the confirmations),
  written by the owner of input partition 0, with the offset it has read of every input and
  labels partition. An instance starting up loads it and reads every partition from there.

A snapshot is an `.npz` of the state's arrays (no pickle) whose header records what it
covers: format, kind, the feature specification, the allowed lateness, topics, group and
offsets. It is cut into chunks of at most CHUNK_BYTES in the data topic (one partition per
input partition, so chunks spread); an index record (key = the snapshot's name, in a
one-partition topic read whole at restore) is written only after every chunk was
acknowledged and names the chunks' offsets and the blob's SHA-256. So a reader sees the old
snapshot or the new one, never half of one. A snapshot that is missing, damaged, for another
specification, lateness, topic or group, or ahead of the group's committed offset is refused
(`SnapshotRefused.reason`); the caller falls back to replaying the input (the source of truth)
and counts it.

    store = SnapshotStore(config)
    store.write("customers/0", partition=0, blob=encode(state, header))
    blob, entry = store.read("customers/0")           # SnapshotRefused if missing or damaged
    header, state = decode(blob, expect, CustomerState(spec, allowed_lateness_s=86400))
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
import zipfile

import numpy as np
import orjson

from fraudscore.errors import FraudscoreError, InputError
from fraudscore.serving.kafka import produce_waiting
from fraudscore.serving.sidecar.clients import common_config
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.kafka import OFFSET_BEGINNING, PARTITION_EOF

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_BYTES = 900_000  # under the producer's and the broker's default 1 MB message limit


def index_topic(state_topic: str) -> str:
    """The topic of snapshot index records beside the data topic `state_topic`."""
    return f"{state_topic}-index"


def customers_name(partition: int) -> str:
    return f"customers/{partition}"


TERMINALS = "terminals"


class SnapshotRefused(FraudscoreError):
    """A snapshot that cannot be used; `reason` is one word for the metric (missing, corrupt,
    mismatch, ahead), the message says why. The caller replays the input instead."""

    exit_code = 3

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def encode(state, header: dict) -> bytes:
    """A state (`CustomerState` or `TerminalState`) and what it covers, as one blob."""
    scalars, arrays = state.to_arrays()
    head = orjson.dumps({"format": FORMAT, **header, "scalars": scalars})
    buffer = io.BytesIO()
    np.savez(buffer, __header__=np.frombuffer(head, np.uint8), **arrays)
    return buffer.getvalue()


def decode(blob: bytes, expect: dict, state):
    """(header, state): `state` (a fresh one of the right kind) filled from `blob`, after every
    field of `expect` matched the header. SnapshotRefused otherwise."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            header = orjson.loads(npz["__header__"].tobytes())
            arrays = {name: npz[name] for name in npz.files if name != "__header__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, orjson.JSONDecodeError, EOFError) as exc:
        raise SnapshotRefused("corrupt", f"not a readable snapshot ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotRefused("mismatch", f"snapshot format {header.get('format') if isinstance(header, dict) else '?'}, "
                                          f"this version reads {FORMAT}")
    for key, want in expect.items():
        if header.get(key) != want:
            raise SnapshotRefused("mismatch", f"snapshot {key} is {header.get(key)!r}, this sidecar has {want!r}")
    try:
        state.load_arrays(header["scalars"], arrays)
    except (InputError, KeyError) as exc:
        raise SnapshotRefused("corrupt", f"snapshot arrays do not fit ({exc})") from None
    return header, state


class SnapshotStore:
    """Writes and reads snapshot blobs in the state topics (`config.state_topic` and its index)."""

    def __init__(self, config: SidecarConfig):
        from confluent_kafka import Producer

        self.config = config
        self.topic = config.state_topic
        self.index = index_topic(config.state_topic)
        self.producer = Producer(common_config(config) | {
            "acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4",
        } | {k: v for k, v in config.kafka.items() if not k.startswith("transaction")})
        self._partitions: int | None = None
        self._chunks: dict[str, int] = {}  # name -> chunks of the last snapshot written or read
        # Seconds a write may wait for the broker: --drain-timeout, or what is left of it while
        # the sidecar stops (it sets this to its stop budget).
        self.budget = lambda: config.drain_timeout_s

    def partitions(self) -> int:
        if self._partitions is None:
            metadata = self.producer.list_topics(self.topic, timeout=self.config.startup_timeout_s)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise SnapshotRefused("missing", f"state topic {self.topic} not found; create it with `fraudscore topics create`")
            self._partitions = len(topic.partitions)
        return self._partitions

    def missing(self) -> list[str]:
        """The state topics (snapshots, index) the broker does not have now: a metadata request
        each, at most 5 s for both. A snapshot round checks first: a write to a topic that is gone waits
        its whole budget for metadata that never comes, and the loop waits with it."""
        from confluent_kafka import KafkaException

        gone = []
        deadline = time.monotonic() + min(5.0, max(0.1, self.budget()))  # both requests together
        for topic in (self.topic, self.index):
            try:
                found = self.producer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic())).topics.get(topic)
            except KafkaException as exc:  # no answer: as good as missing for this round
                raise FraudscoreError(f"state topic {topic}: metadata unavailable ({exc})") from None
            if found is None or found.error is not None or not found.partitions:
                gone.append(topic)
        if gone:
            self._partitions = None  # made again, it may have another partition count
        return gone

    def write(self, name: str, partition: int, blob: bytes) -> int:
        """Store `blob` as snapshot `name` (chunks in data partition `partition` mod the count, then
        its index record); the number of chunks. FraudscoreError if the broker did not take it."""
        target = partition % self.partitions()
        count = max(1, -(-len(blob) // CHUNK_BYTES))
        offsets: list[int | None] = [None] * count
        errors: list[str] = []

        def acknowledged(i: int):
            def callback(err, msg) -> None:
                if err is not None:
                    errors.append(str(err))
                else:
                    offsets[i] = msg.offset()
            return callback

        for i in range(count):
            self._produce(self.topic, f"{name}/{i}", blob[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES], target, acknowledged(i))
        self._flush(name)
        if errors or None in offsets:
            raise FraudscoreError(f"snapshot {name}: chunks not acknowledged ({errors[0] if errors else 'timeout'})")
        entry = {"format": FORMAT, "partition": target, "offsets": offsets, "bytes": len(blob),
                 "sha256": hashlib.sha256(blob).hexdigest(), "written_ms": int(time.time() * 1000)}
        self._produce(self.index, name, orjson.dumps(entry), None, acknowledged(0))
        # Chunks the previous snapshot had beyond this one's: tombstones, so compaction drops them.
        for i in range(count, self._chunks.get(name, 0)):
            self._produce(self.topic, f"{name}/{i}", None, target, None)
        self._flush(name)
        if errors:
            raise FraudscoreError(f"snapshot {name}: index record not acknowledged ({errors[0]})")
        self._chunks[name] = count
        return count

    def read(self, names: list[str]) -> dict[str, bytes | SnapshotRefused]:
        """The latest blob of each of `names`, or the SnapshotRefused that says why there is none."""
        entries = self._read_index()
        out: dict[str, bytes | SnapshotRefused] = {}
        for name in names:
            entry = entries.get(name)
            if entry is None:
                out[name] = SnapshotRefused("missing", f"no snapshot {name} in {self.index}")
                continue
            try:
                out[name] = self._read_blob(name, entry)
                self._chunks[name] = len(entry["offsets"])
            except SnapshotRefused as refused:
                out[name] = refused
        return out

    def close(self) -> None:
        self.producer.flush(self.budget())

    # ---------------------------------------------------------------- internals

    def _produce(self, topic: str, key: str, value: bytes | None, partition: int | None, callback) -> None:
        kwargs = {"partition": partition} if partition is not None else {}
        if not produce_waiting(self.producer, topic, value, key.encode(), on_delivery=callback,
                               give_up=lambda: self.budget() <= 0, **kwargs):
            raise FraudscoreError(f"snapshot chunk {key}: the producer's queue stayed full")

    def _flush(self, name: str) -> None:
        budget = self.budget()
        if self.producer.flush(budget):
            raise FraudscoreError(f"snapshot {name}: not acknowledged within {budget:g} s")

    def _reader(self):
        from confluent_kafka import Consumer

        c = self.config
        return Consumer(common_config(c) | {
            "group.id": f"{c.group_id}.snapshots.{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "enable.partition.eof": True, "fetch.wait.max.ms": 10,
        } | c.kafka | {"auto.offset.reset": "earliest", "isolation.level": "read_uncommitted"})

    def _read_index(self) -> dict[str, dict]:
        """Every index record, the latest per name (the topic is compacted and small)."""
        from confluent_kafka import TopicPartition

        c = self.config
        reader = self._reader()
        entries: dict[str, dict] = {}
        try:
            low, high = reader.get_watermark_offsets(TopicPartition(self.index, 0), timeout=c.startup_timeout_s, cached=False)
            if high <= low:
                return entries
            reader.assign([TopicPartition(self.index, 0, OFFSET_BEGINNING)])
            deadline = time.monotonic() + c.startup_timeout_s
            done = False
            while not done and time.monotonic() < deadline:
                for m in reader.consume(num_messages=1000, timeout=0.1):
                    if m.error() is not None:
                        done = done or m.error().code() == PARTITION_EOF
                        continue
                    key = (m.key() or b"").decode(errors="replace")
                    try:
                        entries[key] = orjson.loads(m.value()) if m.value() is not None else None
                    except orjson.JSONDecodeError:
                        entries[key] = {"damaged": True}
                    done = done or m.offset() >= high - 1
        finally:
            reader.close()
        return {k: v for k, v in entries.items() if v is not None}

    def _read_blob(self, name: str, entry: dict) -> bytes:
        from confluent_kafka import TopicPartition

        try:
            partition, offsets, size, digest = int(entry["partition"]), [int(o) for o in entry["offsets"]], int(entry["bytes"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise SnapshotRefused("corrupt", f"index record of {name} is damaged") from None
        if entry.get("format") != FORMAT or not offsets:
            raise SnapshotRefused("mismatch", f"index record of {name} has format {entry.get('format')}, this version reads {FORMAT}")
        wanted = {o: i for i, o in enumerate(offsets)}
        chunks: list[bytes | None] = [None] * len(offsets)
        reader = self._reader()
        try:
            reader.assign([TopicPartition(self.topic, partition, min(offsets))])
            deadline = time.monotonic() + self.config.startup_timeout_s
            last = max(offsets)
            while None in chunks and time.monotonic() < deadline:
                for m in reader.consume(num_messages=100, timeout=0.1):
                    if m.error() is not None:
                        if m.error().code() == PARTITION_EOF:
                            deadline = 0  # the end: what is missing is not coming
                        continue
                    i = wanted.get(m.offset())
                    if i is not None and m.key() == f"{name}/{i}".encode():
                        chunks[i] = m.value()
                    if m.offset() >= last:
                        deadline = 0
        finally:
            reader.close()
        if None in chunks:
            raise SnapshotRefused("corrupt", f"snapshot {name}: {chunks.count(None)} of {len(chunks)} chunks are gone "
                                             "(compacted or deleted since the index record was written)")
        blob = b"".join(chunks)  # type: ignore[arg-type]
        if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
            raise SnapshotRefused("corrupt", f"snapshot {name}: {len(blob)} bytes whose SHA-256 does not match its index record")
        return blob
