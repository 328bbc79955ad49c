"""Shadow scoring: `fraudscore run --challenger BUNDLE` scores every batch with a second model.

Decisions, alerts and the result's `score` come from the champion only; the challenger's score
travels in the result and in metrics labelled by model version. A challenger the champion's
features cannot feed is refused at start; one that fails later never stops the champion."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bundle_helpers import squared_bundle
from fakes import Message
from fraudscore.errors import UsageError
from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.metrics import SidecarMetrics
from fraudscore.serving.pipeline import Pipeline, load_challenger
from fraudscore.serving.scorer import Scorer
from kafka_helpers import EXE, Sidecar, drain, produce


@pytest.fixture(scope="module")
def challenger(small_bundle: Path, tmp_path_factory) -> Path:
    return squared_bundle(small_bundle, tmp_path_factory.mktemp("challenger") / "bundle", "challenger-squared")


def _pipelines(champion: Path, challenger: Path) -> tuple[Pipeline, Pipeline]:
    bundle = load_bundle(champion)
    alone = Pipeline(bundle.manifest, Scorer(bundle))
    shadowed = Pipeline(bundle.manifest, Scorer(bundle), challenger=load_challenger(challenger, bundle.manifest))
    return alone, shadowed


def test_the_challenger_scores_every_result_and_decides_nothing(small_bundle, challenger, transactions) -> None:
    alone, shadowed = _pipelines(small_bundle, challenger)
    values = transactions[1][:300]
    plain, result = alone.score_batch(values), shadowed.score_batch(values)
    assert result.index.tolist() == plain.index.tolist() and len(result.payloads) == 300
    np.testing.assert_array_equal(result.scores, plain.scores)  # the champion's score and decision, unchanged
    np.testing.assert_array_equal(result.alerts, plain.alerts)
    np.testing.assert_allclose(result.challenger_scores, plain.scores.astype(np.float32) ** 2, rtol=1e-6)
    for with_shadow, without in zip(result.payloads, plain.payloads):
        doc, base = json.loads(with_shadow), json.loads(without)
        shadow = doc.pop("challenger")
        assert shadow["version"] == "challenger-squared"
        assert shadow["score"] == pytest.approx(base["score"] ** 2, rel=1e-6)
        assert shadow["decision"] == ("alert" if shadow["score"] >= shadowed.challenger.threshold else "pass")
        base["timings"] = doc["timings"] = None  # the batch's inference time differs between the two runs
        assert doc == base
    assert result.challenger_error is None


def test_a_challenger_with_other_inputs_or_another_specification_is_refused(small_bundle, tmp_path) -> None:
    champion = load_bundle(small_bundle).manifest

    def renamed(manifest: dict) -> None:
        manifest["input"]["features"][3]["name"] = "CUSTOMER_ID_NB_TX_2DAY_WINDOW"

    def coarser(manifest: dict) -> None:
        manifest["feature_spec"]["terminal_resolution_s"] = 86_400

    other_inputs = squared_bundle(small_bundle, tmp_path / "inputs", "other-inputs", renamed)
    with pytest.raises(UsageError, match="CUSTOMER_ID_NB_TX_2DAY_WINDOW.*CUSTOMER_ID_NB_TX_1DAY_WINDOW|"
                                         "CUSTOMER_ID_NB_TX_1DAY_WINDOW.*CUSTOMER_ID_NB_TX_2DAY_WINDOW"):
        load_challenger(other_inputs, champion)
    other_spec = squared_bundle(small_bundle, tmp_path / "spec", "other-spec", coarser)
    with pytest.raises(UsageError, match="feature specification.*terminal_resolution_s"):
        load_challenger(other_spec, champion)
    done = subprocess.run([EXE, "run", "--bundle", str(small_bundle), "--challenger", str(other_spec),
                           "--bootstrap-servers", "127.0.0.1:1", "--input-topic", "i", "--output-topic", "o",
                           "--alerts-topic", "a", "--dlq-topic", "d", "--group-id", "g", "--no-labels"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--challenger" in done.stderr and "terminal_resolution_s" in done.stderr


class _Broken:
    """A scorer whose session fails, as a challenger's ONNX Runtime call might at run time."""

    def score(self, matrix):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory")


