"""Raw transaction messages and fraud confirmations -> numpy columns, plus the rejected
messages and why. The input of raw mode (`fraudscore run --input raw`).

A raw transaction is one JSON object (extra fields ignored):

    {"TRANSACTION_ID": 1042, "TX_DATETIME": "2018-04-01 07:19:05", "CUSTOMER_ID": 596,
     "TERMINAL_ID": 3156, "TX_AMOUNT": 57.16}

- TRANSACTION_ID, CUSTOMER_ID, TERMINAL_ID: JSON integers (64-bit). Ids order same-second
  transactions in the customer windows, so they must be integers.
- TX_DATETIME: "YYYY-MM-DD HH:MM:SS" (UTC) or any ISO-8601 date-time ("T" or space,
  fractional seconds, "Z" or an offset such as "+02:00"), or an integer of epoch
  milliseconds. Event time has whole-second resolution: fractions are dropped
  (floor), as the offline features do.
- TX_AMOUNT: a JSON number, finite and not negative.

Reasons (headers of the dead letter; every problem of a message is named in the detail):
`empty`, `oversized`, `bad_json`, `not_object` (as in feature mode), `missing_field`,
`wrong_type` (a string amount, a float id, a boolean...), `bad_time` (not a date-time,
before 1970, or more than a day after the message's Kafka timestamp), `bad_amount`
(negative, NaN, infinite, or above 1e9).

A confirmation on the labels topic is {"TRANSACTION_ID", "TERMINAL_ID", "TX_DATETIME",
"TX_FRAUD": 1} (CUSTOMER_ID may be there and is not needed); one that cannot be read is
counted and skipped, never dead-lettered: labels are not scored.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass

import msgspec
import numpy as np

from fraudscore.features.spec import MAX_AMOUNT
from fraudscore.serving.decode import MAX_MESSAGE_BYTES, BadMessage, Rejection, parse_object, show_value, type_hint

RAW_REASONS = ("bad_time", "late")
"""Dead-letter reasons of raw mode besides decode.REASONS; `late`: older than the partition's newest
event time minus the allowed lateness (its windows may be incomplete)."""
LABEL_OUTCOMES = ("applied", "pending", "duplicate", "expired", "unreadable", "genuine")
RAW_FIELDS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
LABEL_FIELDS = ("TRANSACTION_ID", "TX_DATETIME", "TERMINAL_ID", "TX_FRAUD")
_INT_FIELDS = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")
_MIN_S, _MAX_S = 0, 9_200_000_000  # 1970 .. year 2261: beyond, int64 nanoseconds and most tools overflow
EVENT_SECONDS = (_MIN_S, _MAX_S)
"""The event times a decoded transaction can have, in seconds since the epoch (inclusive)."""
_INT64 = (-(2**63), 2**63 - 1)
FUTURE_TOLERANCE_S = 86_400
_UTC = dt.timezone.utc


@dataclass(frozen=True)
class RawBatch:
    """The decoded transactions of a batch (aligned arrays) and the rejected messages."""

    index: np.ndarray  # int64 positions in the input batch, ascending
    ids: np.ndarray  # int64
    seconds: np.ndarray  # int64, event time in seconds since the epoch (UTC)
    customers: np.ndarray  # int64
    terminals: np.ndarray  # int64
    amounts: np.ndarray  # float64
    rejections: list[Rejection]

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> RawBatch:
        """The batch restricted to `rows` (positions in this batch); rejections dropped."""
        return RawBatch(self.index[rows], self.ids[rows], self.seconds[rows], self.customers[rows],
                        self.terminals[rows], self.amounts[rows], [])


@functools.lru_cache(maxsize=1)
def _raw_decoder() -> msgspec.json.Decoder:
    class RawTransaction(msgspec.Struct, array_like=False):
        TRANSACTION_ID: int
        TX_DATETIME: int | str
        CUSTOMER_ID: int
        TERMINAL_ID: int
        TX_AMOUNT: float

    return msgspec.json.Decoder(RawTransaction)


def decode_transactions(values: list[bytes | None], *, max_message_bytes: int = MAX_MESSAGE_BYTES,
                        timestamps_ms: np.ndarray | None = None) -> RawBatch:
    """Decode a batch of raw transaction messages; every input ends as a row or a Rejection.

    `timestamps_ms`: the messages' Kafka timestamps. A TX_DATETIME more than a day after
    its message's timestamp is `bad_time`; judged against the message rather than the
    wall clock, so a replay decides as the live run did. Without them, the wall clock."""
    latest = _latest_times(values, timestamps_ms)
    fast = _decode_clean(values, max_message_bytes, latest)
    return fast if fast is not None else _decode_any(values, max_message_bytes, latest)


def _latest_times(values: list, timestamps_ms: np.ndarray | None) -> np.ndarray:
    """Per message, the latest acceptable event time in seconds."""
    if timestamps_ms is None:
        return np.full(len(values), latest_time(), dtype=np.int64)
    stamps = np.asarray(timestamps_ms, dtype=np.int64)
    # A message without a timestamp (<= 0) falls back to the wall clock.
    wall = latest_time()
    return np.where(stamps > 0, np.minimum(stamps // 1000 + FUTURE_TOLERANCE_S, _MAX_S), wall)


def _decode_clean(values: list, limit: int, latest: np.ndarray) -> RawBatch | None:
    """Every message valid: msgspec checks the types in C and numpy the ranges. None as soon
    as one message is not, and the general path then names each problem."""
    if not values or not all(values) or max(map(len, values)) > limit:
        return None
    decode = _raw_decoder().decode
    try:
        rows = [msgspec.structs.astuple(decode(v)) for v in values]
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    ids, times, customers, terminals, amounts = zip(*rows)
    try:
        columns = [np.array(c, dtype=np.int64) for c in (ids, customers, terminals)]
    except OverflowError:  # an id beyond int64 (msgspec also accepts uint64)
        return None
    seconds = parse_times(list(times))
    amount = np.array(amounts, dtype=np.float64)
    if seconds is None or not (seconds <= latest).all() or not ((amount >= 0) & (amount <= MAX_AMOUNT)).all():
        return None
    return RawBatch(np.arange(len(values)), columns[0], seconds, columns[1], columns[2], amount, [])


def _decode_any(values: list, limit: int, latest: np.ndarray) -> RawBatch:
    keep, rejections = [], []
    rows: list[tuple] = []
    for i, value in enumerate(values):
        doc = parse_object(value, limit)
        if type(doc) is BadMessage:
            rejections.append(Rejection(i, doc.reason, doc.detail))
            continue
        row, reason, problems = _check_transaction(doc, int(latest[i]))
        if problems:
            rejections.append(Rejection(i, reason, "; ".join(problems)))
        else:
            keep.append(i)
            rows.append(row)
    if not rows:
        empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float64)
        return RawBatch(empty_i, empty_i, empty_i, empty_i, empty_i, empty_f, rejections)
    ids, seconds, customers, terminals, amounts = (np.array(c) for c in zip(*rows))
    return RawBatch(np.array(keep, dtype=np.int64), ids.astype(np.int64), seconds.astype(np.int64),
                    customers.astype(np.int64), terminals.astype(np.int64), amounts.astype(np.float64), rejections)


def _check_transaction(doc: dict, latest: int) -> tuple[tuple | None, str, list[str]]:
    """(row, reason, problems) of one parsed object; the reason is that of the first problem."""
    problems: list[tuple[str, str]] = []
    missing = [f for f in RAW_FIELDS if f not in doc]
    if missing:
        problems.append(("missing_field", f"missing field(s) {', '.join(missing)}"))
    for name in _INT_FIELDS:
        value = doc.get(name)
        if name in doc and (type(value) is not int or not _INT64[0] <= value <= _INT64[1]):
            problems.append(("wrong_type", f"{name} must be a 64-bit integer, got {show_value(value)}{type_hint(value)}"))
    seconds = None
    if "TX_DATETIME" in doc:
        seconds = parse_time(doc["TX_DATETIME"])
        if seconds is None or seconds > latest:
            problems.append(("bad_time", f"TX_DATETIME {show_value(doc['TX_DATETIME'])} is not an ISO-8601 date-time "
                                         "or epoch milliseconds from 1970 to one day after the message's timestamp"))
    amount = doc.get("TX_AMOUNT")
    if "TX_AMOUNT" in doc:
        if type(amount) not in (int, float):
            problems.append(("wrong_type", f"TX_AMOUNT must be a number, got {show_value(amount)}{type_hint(amount)}"))
        elif not (0 <= amount <= MAX_AMOUNT):
            problems.append(("bad_amount", f"TX_AMOUNT {amount!r} must be a number from 0 to {MAX_AMOUNT:.0e}"))
    if problems:
        return None, problems[0][0], [p for _, p in problems]
    return (doc["TRANSACTION_ID"], seconds, doc["CUSTOMER_ID"], doc["TERMINAL_ID"], float(amount)), "", []


def parse_times(values: list) -> np.ndarray | None:
    """Event times in seconds of a list of TX_DATETIME values, or None if any is invalid."""
    # set(map(...)) runs in C: a generator over 4,096 values would cost ~1 ms a batch.
    if set(map(type, values)) == {str} and set(map(len, values)) == {19}:
        try:  # the canonical "YYYY-MM-DD HH:MM:SS" (or with "T"), parsed by numpy in C
            seconds = np.array(values, dtype="datetime64[s]").astype(np.int64)
        except ValueError:
            return None
    else:
        parsed = [parse_time(v) for v in values]
        if any(p is None for p in parsed):
            return None
        seconds = np.array(parsed, dtype=np.int64)
    if not ((seconds >= _MIN_S) & (seconds <= _MAX_S)).all():
        return None
    return seconds


def parse_time(value) -> int | None:
    """One TX_DATETIME value in whole seconds since the epoch (UTC), or None if it is not one."""
    if type(value) is int:
        seconds = value // 1000
    elif type(value) is str and 10 <= len(value) <= 40:
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_UTC)
        seconds = int(when.timestamp() // 1)
    else:
        return None
    return seconds if _MIN_S <= seconds <= _MAX_S else None


def latest_time() -> int:
    """The latest acceptable event time: one day past the wall clock. One transaction stamped
    years ahead would otherwise move its partition's watermark and make every later one late."""
    return min(_MAX_S, int(time.time()) + FUTURE_TOLERANCE_S)


