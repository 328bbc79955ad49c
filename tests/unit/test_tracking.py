"""Experiment tracking's checks without training: a URI that cannot work is refused with the fix,
and an untracked bundle has no tracking entry."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest



@pytest.mark.parametrize("uri, says", [
    ("127.0.0.1:5000", "give the server's address with its scheme"),
    ("sqlite:///tmp/mlflow.db", "a database store needs the full mlflow package"),
])
def test_a_uri_that_cannot_work_is_refused_with_the_fix(uri: str, says: str) -> None:
    if importlib.util.find_spec("mlflow") is None and not os.environ.get("CI"):
        pytest.skip("mlflow is not installed (pip install -e '.[tracking]')")
    from fraudscore.errors import UsageError
    from fraudscore.tracking import check_server, public_uri

    with pytest.raises(UsageError, match=says):
        check_server(uri)
    assert public_uri("https://user:secret@mlflow.example:443/x") == "https://mlflow.example:443/x"


def test_an_untracked_bundle_has_no_tracking_entry(tmp_path: Path) -> None:
    # The manifest's digest covers every key: adding `tracking` only when there is one keeps
    # every bundle exported before it valid.
    from fraudscore.serving.manifest import Manifest

    base = dict(model_kind="mlp", model_version="v", features=("a",), input_name="features", output_name="score",
                output_meaning="p", threshold=0.5, model_file="model.onnx", model_sha256="0" * 64)
    assert "tracking" not in Manifest(**base).to_json()
    tracked = Manifest(**base, tracking={"run_id": "abc"})
    path = tmp_path / "manifest.json"
    tracked.write(path)
    assert Manifest.read(path).tracking == {"run_id": "abc"}
