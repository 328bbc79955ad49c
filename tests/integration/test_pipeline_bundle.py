"""The pipeline with a trained bundle never emits a result without a finite score, online and
offline (`fraudscore score`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.pipeline import Pipeline
from fraudscore.serving.scorer import Scorer
from commands import EXE


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
