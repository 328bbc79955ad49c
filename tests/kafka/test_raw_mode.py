"""Raw mode against the real broker: features computed online equal `fraudscore features`,
scores equal `fraudscore score` of the offline table, with one instance, three instances
in a group, a SIGKILL and restart, and an instance joining mid-stream; bad raw input and
bad confirmations never kill the process.
"""

from __future__ import annotations


import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from bundle_helpers import squared_bundle, trained_bundle
from fraudscore.bench.scrape import metric_sum, samples
from commands import EXE
from kafka_helpers import Sidecar, client, drain, produce, written

from fraudscore import baseline_features, simulate, write_table
from fraudscore.data.evaluate import evaluate_bundles
from fraudscore.data.replay import raw_stream, replay
from fraudscore.features.spec import SPEC_V2, BASELINE_SPEC, FeatureSpec
from waiting import wait_until

NAMES = BASELINE_SPEC.names
# Integers, compared exactly: counts, flags and (version 2) terminal fraud counts.
COUNT_FEATURES = [n for n in SPEC_V2.names if "NB_" in n or "DURING" in n]


def simulated_month(work: Path, bundle: Path, spec: FeatureSpec = BASELINE_SPEC):
    """A simulated stream (500 customers, 1,000 terminals, 60 days), its offline features under
    `spec` and `bundle`'s offline scores of them, and the feature table those came from."""
    table = simulate(customers=500, terminals=1000, days=60, seed=11).transactions
    features = baseline_features(table, spec)
    offline = table.with_columns({n: features[n] for n in spec.names if n != "TX_AMOUNT"})
    write_table(offline, work / "features.parquet")
    done = subprocess.run([EXE, "score", "--bundle", str(bundle), "--in", str(work / "features.parquet"),
                           "--out", str(work / "scores.jsonl"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scores = {json.loads(line)["transaction_id"]: json.loads(line)["score"]
              for line in (work / "scores.jsonl").read_text().splitlines()}
    ids = table["TRANSACTION_ID"].tolist()
    expected = {i: {n: float(features[n][k]) for n in spec.names} for k, i in enumerate(ids)}
    return raw_stream(table, seed=3), expected, scores, work / "features.parquet"


@pytest.fixture(scope="module")
def month(tmp_path_factory, small_bundle: Path):
    """`simulated_month` under the handbook's specification, scored by the small bundle."""
    return simulated_month(tmp_path_factory.mktemp("raw-month"), small_bundle)


def raw_topics(make_topic, partitions: int = 3) -> dict[str, str]:
    return {"in": make_topic(partitions=partitions, prefix="raw-in"), "labels": make_topic(prefix="labels"),
            "out": make_topic(prefix="scores"), "alerts": make_topic(prefix="alerts"), "dlq": make_topic(prefix="dlq")}


def raw_sidecar(bootstrap: str, bundle: Path, topics: dict, group: str, *extra: str) -> Sidecar:
    return Sidecar(bootstrap, bundle, topics, group, "--input", "raw", "--labels-topic", topics["labels"],
                   "--emit-features", *extra)


def assert_parity(results: list, expected: dict, scores: dict) -> None:
    """Every transaction has a result; every result (duplicates included) has the offline features
    (every one `expected` holds: the specification's) and score."""
    seen = set()
    worst_feature, worst_score = 0.0, 0.0
    for message in results:
        result = orjson.loads(message.value())
        tx = result["transaction_id"]
        seen.add(tx)
        want = expected[tx]
        for name in want:
            got, ref = result["features"][name], want[name]
            if name in COUNT_FEATURES:
                assert got == ref, (tx, name, got, ref)
            else:
                error = abs(got - ref) / max(1.0, abs(ref))
                worst_feature = max(worst_feature, error)
                assert error <= 1e-6, (tx, name, got, ref)
        worst_score = max(worst_score, abs(result["score"] - scores[tx]))
        assert abs(result["score"] - scores[tx]) <= 1e-5, (tx, result["score"], scores[tx])
    missing = set(expected) - seen
    assert not missing, f"{len(missing)} transactions without a result, e.g. {sorted(missing)[:5]}"
    print(f"parity: {len(results)} results, worst relative feature error {worst_feature:.2g}, worst score error {worst_score:.2g}")


def send(bootstrap: str, topics: dict, events, speedup: float = 0.0) -> float:
    return replay(events, {"bootstrap.servers": bootstrap}, topics["in"], topics["labels"], speedup=speedup)


def test_one_instance_matches_the_offline_features_and_scores(kafka_bootstrap, make_topic, small_bundle, month,
                                                            tmp_path) -> None:
    """...with a shadow challenger (--challenger) scored on the same online features."""
    events, expected, scores, _ = month
    topics = raw_topics(make_topic)
    send(kafka_bootstrap, topics, events)
    challenger = squared_bundle(small_bundle, tmp_path / "challenger", "challenger-squared")
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-one", "--challenger", str(challenger))
    sidecar.wait_ready(120)
    results = drain(kafka_bootstrap, [topics["out"]], len(expected), timeout_s=240)
    status, metrics = sidecar.get("/metrics")
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    assert_parity(results, expected, scores)
    assert 'fraudscore_labels_total{outcome="applied"}' in metrics
    assert drain(kafka_bootstrap, [topics["dlq"]], 0, timeout_s=3) == []
    # Each result carries its transaction's event time (TX_DATETIME, UTC).
    sent = {doc["TRANSACTION_ID"]: doc["TX_DATETIME"] for doc in map(orjson.loads, events.values) if "TX_FRAUD" not in doc}
    times = {doc["transaction_id"]: doc["event_time"] for doc in map(orjson.loads, (m.value() for m in results))}
    assert times == {i: t.replace(" ", "T") + "Z" for i, t in sent.items()}
    check_operator_series(metrics, events)
    for doc in map(orjson.loads, (m.value() for m in results)):  # the challenger's features were the champion's
        assert doc["challenger"]["version"] == "challenger-squared"
        assert doc["challenger"]["score"] == pytest.approx(doc["score"] ** 2, rel=1e-6, abs=1e-12)
    scored = {(s.labels["role"], s.labels["model_version"]): s.value for family in text_string_to_metric_families(metrics)
              for s in family.samples if s.name == "fraudscore_model_transactions_scored_total"}
    assert scored[("challenger", "challenger-squared")] == scored[("champion", json.loads(
        (small_bundle / "manifest.json").read_text())["model"]["version"])] == len(expected), scored


def test_a_go_live_backfill_folds_history_into_state_and_scores_only_the_live_days(
        kafka_bootstrap, make_topic, small_bundle, month) -> None:
    """docs/raw-transactions.md, "Going live": 45 days of history replayed with `--until`, a sidecar
    with `--score-from` that folds them into its state without a result or an alert, then the
    live days with `--from`: exactly the live transactions get results, with the features
    `fraudscore features` computes on the whole file. `evaluate`'s production-like alerts a day
    on those days equal what the sidecar raised (issue 25: within 10 %)."""
    events, expected, scores, features = month
    cut = "2018-05-16"  # the month fixture simulates 2018-04-01 to 2018-05-30
    cut_s = int(np.datetime64(cut, "s").astype(np.int64))
    when = {doc["TRANSACTION_ID"]: int(np.datetime64(doc["TX_DATETIME"].replace(" ", "T"), "s").astype(np.int64))
            for doc in map(orjson.loads, events.values) if "TX_FRAUD" not in doc}
    live = {i for i, t in when.items() if t >= cut_s}
    assert 0 < len(live) < len(when)
    topics = raw_topics(make_topic)
    # The fixture's table, simulated again by replay (same size, seed and first day).
    replay_cmd = [EXE, "replay", "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics["in"],
                  "--labels-topic", topics["labels"], "--customers", "500", "--terminals", "1000", "--days", "60",
                  "--seed", "11"]
    history = subprocess.run([*replay_cmd, "--until", cut], capture_output=True, text=True, timeout=300)
    assert history.returncode == 0, history.stderr[-3000:]
    assert f"sent {len(when) - len(live):,} transactions" in history.stdout, history.stdout + history.stderr
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-go-live", "--score-from", cut)
    sidecar.wait_ready(120)
    rest = subprocess.run([*replay_cmd, "--from", cut], capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert f"sent {len(live):,} transactions" in rest.stdout, rest.stdout + rest.stderr
    results = drain(kafka_bootstrap, [topics["out"]], len(live), timeout_s=240)
    alerts = drain(kafka_bootstrap, [topics["alerts"]], len(live), timeout_s=5)
    _, metrics = sidecar.get("/metrics")
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    got = {orjson.loads(m.value())["transaction_id"] for m in results}
    assert got == live, f"{len(got - live)} history results, {len(live - got)} live transactions without one"
    assert {orjson.loads(m.value())["transaction_id"] for m in alerts} <= live
    assert_parity(results, {i: expected[i] for i in live}, scores)
    assert f"fraudscore_backfilled_transactions_total {float(len(when) - len(live))}" in metrics
    assert "backfill: transactions before 2018-05-16 update the feature state only" in log
    assert "scoring transactions from 2018-05-16 on" in log
    # The 15 live days as evaluate's test window (the bundle trained on 2018-04-09..15): the
    # production-like alerts a day are the sidecar's, to the documented tolerance.
    report = evaluate_bundles([small_bundle], features, dt.date(2018, 5, 2), train_days=7, delay_days=7, test_days=15)
    assert report["split"]["test"] == "2018-05-16..2018-05-30"
    raised = len({orjson.loads(m.value())["transaction_id"] for m in alerts}) / 15
    offline = report["all_cards"]["alerts_per_day"]
    print(f"alerts a day on the live days: sidecar {raised:.2f}, evaluate (every card) {offline:.2f}, "
          f"protocol (known cards removed) {report['alerts_per_day']:.2f}")
    # Online features equal offline ones, so the counts are equal: one alert of slack for a score
    # within float error of the threshold (the issue asks for 10 %).
    assert raised > 0 and abs(offline - raised) * 15 <= 1, (offline, raised)


def _coverage_samples(metrics: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.labels["kind"], s.labels["partition"]): s.value for family in text_string_to_metric_families(metrics)
            for s in family.samples if s.name == "fraudscore_state_coverage_seconds"}


def test_short_history_is_not_ready_under_require_full_state_and_its_results_say_partial(
        kafka_bootstrap, make_topic, small_bundle) -> None:
    """A stream with 5 days of history: with --require-full-state /readyz answers 503 naming the
    coverage and the fix. With 40 days: ready, the coverage gauges equal the history loaded,
    and exactly the results whose windows reach back before it (the first 37 days) say
    "state":"partial"."""
    table = simulate(customers=200, terminals=400, days=40, seed=21).transactions
    events = raw_stream(table, seed=5)
    tx = ~events.is_label
    first = int(events.seconds[tx].min())
    short = events.between(None, first + 5 * 86_400)
    topics = raw_topics(make_topic)
    send(kafka_bootstrap, topics, short)
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-short", "--require-full-state")
    drain(kafka_bootstrap, [topics["out"]], int((~short.is_label).sum()), timeout_s=120)
    status, body = sidecar.get("/readyz")
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    assert status == 503, body
    assert "customer state covers 4." in body or "customer state covers 5.0" in body, body
    assert "terminal table covers" in body and "of the 37 its windows need" in body, body
    assert "Going live" in body and "drop --require-full-state" in body, body

    topics = raw_topics(make_topic)
    send(kafka_bootstrap, topics, events)
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-long", "--require-full-state")
    sidecar.wait_ready(120)
    results = drain(kafka_bootstrap, [topics["out"]], int(tx.sum()), timeout_s=120)
    _, metrics = sidecar.get("/metrics")
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    coverage = _coverage_samples(metrics)
    assert coverage[("terminal", "all")] == int(events.seconds[tx].max()) - first
    assert all(v > 39 * 86_400 for v in coverage.values()), coverage
    marked = 0
    for m in results:
        result = orjson.loads(m.value())
        at = int(np.datetime64(result["event_time"].rstrip("Z"), "s").astype(np.int64))
        # Every partition has transactions in the first days, so the terminal windows' 37 days decide.
        assert (result.get("state") == "partial") == (at - first < 37 * 86_400), result
        marked += result.get("state") == "partial"
    assert f"fraudscore_partial_state_results_total {float(marked)}" in metrics
    assert "results scored on partial state" in log and "Going live" in log


def check_operator_series(metrics: str, events) -> None:
    """The series an on-call engineer reads (docs/operations.md): state coverage against what the
    windows need, the event-time watermark per partition, the labels topic read to its end,
    confirmations pending, process_* — and an exposition promtool accepts, without _created."""
    import shutil

    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    tx = ~events.is_label
    first, newest = int(events.seconds[tx].min()), int(events.seconds[tx].max())
    assert samples[("fraudscore_state_coverage_seconds", (("kind", "terminal"), ("partition", "all")))] == newest - first
    assert samples[("fraudscore_state_coverage_required_seconds", (("kind", "customer"),))] == 30 * 86400
    assert samples[("fraudscore_state_coverage_required_seconds", (("kind", "terminal"),))] == 37 * 86400
    customers = [v for (name, labels), v in samples.items() if name == "fraudscore_state_coverage_seconds" and ("kind", "customer") in labels]
    marks = [v for (name, _), v in samples.items() if name == "fraudscore_event_time_watermark_seconds"]
    assert len(customers) == len(marks) == 3 and all(55 * 86400 < v <= newest - first for v in customers), customers
    assert max(marks) == newest and min(marks) > newest - 86400, marks
    assert [v for (name, _), v in samples.items() if name == "fraudscore_labels_lag"] == [0.0]
    assert ("fraudscore_labels_pending", ()) in samples
    assert samples[("process_resident_memory_bytes", ())] > 0 and ("process_open_fds", ()) in samples
    assert "_created" not in metrics
    promtool = shutil.which("promtool")
    if promtool is not None:  # scripts/setup.sh installs it; CI always has it
        lint = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_three_instances_in_one_group_match(kafka_bootstrap, make_topic, small_bundle, month) -> None:
    """Three instances share the 3 partitions (each ready, so each holds one, before the month
    is sent: sent first, one instance once scored all of it before the others joined, which CI
    caught); every result has the offline features, whichever instance scored it."""
    events, expected, scores, _ = month
    topics = raw_topics(make_topic)
    sidecars = [raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-three") for _ in range(3)]
    for s in sidecars:
        s.wait_ready(120)
    send(kafka_bootstrap, topics, events)
    results = drain(kafka_bootstrap, [topics["out"]], len(expected), timeout_s=300)
    for s in sidecars:
        code, log = s.stop()
        assert code == 0, log[-3000:]
    assert_parity(results, expected, scores)
    assigned = [s.output().count("restored from") for s in sidecars]
    assert sum(1 for a in assigned if a) >= 2, "the partitions were not split between the instances"


def stream_with_a_disturbance(bootstrap, make_topic, bundle, month, group: str, disturb, *flags: str,
                              topics: dict | None = None, instances: int = 1) -> tuple[list, list]:
    """Stream the month live (60 days in ~25 s) to `instances` instances, all ready first (`flags`
    added to each); a third of the way in, `disturb(first, make)` returns the instances that
    replace the first one, stopped at the end with the others. (results, instances)"""
    events, expected, _, _ = month
    topics = topics or raw_topics(make_topic)
    first, *others = [raw_sidecar(bootstrap, bundle, topics, group, *flags) for _ in range(instances)]
    for instance in (first, *others):
        instance.wait_ready(120)
    sender = _background_send(bootstrap, topics, events, speedup=60 * 86_400 / 25)
    _wait_for_results(bootstrap, topics["out"], len(expected) // 3, timeout_s=120)
    at = written(bootstrap, topics["out"])
    assert at < len(expected), f"the disturbance would fall after the end: {at} of {len(expected)} results written"
    running = disturb(first, lambda: raw_sidecar(bootstrap, bundle, topics, group, *flags)) + others
    sender.wait(240)
    assert sender.returncode == 0, sender.stderr.read()
    results = drain(bootstrap, [topics["out"]], len(expected), timeout_s=240)
    for instance in running:
        code, log = instance.stop()
        assert code == 0, log[-3000:]
    return results, running


def test_sigkill_and_restart_mid_stream_keep_parity(kafka_bootstrap, make_topic, small_bundle, month) -> None:
    def kill_and_restart(first, start):
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        return [start()]

    results, (second,) = stream_with_a_disturbance(kafka_bootstrap, make_topic, small_bundle, month, "raw-kill", kill_and_restart)
    assert "restored from" in second.output()
    assert_parity(results, *month[1:3])


def test_sigkill_mid_stream_with_snapshots_keeps_parity(kafka_bootstrap, make_topic, small_bundle, month) -> None:
    """With --state-topic a SIGKILL leaves the last periodic snapshot (every 2 s here) behind the
    committed offsets: the restarted instance loads it, replays only the input after it, and
    every transaction still gets the offline features."""
    def kill_and_restart(first, start):
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        return [start()]

    topics = topics_with_state(kafka_bootstrap)
    results, (second,) = stream_with_a_disturbance(kafka_bootstrap, make_topic, small_bundle, month, "raw-kill-snap",
                                                   kill_and_restart, "--state-topic", topics["state"],
                                                   "--snapshot-interval", "2", topics=topics)
    log = second.output()
    assert "terminal table: restored from a snapshot" in log, log[-3000:]
    replayed = [int(line.split(" and ")[1].split(" messages")[0]) for line in log.splitlines()
                if "customer windows restored from a snapshot at offset" in line]
    assert len(replayed) == 3, log[-3000:]  # every partition from its snapshot
    print(f"after the kill: input replayed after the snapshots {replayed} messages")
    assert_parity(results, *month[1:3])


def test_an_instance_joining_mid_stream_keeps_parity(kafka_bootstrap, make_topic, small_bundle, month) -> None:
    results, (first, second) = stream_with_a_disturbance(kafka_bootstrap, make_topic, small_bundle, month, "raw-join",
                                                         lambda first, start: [first, start()])
    assert "restored from" in second.output()
    assert_parity(results, *month[1:3])


def test_bad_raw_input_and_bad_confirmations_are_handled(kafka_bootstrap, make_topic, small_bundle) -> None:
    topics = raw_topics(make_topic, partitions=1)
    good = {"TRANSACTION_ID": 1, "TX_DATETIME": "2018-04-01 10:00:00", "CUSTOMER_ID": 4, "TERMINAL_ID": 9, "TX_AMOUNT": 12.5}
    bad = [
        ({"TRANSACTION_ID": 2, "TX_AMOUNT": 3.0}, "missing_field", ["TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID"]),
        (good | {"TRANSACTION_ID": 3, "TX_DATETIME": "soon"}, "bad_time", ["TX_DATETIME"]),
        (good | {"TRANSACTION_ID": 4, "TX_AMOUNT": -1}, "bad_amount", ["TX_AMOUNT"]),
        (good | {"TRANSACTION_ID": 5, "TX_AMOUNT": "12"}, "wrong_type", ["TX_AMOUNT"]),
        (good | {"TRANSACTION_ID": 6, "CUSTOMER_ID": 4.5}, "wrong_type", ["CUSTOMER_ID"]),
        (good | {"TRANSACTION_ID": 7, "TX_DATETIME": "2018-03-01 10:00:00"}, "late", ["TX_DATETIME"]),
    ]
    values = [orjson.dumps(good)] + [orjson.dumps(doc) for doc, _, _ in bad] + [b"{not json", b""]
    produce(kafka_bootstrap, topics["in"], [b"4"] * len(values), values)
    produce(kafka_bootstrap, topics["labels"], [b"x"] * 3, [
        b"garbage", orjson.dumps({"TRANSACTION_ID": 999, "TERMINAL_ID": 9, "TX_DATETIME": "2018-04-01 09:00:00", "TX_FRAUD": 1}),
        orjson.dumps({"TRANSACTION_ID": 998, "TERMINAL_ID": 9, "TX_DATETIME": "2017-01-01 09:00:00", "TX_FRAUD": 1}),
    ])
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-bad")
    sidecar.wait_ready(120)
    scored = drain(kafka_bootstrap, [topics["out"]], 1, timeout_s=60)
    dead = drain(kafka_bootstrap, [topics["dlq"]], len(bad) + 2, timeout_s=60)
    time.sleep(1)
    _, metrics = sidecar.get("/metrics")
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    assert [orjson.loads(m.value())["transaction_id"] for m in scored] == [1]
    reasons = {}
    for m in dead:
        headers = dict(m.headers())
        if m.value():
            try:
                reasons[orjson.loads(m.value()).get("TRANSACTION_ID")] = (headers["fraudscore.reason"].decode(),
                                                                         headers["fraudscore.detail"].decode())
            except orjson.JSONDecodeError:
                reasons["bad_json"] = (headers["fraudscore.reason"].decode(), "")
    for doc, reason, fields in bad:
        got_reason, detail = reasons[doc["TRANSACTION_ID"]]
        assert got_reason == reason, (doc, got_reason, detail)
        for field in fields:
            assert field in detail, (doc, detail)
    assert len(dead) == len(bad) + 2
    outcomes = {sample.labels["outcome"]: sample.value for sample in samples(metrics)
                if sample.name == "fraudscore_labels_total"}
    # The unknown transaction's confirmation waits (pending) until its time leaves the retained
    # history; the 2017 one is expired at once, or pending until the next fold if it was read
    # before any transaction gave the table a watermark.
    assert outcomes["unreadable"] == 1 and outcomes["pending"] + outcomes["expired"] == 2, outcomes


def test_a_bundle_without_a_feature_specification_refuses_raw_mode(kafka_bootstrap, make_topic, small_bundle, tmp_path) -> None:
    import shutil

    from fraudscore.serving.manifest import Manifest

    copy = tmp_path / "old-bundle"
    shutil.copytree(small_bundle, copy)
    manifest = Manifest.read(copy / "manifest.json")
    Manifest(**{**manifest.__dict__, "feature_spec": {}}).write(copy / "manifest.json")
    topics = raw_topics(make_topic, partitions=1)
    done = subprocess.run([EXE, "run", "--bundle", str(copy), "--bootstrap-servers", kafka_bootstrap, "--input", "raw",
                           "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
                           "--dlq-topic", topics["dlq"], "--group-id", "g-old"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "feature specification" in done.stderr and "--input features" in done.stderr


def test_raw_mode_without_a_labels_topic_is_refused_unless_meant(kafka_bootstrap, make_topic, small_bundle) -> None:
    """Without confirmations every terminal-risk feature reads 0: refused (exit 2, saying so and the
    fix) unless --no-labels says it is meant, and then it scores."""
    topics = raw_topics(make_topic, partitions=1)
    base = [EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", kafka_bootstrap, "--input", "raw",
            "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--group-id", "g-no-labels"]
    done = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "TERMINAL_ID_RISK_1DAY_WINDOW" in done.stderr and "--labels-topic" in done.stderr and "--no-labels" in done.stderr
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-no-labels", "--input", "raw", "--no-labels")
    table = simulate(customers=50, terminals=100, days=3, seed=4).transactions
    events = raw_stream(table)
    tx = [i for i, label in enumerate(events.is_label.tolist()) if not label]
    produce(kafka_bootstrap, topics["in"], [events.keys[i] for i in tx], [events.values[i] for i in tx])
    results = drain(kafka_bootstrap, [topics["out"]], len(table), timeout_s=60)
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    assert len({orjson.loads(m.value())["transaction_id"] for m in results}) == len(table)


@pytest.mark.parametrize("missing", ["labels", "state"])
def test_a_missing_labels_or_state_topic_stops_the_start_with_its_name(kafka_bootstrap, make_topic, small_bundle,
                                                                     missing: str) -> None:
    """A labels or state topic that does not exist (never created, or deleted) is named at start,
    exit 3, before anything is consumed: scoring without confirmations or snapshots would be wrong
    (terminal risks 0) or slow in silence."""
    topics = raw_topics(make_topic, partitions=1)
    name = f"no-such-{missing}-{time.time_ns()}"
    args = [EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", kafka_bootstrap, "--input", "raw",
            "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--group-id", "g-missing-" + missing, "--startup-timeout", "5",
            "--labels-topic", name if missing == "labels" else topics["labels"],
            *(("--state-topic", name) if missing == "state" else ())]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]
    assert name in done.stderr and "fraudscore topics create" in done.stderr, done.stderr[-2000:]


def _background_send(bootstrap: str, topics: dict, events, speedup: float) -> subprocess.Popen:
    """Replay `events` from another process, paced, so the sidecar sees a live stream."""
    import pickle
    import sys
    import tempfile

    path = Path(tempfile.mkdtemp()) / "events.pickle"
    path.write_bytes(pickle.dumps(events))
    code = ("import pickle,sys; from fraudscore.data.replay import replay; "
            f"replay(pickle.loads(open({str(path)!r},'rb').read()), {{'bootstrap.servers': {bootstrap!r}}}, "
            f"{topics['in']!r}, {topics['labels']!r}, speedup={speedup!r})")
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def _wait_for_results(bootstrap: str, topic: str, count: int, timeout_s: float) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client(bootstrap) | {"group.id": f"count-{time.time_ns()}"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        wait_until(lambda: sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                               for p in partitions) >= count, timeout_s, f"{count} results on {topic}", interval_s=0.2)
    finally:
        consumer.close()


def drain_until_every_id(bootstrap: str, topic: str, count: int, timeout_s: float) -> list:
    """Every result on `topic` until transactions 0..count-1 all have one (then 2 s more, for
    duplicates), or `timeout_s`."""
    from confluent_kafka import Consumer

    consumer = Consumer(client(bootstrap) | {"group.id": f"every-id-{time.time_ns()}", "auto.offset.reset": "earliest",
                                             "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, seen, deadline, done_at = [], set(), time.monotonic() + timeout_s, None
    try:
        while time.monotonic() < deadline and (done_at is None or time.monotonic() - done_at < 2):
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            got += batch
            seen.update(orjson.loads(m.value())["transaction_id"] for m in batch)
            if done_at is None and len(seen) >= count:
                done_at = time.monotonic()
    finally:
        consumer.close()
    return got


def hostile_raw():
    """Raw transactions broken every way a producer could: fields dropped or retyped, bad
    times and amounts, JSON that is not JSON, huge and deeply nested values."""
    from hypothesis import strategies as st

    junk = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.floats(), st.integers(-(2**70), 2**70),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))

    @st.composite
    def message(draw) -> tuple[bytes | None, bytes | None]:
        customer = draw(st.integers(0, 50))
        doc = {"TRANSACTION_ID": draw(st.integers(0, 10**9)), "CUSTOMER_ID": customer,
               "TERMINAL_ID": draw(st.integers(0, 80)), "TX_AMOUNT": draw(st.floats(0, 5000)),
               "TX_DATETIME": f"2018-04-{draw(st.integers(1, 9)):02d} {draw(st.integers(0, 23)):02d}:00:00"}
        key = draw(st.sampled_from([str(customer).encode(), None, b"", b"other"]))
        kind = draw(st.sampled_from(["valid"] * 5 + ["drop", "retype", "time", "amount", "bytes", "nested", "huge", "epoch"]))
        if kind == "drop":
            for name in draw(st.lists(st.sampled_from(sorted(doc)), min_size=1, max_size=5, unique=True)):
                doc.pop(name)
        elif kind == "retype":
            doc[draw(st.sampled_from(sorted(doc)))] = draw(junk)
        elif kind == "time":
            doc["TX_DATETIME"] = draw(st.one_of(st.text(max_size=30), st.sampled_from(
                ["2018-04-01T10:00:00Z", "2018-04-01 10:00:00+02:00", "2018-02-30 10:00:00", "3018-01-01 00:00:00",
                 "1960-01-01 00:00:00", "2018-04-01", "2018-04-01T10:00:00.123456"])))
        elif kind == "amount":
            return key, json.dumps(doc).replace(json.dumps(doc["TX_AMOUNT"]), draw(st.sampled_from(
                ["-1", "NaN", "Infinity", "1e400", '"12"', "null", "true"])), 1).encode()
        elif kind == "epoch":
            doc["TX_DATETIME"] = draw(st.integers(-(2**40), 2**45))
        elif kind == "bytes":
            return key, draw(st.binary(max_size=200))
        elif kind == "nested":
            return key, ("[" * 20_000 + "]" * 20_000).encode()
        elif kind == "huge":
            return key, json.dumps(doc | {"pad": "x" * 70_000}).encode()
        return key, json.dumps(doc).encode()

    return message()


def test_hostile_raw_messages_and_confirmations_never_stop_the_sidecar(kafka_bootstrap, make_topic, small_bundle) -> None:
    """Every raw message ends exactly once, scored or dead-lettered with the reason the
    single-message decoder gives (or `late`); garbage on the labels topic is counted; the
    sidecar stays up throughout."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from fraudscore.serving.transactions import decode_transactions

    topics = raw_topics(make_topic, partitions=2)
    sidecar = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-fuzz")
    sidecar.wait_ready(120)
    sent: list[tuple[str | None, bytes | None]] = []  # (decoder's reason or None, value)
    garbage_labels = 0

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.explicit, Phase.reuse, Phase.generate])
    @given(st.lists(hostile_raw(), min_size=20, max_size=80), st.lists(st.binary(max_size=100), max_size=10))
    def rounds(messages, labels) -> None:
        nonlocal garbage_labels
        produce(kafka_bootstrap, topics["in"], [k for k, _ in messages], [v for _, v in messages])
        produce(kafka_bootstrap, topics["labels"], [b"x"] * len(labels), labels)
        garbage_labels += len(labels)
        for _, value in messages:
            single = decode_transactions([value])
            sent.append((single.rejections[0].reason if single.rejections else None, value))
        assert sidecar.proc.poll() is None, sidecar.output()[-3000:]

    rounds()
    scored = drain(kafka_bootstrap, [topics["out"]], 0, timeout_s=5)
    dead = drain(kafka_bootstrap, [topics["dlq"]], 0, timeout_s=5)
    deadline = time.monotonic() + 120
    while len(scored) + len(dead) < len(sent) and time.monotonic() < deadline:
        scored = drain(kafka_bootstrap, [topics["out"]], 0, timeout_s=3)
        dead = drain(kafka_bootstrap, [topics["dlq"]], 0, timeout_s=3)
    assert sidecar.proc.poll() is None, sidecar.output()[-3000:]
    assert len(scored) + len(dead) == len(sent), (len(scored), len(dead), len(sent))
    expected_dead = {}
    for reason, value in sent:
        if reason is not None:
            expected_dead[reason] = expected_dead.get(reason, 0) + 1
    got_dead: dict = {}
    for m in dead:
        reason = dict(m.headers())["fraudscore.reason"].decode()
        got_dead[reason] = got_dead.get(reason, 0) + 1
    # Decided by the stream, not the message alone: late rows, and rows whose features or score overflow.
    late = got_dead.pop("late", 0) + got_dead.pop("non_finite_score", 0) + got_dead.pop("out_of_range", 0)
    assert got_dead == expected_dead, (got_dead, expected_dead)
    assert len(scored) + late == sum(1 for reason, _ in sent if reason is None)
    _, metrics = sidecar.get("/metrics")
    unreadable = metric_sum(metrics, "fraudscore_labels_total", outcome="unreadable")
    assert unreadable == garbage_labels
    code, log = sidecar.stop()
    assert code == 0, log[-3000:]
    print(f"\nraw fuzz: {len(sent)} messages, {len(scored)} scored, dead letters {got_dead | {'late and other': late}}, "
          f"{garbage_labels} garbage confirmations counted; sidecar up throughout")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reference_size_three_instances_and_a_kill_match_the_offline_features(kafka_bootstrap, make_topic, small_bundle) -> None:
    """The handbook's reference size (5,000 customers, 10,000 terminals; 40 days, ~390,000
    transactions and their confirmations): three instances in one group, one SIGKILLed a
    third of the way through and restarted; every result equals the offline features and
    scores (counts exactly, the rest within 1e-6 relative / 1e-5 for scores)."""
    from fraudscore.serving.bundle import load_bundle
    from fraudscore.serving.scorer import Scorer

    table = simulate(customers=5000, terminals=10000, days=40, seed=0).transactions
    offline = baseline_features(table)
    expected = np.stack([np.asarray(offline[n], np.float64) for n in NAMES], axis=1)  # row = TRANSACTION_ID
    bundle = load_bundle(small_bundle)
    scores = Scorer(bundle).score(expected[:, [NAMES.index(f) for f in bundle.features]].astype(np.float32))
    topics = raw_topics(make_topic)
    send(kafka_bootstrap, topics, raw_stream(table, seed=5))
    group = "raw-reference"
    sidecars = [raw_sidecar(kafka_bootstrap, small_bundle, topics, group) for _ in range(3)]
    _wait_for_results(kafka_bootstrap, topics["out"], len(table) // 3, timeout_s=300)
    assert written(kafka_bootstrap, topics["out"]) < len(table)  # the kill falls mid-stream
    sidecars[0].proc.send_signal(signal.SIGKILL)
    sidecars[0].proc.wait(10)
    sidecars[0] = raw_sidecar(kafka_bootstrap, small_bundle, topics, group)
    # Every transaction's result, not just as many messages (redeliveries after the kill count
    # too): the instances are stopped once the stream is done, not while one is still restoring.
    results = drain_until_every_id(kafka_bootstrap, topics["out"], len(table), timeout_s=600)
    for s in sidecars:
        code, log = s.stop()
        assert code == 0, log[-3000:]
    docs = [orjson.loads(m.value()) for m in results]
    ids = np.array([d["transaction_id"] for d in docs], np.int64)
    got = np.array([[d["features"][n] for n in NAMES] for d in docs], np.float64)
    assert set(ids.tolist()) == set(range(len(table))), "transactions without a result"
    counts = [j for j, n in enumerate(NAMES) if n in COUNT_FEATURES]
    assert (got[:, counts] == expected[ids][:, counts]).all()
    relative = np.abs(got - expected[ids]) / np.maximum(1.0, np.abs(expected[ids]))
    score_error = np.abs(np.array([d["score"] for d in docs]) - scores[ids])
    assert relative.max() <= 1e-6 and score_error.max() <= 1e-5, (relative.max(), score_error.max())
    print(f"reference size: {len(table):,} transactions, {len(results):,} results "
          f"({len(results) - len(table):,} redelivered after the kill); worst relative feature error "
          f"{relative.max():.2g}, worst score error {score_error.max():.2g}")


def topics_with_state(bootstrap: str, partitions: int = 3) -> dict[str, str]:
    """Fresh raw-mode topics and their snapshot topics, all made by `fraudscore topics create --state-topic`."""
    import uuid

    run = uuid.uuid4().hex[:8]
    topics = {role: f"raw-{role}-{run}" for role in ("in", "labels", "out", "alerts", "dlq", "state")}
    done = subprocess.run([EXE, "topics", "create", "--bootstrap-servers", bootstrap, "--input-topic", topics["in"],
                           "--labels-topic", topics["labels"], "--output-topic", topics["out"], "--alerts-topic",
                           topics["alerts"], "--dlq-topic", topics["dlq"], "--state-topic", topics["state"],
                           "--partitions", str(partitions)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr  # `say` writes to stderr
    assert f"created {topics['state']} (state): {partitions} partitions" in said, said
    assert f"created {topics['state']}-index (state index): 1 partition" in said
    assert f"created {topics['state']}-feed (terminal feed): {partitions} partitions" in said
    assert "cleanup.policy=compact,delete" in said
    return topics


def damage_snapshot(bootstrap: str, state_topic: str, name: str, partition: int) -> None:
    """Point the index record of snapshot `name` at a chunk of garbage whose checksum matches:
    only decoding can tell."""
    import hashlib

    from confluent_kafka import Producer

    garbage = b"not a snapshot " * 100
    offsets = []
    producer = Producer(client(bootstrap))
    producer.produce(state_topic, key=f"{name}/0".encode(), value=garbage, partition=partition,
                     on_delivery=lambda err, msg: offsets.append(msg.offset()))
    producer.flush(10)
    entry = {"format": 1, "partition": partition, "offsets": offsets, "bytes": len(garbage),
             "sha256": hashlib.sha256(garbage).hexdigest(), "written_ms": 0}
    producer.produce(f"{state_topic}-index", key=name.encode(), value=orjson.dumps(entry))
    producer.flush(10)


def test_a_restart_restores_from_snapshots_and_a_damaged_one_falls_back_to_replay(kafka_bootstrap, make_topic,
                                                                                  small_bundle, month) -> None:
    """Stop a third of the way through a live stream (SIGTERM writes every snapshot), damage
    partition 1's, start again: the terminal table and partitions 0 and 2 come from their
    snapshots and only the input after them, partition 1 from a full replay; every
    transaction still gets exactly the offline features and score."""
    events, expected, scores, _ = month
    topics = topics_with_state(kafka_bootstrap)
    state = topics["state"]
    flags = ("--state-topic", state, "--snapshot-interval", "2")
    first = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-snap", *flags)
    first.wait_ready(120)
    sender = _background_send(kafka_bootstrap, topics, events, speedup=60 * 86_400 / 25)
    _wait_for_results(kafka_bootstrap, topics["out"], len(expected) // 3, timeout_s=120)
    code, log = first.stop()
    assert code == 0, log[-3000:]
    damage_snapshot(kafka_bootstrap, state, "customers/1", 1)
    second = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-snap", *flags)
    second.wait_ready(120)
    sender.wait(240)
    assert sender.returncode == 0, sender.stderr.read()
    results = drain(kafka_bootstrap, [topics["out"]], len(expected), timeout_s=240)
    status, metrics = second.get("/metrics")  # before the stop, which writes snapshots again
    code, log = second.stop()
    assert code == 0, log[-3000:]
    assert "terminal table: restored from a snapshot" in log, log[-3000:]
    assert "partition 0: customer windows restored from a snapshot at offset" in log
    assert "partition 2: customer windows restored from a snapshot at offset" in log
    assert "partition 1: snapshot not used (corrupt" in log
    assert "partition 1: customer windows restored from none" in log
    assert 'fraudscore_state_snapshot_restores_total{kind="customers",outcome="restored"} 2.0' in metrics
    assert 'fraudscore_state_snapshot_restores_total{kind="customers",outcome="corrupt"} 1.0' in metrics
    assert 'fraudscore_state_snapshot_restores_total{kind="terminals",outcome="restored"} 1.0' in metrics
    assert 'fraudscore_state_snapshot_writes_total{kind="customers",outcome="ok"}' in metrics
    assert_parity(results, expected, scores)


def status_of(sidecar: Sidecar, path: str) -> int:
    """The HTTP status of `path`, 0 while nothing listens yet."""
    try:
        return sidecar.get(path)[0]
    except OSError:
        return 0


def scored_total(sidecar: Sidecar) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = sidecar.get("/metrics")
    if status != 200:
        return float("nan")
    for family in text_string_to_metric_families(body):
        if family.name == "fraudscore_transactions_scored":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def finish_stream(bootstrap: str, topics: dict, sender: subprocess.Popen, count: int, *instances: Sidecar) -> tuple[list, list[str]]:
    """Wait for the background sender, read `count` results, stop `instances` (each must exit 0): (results, their logs)."""
    sender.wait(240)
    assert sender.returncode == 0, sender.stderr.read()
    results = drain(bootstrap, [topics["out"]], count, timeout_s=240)
    logs = []
    for instance in instances:
        code, log = instance.stop()
        assert code == 0, log[-3000:]
        logs.append(log)
    return results, logs


def test_partitions_that_do_not_move_keep_being_scored_while_a_member_joins(kafka_bootstrap, small_bundle, month) -> None:
    """Cooperative-sticky: one instance scores 4 partitions of a live stream; a second joins.
    The first gives up only the partitions that move (its log names them), and its scored
    count keeps rising through the join: no pause longer than 2 s (replay sends each
    message at its event time, ~1,500 a second here), where an eager rebalance stops it for the whole join and
    restore (FRAUDSCORE_TEST_ASSIGNOR=range runs the same test eagerly, to compare)."""
    events, expected, scores, _ = month
    topics = topics_with_state(kafka_bootstrap, partitions=4)
    flags = ("--state-topic", topics["state"], "--snapshot-interval", "5",
             "--assignment-strategy", os.environ.get("FRAUDSCORE_TEST_ASSIGNOR", "cooperative-sticky"))
    first = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-coop", *flags)
    first.wait_ready(120)
    sender = _background_send(kafka_bootstrap, topics, events, speedup=60 * 86_400 / 40)
    _wait_for_results(kafka_bootstrap, topics["out"], len(expected) // 4, timeout_s=120)
    samples = []  # (monotonic time, first's scored count), while the second joins
    second = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-coop", *flags)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and status_of(second, "/readyz") != 200:
        samples.append((time.monotonic(), scored_total(first)))
        time.sleep(0.1)
    for _ in range(20):  # and a little after
        samples.append((time.monotonic(), scored_total(first)))
        time.sleep(0.1)
    results, (log_first, log_second) = finish_stream(kafka_bootstrap, topics, sender, len(expected), first, second)
    # How long the first instance's own scoring paused while the second joined.
    times = np.array([t for t, _ in samples])
    counts = np.array([c for _, c in samples])
    rising = times[1:][np.diff(counts) > 0]
    gaps = np.diff(np.concatenate([[times[0]], rising, [times[-1]]]))
    print(f"join: {len(samples)} samples over {times[-1] - times[0]:.1f} s; longest pause in the first instance's "
          f"scoring {gaps.max():.2f} s")
    revokes = [line for line in log_first.splitlines() if "revoked [" in line]
    assert revokes, log_first[-3000:]
    moved = revokes[0].split("revoked ")[1].split(" (now")[0]
    assert moved.count(",") == 1, f"the first instance gave up {moved}, not just the two partitions that moved"
    assert "assigned [" in log_second and "restored from a snapshot" in log_second, log_second[-3000:]
    # The stream arrives continuously (replay paces each message): a pause this long is the join's.
    assert gaps.max() < 2.0, f"the first instance stopped scoring for {gaps.max():.2f} s during the join"
    assert_parity(results, expected, scores)


def rows_by_source(sidecar: Sidecar) -> dict[str, float]:
    """fraudscore_terminal_table_rows_total by source, from an instance's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = sidecar.get("/metrics")
    assert status == 200
    out = {"feed": 0.0, "input": 0.0}
    for family in text_string_to_metric_families(body):
        if family.name == "fraudscore_terminal_table_rows":
            out |= {s.labels["source"]: s.value for s in family.samples if s.name.endswith("_total")}
    return out


def test_instances_with_a_state_topic_read_each_others_partitions_from_the_terminal_feed(kafka_bootstrap, small_bundle,
                                                                                         month) -> None:
    """--state-topic: one instance starts on a live stream, two join a quarter of the way in.
    Every instance's terminal table takes nearly all of its rows from the terminal feed (the
    owners' decoded rows), so none parses the others' JSON, and every transaction still gets
    exactly the offline features and score."""
    events, expected, scores, _ = month
    topics = topics_with_state(kafka_bootstrap)
    flags = ("--state-topic", topics["state"], "--snapshot-interval", "2")
    first = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-feed", *flags)
    first.wait_ready(120)
    sender = _background_send(kafka_bootstrap, topics, events, speedup=60 * 86_400 / 25)
    _wait_for_results(kafka_bootstrap, topics["out"], len(expected) // 4, timeout_s=120)
    assert written(kafka_bootstrap, topics["out"]) < len(expected)  # they join mid-stream
    others = [raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-feed", *flags) for _ in range(2)]
    for other in others:
        other.wait_ready(120)
    sender.wait(240)
    assert sender.returncode == 0, sender.stderr.read()
    results = drain(kafka_bootstrap, [topics["out"]], len(expected), timeout_s=240)
    sources = [rows_by_source(s) for s in (first, *others)]
    for instance in (first, *others):
        code, log = instance.stop()
        assert code == 0, log[-3000:]
    print(f"terminal table rows by source, per instance: {sources}")
    assert_parity(results, expected, scores)
    for joined in sources[1:]:  # restored from the first's terminal snapshot, then fed
        assert joined["feed"] > 0 and joined["input"] <= 0.1 * joined["feed"], sources
    assert sum(s["input"] for s in sources) <= 0.1 * sum(s["feed"] for s in sources), sources


def held(log: str) -> list[str]:
    """The partitions an instance held after each assignment or revocation, from its log
    ("assigned [..] (now [..])", "revoked [..] (now [..])"); its shutdown's revocation left out."""
    lines = [line for line in log.splitlines() if ("assigned [" in line or "revoked [" in line) and "(now " in line]
    if lines and "revoked [" in lines[-1] and lines[-1].endswith("(now [])"):
        lines = lines[:-1]
    return [line.split("(now ")[1].rstrip(")") for line in lines]


def test_a_static_member_restarted_within_the_session_timeout_causes_no_rebalance(kafka_bootstrap, small_bundle, month) -> None:
    """--group-instance-id: two instances; one is stopped (SIGTERM) and started again under the
    same id within the session timeout. The other keeps its partitions (never revoked), the
    restarted one gets its own back and restores them from their snapshots."""
    events, expected, scores, _ = month
    topics = topics_with_state(kafka_bootstrap, partitions=4)
    flags = ("--state-topic", topics["state"], "--snapshot-interval", "5", "-X", "session.timeout.ms=30000")
    # A group of its own: static members of an earlier run on the same broker stay registered.
    group = f"raw-static-{topics['state'][-8:]}"
    a = raw_sidecar(kafka_bootstrap, small_bundle, topics, group, *flags, "--group-instance-id", "a")
    b = raw_sidecar(kafka_bootstrap, small_bundle, topics, group, *flags, "--group-instance-id", "b")
    a.wait_ready(120)
    b.wait_ready(120)
    sender = _background_send(kafka_bootstrap, topics, events, speedup=60 * 86_400 / 30)
    _wait_for_results(kafka_bootstrap, topics["out"], len(expected) // 3, timeout_s=120)
    before_restart = len(a.output())  # the two may have settled in one rebalance or two: what counts is after
    code, log_b = b.stop()
    assert code == 0, log_b[-3000:]
    b = raw_sidecar(kafka_bootstrap, small_bundle, topics, group, *flags, "--group-instance-id", "b")
    b.wait_ready(60)
    results, (log_a, log_b2) = finish_stream(kafka_bootstrap, topics, sender, len(expected), a, b)
    # From b's stop on, the instance that stayed was neither assigned nor revoked anything
    # before its own stop; b got back what it had.
    after = log_a[before_restart:]
    assert "assigned [" not in after and after.count("revoked [") <= 1, after[-3000:]  # its own shutdown only
    assert held(log_b2)[:1] == held(log_b)[-1:], (held(log_b), held(log_b2))
    assert "restored from a snapshot" in log_b2, log_b2[-3000:]
    assert_parity(results, expected, scores)


DAILY = FeatureSpec(terminal_resolution_s=86_400)


@pytest.fixture(scope="module")
def daily_bundle(tmp_path_factory) -> Path:
    """A bundle trained on features at a 1-day terminal resolution."""
    return trained_bundle(tmp_path_factory.mktemp("daily-bundle"), "--terminal-resolution", "1d")


def test_a_version_2_bundle_keeps_parity_in_three_instances_and_through_a_restart(
        kafka_bootstrap, make_topic, ratio_bundle, tmp_path) -> None:
    """`features --feature-version 2` -> train -> export: the bundle takes 21 inputs and records
    version 2; three instances score the month live, one is stopped a third of the way in and a
    new one takes its partition (restored by replay); every result has the 21 offline features
    and the offline score."""
    manifest = json.loads((ratio_bundle / "manifest.json").read_text())
    assert manifest["feature_spec"]["version"] == 2 and manifest["input"]["shape"] == ["batch", 21], manifest["input"]
    month = simulated_month(tmp_path, ratio_bundle, SPEC_V2)

    def replace(first: Sidecar, make) -> list[Sidecar]:
        code, log = first.stop()
        assert code == 0, log[-3000:]
        second = make()
        second.wait_ready(120)
        return [second]

    results, running = stream_with_a_disturbance(kafka_bootstrap, make_topic, ratio_bundle, month, "raw-v2", replace,
                                                  instances=3)
    _, expected, scores, _ = month
    assert_parity(results, expected, scores)
    added = set(SPEC_V2.names) - set(BASELINE_SPEC.names)
    assert len(added) == 6 and all(orjson.loads(m.value())["features"].keys() >= added for m in results)
    assert running[0].output().count("restored from"), "the new instance restored no partition"


def restarted_with_snapshots(bootstrap: str, events, total: int, group: str, first_bundle: Path,
                             second_bundle: Path) -> tuple[list, str, str]:
    """Stream the month live to a sidecar on `first_bundle` with snapshots every 2 s (--state-topic);
    a third of the way in, stop it (SIGTERM) and start one on `second_bundle`. (every result, the
    second one's log, its /metrics at the end)"""
    topics = topics_with_state(bootstrap)
    flags = ("--state-topic", topics["state"], "--snapshot-interval", "2")
    first = raw_sidecar(bootstrap, first_bundle, topics, group, *flags)
    first.wait_ready(120)
    sender = _background_send(bootstrap, topics, events, speedup=60 * 86_400 / 25)
    _wait_for_results(bootstrap, topics["out"], total // 3, timeout_s=120)
    code, log = first.stop()
    assert code == 0, log[-3000:]
    second = raw_sidecar(bootstrap, second_bundle, topics, group, *flags)
    second.wait_ready(120)
    sender.wait(240)
    assert sender.returncode == 0, sender.stderr.read()
    results = drain(bootstrap, [topics["out"]], total, timeout_s=240)
    _, metrics = second.get("/metrics")
    code, log = second.stop()
    assert code == 0, log[-3000:]
    return results, log, metrics


def test_moving_from_a_version_1_bundle_to_version_2_restores_from_the_version_1_snapshots(
        kafka_bootstrap, small_bundle, ratio_bundle, tmp_path) -> None:
    """Version 2's derived features keep no state, so the snapshots a version 1 bundle's sidecar
    wrote serve a version 2 bundle's: stopped a third of the way in and restarted on the new
    bundle, the sidecar restores every partition and the terminal table from them (no replay
    from the start), and every result it writes has the 21 offline features and the new score."""
    events, expected, scores, _ = simulated_month(tmp_path, ratio_bundle, SPEC_V2)
    results, log, _ = restarted_with_snapshots(kafka_bootstrap, events, len(expected), "raw-switch", small_bundle,
                                               ratio_bundle)
    assert "terminal table: restored from a snapshot" in log, log[-3000:]
    assert log.count("customer windows restored from a snapshot at offset") == 3, log[-3000:]
    assert {orjson.loads(m.value())["transaction_id"] for m in results} == set(expected)
    after = [m for m in results if len(orjson.loads(m.value())["features"]) == len(SPEC_V2.names)]
    assert len(expected) // 3 <= len(after) < len(results), (len(after), len(results))
    seen = {orjson.loads(m.value())["transaction_id"] for m in after}
    assert_parity(after, {tx: expected[tx] for tx in seen}, scores)


def test_a_daily_resolution_bundle_keeps_parity_through_a_restart_from_its_bucket_snapshot(
        kafka_bootstrap, daily_bundle, tmp_path) -> None:
    """`features --terminal-resolution 1d` -> train -> export records the resolution; the sidecar then keeps
    per-terminal day counts (not transactions), snapshots them, restores them after a SIGTERM mid-stream,
    and every transaction still gets exactly the offline features and score at that resolution."""
    manifest = json.loads((daily_bundle / "manifest.json").read_text())
    assert manifest["feature_spec"]["terminal_resolution_s"] == 86_400
    events, expected, scores, _ = simulated_month(tmp_path, daily_bundle, DAILY)
    results, log, metrics = restarted_with_snapshots(kafka_bootstrap, events, len(expected), "raw-daily", daily_bundle,
                                                     daily_bundle)
    assert "terminal table: restored from a snapshot" in log, log[-3000:]
    assert 'fraudscore_state_snapshot_restores_total{kind="terminals",outcome="restored"} 1.0' in metrics
    assert_parity(results, expected, scores)
    # Day counts of 1,000 terminals: ~48 prefix columns x 2 matrices x 4 B, rows reserved 1.5x ahead,
    # whatever the stream's length (the exact table holds ~21 B per retained transaction instead).
    terminal_bytes = metric_sum(metrics, "fraudscore_state_bytes", kind="terminal")
    print(f"terminal state at 1 day: {terminal_bytes:,.0f} B for 1,000 terminals")
    assert 0 < terminal_bytes < 2 * 1_000 * 48 * 8, terminal_bytes


@pytest.mark.faults
def test_state_topics_deleted_mid_run_keep_scoring_and_a_restart_never_uses_wrong_state(
        kafka_bootstrap, small_bundle, month) -> None:
    """Raw mode with --state-topic under a live stream: the state topic, its index and its feed
    are deleted (an operator's mistake, a cluster migration). Scoring goes on from the state in
    memory; the snapshots due meanwhile are skipped (counted, logged once) instead of each
    waiting its budget for a topic that is gone. `fraudscore topics create` makes the topics
    again; snapshots go to the new ones, and an instance started after a stop restores from them
    and ends with every feature equal to `fraudscore features`."""
    from confluent_kafka.admin import AdminClient

    events, expected, scores, _ = month
    topics = topics_with_state(kafka_bootstrap)
    state = topics["state"]
    flags = ("--state-topic", state, "--snapshot-interval", "1", "--drain-timeout", "5")
    stream_s = 40
    first = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-state-gone", *flags)
    admin = AdminClient(client(kafka_bootstrap))
    sender = second = None
    try:
        first.wait_ready(120)
        sender = _background_send(kafka_bootstrap, topics, events, speedup=60 * 86_400 / stream_s)
        _wait_for_results(kafka_bootstrap, topics["out"], len(expected) // 5, timeout_s=120)
        for future in admin.delete_topics([state, f"{state}-index", f"{state}-feed"]).values():
            future.result(timeout=30)
        at_delete = written(kafka_bootstrap, topics["out"])
        gone_s = 10
        time.sleep(gone_s)
        during = written(kafka_bootstrap, topics["out"]) - at_delete
        # The stream brings ~1,450 transactions a second; scoring them must not stall while the topics are gone.
        assert during >= 0.5 * gone_s * len(expected) / stream_s, \
            f"{during} results in {gone_s} s without the state topics:\n{first.output()[-4000:]}"
        _, metrics = first.get("/metrics")
        skipped = metric_sum(metrics, "fraudscore_state_snapshot_writes_total", outcome="skipped")
        assert skipped > 0, metrics
        assert "snapshots skipped: state topic(s)" in first.output(), first.output()[-3000:]
        ok_before = metric_sum(metrics, "fraudscore_state_snapshot_writes_total", outcome="ok")
        done = subprocess.run([EXE, "topics", "create", "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics["in"],
                               "--labels-topic", topics["labels"], "--output-topic", topics["out"], "--alerts-topic",
                               topics["alerts"], "--dlq-topic", topics["dlq"], "--state-topic", state, "--partitions", "3"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        t0 = time.monotonic()
        try:
            wait_until(lambda: metric_sum(first.get("/metrics")[1], "fraudscore_state_snapshot_writes_total", outcome="ok")
                       > ok_before, 60, "a snapshot written to the new state topics", interval_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the sidecar's log:\n{first.output()[-3000:]}") from None
        back_s = time.monotonic() - t0
        code, log = first.stop()
        assert code == 0, log[-3000:]
        assert written(kafka_bootstrap, topics["out"]) < len(expected), "the stream ended before the restart"
        second = raw_sidecar(kafka_bootstrap, small_bundle, topics, "raw-state-gone", *flags)
        second.wait_ready(120)
        sender.wait(240)
        assert sender.returncode == 0, sender.stderr.read()
        results = drain(kafka_bootstrap, [topics["out"]], len(expected), timeout_s=240)
        code, log = second.stop()
        assert code == 0, log[-3000:]
        assert "customer windows restored from a snapshot at offset" in log, log[-3000:]
        assert_parity(results, expected, scores)
        print(f"state topics deleted for {gone_s} s mid-stream: {during} results meanwhile, {skipped:.0f} snapshots "
              f"skipped; a snapshot written {back_s:.1f} s after `topics create`; the restart restored from them")
    finally:
        for instance in (first, second):
            if instance is not None and instance.proc.poll() is None:
                instance.proc.kill()
        if sender is not None and sender.poll() is None:
            sender.kill()