def _with_scorer(champion: Path, challenger: Path, scorer) -> Pipeline:
    bundle = load_bundle(champion)
    shadow = dataclasses.replace(load_challenger(challenger, bundle.manifest), scorer=scorer)
    return Pipeline(bundle.manifest, Scorer(bundle), challenger=shadow)


def test_a_failing_challenger_leaves_the_champion_s_results_whole(small_bundle, challenger, transactions) -> None:
    alone, _ = _pipelines(small_bundle, challenger)
    shadowed = _with_scorer(small_bundle, challenger, _Broken())
    values = transactions[1][:50]
    result, plain = shadowed.score_batch(values), alone.score_batch(values)
    assert "out of memory" in result.challenger_error and result.challenger_scores is None
    assert [json.loads(p)["score"] for p in result.payloads] == [json.loads(p)["score"] for p in plain.payloads]
    assert not any("challenger" in json.loads(p) for p in result.payloads)
    metrics = SidecarMetrics()
    metrics.observe_batch([Message(timestamp_ms=0)] * 50, result, [])
    assert metrics.registry.get_sample_value("fraudscore_challenger_failures_total",
                                             {"model_version": "challenger-squared", "reason": "inference"}) == 1


class _Odd:
    """Challenger scores with a NaN, +inf and -inf among finite ones."""

    def score(self, matrix):
        out = np.full(len(matrix), 0.25, np.float32)
        out[:3] = [np.nan, np.inf, -np.inf]
        return out


@pytest.mark.parametrize("case", ["integer ids", "string ids", "features", "percent in versions", "partial"])
def test_non_finite_challenger_scores_are_null_in_valid_json_on_every_encoding_path(small_bundle, challenger, tmp_path,
                                                                                    case) -> None:
    """Both of encode's paths (one %-format a row for integer ids without features; the general one)
    write the "challenger" object, and a score that is not finite is null, never an alert."""
    from fraudscore.serving.decode import DecodedBatch
    from fraudscore.serving.pipeline import Emitted

    champion = small_bundle
    if case == "percent in versions":
        champion = squared_bundle(small_bundle, tmp_path / "champion", "champion %d %s 100%")
        challenger = squared_bundle(small_bundle, tmp_path / "odd", "challenger %s%%")
    pipeline = _with_scorer(champion, challenger, _Odd())
    n = 5
    ids = [f"tx-{i}" for i in range(n)] if case == "string ids" else list(range(n))
    matrix = np.full((n, len(pipeline.features)), 0.5, np.float32)
    decoded = DecodedBatch(np.arange(n), ids, matrix, [], event_seconds=np.full(n, 1_522_540_800) if case == "partial"
                           else None, partial=np.array([True, False] * 2 + [True]) if case == "partial" else None)
    emitted = Emitted(("A", "B"), np.ones((n, 2))) if case == "features" else None
    result = pipeline.score_decoded(decoded, emitted)
    docs = [json.loads(p) for p in result.payloads]
    assert [d["challenger"]["score"] for d in docs] == [None, None, None, 0.25, 0.25]
    threshold = pipeline.challenger.threshold
    assert [d["challenger"]["decision"] for d in docs] == ["pass"] * 3 + ["alert" if 0.25 >= threshold else "pass"] * 2
    assert {d["challenger"]["version"] for d in docs} == {pipeline.challenger.version}
    assert [d["transaction_id"] for d in docs] == ids
    assert {d["model_version"] for d in docs} == {pipeline.model_version}
    metrics = SidecarMetrics()
    metrics.observe_batch([Message(timestamp_ms=0)] * n, result, [])
    version = pipeline.challenger.version
    sample = metrics.registry.get_sample_value
    assert sample("fraudscore_challenger_failures_total", {"model_version": version, "reason": "non_finite"}) == 3
    assert sample("fraudscore_model_transactions_scored_total", {"role": "challenger", "model_version": version}) == 2
    assert sample("fraudscore_model_alerts_total", {"role": "challenger", "model_version": version}) == (
        2 if 0.25 >= threshold else 0)


def _samples(sidecar: Sidecar, name: str) -> dict[tuple, float]:
    status, body = sidecar.get("/metrics")
    assert status == 200
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(body)
            for s in family.samples if s.name == name}


