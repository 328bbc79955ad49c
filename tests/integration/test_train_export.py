"""simulate -> features -> train -> export -> evaluate on a small simulated set, through the CLI."""

from __future__ import annotations

from functools import partial

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import commands
from fraudscore import Table, add_baseline_features, read_table, simulate, write_table
from fraudscore.serving.bundle import BundleIntegrityError, load_bundle
from fraudscore.serving.manifest import manifest_digest
from fraudscore.serving.scorer import Scorer

START = "2018-04-10"
FAST = ["--epochs", "6", "--patience", "3", "--batch-size", "512", "--quiet"]
# The mlp runs use two members so the ensemble graph (the default has three) is exported and checked too.
MLP = ["--model", "mlp", "--ensemble", "2"]


fraudscore = partial(commands.fraudscore, check=True)  # every call must succeed unless it says check=False


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def feature_table(workspace: Path) -> Path:
    tx = simulate(customers=600, terminals=1200, days=32, seed=21).transactions
    path = workspace / "features.parquet"
    write_table(add_baseline_features(tx), path)
    return path


@pytest.fixture(scope="module")
def mlp_run(workspace: Path, feature_table: Path) -> Path:
    out = workspace / "runs" / "mlp"  # as in the README: `runs/` does not exist yet
    fraudscore("train", "--data", feature_table, *MLP, "--start", START, "--seed", "3", "--out", out, *FAST)
    return out


@pytest.fixture(scope="module")
def mlp_bundle(workspace: Path, mlp_run: Path) -> Path:
    out = workspace / "bundles" / "mlp"  # `bundles/` does not exist yet
    fraudscore("export", "--run", mlp_run, "--out", out)
    return out


def test_run_directory_holds_model_metrics_threshold_fingerprint_and_curve(mlp_run: Path, feature_table: Path) -> None:
    names = {p.name for p in mlp_run.iterdir()}
    assert {"model.keras", "metrics.json", "params.json", "fingerprint.json", "pr_curve.png", "holdout.npy"} <= names
    metrics = json.loads((mlp_run / "metrics.json").read_text())
    for key in ("auc", "ap", "cp_at_100", "precision_at_threshold", "recall_at_threshold"):
        assert key in metrics["test"]
    assert 0.5 < metrics["test"]["auc"] <= 1.0  # learnt something on this small set
    assert metrics["threshold"]["rule"].startswith("at most 100 alerts a day")
    fp = json.loads((mlp_run / "fingerprint.json").read_text())
    assert fp["sha256"] == hashlib.sha256(feature_table.read_bytes()).hexdigest()
    assert 0 < fp["positive_rate"] < 1 and fp["rows"] > 0
    assert len(fp["features"]) == 15 and "0.5" in fp["features"]["TX_AMOUNT"]["quantiles"]
    assert (mlp_run / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in mlp_run.parent.iterdir() if ".partial-" in p.name]


