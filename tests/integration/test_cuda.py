"""CUDA scoring: runs only where ONNX Runtime has a working CUDA provider; skips cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from fraudscore.serving.bundle import load_bundle
from fraudscore.errors import UsageError
from fraudscore.serving.scorer import Scorer

ort = pytest.importorskip("onnxruntime")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_cuda_requested_without_cuda_is_an_error_not_a_silent_fallback(small_bundle) -> None:
    if HAS_CUDA:
        pytest.skip("this host has CUDA")
    with pytest.raises(UsageError, match="--device cuda"):
        Scorer(load_bundle(small_bundle), device="cuda")


def test_auto_reports_the_provider_it_got(small_bundle) -> None:
    scorer = Scorer(load_bundle(small_bundle), device="auto")
    assert scorer.provider == ("CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this onnxruntime (install fraudscore[gpu] on a CUDA host)")
def test_cuda_scores_match_cpu(small_bundle) -> None:
    bundle = load_bundle(small_bundle)
    rows = np.random.default_rng(0).random((4096, len(bundle.features))).astype(np.float32) * 50
    cpu = Scorer(bundle, device="cpu").score(rows)
    try:
        gpu = Scorer(bundle, device="cuda")
    except UsageError as exc:  # provider listed but the driver/runtime is not usable here
        pytest.skip(str(exc))
    assert gpu.provider == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.score(rows), cpu, atol=1e-5)
