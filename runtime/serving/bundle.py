"""Loading a bundle directory: manifest first, then the model file, verified by sha256."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fraudscore.errors import InputError
from fraudscore.serving.manifest import IntegrityError as BundleIntegrityError
from fraudscore.serving.manifest import Manifest

__all__ = ["Bundle", "BundleIntegrityError", "load_bundle"]


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    model_bytes: bytes

    @property
    def features(self) -> tuple[str, ...]:
        return self.manifest.features


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle; raise a typed error that says how to fix it."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: not a bundle directory (expected a folder with model.onnx and manifest.json)")
    manifest = Manifest.read(root / "manifest.json")
    model_path = (root / manifest.model_file).resolve()
    if model_path.parent != root.resolve():
        raise BundleIntegrityError(
            f"{root}: manifest model_file {manifest.model_file!r} points outside the bundle directory; refusing it"
        )
    try:
        data = model_path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{root}: {manifest.model_file} is missing; re-export the bundle") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.model_sha256:
        raise BundleIntegrityError(
            f"bundle hash mismatch: {manifest.model_file} sha256 {actual}, manifest says {manifest.model_sha256}; "
            "re-export or restore the file"
        )
    return Bundle(root, manifest, data)

