"""The pure middle of the sidecar: raw message values in, encoded results and rejections out.

decode (fraudscore.serving.decode) -> one ONNX Runtime call (fraudscore.serving.scorer) -> encode. No
Kafka, no I/O: the sidecar, `fraudscore score` and the bench all call `Pipeline.run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import orjson

from fraudscore.serving.bundle import Bundle
from fraudscore.serving.decode import MAX_MESSAGE_BYTES, Rejection, decode_batch
from fraudscore.serving.scorer import Scorer


@dataclass(frozen=True)
class BatchResult:
    index: np.ndarray  # positions in the input batch of the scored messages
    ids: list  # their transaction ids, aligned with index
    matrix: np.ndarray  # float32 features of the scored messages, aligned with index
    scores: np.ndarray  # float32, aligned with index
    alerts: np.ndarray  # bool, aligned with index
    payloads: list[bytes]  # encoded results, aligned with index
    rejections: list[Rejection]
    decode_seconds: float
    inference_seconds: float
    encode_seconds: float


def non_finite_rejections(index: np.ndarray, scores: np.ndarray) -> list[Rejection]:
    """`non_finite_score` rejections for the rows whose score is NaN or infinite."""
    return [Rejection(int(index[i]), "non_finite_score", f"the model returned {float(scores[i])!r} for this input")
            for i in np.flatnonzero(~np.isfinite(scores)).tolist()]


class Pipeline:
    """Scores batches with one bundle. Immutable: a model reload builds a new Pipeline."""

    def __init__(self, bundle: Bundle, scorer: Scorer, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.bundle = bundle
        self.scorer = scorer
        self.features = bundle.manifest.features
        self.threshold = float(bundle.manifest.threshold)
        self.model_version = bundle.manifest.model_version
        self.max_message_bytes = max_message_bytes
        self._version_json = orjson.dumps(self.model_version).decode()
        profiles = bundle.manifest.fingerprint.get("features", {})
        # (column, feature, training bin shares, bin edges) for the PSI drift metric.
        self.drift_baselines = [
            (j, name, np.array(profiles[name]["bin_shares"]), np.array(profiles[name]["bin_edges"]))
            for j, name in enumerate(self.features) if name in profiles
        ]

    def run(self, values: list[bytes | None]) -> BatchResult:
        t0 = time.perf_counter()
        decoded = decode_batch(values, self.features, max_message_bytes=self.max_message_bytes)
        t1 = time.perf_counter()
        scores = self.scorer.score(decoded.matrix)
        t2 = time.perf_counter()
        index, ids, matrix, rejections = decoded.index, decoded.ids, decoded.matrix, decoded.rejections
        finite = np.isfinite(scores)
        if not finite.all():
            # Extreme (still float32) inputs can overflow the network to NaN/inf. Such a row has
            # no score: "pass" would wave it through and `nan` is not JSON, so it is rejected.
            keep = np.flatnonzero(finite)
            rejections = sorted(rejections + non_finite_rejections(index, scores), key=lambda r: r.index)
            index, matrix, scores = index[keep], matrix[keep], scores[keep]
            ids = [ids[i] for i in keep.tolist()]
        alerts = scores >= self.threshold
        payloads = self.encode(ids, scores, alerts, inference_ms=(t2 - t1) * 1e3)
        t3 = time.perf_counter()
        return BatchResult(index, ids, matrix, scores, alerts, payloads, rejections, t1 - t0, t2 - t1, t3 - t2)

    def encode(self, ids: list, scores: np.ndarray, alerts: np.ndarray, inference_ms: float) -> list[bytes]:
        """One JSON result a row: id, score (9 significant digits: float32 round-trips), decision,
        threshold, model version, and the batch's inference time and size."""
        tail = (
            f',"threshold":{self.threshold!r},"model_version":{self._version_json},'
            f'"timings":{{"inference_ms":{inference_ms:.3f},"batch_size":{len(ids)}}}}}'
        ).encode()
        if all(type(i) is int for i in ids):
            id_json = [str(i).encode() for i in ids]
        else:
            id_json = list(map(orjson.dumps, ids))
        decisions = [b"alert" if a else b"pass" for a in alerts.tolist()]
        template = b'{"transaction_id":%s,"score":%.9g,"decision":"%s"%s'
        return [template % (i, s, d, tail) for i, s, d in zip(id_json, scores.tolist(), decisions)]
