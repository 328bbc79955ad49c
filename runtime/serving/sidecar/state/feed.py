"""The terminal feed: each input partition's transactions as its owner decoded them, reduced
to what the terminal table needs, so that no instance decodes every partition's JSON.

With --state-topic, the owner of input partition p writes, for every batch it reads, one
record to partition p of the feed topic (`<state-topic>-feed`): the offsets of the batch's
messages [first, through) and, for each transaction decoded from them, its offset, id,
event time and terminal, as four little-endian int64 columns (32 bytes a transaction,
against ~120 bytes of JSON to parse in the simulated stream). Every instance's terminal table reads the feed of
every partition instead of the input (terminal_table.py).

The input stays the source of truth and the feed only an accelerator, so nothing about it
has to be exactly-once:

- a record's rows are a function of the input's messages alone (the decoder and the key
  limit the scorer and the table share), whoever wrote it and whether or not its batch was
  delivered or committed;
- the table applies a partition's rows in offset order from wherever it has read to
  (`positions`): a row below it is skipped, so a record written twice (a rewound batch, a
  new owner starting from the committed offset) counts once;
- a record starting after that position (a record lost, a partition skipped by a marker or
  retention) is a gap: the table reads that partition's input directly from its position
  instead (`TerminalTable`: the fallback), as it does whenever a batch needs rows the feed
  has not brought yet.

A record carries a fingerprint of what its rows depend on (the input topic, the message size
limit, the format): a record written for another input (two deployments sharing a state
topic's name) is unreadable here, not applied. A partition's rows of one batch beyond
MAX_RECORD_ROWS go in several records, each under the broker's default message size.

    writer = FeedWriter(config, metrics, partitions=len(input_partitions))
    writer.publish(partitions, offsets, row_partitions, row_offsets, ids, seconds, terminals)
    record = decode_record(value, fingerprint(config))   # FeedRecord, or ValueError
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass

import numpy as np

from fraudscore.serving.sidecar.clients import common_config
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.transactions import EVENT_SECONDS
from fraudscore.serving.wire import MAX_KEY_BYTES

log = logging.getLogger(__name__)

MAGIC = b"FSF1"
_HEAD = struct.Struct("<4sqqqq")  # magic, fingerprint, first offset, through offset, rows
COLUMNS = 4  # offset, id, event time, terminal: int64 each
ROW_BYTES = COLUMNS * 8
MAX_RECORD_ROWS = 16_384  # 512 KiB a record: under the 1 MB that brokers and librdkafka accept by default


def fingerprint(config: SidecarConfig) -> int:
    """What a record's rows depend on besides the input's messages: the input topic, the decoder's
    message size limit, the key limit and the format. Records of another fingerprint are not applied."""
    what = f"{MAGIC.decode()}\n{config.input_topic}\n{config.max_message_bytes}\n{MAX_KEY_BYTES}".encode()
    return int.from_bytes(hashlib.blake2b(what, digest_size=8).digest(), "little", signed=True)


def feed_topic(state_topic: str) -> str:
    """The terminal feed's topic beside the state topic `state_topic`."""
    return f"{state_topic}-feed"


@dataclass(frozen=True)
class FeedRecord:
    """Input offsets [first, through) of one partition, and the transactions decoded from them."""

    first: int
    through: int
    offsets: np.ndarray  # int64, ascending, within [first, through)
    ids: np.ndarray
    seconds: np.ndarray
    terminals: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def rows_from(self, offset: int) -> FeedRecord:
        """The record without its rows before input offset `offset`."""
        keep = self.offsets >= offset
        return FeedRecord(max(self.first, offset), self.through, self.offsets[keep], self.ids[keep],
                          self.seconds[keep], self.terminals[keep])


def encode_record(first: int, through: int, offsets: np.ndarray, ids: np.ndarray, seconds: np.ndarray,
                  terminals: np.ndarray, mark: int = 0) -> bytes:
    """One feed record's bytes; `mark`: the writer's `fingerprint`.

    >>> r = decode_record(encode_record(10, 13, np.array([10, 12]), np.array([7, 8]), np.array([100, 101]), np.array([3, 4])))
    >>> r.first, r.through, r.ids.tolist(), r.terminals.tolist()
    (10, 13, [7, 8], [3, 4])
    """
    n = len(offsets)
    columns = np.empty((COLUMNS, n), "<i8")
    columns[0], columns[1], columns[2], columns[3] = offsets, ids, seconds, terminals
    return _HEAD.pack(MAGIC, int(mark), int(first), int(through), n) + columns.tobytes()


def decode_record(value: bytes | None, mark: int = 0) -> FeedRecord:
    """A feed record from its bytes, written with fingerprint `mark`; ValueError (saying what is
    wrong) when it is not one."""
    if value is None or len(value) < _HEAD.size:
        raise ValueError("shorter than a feed record's header")
    magic, written_for, first, through, n = _HEAD.unpack_from(value)
    if magic != MAGIC:
        raise ValueError(f"magic {magic!r}, expected {MAGIC!r} (another format or another program's record)")
    if written_for != mark:
        raise ValueError("written for another input topic, message size limit or format (a state topic "
                         "shared by two deployments?)")
    if n < 0 or len(value) != _HEAD.size + n * ROW_BYTES:
        raise ValueError(f"{len(value)} bytes for {n} rows")
    columns = np.frombuffer(value, "<i8", offset=_HEAD.size).reshape(COLUMNS, n).astype(np.int64)
    offsets, seconds = columns[0], columns[2]
    if not 0 <= first <= through or (n and (offsets[0] < first or offsets[-1] >= through or (np.diff(offsets) <= 0).any())):
        raise ValueError(f"offsets outside [{first}, {through}) or not ascending")
    if n and not ((seconds >= EVENT_SECONDS[0]) & (seconds <= EVENT_SECONDS[1])).all():
        raise ValueError(f"event times outside {EVENT_SECONDS[0]}..{EVENT_SECONDS[1]} s, which no decoded transaction has")
    return FeedRecord(first, through, offsets, columns[1], seconds, columns[3])


