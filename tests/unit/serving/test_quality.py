"""Live model quality (`fraudscore quality`): results joined with confirmations, evaluated per day
of event time once the confirmation delay has passed, per model version and role."""

from __future__ import annotations

import json

import numpy as np
import orjson

from fakes import Message
from fraudscore.serving.quality import DAY_S, Ledger, decode_results
from quality_reference import expected_quality

BASE_DAY = 17_622  # 2018-04-01


def _message(value: bytes, key: bytes, timestamp_ms: int = 0) -> Message:
    """A message of the results topic, as decode_results reads it."""
    return Message(value=value, key=key, topic="tx-scores", timestamp_ms=timestamp_ms)


def _result(tx: int, card: int, second: int, score: float, threshold: float, version: str = "champ",
            challenger: tuple[str, float | None, float] | None = None) -> Message:
    doc = {"transaction_id": tx, "event_time": str(np.datetime64(second, "s")) + "Z", "score": score,
           "decision": "alert" if score >= threshold else "pass", "threshold": threshold, "model_version": version}
    if challenger is not None:
        name, s, t = challenger
        doc["challenger"] = {"version": name, "score": s, "decision": "alert" if s is not None and s >= t else "pass"}
    return _message(orjson.dumps(doc), str(card).encode())


def test_matured_days_match_a_transaction_by_transaction_count() -> None:
    rng = np.random.default_rng(7)
    rows, messages = [], []
    for tx in range(3000):
        second = BASE_DAY * DAY_S + int(rng.integers(0, 12 * DAY_S))
        card = int(rng.integers(0, 200))
        score = float(rng.random())
        version = "champ-a" if second < (BASE_DAY + 5) * DAY_S else "champ-b"  # a promotion on day 5
        shadow = None
        if rng.random() < 0.7:
            shadow = ("chal", None if rng.random() < 0.02 else float(rng.random()), 0.8)
        row = {"tx": tx, "second": second, "card": card, "champion": (version, score, score >= 0.9),
               "challenger": None if shadow is None else (shadow[0], shadow[1], shadow[1] is not None and shadow[1] >= 0.8)}
        rows.append(row)
        messages.append(_result(tx, card, second, score, 0.9, version, shadow))
        if rng.random() < 0.05:  # delivered twice (at least once)
            messages.append(messages[-1])
    confirmed_ids = set(rng.choice(3000, 150, replace=False).tolist())
    seconds = {r["tx"]: r["second"] for r in rows}
    day_of = {tx: s // DAY_S for tx, s in seconds.items()}
    ledger = Ledger(delay_s=2 * DAY_S, top_k=10)
    for lo in range(0, len(messages), 500):  # in batches, confirmations interleaved
        ledger.add_results(decode_results(messages[lo:lo + 500], ledger.versions))
        part = sorted(confirmed_ids)[lo // 20:lo // 20 + 25]
        # TX_DATETIME of each, as the labels carry it (a confirmation may be read before its result)
        ledger.confirm(np.array(part, np.int64), np.array([seconds[t] for t in part], np.int64))
    watermark = (BASE_DAY + 9) * DAY_S  # days up to BASE_DAY + 6 are due (their end + 2 days)
    assert ledger.due(watermark) == list(range(BASE_DAY, BASE_DAY + 7))
    days = ledger.mature(watermark)
    got = {(d.day, d.role, d.version): (d.transactions, d.true_positives, d.false_positives, d.false_negatives,
                                        d.top_cards, d.top_cards_compromised) for d in days}
    want = {key: value for key, value in expected_quality(rows, confirmed_ids, 10).items() if key[0] <= BASE_DAY + 6}
    assert got == want
    assert {d.version for d in days if d.role == "champion"} == {"champ-a", "champ-b"}
    # What is left: the later days, and the confirmations of their transactions only.
    assert ledger.pending == sum(1 for m in messages if json.loads(m.value())["event_time"] >= str(np.datetime64((BASE_DAY + 7) * DAY_S, "s")))
    assert {day_of[tx] > BASE_DAY + 6 for tx in ledger._confirmed} == {True}
    # A result of a matured day arrives late: counted, not evaluated.
    ledger.add_results(decode_results([_result(99_999, 1, BASE_DAY * DAY_S + 5, 0.95, 0.9)], ledger.versions))
    assert ledger.late_results == 1

    # Every confirmation read before any result (the labels topic read first), days matured in
    # two rounds: the confirmations of the later days wait for their results.
    first = Ledger(delay_s=2 * DAY_S, top_k=10)
    every = sorted(confirmed_ids)
    first.confirm(np.array(every, np.int64), np.array([seconds[t] for t in every], np.int64))
    order = sorted(range(len(messages)), key=lambda i: json.loads(messages[i].value())["event_time"])
    in_time = [messages[i] for i in order]
    early = [m for m in in_time if json.loads(m.value())["event_time"] < str(np.datetime64((BASE_DAY + 6) * DAY_S, "s"))]
    first.add_results(decode_results(early, first.versions))
    days = first.mature((BASE_DAY + 6) * DAY_S)
    first.add_results(decode_results(in_time[len(early):], first.versions))
    days += first.mature(watermark)
    assert {(d.day, d.role, d.version): (d.transactions, d.true_positives, d.false_positives, d.false_negatives,
                                         d.top_cards, d.top_cards_compromised) for d in days} == want


def test_a_confirmation_finds_its_result_on_another_day_and_unmatched_ones_are_forgotten() -> None:
    """Feature mode: a result's day is its Kafka timestamp's. A fraud at 23:59:59 whose result was
    written after midnight is still a true positive when that later day matures."""
    ledger = Ledger(delay_s=DAY_S, top_k=5)
    late_night = BASE_DAY * DAY_S + DAY_S - 1
    written = _message(orjson.dumps({"transaction_id": 7, "score": 0.95, "decision": "alert", "model_version": "v"}),
                       b"3", timestamp_ms=(late_night + 2) * 1000)
    other = _message(orjson.dumps({"transaction_id": 8, "score": 0.1, "decision": "pass", "model_version": "v"}),
                     b"4", timestamp_ms=(BASE_DAY * DAY_S + 5) * 1000)
    ledger.add_results(decode_results([other], ledger.versions))
    # 12,345: a transaction this topic never had
    ledger.confirm(np.array([7, 12_345], np.int64), np.array([late_night, BASE_DAY * DAY_S], np.int64))
    ledger.add_results(decode_results([written], ledger.versions))
    assert ledger.mature((BASE_DAY + 2) * DAY_S)[0].transactions == 1  # the first day: transaction 8 alone
    (day,) = ledger.mature((BASE_DAY + 3) * DAY_S)
    assert (day.day, day.true_positives, day.false_positives) == (BASE_DAY + 1, 1, 0)
    assert set(ledger._confirmed) == {12_345}
    ledger.watermark_s = (BASE_DAY + 10) * DAY_S
    ledger.add_results(decode_results([_result(9, 5, (BASE_DAY + 10) * DAY_S, 0.1, 0.9)], ledger.versions))
    ledger.mature((BASE_DAY + 12) * DAY_S)
    assert ledger.confirmations == 0  # unmatched, forgotten once the delay and two days have passed


def test_unreadable_results_are_counted_not_joined() -> None:
    good = _result(1, 5, BASE_DAY * DAY_S, 0.5, 0.9)
    bad = [_message(b"not json", b"5"), _message(b'{"transaction_id": "abc", "score": 0.1, "model_version": "v"}', b"5"),
           _message(b'{"transaction_id": 3, "model_version": "v"}', b"5")]
    batch = decode_results([good, *bad], {})
    assert batch.ids.tolist() == [1] and batch.unreadable == 3
    assert batch.seconds.tolist() == [BASE_DAY * DAY_S] and batch.cards.tolist() == [5]


