"""Raw message values -> a float32 feature matrix, plus the rejected messages and why.

The common case, a batch of valid messages, takes a few C-speed passes: msgspec parses
each value into a typed structure (numbers checked in C), the rows go into numpy in one
call, and float32's range is checked on the whole matrix. When any message of a batch
is not valid, the batch takes the general path: orjson parses each value, every feature
is pulled out as a column, and the bad messages are identified with their reason. A test
holds both paths to `decode_one`, the per-message reference. A message is rejected,
never raised on, when:

| reason | when |
|---|---|
| `empty` | the value is null or zero bytes (a tombstone) |
| `oversized` | the value is longer than `max_message_bytes` |
| `bad_json` | not valid UTF-8 JSON (NaN/Infinity literals and numbers beyond a double included) |
| `not_object` | valid JSON but not an object |
| `missing_field` | the id or a feature the bundle declares is absent |
| `wrong_type` | a feature is not a JSON number (strings, booleans, null, lists are refused), or the id is not a string or an integer |
| `out_of_range` | a feature is NaN, infinite, or outside float32's range |
| `oversized_field` | the id is longer than 256 characters |

Duplicate keys in one object: the last one wins (orjson's behaviour, as in Python's json).
"""

from __future__ import annotations

from dataclasses import dataclass

import functools
import itertools
import operator

import msgspec
import numpy as np
import orjson

ID_FIELD = "TRANSACTION_ID"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_ID_CHARS = 256
FLOAT32_MAX = float(np.finfo(np.float32).max)
REASONS = (
    "empty",
    "oversized",
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "oversized_field",
)

_NUMBER_TYPES = (int, float)


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class DecodedBatch:
    """Rows that decoded (`index` into the batch, their ids and feature matrix) and the rejections."""

    index: np.ndarray  # int64, positions in the input batch, ascending
    ids: list
    matrix: np.ndarray  # float32, (len(index), n_features)
    rejections: list[Rejection]

    def __len__(self) -> int:
        return len(self.index)


