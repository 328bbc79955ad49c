"""Decoding message values: the batch decoder equals the per-message reference, and never raises."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore.serving.decode import Rejection, decode_batch, decode_one, feature_json_schema

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
    doc["TX_AMOUNT"] = draw(st.one_of(st.integers(0, 10**9), st.floats(0, 1e9)))  # the amount rule: 0 to 1e9
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


BUNDLE_FEATURES = (
    "TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT",
    *(f"CUSTOMER_ID_{k}_{w}DAY_WINDOW" for w in (1, 7, 30) for k in ("NB_TX", "AVG_AMOUNT")),
    *(f"TERMINAL_ID_{k}_{w}DAY_WINDOW" for w in (1, 7, 30) for k in ("NB_TX", "RISK")),
)


def test_a_rejection_names_every_problem_of_the_message() -> None:
    # One field present of 15: the detail names all 14 missing ones, not only the first.
    only_amount = orjson.dumps({"TRANSACTION_ID": 1, "TX_AMOUNT": 5.0})
    wrong = orjson.dumps({"TRANSACTION_ID": 2, **{f: 0 for f in BUNDLE_FEATURES},
                          "TX_AMOUNT": "12.5", "TX_DURING_NIGHT": True, "TERMINAL_ID_RISK_7DAY_WINDOW": 1e39})
    good = orjson.dumps({"TRANSACTION_ID": 3, **{f: 1 for f in BUNDLE_FEATURES}})
    decoded = decode_batch([only_amount, wrong, good], BUNDLE_FEATURES)
    assert decoded.index.tolist() == [2]
    missing, typed = decoded.rejections
    assert missing.reason == "missing_field"
    assert missing.detail.startswith("missing 14 fields: TX_DURING_WEEKEND, TX_DURING_NIGHT, ")
    assert all(f in missing.detail for f in BUNDLE_FEATURES[1:])
    assert typed.reason == "wrong_type"  # the first problem's reason, features in the bundle's order
    assert typed.detail == (
        "TX_AMOUNT must be a JSON number, got '12.5' (a string: send the number itself, unquoted); "
        "TX_DURING_NIGHT must be a JSON number, got True (a boolean: send 1 or 0); "
        "TERMINAL_ID_RISK_7DAY_WINDOW = 1e+39 is not a finite float32"
    )
    for value, rejection in ((only_amount, missing), (wrong, typed)):
        reference = decode_one(value, BUNDLE_FEATURES)
        assert (reference.reason, reference.detail) == (rejection.reason, rejection.detail)


def test_the_amount_rule_is_the_same_in_every_mode(tmp_path) -> None:
    # A negative amount or one above 1e9 is refused by feature messages, raw transactions,
    # feature tables (`fraudscore score`) and `fraudscore features` alike.
    from fraudscore import Table
    from fraudscore.errors import InputError
    from fraudscore.features import validate_transactions
    from fraudscore.serving.decode import decode_table
    from fraudscore.serving.transactions import decode_transactions

    amounts = [-0.01, 1e9 + 1, 0.0, 1e9]
    messages = [orjson.dumps({"TRANSACTION_ID": i, **{f: 0 for f in BUNDLE_FEATURES}, "TX_AMOUNT": a})
                for i, a in enumerate(amounts)]
    for batch in (messages, messages[:2]):  # with and without valid messages beside them
        decoded = decode_batch(batch, BUNDLE_FEATURES)
        assert [(r.index, r.reason) for r in decoded.rejections] == [(0, "bad_amount"), (1, "bad_amount")]
    assert "must be a number from 0 to 1e+09" in decode_batch(messages, BUNDLE_FEATURES).rejections[0].detail
    assert decode_batch(messages[2:], BUNDLE_FEATURES).rejections == []  # the clean (fast) path keeps 0 and 1e9
    # A bundle without a feature specification may take a transformed TX_AMOUNT (a z-score...).
    for batch in (messages, messages[:2]):
        assert decode_batch(batch, BUNDLE_FEATURES, amount_rule=False).rejections == []
    assert not isinstance(decode_one(messages[0], BUNDLE_FEATURES, amount_rule=False), Rejection)

    raw = [orjson.dumps({"TRANSACTION_ID": i, "TX_DATETIME": "2018-04-01 00:00:00", "CUSTOMER_ID": 1,
                         "TERMINAL_ID": 2, "TX_AMOUNT": a}) for i, a in enumerate(amounts)]
    assert [(r.index, r.reason) for r in decode_transactions(raw).rejections] == [(0, "bad_amount"), (1, "bad_amount")]

    columns = {f: np.zeros(4) for f in BUNDLE_FEATURES} | {"TX_AMOUNT": np.array(amounts)}
    table = decode_table(columns, BUNDLE_FEATURES, [0, 1, 2, 3])
    assert [(r.index, r.reason) for r in table.rejections] == [(0, "bad_amount"), (1, "bad_amount")]
    assert decode_table(columns, BUNDLE_FEATURES, [0, 1, 2, 3], amount_rule=False).rejections == []

    for amount, words in ((-0.01, "negative"), (1e9 + 1, r"above 1e\+09")):
        tx = Table({"TRANSACTION_ID": np.array([1]), "TX_DATETIME": np.array(["2018-04-01T00:00:00"], dtype="datetime64[s]"),
                    "CUSTOMER_ID": np.array([1]), "TERMINAL_ID": np.array([2]), "TX_AMOUNT": np.array([amount]),
                    "TX_FRAUD": np.array([0])})
        with pytest.raises(InputError, match=words):
            validate_transactions(tx)


@pytest.mark.parametrize("amount_rule", [True, False])
def test_the_feature_schema_has_the_decoders_limits(amount_rule: bool) -> None:
    """`fraudscore schema --input features` (feature_json_schema): every bound it states is the
    decoder's, so a message at a bound decodes and one past it is rejected."""
    features = ["TX_AMOUNT", "X"]
    schema = feature_json_schema(features, amount_rule=amount_rule)
    props = schema["properties"]
    assert schema["required"] == ["TRANSACTION_ID", *features]

    def decoded(doc: dict) -> bool:
        return not isinstance(decode_one(orjson.dumps(doc), features, amount_rule=amount_rule), Rejection)

    at_bounds = {"TRANSACTION_ID": "t" * props["TRANSACTION_ID"]["maxLength"],
                 "TX_AMOUNT": props["TX_AMOUNT"]["maximum"], "X": props["X"]["minimum"]}
    assert decoded(at_bounds)
    assert not decoded(at_bounds | {"TRANSACTION_ID": "t" * (props["TRANSACTION_ID"]["maxLength"] + 1)})
    assert not decoded(at_bounds | {"X": props["X"]["minimum"] * 2})
    assert not decoded(at_bounds | {"X": "1.5"}) and not decoded(at_bounds | {"X": True})
    # The amount rule: TX_AMOUNT from 0 to MAX_AMOUNT where the bundle records its specification.
    assert decoded(at_bounds | {"TX_AMOUNT": props["TX_AMOUNT"]["minimum"]})
    assert decoded(at_bounds | {"TX_AMOUNT": -1.0}) is (not amount_rule)
    assert decoded(at_bounds | {"TX_AMOUNT": 2e9}) is (not amount_rule)  # above MAX_AMOUNT, far inside float32
    assert not decoded(at_bounds | {"TX_AMOUNT": props["TX_AMOUNT"]["maximum"] * 2})
