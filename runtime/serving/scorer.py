"""Scoring a float32 feature matrix with one ONNX Runtime call per batch."""

from __future__ import annotations

import logging

import numpy as np

from fraudscore.serving.bundle import Bundle
from fraudscore.errors import InputError, UsageError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


class Scorer:
    """An ONNX Runtime session over a verified bundle.

    `device`: 'cpu', 'cuda' (an error if CUDA is not really active after the session is
    created: ORT silently falls back to CPU otherwise), or 'auto' (CUDA when it is
    active, else CPU; the choice is logged and exposed as `provider`).
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", intra_op_threads: int = 1, inter_op_threads: int = 1):
        if device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("onnxruntime is not installed; pip install 'fraudscore[cpu]' (or [gpu])") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cuda":
            raise UsageError(
                "--device cuda: this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install fraudscore[gpu] on a CUDA host"
            )
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(bundle.model_bytes, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types
            raise InputError(f"{bundle.path}: ONNX Runtime cannot load the model ({exc}); re-export the bundle") from None
        active = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in active:
            raise UsageError(f"--device cuda requested but ONNX Runtime fell back to {active[0]}; check the CUDA install")
        self.provider = active[0]
        if device == "auto":
            log.info("scoring on %s", self.provider)
        self.input_name = bundle.manifest.input_name
        self.output_name = bundle.manifest.output_name
        expected = self.session.get_inputs()[0]
        if expected.name != self.input_name or expected.shape[-1] != len(bundle.features):
            raise InputError(
                f"{bundle.path}: the model's input {expected.name}{expected.shape} does not match the manifest "
                f"({self.input_name}, {len(bundle.features)} features); re-export the bundle"
            )

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """One score a row for a (rows, features) float32 matrix."""
        if len(matrix) == 0:
            return np.empty(0, dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: matrix})
        return out.reshape(len(matrix))