class BadMessage:
    """Why a message is not a JSON object (`parse_object`), before any field is looked at."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail


def parse_object(value: bytes | None, limit: int):
    """The message as a dict, or a BadMessage (empty, oversized, bad_json, not_object). Shared by
    feature-mode and raw-mode decoding."""
    if not value:
        return BadMessage("empty", "message value is empty")
    if len(value) > limit:
        return BadMessage("oversized", f"message is {len(value)} bytes, limit {limit}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return BadMessage("bad_json", str(exc)[:200])
    if type(doc) is not dict:
        return BadMessage("not_object", f"JSON {type(doc).__name__}, expected an object")
    return doc


_MISSING = object()


def decode_batch(
    values: list[bytes | None],
    features: tuple[str, ...] | list[str],
    *,
    id_field: str = ID_FIELD,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> DecodedBatch:
    """Decode a batch; every input ends up either as a row or as a Rejection."""
    fast = _decode_clean_batch(values, features, id_field, max_message_bytes)
    if fast is not None:
        return fast
    return _decode_any_batch(values, features, id_field, max_message_bytes)


@functools.lru_cache(maxsize=16)
def _typed_decoder(features: tuple[str, ...], id_field: str) -> msgspec.json.Decoder:
    """A msgspec decoder that checks types in C: features as numbers (ints accepted), the id last."""
    fields = [(f"f{j}", float, msgspec.field(name=name)) for j, name in enumerate(features)]
    fields.append(("tx_id", int | str, msgspec.field(name=id_field)))
    return msgspec.json.Decoder(msgspec.defstruct("Transaction", fields))


def _decode_clean_batch(values, features, id_field: str, limit: int) -> DecodedBatch | None:
    """The common case in a few C-speed passes: every message valid. None as soon as one is not,
    and the general path then sorts out which messages are bad and why."""
    if not values or not all(values) or max(map(len, values)) > limit:
        return None
    decode = _typed_decoder(tuple(features), id_field).decode
    try:
        rows = list(map(msgspec.structs.astuple, map(decode, values)))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # RecursionError: msgspec skipping an unknown field nested thousands deep (found by
        # tests/test_fuzz_kafka.py); the general path rejects it as bad_json.
        return None
    n, width = len(rows), len(features)
    ids = [r[width] for r in rows]
    if str in set(map(type, ids)) and max(len(i) for i in ids if type(i) is str) > MAX_ID_CHARS:
        return None
    cut = operator.itemgetter(slice(0, width))
    matrix = np.fromiter(itertools.chain.from_iterable(map(cut, rows)), dtype=np.float64, count=n * width)
    if not (np.abs(matrix) <= FLOAT32_MAX).all():
        return None
    return DecodedBatch(np.arange(n), ids, matrix.reshape(n, width).astype(np.float32), [])


def _decode_any_batch(values, features, id_field: str, max_message_bytes: int) -> DecodedBatch:
    parsed = [parse_object(v, max_message_bytes) for v in values]
    bad: dict[int, BadMessage] = {i: p for i, p in enumerate(parsed) if type(p) is BadMessage}
    docs = [p if type(p) is dict else None for p in parsed]

    alive = np.array([d is not None for d in docs], dtype=bool)
    ids = [d.get(id_field, _MISSING) if d is not None else None for d in docs]
    for i in np.flatnonzero(alive):
        value = ids[i]
        if value is _MISSING:
            bad[i] = BadMessage("missing_field", f"missing field {id_field}")
        elif type(value) is str:
            if len(value) > MAX_ID_CHARS:
                bad[i] = BadMessage("oversized_field", f"{id_field} is {len(value)} characters, limit {MAX_ID_CHARS}")
        elif type(value) is not int:
            bad[i] = BadMessage("wrong_type", f"{id_field} must be a string or an integer, got {type(value).__name__}")
    alive[list(bad)] = False

    matrix = np.zeros((len(values), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = [d.get(name, _MISSING) if d is not None else 0.0 for d in docs]
        kinds = set(map(type, column))
        if not kinds <= {int, float}:
            # Slow path, only for the rows of a column that hold something other than numbers.
            for i in np.flatnonzero(alive):
                value = column[i]
                kind = type(value)
                if kind is float or kind is int:
                    continue
                if value is _MISSING:
                    bad[i] = BadMessage("missing_field", f"missing field {name}")
                else:
                    bad[i] = BadMessage("wrong_type", f"{name} must be a number, got {type(value).__name__}")
                alive[i] = False
                column[i] = 0.0
            for i in np.flatnonzero(~alive):
                column[i] = 0.0
        try:
            as_double = np.array(column, dtype=np.float64)
        except OverflowError:  # an integer beyond a double's range
            as_double = np.array([float(v) if abs(v) < 1e308 else float("inf") for v in column])
        out = ~(np.abs(as_double) <= FLOAT32_MAX) & alive  # catches NaN too
        for i in np.flatnonzero(out):
            bad[i] = BadMessage("out_of_range", f"{name} = {column[i]!r} is not a finite float32")
        alive &= ~out
        matrix[:, j] = np.where(alive, as_double, 0.0)

    index = np.flatnonzero(alive)
    rejections = [Rejection(int(i), bad[i].reason, bad[i].detail) for i in sorted(bad)]
    return DecodedBatch(index, [ids[i] for i in index], matrix[index], rejections)


def decode_one(value: bytes | None, features: tuple[str, ...] | list[str], *, id_field: str = ID_FIELD,
               max_message_bytes: int = MAX_MESSAGE_BYTES) -> tuple[object, np.ndarray] | Rejection:
    """The reference: one message at a time, written for clarity. Tests hold decode_batch to it."""
    p = parse_object(value, max_message_bytes)
    if type(p) is BadMessage:
        return Rejection(0, p.reason, p.detail)
    if id_field not in p:
        return Rejection(0, "missing_field", f"missing field {id_field}")
    tx_id = p[id_field]
    if type(tx_id) is str:
        if len(tx_id) > MAX_ID_CHARS:
            return Rejection(0, "oversized_field", "")
    elif type(tx_id) is not int:
        return Rejection(0, "wrong_type", "")
    row = np.zeros(len(features), dtype=np.float32)
    for j, name in enumerate(features):
        if name not in p:
            return Rejection(0, "missing_field", f"missing field {name}")
        value = p[name]
        if type(value) not in _NUMBER_TYPES:
            return Rejection(0, "wrong_type", "")
        try:
            number = float(value)
        except OverflowError:
            return Rejection(0, "out_of_range", "")
        if not abs(number) <= FLOAT32_MAX:
            return Rejection(0, "out_of_range", "")
        row[j] = number
    return tx_id, row


def decode_table(columns, features: tuple[str, ...] | list[str], ids: list, *, source: str = "input") -> DecodedBatch:
    """A feature table's rows as a DecodedBatch: the same float32 range rule as messages.

    `columns` maps names to equal-length numpy arrays (a fraudscore Table will do); `ids`
    are the rows' transaction ids. A missing feature column fails the whole table
    (InputError); a row with a NaN, infinite or out-of-float32-range value is an
    `out_of_range` rejection naming the features.
    """
    from fraudscore.errors import InputError

    missing = [f for f in features if f not in columns]
    if missing:
        raise InputError(f"{source}: missing feature column(s) {', '.join(missing)}; run `fraudscore features` first")
    wide = np.stack([np.asarray(columns[f], dtype=np.float64) for f in features], axis=1) if len(features) else np.empty((len(ids), 0))
    in_range = np.abs(wide) <= FLOAT32_MAX
    ok = in_range.all(axis=1)
    rejections = [Rejection(int(i), "out_of_range", f"{', '.join(features[j] for j in np.flatnonzero(~in_range[i]))} not finite float32")
                  for i in np.flatnonzero(~ok).tolist()]
    index = np.flatnonzero(ok)
    return DecodedBatch(index, [ids[i] for i in index.tolist()], wide[ok].astype(np.float32), rejections)
