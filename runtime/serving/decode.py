"""Raw message values -> a float32 feature matrix, plus the rejected messages and why.

The common case, a batch of valid messages, takes a few C-speed passes: msgspec parses
each value into a typed structure (numbers checked in C), the rows go into numpy in one
call, and float32's range is checked on the whole matrix. When any message of a batch
is not valid, the batch takes the general path: orjson parses each value, every feature
is pulled out as a column, and the bad messages are identified with their reasons. A test
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
| `bad_amount` | TX_AMOUNT is negative or above 1e9, for a bundle that records its feature specification (its TX_AMOUNT is the raw amount): the rule raw mode and `fraudscore features` apply |
| `oversized_field` | the id is longer than 256 characters |

Every problem of a message is named in the detail ("missing field(s) A, B; wrong type:
TX_AMOUNT must be a JSON number, got '12.5' (a string)"); the reason is that of the
first problem, the id first, then the features in the bundle's order.

Types are not coerced: "12.5" (a string) or true (a boolean) where a number is expected
is `wrong_type`. A producer that sends the wrong type has a bug that coercion would hide
(a boolean for a count, a formatted string "1,250.00"), and the features the model was
trained on were numbers.

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

from fraudscore.features.spec import MAX_AMOUNT

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
    "bad_amount",
    "oversized_field",
)
AMOUNT_FIELD = "TX_AMOUNT"

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
    event_seconds: np.ndarray | None = None  # int64 TX_DATETIME (Unix seconds) of each row, raw mode only
    # Raw mode: rows whose windows reach back before the oldest history the state has seen
    # (their result says "state":"partial"); None in feature mode.
    partial: np.ndarray | None = None

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
    amount_rule: bool = True,
) -> DecodedBatch:
    """Decode a batch; every input ends up either as a row or as a Rejection. `amount_rule`:
    TX_AMOUNT is the raw amount (the bundle records its feature specification), so it must be
    from 0 to MAX_AMOUNT; a bundle of other features may take TX_AMOUNT transformed."""
    fast = _decode_clean_batch(values, features, id_field, max_message_bytes, amount_rule)
    if fast is not None:
        return fast
    return _decode_any_batch(values, features, id_field, max_message_bytes, amount_rule)


def feature_json_schema(features: tuple[str, ...] | list[str], *, id_field: str = ID_FIELD,
                        amount_rule: bool = True) -> dict:
    """The JSON Schema (draft 2020-12) of a feature-mode message for a bundle of `features`: what
    `decode_batch` accepts, with the same limits (the id's length, float32's range, the amount rule).

    >>> schema = feature_json_schema(["TX_AMOUNT", "X"])
    >>> schema["required"], schema["properties"]["TX_AMOUNT"]["maximum"] == MAX_AMOUNT
    (['TRANSACTION_ID', 'TX_AMOUNT', 'X'], True)
    """
    numbers = {f: {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX} for f in features}
    if amount_rule and "TX_AMOUNT" in numbers:
        numbers["TX_AMOUNT"] = {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "fraudscore feature-mode message",
            "description": f"One message on the input topic: {id_field} and every feature the bundle declares "
                           "(numbers; a string or boolean is wrong_type). Extra fields are ignored.",
            "type": "object", "required": [id_field, *features],
            "properties": {id_field: {"type": ["integer", "string"], "maxLength": MAX_ID_CHARS}} | numbers}


@functools.lru_cache(maxsize=16)
def _typed_decoder(features: tuple[str, ...], id_field: str) -> msgspec.json.Decoder:
    """A msgspec decoder that checks types in C: features as numbers (ints accepted), the id last."""
    fields = [(f"f{j}", float, msgspec.field(name=name)) for j, name in enumerate(features)]
    fields.append(("tx_id", int | str, msgspec.field(name=id_field)))
    return msgspec.json.Decoder(msgspec.defstruct("Transaction", fields))


def _decode_clean_batch(values, features, id_field: str, limit: int, amount_rule: bool) -> DecodedBatch | None:
    """The common case in a few C-speed passes: every message valid. None as soon as one is not,
    and the general path then sorts out which messages are bad and why."""
    if not values or not all(values) or max(map(len, values)) > limit:
        return None
    decode = _typed_decoder(tuple(features), id_field).decode
    try:
        rows = list(map(msgspec.structs.astuple, map(decode, values)))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # RecursionError: msgspec skipping an unknown field nested thousands deep (found by
        # tests/kafka/test_fuzz_kafka.py); the general path rejects it as bad_json.
        return None
    n, width = len(rows), len(features)
    ids = [r[width] for r in rows]
    if str in set(map(type, ids)) and max(len(i) for i in ids if type(i) is str) > MAX_ID_CHARS:
        return None
    cut = operator.itemgetter(slice(0, width))
    matrix = np.fromiter(itertools.chain.from_iterable(map(cut, rows)), dtype=np.float64, count=n * width)
    if not (np.abs(matrix) <= FLOAT32_MAX).all():
        return None
    matrix = matrix.reshape(n, width)
    if amount_rule and AMOUNT_FIELD in features:
        amount = matrix[:, list(features).index(AMOUNT_FIELD)]
        if not ((amount >= 0) & (amount <= MAX_AMOUNT)).all():
            return None
    return DecodedBatch(np.arange(n), ids, matrix.astype(np.float32), [])


Problem = tuple[str, str, str]
"""(reason, field, text) of one problem of a message; `describe` joins a message's problems."""


