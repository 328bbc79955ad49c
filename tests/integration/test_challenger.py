"""Shadow scoring in the pipeline (`fraudscore run --challenger BUNDLE` scores every batch with a
second model), with a trained bundle and no broker.

Decisions, alerts and the result's `score` come from the champion only; the challenger's score
travels in the result and in metrics labelled by model version. A challenger the champion's
features cannot feed is refused; one that fails never spoils the champion's results. The
running sidecar's side is tests/kafka/test_challenger_sidecar.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import squared_bundle
from fakes import Message
from fraudscore.errors import UsageError
from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.metrics import SidecarMetrics
from fraudscore.serving.pipeline import Pipeline, load_challenger
from fraudscore.serving.scorer import Scorer
from commands import EXE


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


