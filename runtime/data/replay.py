"""A raw transaction stream for raw-mode sidecars: transactions and their delayed fraud
confirmations, in event-time order, produced to Kafka at a chosen speed-up
(`fraudscore replay`).

    events = raw_stream(simulate(customers=500, terminals=1000, days=60, seed=1).transactions)
    replay(events, {"bootstrap.servers": "127.0.0.1:9092"}, "tx-in", "tx-labels", speedup=86_400)

Each transaction goes to the input topic keyed by its CUSTOMER_ID (the raw-mode
contract); each fraud (TX_FRAUD = 1) is confirmed on the labels topic at the
transaction's time plus a uniform delay shorter than the feature specification's
(7 days): late enough to be realistic, early enough that every terminal window that
needs it has it, as investigators' confirmations would be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from fraudscore.data.table import Table
from fraudscore.errors import UsageError
from fraudscore.serving.kafka import produce_waiting

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Events:
    """Messages in event-time order: `is_label[i]` says whether message i goes to the labels topic."""

    seconds: np.ndarray  # int64 event time of each message (a label's: its confirmation time)
    is_label: np.ndarray  # bool
    keys: list[bytes]
    values: list[bytes]

    def __len__(self) -> int:
        return len(self.values)

    def between(self, start_s: int | None = None, end_s: int | None = None) -> Events:
        """The messages whose event time is in [start_s, end_s): a transaction by its own time, a
        confirmation by when it is confirmed. Two replays split at the same instant (`--until T`
        then `--from T`) send every message once, in the order one replay would."""
        keep = np.ones(len(self.seconds), bool)
        if start_s is not None:
            keep &= self.seconds >= start_s
        if end_s is not None:
            keep &= self.seconds < end_s
        where = np.flatnonzero(keep).tolist()
        return Events(self.seconds[keep], self.is_label[keep], [self.keys[i] for i in where], [self.values[i] for i in where])


def raw_stream(table: Table, *, delay_days: int = 7, seed: int = 0) -> Events:
    """Transactions and fraud confirmations of `table` (raw columns with TX_FRAUD), merged by event time.

    A confirmation at the same second as a transaction comes first."""
    for column in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"):
        if column not in table:
            raise UsageError(f"replay: the transactions need a {column} column (the output of `fraudscore simulate`)")
    seconds = table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64)
    texts = np.strings.replace(table["TX_DATETIME"].astype("datetime64[s]").astype(str), "T", " ").tolist()
    ids, customers = table["TRANSACTION_ID"].tolist(), table["CUSTOMER_ID"].tolist()
    terminals, amounts = table["TERMINAL_ID"].tolist(), table["TX_AMOUNT"].astype(np.float64).tolist()
    tx_values = [
        orjson.dumps({"TRANSACTION_ID": i, "TX_DATETIME": t, "CUSTOMER_ID": c, "TERMINAL_ID": m, "TX_AMOUNT": a})
        for i, t, c, m, a in zip(ids, texts, customers, terminals, amounts)
    ]
    frauds = np.flatnonzero(table["TX_FRAUD"] == 1)
    rng = np.random.default_rng(seed)
    label_seconds = seconds[frauds] + rng.integers(0, max(1, delay_days * SECONDS_PER_DAY), size=len(frauds))
    label_values = [
        orjson.dumps({"TRANSACTION_ID": ids[i], "CUSTOMER_ID": customers[i], "TERMINAL_ID": terminals[i],
                      "TX_DATETIME": texts[i], "TX_FRAUD": 1})
        for i in frauds.tolist()
    ]
    all_seconds = np.concatenate([seconds, label_seconds])
    is_label = np.concatenate([np.zeros(len(seconds), bool), np.ones(len(frauds), bool)])
    # Event time, then labels before transactions, then input order (stable).
    order = np.lexsort((~is_label, all_seconds))
    values = tx_values + label_values
    keys = [str(c).encode() for c in customers] + [str(customers[i]).encode() for i in frauds.tolist()]
    return Events(all_seconds[order], is_label[order], [keys[i] for i in order.tolist()], [values[i] for i in order.tolist()])


def replay(events: Events, kafka: dict, input_topic: str, labels_topic: str, *, speedup: float = 0.0,
           progress: Callable[[int, float], None] | None = None) -> float:
    """Produce `events` to Kafka; `speedup` event seconds per wall second (0: as fast as possible).

    Returns the wall seconds it took. Every message is acknowledged (acks=all) before it returns.
    With a speed-up each message is sent when its event time comes (within a millisecond or
    so), not in bursts; `progress(sent, wall seconds)` is called about once a second.

    A confirmation is acknowledged before any transaction after it is sent, as it would be when
    minutes or days lie between them: at a high speed-up they are microseconds apart on two
    topics, and Kafka orders nothing across topics, so a transaction could otherwise reach the
    sidecar before a confirmation that precedes it in event time."""
    from confluent_kafka import Producer

    errors: list = []

    def report(err, msg) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"logger": logging.getLogger("fraudscore.kafka"),  # not librdkafka's raw stderr lines
                         "linger.ms": 5, "acks": "all", "enable.idempotence": True, "on_delivery": report,
                         "delivery.report.only.error": True, "queue.buffering.max.messages": 1_000_000} | kafka)
    start_wall, start_event = time.monotonic(), int(events.seconds[0]) if len(events) else 0
    # Due time of each message, in wall seconds from the start (speed-up 0: all due at once).
    due = (events.seconds - start_event) / speedup if speedup > 0 else np.zeros(len(events))
    labels_sent = False  # confirmations produced since the last flush
    sent, last_progress = 0, start_wall
    while sent < len(events):
        now = time.monotonic() - start_wall
        # Everything due by now, at most 2,000 at a time (then the producer is polled).
        upto = min(int(np.searchsorted(due, now, side="right")), sent + 2_000)
        if upto == sent:
            time.sleep(min(float(due[sent]) - now, 0.5))
            continue
        for i in range(sent, upto):
            label = bool(events.is_label[i])
            if labels_sent and not label:
                producer.flush(60)
                labels_sent = False
            labels_sent |= label
            topic = labels_topic if label else input_topic
            produce_waiting(producer, topic, events.values[i], events.keys[i])
        sent = upto
        producer.poll(0)
        if progress is not None and (time.monotonic() - last_progress >= 1.0 or sent == len(events)):
            last_progress = time.monotonic()
            progress(sent, last_progress - start_wall)
    left = producer.flush(60)
    if left or errors:
        raise UsageError(f"replay: {left} messages not delivered, {len(errors)} refused ({errors[:1]}); check the broker and topics")
    return time.monotonic() - start_wall