def _id_problem(value, id_field: str) -> Problem | None:
    if value is _MISSING:
        return ("missing_field", id_field, "")
    if type(value) is str:
        if len(value) > MAX_ID_CHARS:
            return ("oversized_field", id_field, f"{id_field} is {len(value)} characters, limit {MAX_ID_CHARS}")
        return None
    if type(value) is not int:
        return ("wrong_type", id_field, f"{id_field} must be a string or an integer, got {show_value(value)}")
    return None


def _feature_type_problem(name: str, value) -> Problem:
    """A feature value that is not a JSON number: missing, or of the wrong type (said how to fix)."""
    if value is _MISSING:
        return ("missing_field", name, "")
    return ("wrong_type", name, f"{name} must be a JSON number, got {show_value(value)}{type_hint(value)}")


def type_hint(value) -> str:
    """How to fix the two usual wrong types: numbers sent as strings, flags sent as booleans."""
    return {str: " (a string: send the number itself, unquoted)", bool: " (a boolean: send 1 or 0)"}.get(type(value), "")


def _amount_problem(name: str, value: float) -> Problem:
    return ("bad_amount", name, f"{name} {value!r} must be a number from 0 to {MAX_AMOUNT:.0e}")


def describe(problems: list[Problem]) -> str:
    """One message's problems in one line, the missing fields named together."""
    missing = [field for reason, field, _ in problems if reason == "missing_field"]
    parts: list[str] = []
    for reason, _, text in problems:
        if reason != "missing_field":
            parts.append(text)
        elif missing:
            parts.append(f"missing field {missing[0]}" if len(missing) == 1
                         else f"missing {len(missing)} fields: {', '.join(missing)}")
            missing = []
    return "; ".join(parts)


