"""`fraudscore compare`: K simulation draws, our models against their tree baselines, on small draws.

The figures it reports must be the ones the rest of the tool gives (the MLP's through its
bundle, as `fraudscore evaluate` computes them), and its summary the arithmetic of its draws.
"""

from __future__ import annotations

from functools import partial

import json
import statistics
import sys
from pathlib import Path

import pytest

import commands
from fraudscore.errors import UsageError

EXE = str(Path(sys.executable).with_name("fraudscore"))
SMALL = ["--customers", "400", "--terminals", "800", "--days", "40", "--start", "2018-04-10",
         "--epochs", "2", "--patience", "1"]


fraudscore = partial(commands.fraudscore, timeout_s=900)


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "out"
    done = fraudscore("compare", "--out", out, "--draws", "2", "--first-seed", "3", "--feature-version", "2",
                      "--keep-data", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| mlp |" in done.stdout and "draws where it is ahead" in done.stdout, done.stdout
    return out


def test_every_model_is_scored_on_every_draw_with_the_protocols_metrics(compared: Path) -> None:
    result = json.loads((compared / "compare.json").read_text())
    assert [d["seed"] for d in result["draws"]] == [3, 4]
    assert result["config"]["models"] == ["mlp", "lightgbm", "autoencoder", "isolation-forest"]
    assert len(result["config"]["features"]) == 21 and result["config"]["feature_spec"]["version"] == 2
    for draw in result["draws"]:
        assert draw["test_frauds"] > 0
        for model, m in draw["models"].items():
            assert 0.0 <= m["ap"] <= 1.0 and 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["cp_at_100"] <= 1.0, (model, m)
            assert m["transactions"] == draw["test_transactions"] and m["inference_us_per_row"] > 0, (model, m)
        # The MLP's figures are its bundle's (ONNX Runtime), which match its Keras scores.
        assert draw["models"]["mlp"]["ap"] == pytest.approx(draw["models"]["mlp"]["keras_test_ap"], abs=1e-3)
        # LightGBM's member is the grid cell with the best validation AP (the test days never choose).
        lgbm = draw["models"]["lightgbm"]
        assert len(lgbm["grid"]) == len(result["config"]["lightgbm_grid"])
        assert lgbm["validation_ap"] == max(cell["validation_ap"] for cell in lgbm["grid"])
        assert (lgbm["num_leaves"], lgbm["learning_rate"]) in {(c["num_leaves"], c["learning_rate"]) for c in lgbm["grid"]}
    assert (compared / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (compared / "draw-3" / "mlp-bundle" / "model.onnx").exists()


def test_the_summary_is_the_arithmetic_of_the_draws(compared: Path) -> None:
    result = json.loads((compared / "compare.json").read_text())
    draws, summary = result["draws"], result["summary"]
    for model in result["config"]["models"]:
        values = [d["models"][model]["ap"] for d in draws]
        assert summary["models"][model]["ap"]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["models"][model]["ap"]["sd"] == pytest.approx(statistics.stdev(values))
    for model, baseline in (("mlp", "lightgbm"), ("autoencoder", "isolation-forest")):
        paired = summary["paired"][model]
        assert paired["baseline"] == baseline
        for key in ("auc", "ap", "cp_at_100"):
            diffs = [d["models"][model][key] - d["models"][baseline][key] for d in draws]
            assert paired[key]["per_draw"] == pytest.approx(diffs)
            assert paired[key]["positive"] == sum(x > 0 for x in diffs)
    table = (compared / "compare.md").read_text()
    for model in result["config"]["models"]:
        assert f"| {model} | " in table
    assert "mlp minus lightgbm" in table and "autoencoder minus isolation-forest" in table


def test_the_reported_mlp_figures_are_what_evaluate_gives_for_its_bundle(compared: Path) -> None:
    result = json.loads((compared / "compare.json").read_text())
    report = compared / "evaluate.json"
    done = fraudscore("evaluate", "--bundle", compared / "draw-4" / "mlp-bundle", "--data",
                      compared / "draw-4" / "features.parquet", "--json", report)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads(report.read_text())
    mlp = result["draws"][1]["models"]["mlp"]
    for key in ("auc", "ap", "cp_at_100", "transactions", "frauds"):
        assert mlp[key] == evaluated[key], (key, mlp[key], evaluated[key])


def test_one_draw_is_refused_and_a_missing_baseline_library_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    done = fraudscore("compare", "--out", tmp_path / "one", "--draws", "1", *SMALL)
    assert done.returncode == 2 and "--draws" in done.stderr, done.stderr
    from fraudscore.train.compare import CompareConfig, _require_baselines

    with pytest.raises(UsageError, match="at least 2"):  # the library's own check, beside the flag's
        CompareConfig(out=tmp_path / "one", draws=1).validate()
    with pytest.raises(UsageError, match="not computed by the feature specification"):
        CompareConfig(out=tmp_path / "one", features=("CUSTOMER_ID_LOG_AMOUNT_RATIO_7DAY_WINDOW",)).validate()

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # an import of it now raises ImportError
    with pytest.raises(UsageError, match=r"needs lightgbm .*pip install -e '\.\[train,dev\]'"):
        _require_baselines(unsupervised=False)
