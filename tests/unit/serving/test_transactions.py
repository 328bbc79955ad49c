"""Raw transaction decoding (raw mode), without a broker: every problem named, both paths agree,
and decisions that depend on time use the message's Kafka timestamp, not the wall clock."""

from __future__ import annotations

import json

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore.serving.transactions import MAX_AMOUNT, decode_labels, decode_transactions, raw_json_schema

GOOD = {"TRANSACTION_ID": 7, "TX_DATETIME": "2018-04-01 07:19:05", "CUSTOMER_ID": 596, "TERMINAL_ID": 3156, "TX_AMOUNT": 57.16}
T0 = 1522567145  # 2018-04-01 07:19:05 UTC


def one(doc: dict, stamp_ms: int | None = None):
    stamps = None if stamp_ms is None else np.array([stamp_ms])
    return decode_transactions([orjson.dumps(doc)], timestamps_ms=stamps)


def test_every_accepted_time_format_gives_the_same_second() -> None:
    for when in ("2018-04-01 07:19:05", "2018-04-01T07:19:05", "2018-04-01T09:19:05+02:00", "2018-04-01T07:19:05Z",
                 "2018-04-01 07:19:05.999", T0 * 1000 + 999):
        batch = one(GOOD | {"TX_DATETIME": when})
        assert batch.rejections == [] and batch.seconds.tolist() == [T0], when


def test_a_message_missing_fields_names_every_one_and_every_other_problem() -> None:
    batch = one({"TRANSACTION_ID": "x", "TX_AMOUNT": -2})
    (rejection,) = batch.rejections
    assert rejection.reason == "missing_field"
    for name in ("TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TRANSACTION_ID must be", "TX_AMOUNT -2"):
        assert name in rejection.detail


def test_amounts_beyond_the_cap_are_refused_so_they_cannot_spoil_exact_sums() -> None:
    assert one(GOOD | {"TX_AMOUNT": MAX_AMOUNT}).rejections == []
    (rejection,) = one(GOOD | {"TX_AMOUNT": 1e300}).rejections
    assert rejection.reason == "bad_amount"
    assert raw_json_schema()["properties"]["TX_AMOUNT"]["maximum"] == MAX_AMOUNT


def test_the_future_is_judged_against_the_message_timestamp() -> None:
    a_year_later = (T0 + 365 * 86_400) * 1000
    assert one(GOOD, stamp_ms=a_year_later).rejections == []  # an old transaction replayed now: fine
    (rejection,) = one(GOOD | {"TX_DATETIME": "2019-04-05 00:00:00"}, stamp_ms=T0 * 1000).rejections
    assert rejection.reason == "bad_time"  # a year ahead of the message that carries it
    # The same message decides the same way whenever it is read again (a restore, the terminal table).
    assert one(GOOD | {"TX_DATETIME": "2018-04-02 07:00:00"}, stamp_ms=T0 * 1000).rejections == []


raw_docs = st.fixed_dictionaries({
    "TRANSACTION_ID": st.one_of(st.integers(-(2**64), 2**64), st.text(max_size=3), st.none()),
    "TX_DATETIME": st.one_of(st.sampled_from(["2018-04-01 07:19:05", "2018-04-01T07:19:05Z", "bad", "2018-13-01 00:00:00"]),
                             st.integers(-(2**50), 2**50)),
    "CUSTOMER_ID": st.one_of(st.integers(-(2**64), 2**64), st.floats(), st.booleans()),
    "TERMINAL_ID": st.integers(0, 10),
    "TX_AMOUNT": st.one_of(st.floats(allow_nan=False), st.integers(-5, 2**70), st.text(max_size=2)),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_docs, min_size=1, max_size=12))
def test_a_batch_decides_each_message_as_it_would_alone(docs: list[dict]) -> None:
    values = [json.dumps(d).encode() for d in docs]  # json: ints beyond 64 bits and NaN literals too
    batch = decode_transactions(values)
    alone = [decode_transactions([v]) for v in values]
    reasons = {r.index: r.reason for r in batch.rejections}
    for i, single in enumerate(alone):
        if single.rejections:
            assert reasons[i] == single.rejections[0].reason
        else:
            k = batch.index.tolist().index(i)
            assert (batch.ids[k], batch.seconds[k], batch.customers[k], batch.amounts[k]) == (
                single.ids[0], single.seconds[0], single.customers[0], single.amounts[0])


def test_confirmations_that_cannot_be_read_are_counted_not_raised() -> None:
    good = orjson.dumps({"TRANSACTION_ID": 7, "TERMINAL_ID": 3, "TX_DATETIME": "2018-04-01 07:19:05", "TX_FRAUD": 1})
    genuine = orjson.dumps({"TRANSACTION_ID": 8, "TERMINAL_ID": 3, "TX_DATETIME": "2018-04-01 07:19:05", "TX_FRAUD": 0})
    batch = decode_labels([good, genuine, b"", b"{", json.dumps({"TRANSACTION_ID": 2**70, "TERMINAL_ID": 1,
                                                                   "TX_DATETIME": "2018-04-01", "TX_FRAUD": 1}).encode()])
    assert batch.ids.tolist() == [7] and batch.genuine == 1 and batch.unreadable == 3
