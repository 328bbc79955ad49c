"""The bundle manifest: what the runtime needs to know to score with a model file.

A bundle is a directory with `model.onnx` and `manifest.json`. The manifest names the
ordered input features (all float32, raw values: standardisation lives inside the
graph), the output, the alert threshold, the training metrics, the data fingerprint,
the library versions, and the sha256 of the model file. `manifest_sha256` is the sha256
of the manifest itself (canonical JSON of every other field), so that an edited threshold
or feature list is refused like a changed model file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudscore.errors import InputError


class IntegrityError(InputError):
    """A bundle file does not match its recorded sha256, or a path leaves the bundle."""


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of the manifest without its own `manifest_sha256`, as canonical JSON."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

SCHEMA_VERSION = 1
MODEL_KINDS = ("mlp", "autoencoder")


@dataclass(frozen=True)
class Manifest:
    model_kind: str
    model_version: str
    features: tuple[str, ...]
    input_name: str
    output_name: str
    output_meaning: str
    threshold: float
    model_file: str
    model_sha256: str
    schema_version: int = SCHEMA_VERSION
    threshold_rule: str = ""
    transforms: tuple[dict[str, Any], ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # The feature specification the model was trained with (fraudscore.features.spec), when its
    # inputs are features the runtime can compute from raw transactions; {} otherwise.
    feature_spec: dict[str, Any] = field(default_factory=dict)
    # The experiment-tracking run the model came from (`train --mlflow-uri`): {"uri", "experiment",
    # "experiment_id", "run_id", "artifact_uri"}; {} when the run was not tracked.
    tracking: dict[str, Any] = field(default_factory=dict)

    @property
    def score_reference(self) -> dict[str, Any]:
        """The model's score scale on its validation day(s) (`fraudscore.data.fingerprint.score_reference`):
        {"rows", "mean", "quantiles": {"0.5", "0.9", "0.99"}}; {} for a bundle exported before it was
        recorded (the score-shift alert then stays silent)."""
        reference = self.metrics.get("validation", {}).get("score_reference") if isinstance(self.metrics, dict) else None
        return dict(reference) if isinstance(reference, dict) else {}

    @property
    def validation_quality(self) -> dict[str, float]:
        """What the model measured on its validation day(s) that live quality compares with:
        precision and recall at its threshold, card precision@100, alerts a day ({} when absent)."""
        validation = self.metrics.get("validation", {}) if isinstance(self.metrics, dict) else {}
        keys = ("precision_at_threshold", "recall_at_threshold", "cp_at_100", "alerts_per_day")
        return {k: float(validation[k]) for k in keys
                if isinstance(validation, dict) and isinstance(validation.get(k), (int, float))}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": {"kind": self.model_kind, "version": self.model_version, "created": self.created},
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "input": {
                "name": self.input_name,
                "dtype": "float32",
                "shape": ["batch", len(self.features)],
                "features": [{"name": f, "dtype": "float32"} for f in self.features],
            },
            "transforms": list(self.transforms),
            "output": {"name": self.output_name, "dtype": "float32", "shape": ["batch", 1], "meaning": self.output_meaning},
            "threshold": {"value": self.threshold, "rule": self.threshold_rule},
            "metrics": self.metrics,
            "fingerprint": self.fingerprint,
            "libraries": self.libraries,
            "feature_spec": self.feature_spec,
            # Only when tracked: the manifests (and digests) of untracked bundles stay as they were.
            **({"tracking": self.tracking} if self.tracking else {}),
        }

    def write(self, path: Path) -> None:
        data = self.to_json()
        data["manifest_sha256"] = manifest_digest(data)
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "manifest.json") -> Manifest:
        try:
            version = int(data["schema_version"])
            if version != SCHEMA_VERSION:
                raise InputError(
                    f"{source}: schema_version {version} is not supported (this runtime reads {SCHEMA_VERSION}); "
                    "re-export the bundle with this fraudscore version"
                )
            kind = data["model"]["kind"]
            if kind not in MODEL_KINDS:
                raise InputError(f"{source}: model kind {kind!r} is not one of {', '.join(MODEL_KINDS)}")
            features = tuple(f["name"] for f in data["input"]["features"])
            if not features or len(set(features)) != len(features):
                raise InputError(f"{source}: input features must be a non-empty list of distinct names")
            if any(f.get("dtype", "float32") != "float32" for f in data["input"]["features"]):
                raise InputError(f"{source}: every input feature must be float32")
            if data.get("transforms"):
                raise InputError(f"{source}: transforms outside the graph are not supported by this runtime")
            return cls(
                schema_version=version,
                model_kind=kind,
                model_version=str(data["model"]["version"]),
                created=str(data["model"].get("created", "")),
                features=features,
                input_name=str(data["input"]["name"]),
                output_name=str(data["output"]["name"]),
                output_meaning=str(data["output"].get("meaning", "")),
                threshold=float(data["threshold"]["value"]),
                threshold_rule=str(data["threshold"].get("rule", "")),
                model_file=str(data["model_file"]),
                model_sha256=str(data["model_sha256"]),
                transforms=tuple(data.get("transforms", ())),
                metrics=dict(data.get("metrics", {})),
                fingerprint=dict(data.get("fingerprint", {})),
                libraries=dict(data.get("libraries", {})),
                feature_spec=dict(data.get("feature_spec") or {}),
                tracking=dict(data.get("tracking") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: malformed manifest ({type(exc).__name__}: {exc}); re-export the bundle") from None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: no manifest; a bundle directory holds model.onnx and manifest.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable JSON manifest ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: the manifest must be a JSON object")
        recorded = data.get("manifest_sha256")
        if recorded is None:
            raise IntegrityError(f"{path}: no manifest_sha256; the manifest was edited or written by an older "
                                 "fraudscore; re-export the bundle")
        actual = manifest_digest(data)
        if actual != recorded:
            raise IntegrityError(f"manifest hash mismatch: {path} sha256 {actual}, recorded {recorded}; the manifest "
                                 "was edited after export; re-export or restore it")
        return cls.from_json(data, str(path))
