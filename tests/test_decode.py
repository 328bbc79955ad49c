"""Decoding message values: the batch decoder equals the per-message reference, and never raises."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore.serving.decode import Rejection, decode_batch, decode_one

FEATURES = ("TX_AMOUNT", "TX_DURING_NIGHT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW")

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 1e38, 3.5e38, -3.5e38, 1e-45, 2**53 + 1]),
)
anything = st.one_of(numbers, st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))
ids = st.one_of(st.integers(-(2**63), 2**63), st.text(max_size=300), st.none(), st.floats(), st.booleans())


def dumps(value) -> bytes:
    # The stdlib writes integers beyond 64 bits (orjson refuses to); the decoder must cope.
    return json.dumps(value).encode()


@st.composite
def messages(draw) -> bytes | None:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "mutated", "raw", "json"]))
    if kind == "raw":
        return draw(st.one_of(st.none(), st.binary(max_size=60)))
    if kind == "json":
        return dumps(draw(st.one_of(anything, st.dictionaries(st.text(max_size=4), anything, max_size=3))))
    doc = {"TRANSACTION_ID": draw(st.integers(0, 10**9)), "TX_DATETIME": "2018-04-01 00:00:31"}
    for name in FEATURES:
        doc[name] = draw(st.floats(0, 1e6) if kind == "valid" else numbers)
    if kind == "mutated":
        action = draw(st.sampled_from(["drop", "retype", "reid", "nan", "truncate", "extra"]))
        name = draw(st.sampled_from(FEATURES + ("TRANSACTION_ID",)))
        if action == "drop":
            doc.pop(name)
        elif action == "retype":
            doc[name] = draw(anything)
        elif action == "reid":
            doc["TRANSACTION_ID"] = draw(ids)
        elif action == "extra":
            doc["unexpected"] = draw(anything)
        elif action == "nan":
            return dumps(doc).replace(b'"TX_AMOUNT":', b'"TX_AMOUNT": NaN, "x":', 1)
        else:
            raw = dumps(doc)
            return raw[: draw(st.integers(0, len(raw) - 1))]
    return dumps(doc)


@settings(max_examples=400, deadline=None)
@given(st.lists(messages(), max_size=25), st.integers(20, 400))
def test_batch_decode_equals_the_reference_and_accounts_for_every_message(values, limit) -> None:
    decoded = decode_batch(values, FEATURES, max_message_bytes=limit)
    rejected = {r.index: r for r in decoded.rejections}
    # Every input is exactly one of: a row, a rejection with a reason.
    assert sorted(decoded.index.tolist() + list(rejected)) == list(range(len(values)))
    assert not set(decoded.index.tolist()) & set(rejected)
    assert decoded.matrix.dtype == np.float32 and decoded.matrix.shape == (len(decoded.index), len(FEATURES))
    assert np.isfinite(decoded.matrix).all()
    rows = dict(zip(decoded.index.tolist(), range(len(decoded.index))))
    for i, value in enumerate(values):
        expected = decode_one(value, FEATURES, max_message_bytes=limit)
        if isinstance(expected, Rejection):
            assert i in rejected, (value, expected)
            assert rejected[i].reason == expected.reason, (value, rejected[i], expected)
            assert rejected[i].detail
        else:
            tx_id, row = expected
            assert i in rows, (value, rejected.get(i))
            assert decoded.ids[rows[i]] == tx_id
            assert np.array_equal(decoded.matrix[rows[i]], row)


def test_random_bytes_never_raise() -> None:
    rng = np.random.default_rng(0)
    values = [rng.bytes(int(n)) for n in rng.integers(0, 200, 2000)]
    decoded = decode_batch(values, FEATURES)
    assert len(decoded.index) + len(decoded.rejections) == len(values)


def test_reasons_for_each_kind_of_bad_message() -> None:
    good = {"TRANSACTION_ID": "t-1", "TX_AMOUNT": 12.5, "TX_DURING_NIGHT": 0, "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 3}
    cases = {
        None: "empty",
        b"": "empty",
        b"x" * 70_000: "oversized",
        b"\xff\xfe": "bad_json",
        b'{"TRANSACTION_ID": 1, "TX_AMOUNT": NaN}': "bad_json",
        b"[1, 2]": "not_object",
        orjson.dumps({k: v for k, v in good.items() if k != "TX_AMOUNT"}): "missing_field",
        orjson.dumps(good | {"TX_AMOUNT": "12.5"}): "wrong_type",
        orjson.dumps(good | {"TX_DURING_NIGHT": True}): "wrong_type",
        orjson.dumps(good | {"TRANSACTION_ID": 1.5}): "wrong_type",
        orjson.dumps(good | {"TX_AMOUNT": 1e39}): "out_of_range",
        orjson.dumps(good | {"TRANSACTION_ID": "x" * 300}): "oversized_field",
    }
    values = list(cases) + [orjson.dumps(good)]
    decoded = decode_batch(values, FEATURES)
    assert [r.reason for r in decoded.rejections] == list(cases.values())
    assert decoded.index.tolist() == [len(cases)]
    assert decoded.ids == ["t-1"]
    assert decoded.matrix[0].tolist() == [12.5, 0.0, 3.0]
    assert math.isclose(decoded.matrix[0, 0], 12.5)


@st.composite
def valid_messages(draw) -> bytes:
    doc = {"TRANSACTION_ID": draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=40)))}
    for name in FEATURES:
        doc[name] = draw(st.one_of(st.integers(-(2**31), 2**31), st.floats(-3e38, 3e38, allow_nan=False)))
    if draw(st.booleans()):
        doc["extra"] = draw(anything)
    return dumps(doc)


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_messages(), min_size=1, max_size=30))
def test_fast_path_for_clean_batches_equals_the_reference(values) -> None:
    # All-valid batches take the msgspec path; it must agree with the reference to the bit.
    decoded = decode_batch(values, FEATURES)
    assert decoded.rejections == []
    for i, value in enumerate(values):
        tx_id, row = decode_one(value, FEATURES)
        assert decoded.ids[i] == tx_id
        assert np.array_equal(decoded.matrix[i], row)


def test_deep_nesting_in_an_ignored_field_is_rejected_not_raised() -> None:
    good = {"TRANSACTION_ID": 1, "TX_AMOUNT": 1.0, "TX_DURING_NIGHT": 0, "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 3}
    for depth in (100, 5_000, 20_000):
        deep = orjson.dumps(good)[:-1] + b',"extra":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        values = [orjson.dumps(good), deep]
        decoded = decode_batch(values, FEATURES)
        expected = decode_one(deep, FEATURES)
        if isinstance(expected, Rejection):
            assert [r.reason for r in decoded.rejections] == [expected.reason]
        else:
            assert decoded.index.tolist() == [0, 1]