@pytest.mark.kafka
def test_sidecar_shadow_scores_and_survives_a_broken_challenger_reload(kafka_bootstrap, small_bundle, challenger,
                                                                        transactions, topics, tmp_path) -> None:
    keys, values = transactions
    live = tmp_path / "challenger"
    squared_bundle(small_bundle, live, "challenger-squared")
    champion_version = load_bundle(small_bundle).manifest.model_version
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-challenger", "--challenger", str(live))
    sidecar.wait_ready()
    first = 600
    produce(kafka_bootstrap, topics["in"], keys[:first], values[:first])
    results = [json.loads(m.value()) for m in drain(kafka_bootstrap, [topics["out"]], first)]
    assert len(results) == first
    for doc in results:
        assert doc["model_version"] == champion_version
        assert doc["challenger"]["version"] == "challenger-squared"
        assert doc["challenger"]["score"] == pytest.approx(doc["score"] ** 2, rel=1e-6, abs=1e-12)
    scored = _samples(sidecar, "fraudscore_model_transactions_scored_total")
    assert scored[(("model_version", champion_version), ("role", "champion"))] == first
    assert scored[(("model_version", "challenger-squared"), ("role", "challenger"))] == first

    (live / "model.onnx").write_bytes(b"not a model")  # a broken challenger, then a reload
    sidecar.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not _samples(sidecar, "fraudscore_challenger_failures_total") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _samples(sidecar, "fraudscore_challenger_failures_total") == {
        (("model_version", "challenger-squared"), ("reason", "load")): 1.0}
    produce(kafka_bootstrap, topics["in"], keys[first:2 * first], values[first:2 * first])
    later = [json.loads(m.value()) for m in drain(kafka_bootstrap, [topics["out"]], 2 * first)]
    assert len(later) == 2 * first  # the champion kept scoring, and the previous challenger with it
    assert all(doc["challenger"]["version"] == "challenger-squared" for doc in later)
    assert sidecar.get("/readyz")[0] == 200
    code, out = sidecar.stop()
    assert code == 0
    assert "challenger reload failed" in out and "bundle hash mismatch" in out


@pytest.mark.kafka
def test_a_challenger_swapped_under_load_loses_and_duplicates_nothing(kafka_bootstrap, small_bundle, transactions,
                                                                      topics, tmp_path) -> None:
    """The runbook's promotion step under load: the --challenger path is a link moved to another
    bundle (docs/operations.md, "Shadow scoring"), then SIGHUP, while transactions stream in."""
    import os
    import threading

    keys, values = transactions
    first = squared_bundle(small_bundle, tmp_path / "challenger-v1", "challenger-v1")
    second = squared_bundle(small_bundle, tmp_path / "challenger-v2", "challenger-v2")
    link = tmp_path / "challenger"
    link.symlink_to(first)
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-challenger-swap", "--challenger", str(link))
    sidecar.wait_ready()
    chunks = [(keys[i:i + 250], values[i:i + 250]) for i in range(0, len(values), 250)]

    def stream() -> None:
        for k, v in chunks:
            produce(kafka_bootstrap, topics["in"], k, v)
            time.sleep(0.1)

    sender = threading.Thread(target=stream)
    sender.start()
    time.sleep(len(chunks) * 0.1 / 3)
    (tmp_path / "next").symlink_to(second)
    os.replace(tmp_path / "next", link)
    sidecar.proc.send_signal(signal.SIGHUP)
    sender.join(120)
    results = [json.loads(m.value()) for m in drain(kafka_bootstrap, [topics["out"]], len(values))]
    ids = [doc["transaction_id"] for doc in results]
    assert len(ids) == len(set(ids)) == len(values)  # nothing lost, nothing twice
    versions = [doc["challenger"]["version"] for doc in results]
    assert set(versions) == {"challenger-v1", "challenger-v2"}  # the swap fell inside the stream
    assert _samples(sidecar, "fraudscore_model_reloads_total")[(("result", "success"),)] == 1
    assert _samples(sidecar, "fraudscore_challenger_info") == {(("model_version", "challenger-v2"),): 1.0}
    code, out = sidecar.stop()
    assert code == 0, out[-3000:]