def test_export_writes_a_verified_bundle_with_parity(mlp_bundle: Path, mlp_run: Path) -> None:
    manifest = json.loads((mlp_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["model"]["kind"] == "mlp"
    assert [f["name"] for f in manifest["input"]["features"]][:3] == ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    assert manifest["model_sha256"] == hashlib.sha256((mlp_bundle / "model.onnx").read_bytes()).hexdigest()
    assert manifest["metrics"]["export_parity"]["max_abs_diff"] <= 1e-5
    assert manifest["threshold"]["value"] == json.loads((mlp_run / "metrics.json").read_text())["threshold"]["value"]
    for key in ("fraudscore", "tensorflow", "tf2onnx", "onnx", "onnxruntime"):
        assert key in manifest["libraries"]
    import onnx

    model = onnx.load(mlp_bundle / "model.onnx")
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].name == "score"


def test_runtime_scores_match_keras(mlp_bundle: Path, mlp_run: Path) -> None:
    import keras

    import fraudscore.train.models  # noqa: F401

    rows = np.load(mlp_run / "holdout.npy")
    expected = keras.saving.load_model(mlp_run / "model.keras", compile=False).predict(rows, verbose=0).reshape(-1)
    got = Scorer(load_bundle(mlp_bundle)).score(rows)
    assert np.max(np.abs(got - expected)) <= 1e-5


def test_evaluate_reports_json_and_compares_bundles(workspace: Path, mlp_bundle: Path, feature_table: Path, mlp_run: Path) -> None:
    report_path = workspace / "eval.json"
    done = fraudscore("evaluate", "--bundle", mlp_bundle, "--bundle", mlp_bundle, "--data", feature_table,
                      "--start", START, "--json", report_path)
    report = json.loads(report_path.read_text())
    assert {"auc", "ap", "cp_at_100"} <= set(report)
    assert len(report["bundles"]) == 2
    trained = json.loads((mlp_run / "metrics.json").read_text())["test"]
    assert report["ap"] == pytest.approx(trained["ap"], abs=1e-4)
    assert report["auc"] == pytest.approx(trained["auc"], abs=1e-4)
    assert "AP" in done.stdout and done.stdout.count("mlp") >= 2
    # Next to the protocol's figures, the production-like ones: every card of the test days.
    every = report["all_cards"]
    assert every["transactions"] > report["transactions"] and every["frauds"] >= report["frauds"]
    assert every["alerts_per_day"] == pytest.approx(every["alerts"] / every["days"])
    assert "production-like (every card" in done.stdout


def test_evaluate_uses_the_recorded_split_and_refuses_to_test_inside_training(
        workspace: Path, mlp_bundle: Path, feature_table: Path, mlp_run: Path) -> None:
    """issue 25: a bundle trained on 2018-04-10..16 evaluated with --start 2018-04-01 (7/7/7) would
    test on 2018-04-15..21, two of them training days: refused with the fix. Without --start
    the recorded split is used, and its figures are train's own test figures."""
    report_path = workspace / "eval-recorded.json"
    fraudscore("evaluate", "--bundle", mlp_bundle, "--data", feature_table, "--json", report_path)
    report = json.loads(report_path.read_text())
    recorded = json.loads((mlp_run / "metrics.json").read_text())
    assert report["split"]["test"] == recorded["split"]["test"] == "2018-04-24..2018-04-30"
    assert report["split"]["source"] == "recorded" and report["bundles"][0]["trained"] == "2018-04-10..2018-04-16"
    assert report["ap"] == pytest.approx(recorded["test"]["ap"], abs=1e-4)
    leaky = fraudscore("evaluate", "--bundle", mlp_bundle, "--data", feature_table, "--start", "2018-04-01", check=False)
    assert leaky.returncode == 2 and leaky.stdout == ""
    assert "the test window 2018-04-15..2018-04-21 (--start) overlaps" in leaky.stderr
    assert "training window 2018-04-10..2018-04-16" in leaky.stderr and "--start 2018-04-10" in leaky.stderr
    # The suggested --start tests on the days after training and the delay.
    fraudscore("evaluate", "--bundle", mlp_bundle, "--data", feature_table, "--start", "2018-04-10", "--json", report_path)
    assert json.loads(report_path.read_text())["split"]["test"] == "2018-04-24..2018-04-30"


def test_evaluate_runs_without_tensorflow(mlp_bundle: Path, feature_table: Path) -> None:
    code = (
        "import sys\n"
        "from fraudscore.cli import app\n"
        "try:\n"
        f"    app(['evaluate', '--bundle', {str(mlp_bundle)!r}, '--data', {str(feature_table)!r}, '--start', {START!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf2onnx', 'onnx'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_same_seed_same_metrics(workspace: Path, feature_table: Path, mlp_run: Path) -> None:
    again = workspace / "run-mlp-again"
    fraudscore("train", "--data", feature_table, *MLP, "--start", START, "--seed", "3", "--out", again, *FAST)
    first = json.loads((mlp_run / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    assert first["test"] == second["test"]
    assert first["members"] == second["members"] and len(first["members"]) == 2


def test_autoencoder_bundle_outputs_reconstruction_error(workspace: Path, feature_table: Path) -> None:
    run, bundle = workspace / "run-ae", workspace / "bundle-ae"
    fraudscore("train", "--data", feature_table, "--model", "autoencoder", "--start", START, "--seed", "1", "--out", run, *FAST)
    done = fraudscore("export", "--run", run, "--out", bundle)
    assert "parity" in done.stdout  # the result on stdout, diagnostics on stderr
    loaded = load_bundle(bundle)
    assert loaded.manifest.model_kind == "autoencoder"
    assert "reconstruction error" in loaded.manifest.output_meaning
    scores = Scorer(loaded).score(np.load(run / "holdout.npy"))
    assert scores.shape == (len(np.load(run / "holdout.npy")),) and (scores >= 0).all()


def test_tampered_bundles_are_refused(workspace: Path, mlp_bundle: Path) -> None:
    import shutil

    tampered = workspace / "tampered"
    shutil.copytree(mlp_bundle, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="bundle hash mismatch"):
        load_bundle(tampered)

    # An edited manifest (a lower threshold, say) is refused like an edited model.
    edited = workspace / "edited"
    shutil.copytree(mlp_bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["threshold"]["value"] = 0.0
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="manifest hash mismatch"):
        load_bundle(edited)
    del manifest["manifest_sha256"]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="no manifest_sha256"):
        load_bundle(edited)

    # A crafted manifest, consistent with its own hash, still cannot point outside the bundle.
    escaping = workspace / "escaping"
    shutil.copytree(mlp_bundle, escaping)
    manifest = json.loads((escaping / "manifest.json").read_text())
    manifest["model_file"] = "../bundle-mlp/model.onnx"
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (escaping / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="outside the bundle"):
        load_bundle(escaping)

    done = fraudscore("evaluate", "--bundle", tampered, "--data", workspace / "features.parquet", "--start", START, check=False)
    assert done.returncode == 2 and "re-export or restore" in done.stderr


# ---------------------------------------------------------------- bad input


def _variant(workspace: Path, feature_table: Path, name: str, change) -> Path:
    table = read_table(feature_table)
    columns = {c: table[c].copy() for c in table.columns}
    change(columns)
    path = workspace / f"{name}.parquet"
    write_table(Table(columns), path)
    return path


@pytest.mark.parametrize(
    "name, change, start, message",
    [
        ("no-feature", lambda c: c.pop("TERMINAL_ID_RISK_7DAY_WINDOW"), START, "missing feature column(s) TERMINAL_ID_RISK_7DAY_WINDOW"),
        ("bad-label", lambda c: c["TX_FRAUD"].__setitem__(5, 2), START, "1 rows are not 0 or 1"),
        ("no-positives", lambda c: c["TX_FRAUD"].__setitem__(slice(None), 0), START, "no positives"),
        ("nan", lambda c: c["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"].__setitem__(3, np.nan), START, "NaN, infinite"),
        ("empty-test", lambda c: None, "2018-04-25", "no rows in the test window"),
    ],
)
def test_bad_training_input_is_refused_and_leaves_no_run(workspace: Path, feature_table: Path, name, change, start, message) -> None:
    data = _variant(workspace, feature_table, name, change)
    out = workspace / f"run-{name}"
    done = fraudscore("train", "--data", data, "--start", start, "--out", out, "--ensemble", "1", *FAST, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert not out.exists()
    assert not [p for p in workspace.iterdir() if ".partial-" in p.name]


def test_existing_output_is_not_overwritten(workspace: Path, feature_table: Path, mlp_run: Path) -> None:
    done = fraudscore("train", "--data", feature_table, "--start", START, "--out", mlp_run, *FAST, check=False)
    assert done.returncode == 2 and "exists" in done.stderr
    done = fraudscore("export", "--run", workspace / "nope", "--out", workspace / "b", check=False)
    assert done.returncode == 2 and "not a run directory" in done.stderr


def test_score_files_through_the_runtime_core(workspace: Path, mlp_bundle: Path, feature_table: Path) -> None:
    from fraudscore.data.loadgen import transaction_messages

    table = read_table(feature_table)
    _, values = transaction_messages(table.take(np.arange(300)), load_bundle(mlp_bundle).features)
    source = workspace / "in.jsonl"
    source.write_bytes(b"\n".join(values + [b"not json", b'{"TRANSACTION_ID": 1}']) + b"\n")
    out = workspace / "scored.jsonl"
    done = fraudscore("score", "--bundle", mlp_bundle, "--in", source, "--out", out)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 300 and {"transaction_id", "score", "decision"} <= set(results[0])
    rejected = [json.loads(line) for line in (workspace / "scored.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [(301, "bad_json"), (302, "missing_field")]
    assert "2 rejected" in done.stdout
    as_table = workspace / "scored.csv"
    fraudscore("score", "--bundle", mlp_bundle, "--in", feature_table, "--out", as_table)
    scored = read_table(as_table)
    assert len(scored) == len(table) and scored.columns == ["TRANSACTION_ID", "score", "decision"]
    first = {r["transaction_id"]: r["score"] for r in results}
    assert scored["score"][0] == pytest.approx(first[int(scored["TRANSACTION_ID"][0])], abs=1e-6)


def test_renamed_columns_train_evaluate_and_progress_shows_off_a_terminal(workspace: Path, feature_table: Path) -> None:
    table = read_table(feature_table)
    names = {"TX_DATETIME": "ts", "CUSTOMER_ID": "card", "TX_FRAUD": "is_fraud"}
    renamed = workspace / "renamed" / "features.parquet"
    renamed.parent.mkdir()
    write_table(Table({names.get(c, c): table[c] for c in table.columns}), renamed)
    run, bundle = workspace / "renamed" / "runs" / "mlp", workspace / "renamed" / "bundles" / "mlp"
    fast = [f for f in FAST if f != "--quiet"]
    trained = fraudscore("train", "--data", renamed, "--start", START, "--ensemble", "1", "--out", run, *fast,
                         "--time-column", "ts", "--customer-column", "card", "--label", "is_fraud")
    # stderr is a pipe here, as in CI or under nohup: epoch lines still show, the first and last at least.
    assert "member 0: epoch 1/6 loss " in trained.stderr and " val AP " in trained.stderr
    assert "stopping" in trained.stderr
    # 32 days of data from 2018-04-01, training from 04-10: the windows were not full yet.
    assert "warning: the training window starts 9.0 days after the data's first day (2018-04-01)" in trained.stderr
    assert "Start on or after 2018-05-08" in trained.stderr
    assert "an epoch's time grows in proportion to the rows of the training window" in trained.stderr
    # The result on stdout, diagnostics on stderr.
    assert "test AUC" in trained.stdout and "test AUC" not in trained.stderr and "warning" not in trained.stdout
    fraudscore("export", "--run", run, "--out", bundle, "--quiet")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"]["split"]["columns"] == {"time": "ts", "customer": "card", "label": "is_fraud"}
    report_path = workspace / "renamed" / "eval.json"
    fraudscore("evaluate", "--bundle", bundle, "--data", renamed, "--start", START, "--json", report_path)
    report = json.loads(report_path.read_text())
    trained_test = json.loads((run / "metrics.json").read_text())["test"]
    assert report["ap"] == pytest.approx(trained_test["ap"], abs=1e-4)
    assert report["columns"] == {"time": "ts", "customer": "card", "label": "is_fraud"}
    # The original names, given as flags, evaluate the same model on the original table alike.
    fraudscore("evaluate", "--bundle", bundle, "--data", feature_table, "--start", START, "--json", report_path,
               "--time-column", "TX_DATETIME", "--customer-column", "CUSTOMER_ID", "--label", "TX_FRAUD")
    assert json.loads(report_path.read_text())["ap"] == pytest.approx(report["ap"], abs=1e-9)
    wrong = fraudscore("evaluate", "--bundle", bundle, "--data", feature_table, "--start", START, check=False)
    assert wrong.returncode == 2 and "uses time ts" in wrong.stderr and "--time-column" in wrong.stderr


