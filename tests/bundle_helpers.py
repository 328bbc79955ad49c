"""Bundles derived from a real exported bundle, for tests that need a second model (a shadow
challenger): the same network with its score squared, so that its scores differ from the
original's by a known rule, re-hashed as `export` would."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from fraudscore.serving.manifest import manifest_digest


def squared_bundle(source: Path, out: Path, version: str,
                   edit: Callable[[dict], None] = lambda manifest: None) -> Path:
    """A copy of `source` whose model returns score**2 (still a probability, a different model),
    with model version `version`; `edit` may change the manifest (as parsed JSON) before it is
    hashed. Uses the `onnx` package (the train extra), as export does."""
    import onnx
    from onnx import helper

    shutil.copytree(source, out)
    manifest = json.loads((out / "manifest.json").read_text())
    model = onnx.load(str(out / manifest["model_file"]))
    name = manifest["output"]["name"]
    for node in model.graph.node:
        node.output[:] = [f"{name}_unsquared" if o == name else o for o in node.output]
    model.graph.node.append(helper.make_node("Mul", [f"{name}_unsquared"] * 2, [name], name="challenger_square"))
    data = model.SerializeToString()
    (out / manifest["model_file"]).write_bytes(data)
    manifest["model"]["version"] = version
    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
    edit(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
