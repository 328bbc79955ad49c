"""Shadow scoring: `fraudscore run --challenger BUNDLE` scores every batch with a second model.

Decisions, alerts and the result's `score` come from the champion only; the challenger's score
travels in the result and in metrics labelled by model version. A challenger the champion's
features cannot feed is refused at start; one that fails later never stops the champion."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bundle_helpers import squared_bundle
from fraudscore.errors import UsageError
from fraudscore.serving.bundle import load_bundle
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


def test_a_failing_challenger_leaves_the_champion_s_results_whole(small_bundle, challenger, transactions) -> None:
    alone, shadowed = _pipelines(small_bundle, challenger)
    shadowed.challenger.scorer = _Broken()
    values = transactions[1][:50]
    result, plain = shadowed.score_batch(values), alone.score_batch(values)
    assert "out of memory" in result.challenger_error and result.challenger_scores is None
    assert [json.loads(p)["score"] for p in result.payloads] == [json.loads(p)["score"] for p in plain.payloads]
    assert not any("challenger" in json.loads(p) for p in result.payloads)


def test_a_non_finite_challenger_score_is_null_and_counted(small_bundle, challenger) -> None:
    from test_pipeline import extreme_messages

    bundle = load_bundle(small_bundle)
    shadowed = Pipeline(bundle.manifest, Scorer(bundle), challenger=load_challenger(challenger, bundle.manifest))

    class HalfNan:
        def score(self, matrix):
            out = np.full(len(matrix), 0.25, np.float32)
            out[::2] = np.nan
            return out

    shadowed.challenger.scorer = HalfNan()
    result = shadowed.score_batch(extreme_messages(bundle.features)[3:])  # two rows the champion scores
    assert [json.loads(p)["challenger"]["score"] for p in result.payloads] == [None, 0.25]
    assert [json.loads(p)["challenger"]["decision"] for p in result.payloads] == [
        "pass", "alert" if 0.25 >= shadowed.challenger.threshold else "pass"]
    assert result.challenger_non_finite == 1


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
