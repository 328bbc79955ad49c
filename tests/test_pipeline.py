"""The pipeline (decode -> ONNX Runtime -> encode) never emits a result without a finite score."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.pipeline import Emitted, Pipeline, iso_seconds
from fraudscore.serving.scorer import Scorer
from kafka_helpers import EXE


def extreme_messages(features) -> list[bytes]:
    """Valid float32 inputs; the first three overflow the network (to NaN), the last two do not.
    TX_AMOUNT stays within the amount rule (0 to 1e9); the other features take float32's extremes."""
    n = len(features)
    rows = [[3e38] * n, [-3e38] * n, [3e38 if j % 2 else -3e38 for j in range(n)], [1.0] * n, [0.0] * n]
    docs = [dict(zip(features, row)) for row in rows]
    for doc, amount in zip(docs, (1e9, 0.0, 1e9, 1.0, 0.0)):
        doc["TX_AMOUNT"] = amount
    return [json.dumps({"TRANSACTION_ID": i, **doc}).encode() for i, doc in enumerate(docs)]


def test_a_non_finite_score_is_a_rejection_not_a_pass(small_bundle: Path) -> None:
    bundle = load_bundle(small_bundle)
    pipeline = Pipeline(bundle.manifest, Scorer(bundle))
    values = extreme_messages(bundle.features)
    raw = pipeline.scorer.score(np.array([[v for k, v in json.loads(m).items() if k != "TRANSACTION_ID"] for m in values],
                                         dtype=np.float32))
    assert not np.isfinite(raw[:3]).any()  # the premise: these inputs do overflow this model
    result = pipeline.score_batch(values)
    assert result.index.tolist() == [3, 4] and result.ids == [3, 4]
    assert np.isfinite(result.scores).all() and len(result.payloads) == 2
    assert all(np.isfinite(json.loads(p)["score"]) for p in result.payloads)  # valid JSON, no nan
    assert [(r.index, r.reason) for r in result.rejections] == [(0, "non_finite_score"), (1, "non_finite_score"),
                                                                 (2, "non_finite_score")]
    assert "nan" in result.rejections[0].detail


def test_offline_scoring_rejects_non_finite_scores_in_both_paths(small_bundle: Path, tmp_path: Path) -> None:
    features = load_bundle(small_bundle).features
    values = extreme_messages(features)
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(values) + b"\n")
    rows = [json.loads(v) for v in values]
    header = ["TRANSACTION_ID", *features]
    (tmp_path / "in.csv").write_text(",".join(header) + "\n" + "".join(",".join(repr(r[h]) for h in header) + "\n" for r in rows))
    for source, out in (("in.jsonl", "out.jsonl"), ("in.csv", "out.csv"), ("in.csv", "from-table.jsonl")):
        done = subprocess.run([EXE, "score", "--bundle", str(small_bundle), "--in", str(tmp_path / source),
                               "--out", str(tmp_path / out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "scored 2 transactions" in done.stdout + done.stderr
        rejected = [json.loads(x) for x in (tmp_path / (out + ".rejected.jsonl")).read_text().splitlines()]
        assert [r["reason"] for r in rejected] == ["non_finite_score"] * 3
        assert "nan" not in (tmp_path / out).read_text().lower()
        if out.endswith(".jsonl"):  # the measured inference time, never a placeholder 0.000
            timings = [json.loads(line)["timings"] for line in (tmp_path / out).read_text().splitlines()]
            assert all(t["inference_ms"] > 0 and t["batch_size"] == 2 for t in timings), timings


def test_a_percent_sign_in_the_model_version_is_kept_literally() -> None:
    """Results are built with one %-format a row; a version from a hand-edited manifest may hold '%'."""
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.threshold, pipeline.model_version, pipeline._version_json = 0.5, "v%d-100%", '"v%d-100%"'
    out = pipeline.encode([7, 8], np.array([0.25, 0.75], np.float32), np.array([False, True]), inference_ms=1.0)
    assert [json.loads(o)["model_version"] for o in out] == ["v%d-100%", "v%d-100%"]
    assert [json.loads(o)["decision"] for o in out] == ["pass", "alert"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9_200_000_000), min_size=1, max_size=50))
def test_event_times_are_written_as_numpy_writes_them(seconds: list[int]) -> None:
    """iso_seconds (dates through datetime64, times of day as digits) equals np.datetime_as_string."""
    stamps = np.array(seconds, np.int64)
    want = np.datetime_as_string(stamps.astype("datetime64[s]"), unit="s").astype("S19").tolist()
    assert iso_seconds(stamps) == want


@pytest.mark.parametrize("ids, emitted", [([7, 8, 9], False), (["a", "b", "c"], False), ([7, 8, 9], True)])
def test_results_on_partial_state_say_so_after_their_event_time(ids, emitted) -> None:
    """Raw mode: the rows `partial` marks carry "state":"partial"; the others no "state" at all,
    in the fast path (integer ids) and the general one (other ids, emitted features)."""

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.threshold, pipeline.model_version, pipeline._version_json = 0.5, "v1", '"v1"'
    seconds = np.array([1_523_000_000, 1_523_000_100, 1_523_000_200], np.int64)
    extra = Emitted(("F",), np.array([[1.0], [2.0], [3.0]])) if emitted else None
    out = pipeline.encode(ids, np.array([0.1, 0.9, 0.2], np.float32), np.array([False, True, False]), inference_ms=1.0,
                          emitted=extra, event_seconds=seconds, partial=np.array([True, False, True]))
    docs = [json.loads(o) for o in out]
    assert [d.get("state") for d in docs] == ["partial", None, "partial"]
    assert [d["event_time"] for d in docs] == ["2018-04-06T07:33:20Z", "2018-04-06T07:35:00Z", "2018-04-06T07:36:40Z"]
    assert [d["transaction_id"] for d in docs] == ids
    whole = pipeline.encode(ids, np.array([0.1, 0.9, 0.2], np.float32), np.array([False, True, False]), inference_ms=1.0,
                            emitted=extra, event_seconds=seconds, partial=np.zeros(3, bool))
    assert all("state" not in json.loads(o) for o in whole)