@dataclass(frozen=True)
class LabelBatch:
    """Fraud confirmations that could be read; `unreadable` counts the others."""

    ids: np.ndarray  # int64
    seconds: np.ndarray  # int64, the confirmed transaction's event time
    terminals: np.ndarray  # int64
    unreadable: int
    genuine: int  # TX_FRAUD 0: no confirmation (nothing to count), skipped


def decode_labels(values: list[bytes | None], *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> LabelBatch:
    """Decode fraud confirmations. Labels are few (a fraud rate of ~1 %): one object at a time."""
    ids, seconds, terminals = [], [], []
    unreadable = genuine = 0
    for value in values:
        doc = parse_object(value, max_message_bytes)
        if type(doc) is BadMessage or any(f not in doc for f in LABEL_FIELDS):
            unreadable += 1
            continue
        when = parse_time(doc["TX_DATETIME"])
        good_ints = all(type(doc[f]) is int and _INT64[0] <= doc[f] <= _INT64[1] for f in ("TRANSACTION_ID", "TERMINAL_ID"))
        if when is None or not good_ints or doc["TX_FRAUD"] not in (0, 1) or type(doc["TX_FRAUD"]) is bool:
            unreadable += 1
        elif doc["TX_FRAUD"] == 0:
            genuine += 1
        else:
            ids.append(doc["TRANSACTION_ID"])
            seconds.append(when)
            terminals.append(doc["TERMINAL_ID"])
    return LabelBatch(np.array(ids, dtype=np.int64), np.array(seconds, dtype=np.int64),
                      np.array(terminals, dtype=np.int64), unreadable, genuine)


def raw_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a raw transaction message, for producers to validate against."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fraudscore raw transaction",
        "description": "One message on the input topic, keyed by CUSTOMER_ID as a decimal string. Extra fields are ignored.",
        "type": "object",
        "required": list(RAW_FIELDS),
        "properties": {
            "TRANSACTION_ID": {"type": "integer", "minimum": _INT64[0], "maximum": _INT64[1],
                               "description": "Unique; orders transactions of one customer at the same second."},
            "TX_DATETIME": {
                "description": "Event time: 'YYYY-MM-DD HH:MM:SS' (UTC), any ISO-8601 date-time with 'T' or a space, "
                               "fractions and a zone ('Z', '+02:00'), or epoch milliseconds; whole seconds are used.",
                "oneOf": [{"type": "string", "minLength": 10, "maxLength": 40},
                          {"type": "integer", "minimum": _MIN_S * 1000, "maximum": _MAX_S * 1000}],
            },
            "CUSTOMER_ID": {"type": "integer", "minimum": _INT64[0], "maximum": _INT64[1]},
            "TERMINAL_ID": {"type": "integer", "minimum": _INT64[0], "maximum": _INT64[1]},
            "TX_AMOUNT": {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT},
        },
    }


def label_json_schema() -> dict:
    """The JSON Schema of a fraud confirmation on the labels topic."""
    schema = raw_json_schema()
    props = {k: v for k, v in schema["properties"].items() if k in LABEL_FIELDS or k == "CUSTOMER_ID"}
    props["TX_FRAUD"] = {"const": 1, "description": "A confirmed fraud; send nothing for genuine transactions."}
    return {"$schema": schema["$schema"], "title": "fraudscore fraud confirmation",
            "description": "One message on the labels topic, sent between the transaction and the feature "
                           "specification's delay (7 days) after it, before or after the transaction itself.",
            "type": "object", "required": list(LABEL_FIELDS), "properties": props}
