"""Keras run directory -> ONNX bundle, then validation against the Keras model.

Conversion and validation are separate steps (as in Hugging Face optimum's exporter):

1. convert the saved functional model with tf2onnx (opset 17), name the batch
   dimension `batch` and the output `score`;
2. validate: `onnx.checker`, a load in ONNX Runtime, and a parity check of ONNX Runtime
   against Keras on the run's held-out rows. tf2onnx only logs ops it cannot convert
   and still returns a model, so nothing ships without these checks.

The bundle is written under a temporary name and renamed into place only after it
passes; a failed export leaves nothing that looks like a bundle.
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter is noise for a CLI; set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudscore import InputError, UsageError, __version__
from fraudscore.atomic import check_new_directory, new_directory
from fraudscore.serving.manifest import Manifest
from fraudscore.tracking import TRACKING_FILE

OPSET = 17
TOLERANCE = 1e-5
OUTPUT_MEANING = {
    "mlp": "probability of fraud (0..1); alert at or above the threshold",
    "autoencoder": "reconstruction error: mean squared difference of standardised features and their "
    "reconstruction (>= 0); alert at or above the threshold",
}


class ParityError(InputError):
    """ONNX Runtime and Keras disagree on the held-out rows beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float
    worst_row: int
    rows_checked: int
    seconds: float


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing; is {path.parent} a run directory written by `fraudscore train`?") from None


def convert(model, n_features: int, opset: int = OPSET) -> bytes:
    """The ONNX model bytes of a functional Keras model taking (batch, n_features) float32."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from fraudscore.train.models import INPUT_NAME, OUTPUT_NAME

    spec = (tf.TensorSpec((None, n_features), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    graph = proto.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
    graph.output[0].name = OUTPUT_NAME
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.producer_name = f"fraudscore {__version__} via tf2onnx {tf2onnx.__version__}"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def parity(model, onnx_bytes: bytes, rows: np.ndarray, kind: str) -> tuple[float, int, float, float]:
    """(max abs diff, worst row, Keras value there, ORT value there) over `rows`."""
    import onnxruntime as ort

    from fraudscore.train.models import INPUT_NAME, OUTPUT_NAME

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = model.predict(rows, batch_size=8192, verbose=0).reshape(-1).astype(np.float64)
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    got = got.reshape(-1).astype(np.float64)
    diff = np.abs(expected - got)
    worst = int(np.argmax(diff)) if len(diff) else 0
    return float(diff[worst]) if len(diff) else 0.0, worst, float(expected[worst]), float(got[worst])


def export_bundle(run_dir: Path, out: Path, opset: int = OPSET, tolerance: float = TOLERANCE) -> ExportResult:
    """Convert, validate and write a bundle; raise ParityError with the worst row on a mismatch."""
    import time

    import keras

    from fraudscore.train.models import quiet_tensorflow  # also registers the custom layers for loading

    quiet_tensorflow()
    started = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a run directory (expected the --out of `fraudscore train`)")
    check_new_directory(out)
    if not 13 <= opset <= 18:
        raise UsageError(f"--opset {opset}: tf2onnx 1.17 converts opsets 13-18")
    params = _read_json(run_dir / "params.json")
    metrics = _read_json(run_dir / "metrics.json")
    fingerprint = _read_json(run_dir / "fingerprint.json")
    tracking = _read_json(run_dir / TRACKING_FILE) if (run_dir / TRACKING_FILE).exists() else {}
    holdout_path = run_dir / "holdout.npy"
    if not holdout_path.exists():
        raise InputError(f"{holdout_path} is missing; re-run `fraudscore train`")
    rows = np.load(holdout_path).astype(np.float32)
    features = list(params["features"])
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)

    onnx_bytes = convert(model, len(features), opset)
    max_diff, worst, keras_value, ort_value = parity(model, onnx_bytes, rows, params["model"])
    # Probabilities are compared absolutely. Reconstruction errors are unbounded, and float32
    # carries ~7 significant digits, so they are compared relative to their size as well.
    allowed = tolerance if params["model"] == "mlp" else tolerance * max(1.0, abs(keras_value))
    if not max_diff <= allowed:
        raise ParityError(
            f"parity check failed: ONNX Runtime and Keras differ by {max_diff:.3g} (allowed {allowed:.3g}) "
            f"at held-out row {worst} (Keras {keras_value!r}, ONNX Runtime {ort_value!r}); "
            "the conversion is wrong: check tf2onnx's log for unsupported ops"
        )

    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    sha = hashlib.sha256(onnx_bytes).hexdigest()
    manifest = Manifest(
        model_kind=params["model"],
        model_version=f"{params['model']}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{sha[:8]}",
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        features=tuple(features),
        input_name="features",
        output_name="score",
        output_meaning=OUTPUT_MEANING[params["model"]],
        threshold=float(metrics["threshold"]["value"]),
        threshold_rule=metrics["threshold"]["rule"],
        model_file="model.onnx",
        model_sha256=sha,
        metrics={"test": metrics["test"], "validation": metrics["validation"], "split": metrics["split"],
                 "export_parity": {"max_abs_diff": max_diff, "worst_row": worst, "rows": int(len(rows)), "opset": opset}},
        fingerprint=fingerprint,
        feature_spec=params.get("feature_spec", {}),
        tracking=tracking,
        libraries=params.get("libraries", {}) | {
            "tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        },
    )
    with new_directory(out) as tmp:
        (tmp / "model.onnx").write_bytes(onnx_bytes)
        manifest.write(tmp / "manifest.json")
    return ExportResult(out, max_diff, worst, int(len(rows)), time.perf_counter() - started)