def show_value(value) -> str:
    """A value as a dead letter's detail shows it: short, never a whole payload."""
    text = repr(value) if type(value) in (int, float, bool, str) or value is None else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _decode_any_batch(values, features, id_field: str, max_message_bytes: int, amount_rule: bool) -> DecodedBatch:
    parsed = [parse_object(v, max_message_bytes) for v in values]
    unreadable: dict[int, BadMessage] = {i: p for i, p in enumerate(parsed) if type(p) is BadMessage}
    docs = [p if type(p) is dict else None for p in parsed]
    problems: dict[int, list[Problem]] = {}

    objects = np.array([d is not None for d in docs], dtype=bool)
    ids = [d.get(id_field, _MISSING) if d is not None else None for d in docs]
    for i in np.flatnonzero(objects).tolist():
        problem = _id_problem(ids[i], id_field)
        if problem is not None:
            problems[i] = [problem]

    # Every feature of every object is checked, so a message's detail names all its problems.
    matrix = np.zeros((len(values), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = [d.get(name, _MISSING) if d is not None else 0.0 for d in docs]
        kinds = set(map(type, column))
        if not kinds <= {int, float}:
            # Slow path, only for the rows of a column that hold something other than numbers.
            for i, value in enumerate(column):
                kind = type(value)
                if kind is float or kind is int:
                    continue
                if objects[i]:
                    problems.setdefault(i, []).append(_feature_type_problem(name, value))
                column[i] = 0.0
        try:
            as_double = np.array(column, dtype=np.float64)
        except OverflowError:  # an integer beyond a double's range
            as_double = np.array([float(v) if abs(v) < 1e308 else float("inf") for v in column])
        finite = np.abs(as_double) <= FLOAT32_MAX  # False for NaN too
        for i in np.flatnonzero(~finite & objects).tolist():
            problems.setdefault(i, []).append(("out_of_range", name, f"{name} = {column[i]!r} is not a finite float32"))
        if amount_rule and name == AMOUNT_FIELD:
            for i in np.flatnonzero(finite & objects & ((as_double < 0) | (as_double > MAX_AMOUNT))).tolist():
                problems.setdefault(i, []).append(_amount_problem(name, column[i]))
        matrix[:, j] = np.where(finite, as_double, 0.0)

    alive = objects.copy()
    alive[list(problems)] = False
    index = np.flatnonzero(alive)
    rejections = [Rejection(i, unreadable[i].reason, unreadable[i].detail) if i in unreadable
                  else Rejection(i, problems[i][0][0], describe(problems[i]))
                  for i in sorted([*unreadable, *problems])]
    return DecodedBatch(index, [ids[i] for i in index], matrix[index], rejections)


def decode_one(value: bytes | None, features: tuple[str, ...] | list[str], *, id_field: str = ID_FIELD,
               max_message_bytes: int = MAX_MESSAGE_BYTES, amount_rule: bool = True) -> tuple[object, np.ndarray] | Rejection:
    """The reference: one message at a time, written for clarity. Tests hold decode_batch to it."""
    p = parse_object(value, max_message_bytes)
    if type(p) is BadMessage:
        return Rejection(0, p.reason, p.detail)
    problems: list[Problem] = []
    id_problem = _id_problem(p.get(id_field, _MISSING), id_field)
    if id_problem is not None:
        problems.append(id_problem)
    row = np.zeros(len(features), dtype=np.float32)
    for j, name in enumerate(features):
        value = p.get(name, _MISSING)
        if type(value) not in _NUMBER_TYPES:
            problems.append(_feature_type_problem(name, value))
            continue
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if not abs(number) <= FLOAT32_MAX:
            problems.append(("out_of_range", name, f"{name} = {value!r} is not a finite float32"))
        elif amount_rule and name == AMOUNT_FIELD and not 0 <= number <= MAX_AMOUNT:
            problems.append(_amount_problem(name, value))
        else:
            row[j] = number
    if problems:
        return Rejection(0, problems[0][0], describe(problems))
    return p[id_field], row


def decode_table(columns, features: tuple[str, ...] | list[str], ids: list, *, source: str = "input",
                 amount_rule: bool = True) -> DecodedBatch:
    """A feature table's rows as a DecodedBatch: the same float32 range rule as messages.

    `columns` maps names to equal-length numpy arrays (a fraudscore Table will do); `ids`
    are the rows' transaction ids. A missing feature column fails the whole table
    (InputError); a row with a NaN, infinite or out-of-float32-range value is an
    `out_of_range` rejection naming the features; a TX_AMOUNT below 0 or above 1e9 is
    `bad_amount`, as in every other mode.
    """
    from fraudscore.errors import InputError

    missing = [f for f in features if f not in columns]
    if missing:
        raise InputError(f"{source}: missing feature column(s) {', '.join(missing)}; run `fraudscore features` first")
    wide = np.stack([np.asarray(columns[f], dtype=np.float64) for f in features], axis=1) if len(features) else np.empty((len(ids), 0))
    in_range = np.abs(wide) <= FLOAT32_MAX
    amount_ok = np.ones(len(ids), dtype=bool)
    if amount_rule and AMOUNT_FIELD in features:
        amount = wide[:, list(features).index(AMOUNT_FIELD)]
        amount_ok = ~((amount < 0) | (amount > MAX_AMOUNT))  # NaN is out_of_range, not bad_amount
    ok = in_range.all(axis=1) & amount_ok
    rejections = []
    for i in np.flatnonzero(~ok).tolist():
        found: list[Problem] = []
        if not in_range[i].all():
            names = ", ".join(features[j] for j in np.flatnonzero(~in_range[i]))
            found.append(("out_of_range", names, f"{names} not finite float32"))
        if not amount_ok[i]:
            found.append(_amount_problem(AMOUNT_FIELD, float(amount[i])))
        rejections.append(Rejection(int(i), found[0][0], describe(found)))
    index = np.flatnonzero(ok)
    return DecodedBatch(index, [ids[i] for i in index.tolist()], wide[ok].astype(np.float32), rejections)
