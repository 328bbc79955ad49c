"""Experiment tracking (`train --mlflow-uri`) with a real MLflow store: a run shows its metrics,
parameters, data fingerprint and artefacts, and the bundle leads back to it; a URI without
a server is refused before training."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from commands import EXE
from kafka_helpers import ROOT, free_port

from fraudscore import add_baseline_features, simulate, write_table
from fraudscore.serving.bundle import load_bundle


LOCAL_MLFLOW = ROOT / "deploy" / "mlflow" / "local.sh"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A tracking server on SQLite, started and stopped by the project's own script."""
    if importlib.util.find_spec("mlflow") is None:
        if os.environ.get("CI"):
            pytest.fail("mlflow is not installed; scripts/setup.sh installs the `tracking` extra")
        pytest.skip("mlflow is not installed (pip install -e '.[tracking]')")
    env = dict(os.environ, MLFLOW_PORT=str(free_port()), MLFLOW_STATE_DIR=str(tmp_path_factory.mktemp("mlflow")),
               MLFLOW_START_TIMEOUT="150")
    try:  # stopped on every path, a start that timed out included
        done = subprocess.run([str(LOCAL_MLFLOW), "start"], capture_output=True, text=True, env=env, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        yield done.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(LOCAL_MLFLOW), "stop"], capture_output=True, env=env, timeout=60)


def _api(uri: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(uri: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tracking-data") / "features.parquet"
    write_table(add_baseline_features(simulate(customers=300, terminals=600, days=30, seed=7).transactions), path)
    return path


def _train(features: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "train", "--data", str(features), "--start", "2018-04-09", "--seed", "1", "--epochs", "2",
                           "--ensemble", "1", "--out", str(out), *extra], capture_output=True, text=True, timeout=600)


def test_a_tracked_run_shows_its_metrics_params_fingerprint_and_artefacts_and_the_bundle_leads_back(
        mlflow_server: str, features: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _train(features, run_dir, "--mlflow-uri", mlflow_server, "--mlflow-experiment", "fraud-ci")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run_dir / "tracking.json").read_text())
    assert f"run {record['run_id']}" in done.stdout and record["experiment"] == "fraud-ci"

    run = _api(mlflow_server, "runs/get", run_id=record["run_id"])["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "run"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    written = json.loads((run_dir / "metrics.json").read_text())
    for split in ("validation", "test"):
        for name in ("auc", "ap", "cp_at_100"):
            assert metrics[f"{split}_{name}"] == pytest.approx(written[split][name]), (split, name)
    assert metrics["threshold"] == pytest.approx(written["threshold"]["value"])
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["seed"] == "1" and params["model"] == "mlp" and json.loads(params["features"])[0] == "TX_AMOUNT"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    assert tags["fraudscore.data_sha256"] == fingerprint["sha256"] and len(fingerprint["sha256"]) == 64
    experiment = _api(mlflow_server, "experiments/get-by-name", experiment_name="fraud-ci")["experiment"]
    assert experiment["experiment_id"] == record["experiment_id"] == run["info"]["experiment_id"]

    listed = _api(mlflow_server, "artifacts/list", run_id=record["run_id"], path="run")
    names = {Path(f["path"]).name for f in listed.get("files", [])}
    assert {"model.keras", "metrics.json", "params.json", "fingerprint.json", "pr_curve.png"} <= names, names

    bundle = tmp_path / "bundle"
    done = subprocess.run([EXE, "export", "--run", str(run_dir), "--out", str(bundle), "--quiet"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["tracking"]["run_id"] == record["run_id"] and manifest["tracking"]["uri"] == mlflow_server
    assert load_bundle(bundle).manifest.tracking["run_id"] == record["run_id"]  # the runtime reads it (and its digest)

    # evaluate logs its comparison to the same experiment, and names the bundle's own run.
    done = subprocess.run([EXE, "evaluate", "--bundle", str(bundle), "--data", str(features), "--mlflow-uri", mlflow_server,
                           "--mlflow-experiment", "fraud-ci"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _post(mlflow_server, "runs/search", {"experiment_ids": [record["experiment_id"]],
                                                "filter": "tags.`fraudscore.kind` = 'evaluation'"})["runs"]
    (evaluation,) = runs
    version = manifest["model"]["version"]
    metrics = {m["key"]: m["value"] for m in evaluation["data"]["metrics"]}
    assert 0 < metrics[f"{version}/ap"] <= 1 and f"{version}/all_cards_alerts_per_day" in metrics, metrics
    tags = {t["key"]: t["value"] for t in evaluation["data"]["tags"]}
    assert tags["fraudscore.bundle.0.run_id"] == record["run_id"]


def test_a_uri_without_a_server_is_refused_before_training(features: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("mlflow") is None and not os.environ.get("CI"):
        pytest.skip("mlflow is not installed (pip install -e '.[tracking]')")
    done = _train(features, tmp_path / "run", "--mlflow-uri", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "no MLflow tracking server answers there" in done.stderr and "deploy/mlflow/local.sh start" in done.stderr
    assert not (tmp_path / "run").exists()  # refused before any training