class FeedWriter:
    """Writes the owner's decoded transactions to the feed topic, one record per partition and batch.

    Delivery is not waited for: a record that fails is logged and counted, and the readers
    see a gap and read that partition's input instead. After a fatal producer error the writer
    stops (every reader then reads this instance's partitions from the input)."""

    def __init__(self, config: SidecarConfig, metrics, partitions: int):
        from confluent_kafka import Producer

        self.metrics = metrics
        self.topic = feed_topic(config.state_topic)
        self.partitions = partitions  # of the feed topic; an input partition beyond them is not fed
        self.mark = fingerprint(config)
        # Records join over offsets the consumer skipped (transaction markers, aborted messages,
        # what retention deleted) only where it never skips anything a reader could still read:
        # with `latest`, an offset out of range jumps to the end, over retained messages.
        self.joins = config.offset_reset == "earliest"
        self.stopped = False
        self.producer = Producer(common_config(config) | {
            "acks": "all", "enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4",
        } | {k: v for k, v in config.kafka.items() if not k.startswith("transaction")})
        self.published: dict[int, int] = {}  # input partition -> the offset its last record went up to

    def publish(self, partitions: np.ndarray, offsets: np.ndarray, row_partitions: np.ndarray, row_offsets: np.ndarray,
                ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> None:
        """A batch read from the input (`partitions`, `offsets`: every message, decoded or not) and
        the transactions decoded from them (`row_*`), one record per partition (or more, past
        MAX_RECORD_ROWS rows)."""
        if self.stopped:
            return
        for p in np.unique(partitions).tolist():
            if p >= self.partitions:
                continue
            mine = offsets[partitions == p]  # in the order read
            if (np.diff(mine) <= 0).any():
                # Read twice within one batch (a rewind between two polls): which offsets it
                # covers is not one range. Not fed; readers see a gap and read the input.
                self.published.pop(p, None)
                continue
            first, through = int(mine[0]), int(mine[-1]) + 1
            done = self.published.get(p)
            if done is not None and through <= done:
                continue  # a rewound batch, fed already
            if done is not None and (first < done or self.joins):
                # Before `done`: in the last record. Between `done` and the first message (a
                # transaction marker, a message retention took): nothing this owner could read,
                # and its consumer read on from there, so the records join without a gap.
                first = done
            rows = np.flatnonzero((row_partitions == p) & (row_offsets >= first))
            # Record k covers [bounds[k], bounds[k + 1]): its first row's offset starts it.
            starts = list(range(0, len(rows), MAX_RECORD_ROWS)) or [0]
            bounds = [first] + [int(row_offsets[rows[k]]) for k in starts[1:]] + [through]
            written = True
            for k, start in enumerate(starts):
                part = rows[start:start + MAX_RECORD_ROWS]
                value = encode_record(bounds[k], bounds[k + 1], row_offsets[part], ids[part], seconds[part],
                                      terminals[part], self.mark)
                written = self._produce(p, value) and written
            if written:
                self.published[p] = through
            else:
                self.published.pop(p, None)
        self.producer.poll(0)

    def forget(self, partitions: list[int]) -> None:
        """Partitions revoked: their next owner feeds them from where it starts."""
        for p in partitions:
            self.published.pop(p, None)

    def flush(self, timeout_s: float) -> None:
        """Send what is queued (before a revoke: the next owner's records then come after these)."""
        self.producer.flush(max(0.0, timeout_s))

    def _stop(self, reason) -> None:
        if not self.stopped:
            self.stopped = True
            self.published.clear()
            log.error("terminal feed: the producer failed for good (%s); no more records from this instance: "
                      "every instance reads its partitions from the input instead until it restarts", reason)

    def _produce(self, partition: int, value: bytes) -> bool:
        """Queue one record; False if it could not be (counted as failed)."""
        from confluent_kafka import KafkaException

        def delivered(err, msg) -> None:
            if err is None:
                self.metrics.feed_records.labels("written").inc()
            else:
                self.metrics.feed_records.labels("failed").inc()
                self.published.pop(partition, None)
                log.warning("terminal feed: a record of partition %d not written (%s); readers read that "
                            "partition's input instead", partition, err)
                if err.fatal():
                    self._stop(err)

        try:
            self.producer.produce(self.topic, value=value, partition=partition, on_delivery=delivered)
            return True
        except BufferError:  # the queue is full (the broker slow or gone): readers fall back to the input
            self.producer.poll(0)
        except KafkaException as exc:  # a record too large for a setting in --kafka, a fatal producer error
            error = exc.args[0] if exc.args else None
            log.warning("terminal feed: a record of partition %d not queued (%s)", partition, exc)
            if error is not None and hasattr(error, "fatal") and error.fatal():
                self._stop(error)
        self.metrics.feed_records.labels("failed").inc()
        return False

    def close(self, timeout_s: float) -> None:
        left = self.producer.flush(max(0.0, timeout_s))
        if left:
            log.info("terminal feed: %d record(s) not written at exit; readers read that input instead", left)
