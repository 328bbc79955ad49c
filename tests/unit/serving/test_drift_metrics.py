"""The sidecar's drift and score-reference series: what it counts per batch and what it exports.

Broker-free: `SidecarMetrics` is fed `BatchResult`s directly and read back through its
Prometheus exposition. The alerts built on these series are tested in tests/integration/test_drift_alert.py
(simulated streams through Prometheus) and deploy/prometheus/tests/alerts_test.yml.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fakes import Message
from fraudscore.data.fingerprint import feature_profile, score_reference
from fraudscore.serving.drift import CALENDAR_FEATURES, bin_counts, drift_baselines, psi
from fraudscore.serving.manifest import Manifest
from fraudscore.serving.metrics import SidecarMetrics
from fraudscore.serving.pipeline import BatchResult

FEATURES = ("TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW")


def _manifest(training: np.ndarray, reference: dict | None = None, version: str = "v1") -> Manifest:
    validation = {"auc": 0.9} | ({"score_reference": reference} if reference is not None else {})
    return Manifest(
        model_kind="mlp", model_version=version, features=FEATURES, input_name="features", output_name="score",
        output_meaning="probability", threshold=0.5, model_file="model.onnx", model_sha256="0" * 64,
        metrics={"validation": validation},
        fingerprint={"rows": len(training), "features": {f: feature_profile(training[:, j]) for j, f in enumerate(FEATURES)}},
    )


def _training(rows: int = 5000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.lognormal(3, 1, rows), rng.integers(0, 2, rows), rng.integers(0, 2, rows),
                            rng.integers(1, 8, rows)]).astype(np.float64)


def _result(matrix: np.ndarray, scores: np.ndarray) -> BatchResult:
    n = len(matrix)
    return BatchResult(np.arange(n), list(range(n)), matrix.astype(np.float32), scores.astype(np.float32),
                       scores >= 0.5, [b""] * n, [], 0.001)


def _samples(metrics: SidecarMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=200),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12, unique=True))
def test_bin_counts_match_a_row_by_row_reference(values: list[float], edges: list[float]) -> None:
    edges_arr = np.array(sorted(edges))
    expected = [0] * (len(edges_arr) + 1)
    for v in values:  # bin 0 below edges[0]; bin i from edges[i-1] (inclusive) to edges[i]
        expected[sum(1 for e in edges_arr if v >= e)] += 1
    assert bin_counts(np.array(values), edges_arr).tolist() == expected


def test_psi_is_zero_for_training_shares_and_large_for_a_shift() -> None:
    shares = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(shares, np.array([100, 100, 100, 100])) == 0.0
    # The value the recording rules compute for the same counts (alerts_test.yml: "PSI 6.91").
    assert f"{psi(shares, np.array([0, 0, 0, 100])):.2f}" == "6.91"


def test_every_batch_is_counted_into_the_training_bins_and_calendar_features_are_left_out() -> None:
    training = _training()
    manifest = _manifest(training)
    metrics = SidecarMetrics()
    metrics.set_model(manifest)
    live = _training(rows=37, seed=1)  # a batch far smaller than the old 500-row minimum still counts
    for part in (live[:30], live[30:]):
        metrics.observe_batch([Message()] * len(part), _result(part, np.full(len(part), 0.1)), [])
    samples = _samples(metrics)
    for b in drift_baselines(FEATURES, manifest.fingerprint):
        counts = [samples[("fraudscore_feature_bin_total", (("bin", str(i)), ("feature", b.feature)))]
                  for i in range(len(b.shares))]
        assert counts == bin_counts(live[:, b.column], b.edges).tolist()
        shares = [samples[("fraudscore_feature_training_share", (("bin", str(i)), ("feature", b.feature)))]
                  for i in range(len(b.shares))]
        assert shares == b.shares.tolist()
    exported = {dict(labels).get("feature") for (name, labels) in samples if name == "fraudscore_feature_bin_total"}
    assert exported == {"TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW"}
    assert not exported & CALENDAR_FEATURES
    # No per-batch PSI gauge that keeps its last value when traffic stops.
    assert not any(name.startswith("fraudscore_feature_psi") for name, _ in samples)


def test_a_model_with_other_bin_edges_restarts_the_counts() -> None:
    metrics = SidecarMetrics()
    metrics.set_model(_manifest(_training()))
    batch = _training(rows=50, seed=2)
    metrics.observe_batch([Message()] * 50, _result(batch, np.zeros(50)), [])

    def total() -> float:
        return sum(v for (name, _), v in _samples(metrics).items() if name == "fraudscore_feature_bin_total")

    assert total() == 2 * 50
    metrics.set_model(_manifest(_training(), version="v1-again"))  # same fingerprint: counts kept
    assert total() == 2 * 50
    metrics.set_model(_manifest(_training(seed=5), version="v2"))  # other edges: counting starts again
    assert total() == 0


def test_scores_are_compared_with_the_models_validation_quantiles() -> None:
    validation = np.random.default_rng(3).exponential(0.01, 10_000)
    reference = score_reference(validation)
    assert reference["rows"] == 10_000 and set(reference["quantiles"]) == {"0.5", "0.9", "0.99"}
    metrics = SidecarMetrics()
    metrics.set_model(_manifest(_training(), reference))
    live = np.random.default_rng(4).exponential(0.01, 4000) * 3  # the same model's scores, tripled
    metrics.observe_batch([Message()] * 4000, _result(_training(rows=4000), live), [])
    s = _samples(metrics)
    assert s[("fraudscore_model_score_reference", (("statistic", "p90"),))] == reference["quantiles"]["0.9"]
    assert s[("fraudscore_model_score_reference", (("statistic", "mean"),))] == reference["mean"]
    assert s[("fraudscore_score_reference_compared_total", ())] == 4000
    above = {q: s[("fraudscore_score_above_reference_total", (("reference", q),))] / 4000 for q in ("p50", "p90", "p99")}
    assert above["p90"] == np.count_nonzero(live.astype(np.float32) >= np.float32(reference["quantiles"]["0.9"])) / 4000
    assert 0.45 < above["p90"] < 0.55  # 10 % expected: the alert's bound is 30 %


def test_a_bundle_exported_without_a_score_reference_exports_none_and_compares_nothing() -> None:
    manifest = _manifest(_training())  # as exported before score references were recorded
    assert Manifest.from_json(manifest.to_json()).score_reference == {}
    metrics = SidecarMetrics()
    metrics.set_model(_manifest(_training(), score_reference(np.linspace(0, 1, 100))))
    metrics.set_model(manifest)  # a reload to the old bundle drops the previous reference
    metrics.observe_batch([Message()] * 10, _result(_training(rows=10), np.ones(10)), [])
    s = _samples(metrics)
    assert not any(name == "fraudscore_model_score_reference" for name, _ in s)
    assert s[("fraudscore_score_reference_compared_total", ())] == 0


def test_readyz_says_why_it_is_not_ready_from_one_look() -> None:
    """/readyz's 503 carries the reason; with a reason callback, ready means no reason (one call,
    so a rebalance between two calls cannot give a 503 without one)."""
    import urllib.error
    import urllib.request

    from fraudscore.serving.metrics import HealthServer, SidecarMetrics

    reasons = ["partition 2's customer state covers 5.0 days of the 30 its windows need", ""]
    http = HealthServer("127.0.0.1", 0, SidecarMetrics().registry, lambda: False, lambda: reasons[0])
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{http.port}/readyz", timeout=5)
        assert refused.value.code == 503
        assert refused.value.read().decode() == f"not ready: {reasons[0]}\n"
        reasons.pop(0)
        with urllib.request.urlopen(f"http://127.0.0.1:{http.port}/readyz", timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b"ready\n"
    finally:
        http.close()
