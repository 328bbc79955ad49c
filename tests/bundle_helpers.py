"""Bundles for tests: made by the project's own commands (`trained_bundle`), or derived from a real
exported bundle, for tests that need a second model (a shadow challenger), re-hashed as `export`
would: the same network with its score squared (scores that differ from the original's by a
known rule), or with its score scrambled into noise (a model deliberately worse than the
original, for live-quality comparisons)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from fraudscore import simulate, write_table
from fraudscore.serving.manifest import manifest_digest
from commands import fraudscore


def trained_bundle(work: Path, *feature_flags: str) -> Path:
    """A bundle made with the project's own commands on a small simulated set (400 customers, 30
    days): `features` (with `feature_flags`), train (2 epochs, one network), export."""
    write_table(simulate(customers=400, terminals=800, days=30, seed=5).transactions, work / "tx.parquet")
    for args in (
        ["features", "--in", work / "tx.parquet", "--out", work / "features.parquet", *feature_flags, "--quiet"],
        ["train", "--data", work / "features.parquet", "--start", "2018-04-09", "--seed", "1", "--epochs", "2",
         "--ensemble", "1", "--out", work / "run", "--quiet"],
        ["export", "--run", work / "run", "--out", work / "bundle", "--quiet"],
    ):
        fraudscore(*args, check=True)
    return work / "bundle"


def squared_bundle(source: Path, out: Path, version: str,
                   edit: Callable[[dict], None] = lambda manifest: None) -> Path:
    """A copy of `source` whose model returns score**2 (still a probability, a different model),
    with model version `version`; `edit` may change the manifest (as parsed JSON) before it is
    hashed. Uses the `onnx` package (the train extra), as export does."""
    from onnx import helper

    def square(name: str) -> list:
        return [helper.make_node("Mul", [f"{name}_original"] * 2, [name], name="challenger_square")]

    return _derived(source, out, version, square, edit)


def noise_bundle(source: Path, out: Path, version: str, threshold: float) -> Path:
    """A copy of `source` whose score is noise: frac(sin(score x 12,345.678) x 43,758.5453), uniform
    in [0, 1) and unrelated to fraud, alerting at `threshold` (0.9: about one transaction in ten)."""
    import numpy as np
    from onnx import helper, numpy_helper

    def scramble(name: str) -> list:
        return [helper.make_node("Constant", [], [f"noise_{k}"], value=numpy_helper.from_array(np.array(v, np.float32)))
                for k, v in (("a", 12_345.678), ("b", 43_758.5453))] + [
            helper.make_node("Mul", [f"{name}_original", "noise_a"], [f"{name}_spread"]),
            helper.make_node("Sin", [f"{name}_spread"], [f"{name}_sin"]),
            helper.make_node("Mul", [f"{name}_sin", "noise_b"], [f"{name}_big"]),
            helper.make_node("Floor", [f"{name}_big"], [f"{name}_floor"]),
            helper.make_node("Sub", [f"{name}_big", f"{name}_floor"], [name]),
        ]

    def set_threshold(manifest: dict) -> None:
        manifest["threshold"]["value"] = threshold

    return _derived(source, out, version, scramble, set_threshold)


def _derived(source: Path, out: Path, version: str, tail: Callable[[str], list], edit: Callable[[dict], None]) -> Path:
    """`source` copied to `out` with the nodes `tail(output name)` turning the original output
    (renamed NAME_original) into the new one, version `version`, `edit` applied, re-hashed."""
    import onnx

    shutil.copytree(source, out)
    manifest = json.loads((out / "manifest.json").read_text())
    model = onnx.load(str(out / manifest["model_file"]))
    name = manifest["output"]["name"]
    for node in model.graph.node:
        node.output[:] = [f"{name}_original" if o == name else o for o in node.output]
    model.graph.node.extend(tail(name))
    data = model.SerializeToString()
    (out / manifest["model_file"]).write_bytes(data)
    manifest["model"]["version"] = version
    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
    edit(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
