"""Live model quality (`fraudscore quality`): results joined with confirmations, evaluated per day
of event time once the confirmation delay has passed, per model version and role."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bundle_helpers import noise_bundle
from fraudscore.data.replay import raw_stream
from fraudscore.serving.quality import DAY_S
from kafka_helpers import SidecarProcess, drain, free_port, http_get
from quality_reference import expected_quality
from waiting import wait_until


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
    want = {key: value for key, value in expected_quality(rows, confirmed, 20).items()
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
