"""Live model quality (`fraudscore quality`): results joined with confirmations, evaluated per day
of event time once the confirmation delay has passed, per model version and role."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bundle_helpers import noise_bundle
from fakes import Message
from fraudscore.data.replay import raw_stream
from fraudscore.serving.quality import DAY_S, Ledger, decode_results
from kafka_helpers import SidecarProcess, drain, free_port, http_get
from waiting import wait_until

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


def _expected(rows: list[dict], confirmed: set, k: int) -> dict:
    """Per (day, role, version): the counts, computed one transaction at a time."""
    out: dict = {}
    groups = defaultdict(dict)
    for r in rows:
        for role in ("champion", "challenger"):
            if r.get(role) is None or r[role][1] is None:
                continue
            groups[(r["second"] // DAY_S, role, r[role][0])].setdefault(r["tx"], (r["card"], *r[role][1:]))
    for key, txs in groups.items():
        tp = sum(1 for tx, (_, _, alert) in txs.items() if alert and tx in confirmed)
        fp = sum(1 for tx, (_, _, alert) in txs.items() if alert and tx not in confirmed)
        fn = sum(1 for tx, (_, _, alert) in txs.items() if not alert and tx in confirmed)
        best, hit = {}, defaultdict(bool)
        for tx, (card, score, _) in txs.items():
            best[card] = max(best.get(card, -1.0), score)
            hit[card] |= tx in confirmed
        top = sorted(best, key=lambda c: (-best[c], c))[:k]
        out[key] = (len(txs), tp, fp, fn, len(top), sum(hit[c] for c in top))
    return out


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
    want = {key: value for key, value in _expected(rows, confirmed_ids, 10).items() if key[0] <= BASE_DAY + 6}
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


def _quality(bootstrap: str, topics: dict, port: int) -> SidecarProcess:
    return SidecarProcess(["quality", "--bootstrap-servers", bootstrap, "--output-topic", topics["out"],
                           "--labels-topic", topics["labels"], "--top-k", "20", "--metrics-port", str(port)], port)


def _series(port: int) -> dict:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body) for s in f.samples}


def _series_if(port: int, condition) -> dict:
    """The monitor's series when `condition(series)` holds, else {} (for wait_until)."""
    series = _series(port)
    return series if condition(series) else {}


@pytest.mark.kafka
def test_live_quality_of_a_champion_and_its_challenger_matches_the_results_and_survives_a_restart(
        kafka_bootstrap, make_topic, small_bundle, tmp_path) -> None:
    """A deliberately worse challenger (noise alerting on ~10 % of transactions) shows its lower
    precision and recall within the stream."""
    from fraudscore import simulate
    from test_raw_mode import raw_sidecar, raw_topics, send

    table = simulate(customers=300, terminals=600, days=30, seed=13).transactions
    events = raw_stream(table, seed=4)
    topics = raw_topics(make_topic, partitions=2)
    port = free_port()
    monitor = _quality(kafka_bootstrap, topics, port)
    monitor.wait_ready(60)  # empty topics: caught up at once, so every day is counted
    challenger = noise_bundle(small_bundle, tmp_path / "challenger", "challenger-noise", threshold=0.9)
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "quality", "--challenger", str(challenger))
    sidecar.wait_ready(120)
    send(kafka_bootstrap, topics, events)
    results = drain(kafka_bootstrap, [topics["out"]], len(table), timeout_s=240)
    assert sidecar.stop()[0] == 0

    # The days the monitor must have evaluated: every results partition is read past their end + 7 days.
    labels = [orjson.loads(v) for v, is_label in zip(events.values, events.is_label) if is_label]
    confirmed = {doc["TRANSACTION_ID"] for doc in labels if doc["TX_FRAUD"] == 1}
    rows, newest = [], {}
    for m in results:
        doc = orjson.loads(m.value())
        second = int(np.datetime64(doc["event_time"].rstrip("Z"), "s").astype(np.int64))
        newest[m.partition()] = max(newest.get(m.partition(), second), second)
        rows.append({"tx": doc["transaction_id"], "second": second, "card": int(m.key()),
                     "champion": (doc["model_version"], doc["score"], doc["decision"] == "alert"),
                     "challenger": (doc["challenger"]["version"], doc["challenger"]["score"],
                                    doc["challenger"]["decision"] == "alert")})
    watermark = min(newest.values())  # days mature on the slowest results partition
    want = {key: value for key, value in _expected(rows, confirmed, 20).items()
            if (key[0] + 1) * DAY_S + 7 * DAY_S <= watermark}
    assert len(want) == 2 * len({key[0] for key in want}) >= 2 * 20  # both models, every matured day
    total = defaultdict(lambda: np.zeros(6, np.int64))
    for (day, role, version), value in want.items():
        total[(role, version)] += np.array(value)
    days = ("fraudscore_quality_days_total", (("model_version", "challenger-noise"), ("role", "challenger")))
    series = wait_until(lambda: _series_if(port, lambda s: s.get(days) == len(want) / 2), 60,
                        f"the challenger's {len(want) // 2} matured days counted", interval_s=0.5)
    for (role, version), (n, tp, fp, fn, top, hit) in total.items():
        labels_of = lambda decision, outcome: (("decision", decision), ("model_version", version), ("outcome", outcome), ("role", role))  # noqa: E731
        got = [series[("fraudscore_quality_transactions_total", labels_of(d, o))]
               for d, o in (("alert", "fraud"), ("alert", "genuine"), ("pass", "fraud"), ("pass", "genuine"))]
        assert got == [tp, fp, fn, n - tp - fp - fn], (role, version)
        assert series[("fraudscore_quality_top_cards_total", (("model_version", version), ("role", role)))] == top
        assert series[("fraudscore_quality_top_cards_compromised_total", (("model_version", version), ("role", role)))] == hit
    champion = next(value for (role, _), value in total.items() if role == "champion")
    noise = total[("challenger", "challenger-noise")]
    precision = {name: tp / (tp + fp) for name, (_, tp, fp, _, _, _) in (("champion", champion), ("noise", noise))}
    recall = {name: tp / (tp + fn) for name, (_, tp, _, fn, _, _) in (("champion", champion), ("noise", noise))}
    assert precision["noise"] < precision["champion"] and recall["noise"] < recall["champion"], (precision, recall)
    last_day = max(key[0] for key in want)
    before = {k: v for k, v in series.items() if k[0] in ("fraudscore_quality_last_day", "fraudscore_quality_last_day_timestamp_seconds")}
    assert before[("fraudscore_quality_last_day_timestamp_seconds",
                   (("model_version", "challenger-noise"), ("role", "challenger")))] == last_day * DAY_S
    code, out = monitor.stop(timeout_s=30)
    assert code == 0, out[-3000:]

    # A restart reads the topics again: the same last day, and nothing counted twice.
    port = free_port()
    again = _quality(kafka_bootstrap, topics, port)
    again.wait_ready(120)
    series = wait_until(lambda: _series_if(port, lambda s: {k: v for k, v in s.items() if k in before} == before),
                        60, "the restarted monitor at the same last days as before", interval_s=0.5)
    assert not any(k[0] == "fraudscore_quality_days_total" and v for k, v in series.items())
    code, out = again.stop(timeout_s=30)
    assert code == 0, out[-3000:]
    assert "evaluated before the restart: not counted again" in out
