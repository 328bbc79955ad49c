"""`fraudscore compare`: our models against tree baselines over K simulation draws, in one run.

One draw of the simulator moves average precision by ~0.03, the size of the differences we
want to see, so one draw is not evidence. For each draw (simulator seeds `first_seed`,
`first_seed` + 1, ...) this job simulates the reference data, computes the features, and
under the handbook's chapter-3 protocol (`fraudscore.data.evaluation`: train 7 days, delay
7, test 7, known compromised cards removed; the training window's last day held out for
early stopping and model selection) trains and scores:

- `mlp`: `fraudscore train --model mlp` with its defaults, exported to an ONNX bundle and
  scored through ONNX Runtime, as the sidecar scores;
- `lightgbm`: gradient-boosted trees on the same features, the supervised baseline: a small
  grid (leaves x learning rate), each early-stopped on the validation day's AP, the one with
  the best validation AP kept (every cell's figure is in the report);
- `autoencoder` (the unsupervised path, through its bundle) and `isolation-forest`, its
  baseline, both fitted on the genuine rows of the training days.

It reports each model's mean and sample standard deviation of AUC, AP and CP@100 over the
draws, the paired difference of each model to its baseline on every draw (with its mean, sd,
standard error and paired t: a difference is established when |t| is well above 2), inference cost
per row (one thread, batches of `BATCH_ROWS` rows) and training time, and plots the
precision-recall curves of the first draw. LightGBM and scikit-learn come with the `dev`
extra; the runtime never imports them.
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter is noise for a CLI; set before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import dataclasses
import datetime as dt
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fraudscore import UsageError
from fraudscore.atomic import check_new_directory, new_directory
from fraudscore.data.evaluation import Split, average_precision, day_index, evaluate_scores, split_masks
from fraudscore.data.matrix import feature_matrix
from fraudscore.data.simulate import simulate
from fraudscore.data.table import Table, write_table
from fraudscore.features.baseline import SPEC_METADATA_KEY, add_baseline_features
from fraudscore.features.spec import BASELINE_SPEC, FeatureSpec

METRICS = ("auc", "ap", "cp_at_100")
BATCH_ROWS = 512
"""Rows per inference call when measuring cost: about what one Kafka batch gives the sidecar."""
BASELINES = {"mlp": "lightgbm", "autoencoder": "isolation-forest"}
"""Each of our models and the baseline its paired differences are taken against."""
LIGHTGBM_GRID = tuple((leaves, rate) for leaves in (15, 31, 63) for rate in (0.05, 0.1))
"""(num_leaves, learning_rate) pairs tried per draw; each stops early on validation AP."""


@dataclass(frozen=True)
class CompareConfig:
    out: Path
    draws: int = 5
    first_seed: int = 0
    start: dt.date = dt.date(2018, 7, 25)
    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    spec: FeatureSpec = BASELINE_SPEC
    features: tuple[str, ...] = ()
    """Model inputs; empty: `train`'s default, the specification's features."""
    model_seed: int = 0
    epochs: int = 60
    patience: int = 8
    unsupervised: bool = True
    keep_data: bool = False

    def validate(self) -> None:
        if self.draws < 2:
            raise UsageError("--draws must be at least 2: a standard deviation and a paired comparison need two draws")
        unknown = [f for f in self.features if f not in self.spec.names]
        if unknown:
            raise UsageError(f"--features {', '.join(unknown)}: not computed by the feature specification "
                             f"(its features: {', '.join(self.spec.names)})")

    @property
    def model_features(self) -> tuple[str, ...]:
        return self.features or self.spec.names

    @property
    def models(self) -> tuple[str, ...]:
        return ("mlp", "lightgbm") + (("autoencoder", "isolation-forest") if self.unsupervised else ())


def _require_baselines(unsupervised: bool) -> None:
    """UsageError naming the install when a baseline library is missing (they are dev-only)."""
    missing = []
    for module, package in (("lightgbm", "lightgbm"),) + ((("sklearn", "scikit-learn"),) if unsupervised else ()):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise UsageError(f"fraudscore compare needs {' and '.join(missing)} for its baselines: "
                         "pip install -e '.[train,dev]' (they are in the dev extra, never in the runtime)")


@dataclass
class Scored:
    """One model's test scores on one draw, with what it cost."""

    scores: np.ndarray
    train_s: float
    inference_us_per_row: float
    detail: dict = dataclasses.field(default_factory=dict)


class Draw:
    """One simulation draw's feature table and protocol masks."""

    def __init__(self, config: CompareConfig, seed: int, directory: Path):
        self.seed = seed
        self.directory = directory
        started = time.perf_counter()
        sim = simulate(customers=config.customers, terminals=config.terminals, days=config.days, seed=seed)
        self.table: Table = add_baseline_features(sim.transactions, config.spec)
        self.data_path = directory / "features.parquet"
        write_table(self.table, self.data_path, metadata={SPEC_METADATA_KEY: json.dumps(config.spec.to_dict())})
        self.seconds = time.perf_counter() - started
        split = Split(config.start)
        self.train, self.test = split_masks(self.table, split)
        day = day_index(self.table["TX_DATETIME"])
        first = int(np.datetime64(config.start, "D").astype(np.int64))
        self.validation = self.train & (day >= first + split.train_days - 1)
        self.fit = self.train & ~self.validation
        self.labels = (self.table["TX_FRAUD"] == 1).astype(np.int64)
        self.matrix = feature_matrix(self.table, config.model_features, f"draw {seed}")

    def metrics(self, scores: np.ndarray) -> dict:
        return evaluate_scores(self.table, self.test, scores)


def _per_row_us(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, repeats: int = 3) -> float:
    """Median over `repeats` passes of the time to score `rows` in BATCH_ROWS batches, in µs a row."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH_ROWS):
            predict(rows[i:i + BATCH_ROWS])
        times.append(time.perf_counter() - started)
    return statistics.median(times) / max(1, len(rows)) * 1e6


def _keras_model(config: CompareConfig, draw: Draw, model: str, say) -> Scored:
    """`fraudscore train` then `fraudscore export`, scored through the bundle with ONNX Runtime."""
    from fraudscore.export.onnx import export_bundle
    from fraudscore.serving.bundle import load_bundle
    from fraudscore.serving.scorer import Scorer
    from fraudscore.train.trainer import TrainConfig, train

    run = train(TrainConfig(data=draw.data_path, out=draw.directory / model, start=config.start, model=model,
                            seed=config.model_seed, features=config.model_features, epochs=config.epochs,
                            patience=config.patience), say=say, every_s=60.0)
    bundle_dir = draw.directory / f"{model}-bundle"
    export_bundle(run.path, bundle_dir)
    scorer = Scorer(load_bundle(bundle_dir))
    test_rows = draw.matrix[draw.test]
    scores = scorer.score(test_rows).astype(np.float64)
    return Scored(scores, run.seconds, _per_row_us(scorer.score, test_rows),
                  {"members": len(run.metrics["members"]), "keras_test_ap": run.metrics["test"]["ap"]})


def _lightgbm(config: CompareConfig, draw: Draw) -> Scored:
    import lightgbm

    started = time.perf_counter()
    best, grid = None, []
    for leaves, rate in LIGHTGBM_GRID:
        # metric= replaces the default binary_logloss: early stopping then watches AP alone.
        model = lightgbm.LGBMClassifier(n_estimators=1000, num_leaves=leaves, learning_rate=rate,
                                        metric="average_precision", random_state=config.model_seed, verbose=-1,
                                        n_jobs=1)
        model.fit(draw.matrix[draw.fit], draw.labels[draw.fit],
                  eval_X=draw.matrix[draw.validation], eval_y=draw.labels[draw.validation],
                  callbacks=[lightgbm.early_stopping(50, first_metric_only=True, verbose=False)])
        val_ap = average_precision(draw.labels[draw.validation], model.predict_proba(draw.matrix[draw.validation])[:, 1])
        grid.append({"num_leaves": leaves, "learning_rate": rate, "trees": model.best_iteration_, "validation_ap": val_ap})
        if best is None or val_ap > best[0]:
            best = (val_ap, model, dict(grid[-1]))
    _, model, chosen = best
    chosen["grid"] = grid
    train_s = time.perf_counter() - started
    test_rows = draw.matrix[draw.test]
    predict = lambda rows: model.predict_proba(rows)[:, 1]  # noqa: E731
    return Scored(predict(test_rows).astype(np.float64), train_s, _per_row_us(predict, test_rows), chosen)


def _isolation_forest(config: CompareConfig, draw: Draw) -> Scored:
    from sklearn.ensemble import IsolationForest

    started = time.perf_counter()
    model = IsolationForest(n_estimators=100, random_state=config.model_seed, n_jobs=1)
    model.fit(draw.matrix[draw.fit & (draw.labels == 0)])  # genuine rows only, as the autoencoder trains
    train_s = time.perf_counter() - started
    test_rows = draw.matrix[draw.test]
    predict = lambda rows: -model.score_samples(rows)  # noqa: E731  (higher = more anomalous)
    return Scored(predict(test_rows).astype(np.float64), train_s, _per_row_us(predict, test_rows))


def _score_draw(config: CompareConfig, draw: Draw, say) -> dict[str, Scored]:
    scored = {}
    for model in config.models:
        say(f"draw {draw.seed}: {model}")
        if model in ("mlp", "autoencoder"):
            scored[model] = _keras_model(config, draw, model, lambda message: say(f"draw {draw.seed}: {model}: {message}"))
        elif model == "lightgbm":
            scored[model] = _lightgbm(config, draw)
        else:
            scored[model] = _isolation_forest(config, draw)
    return scored


def summarise(draws: list[dict], models: tuple[str, ...]) -> dict:
    """Mean and sample standard deviation per model and metric, and the paired differences to
    each model's baseline (per draw, their mean and sd, and on how many draws it is positive).

    >>> m = lambda ap: {"auc": 0.8, "ap": ap, "cp_at_100": 0.3}
    >>> draws = [{"seed": 0, "models": {"mlp": m(0.70), "lightgbm": m(0.60)}},
    ...          {"seed": 1, "models": {"mlp": m(0.60), "lightgbm": m(0.62)}}]
    >>> s = summarise(draws, ("mlp", "lightgbm"))
    >>> round(s["models"]["mlp"]["ap"]["mean"], 3), [round(d, 3) for d in s["paired"]["mlp"]["ap"]["per_draw"]]
    (0.65, [0.1, -0.02])
    >>> s["paired"]["mlp"]["ap"]["positive"], s["paired"]["mlp"]["baseline"]
    (1, 'lightgbm')
    """
    out: dict = {"models": {}, "paired": {}}
    for model in models:
        out["models"][model] = {}
        for key in METRICS + ("train_s", "inference_us_per_row"):
            values = [d["models"][model][key] for d in draws if key in d["models"][model]]
            if values:
                out["models"][model][key] = {"mean": statistics.fmean(values),
                                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    for model, baseline in BASELINES.items():
        if model not in models or baseline not in models:
            continue
        out["paired"][model] = {"baseline": baseline}
        for key in METRICS:
            diffs = [d["models"][model][key] - d["models"][baseline][key] for d in draws]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            se = sd / len(diffs) ** 0.5
            out["paired"][model][key] = {"per_draw": diffs, "mean": statistics.fmean(diffs), "sd": sd,
                                         "se": se, "t": statistics.fmean(diffs) / se if se > 0 else None,
                                         "positive": sum(x > 0 for x in diffs), "draws": len(diffs)}
    return out


def markdown(result: dict) -> str:
    """The tables docs/model-quality.md holds: mean ± sd per model, then paired differences per draw."""
    summary, models = result["summary"], result["config"]["models"]
    lines = ["| model | AUC | AP | CP@100 | inference (µs/row) | train (s) |", "|---|---|---|---|---|---|"]
    for model in models:
        s = summary["models"][model]
        cells = [f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}" for k in METRICS]
        lines.append(f"| {model} | " + " | ".join(cells)
                     + f" | {s['inference_us_per_row']['mean']:.2f} | {s['train_s']['mean']:.0f} |")
    for model, paired in summary["paired"].items():
        lines += ["", f"Paired difference, {model} minus {paired['baseline']}, per draw (simulator seed):", "",
                  "| draw | AUC | AP | CP@100 |", "|---|---|---|---|"]
        for i, draw in enumerate(result["draws"]):
            lines.append(f"| {draw['seed']} | " + " | ".join(f"{paired[k]['per_draw'][i]:+.4f}" for k in METRICS) + " |")
        lines.append("| mean ± sd | " + " | ".join(f"{paired[k]['mean']:+.4f} ± {paired[k]['sd']:.4f}" for k in METRICS) + " |")
        lines.append("| paired t (mean / (sd / √K)) | " + " | ".join(
            "n/a" if paired[k]["t"] is None else f"{paired[k]['t']:+.1f}" for k in METRICS) + " |")
        lines.append("| draws where it is ahead | " + " | ".join(f"{paired[k]['positive']} of {paired[k]['draws']}"
                                                                for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, draw: Draw, scored: dict[str, Scored]) -> None:
    from fraudscore.train.trainer import plot_pr_curves

    curves = {f"{model} (AP {draw.metrics(s.scores)['ap']:.3f})": s.scores for model, s in scored.items()}
    plot_pr_curves(path, draw.labels[draw.test], curves, f"Test precision-recall, simulation draw {draw.seed}")


def compare(config: CompareConfig, say=lambda message: None) -> dict:
    """Run every draw; write compare.json, compare.md and pr_curves.png under `config.out`; return the result."""
    config.validate()
    _require_baselines(config.unsupervised)
    out = Path(config.out)
    check_new_directory(out)
    started = time.perf_counter()
    draws = []
    with new_directory(out) as tmp:
        for seed in range(config.first_seed, config.first_seed + config.draws):
            directory = tmp / f"draw-{seed}"
            directory.mkdir()
            draw = Draw(config, seed, directory)
            say(f"draw {seed}: {len(draw.table):,} transactions, test {int(draw.test.sum()):,} "
                f"({int(draw.labels[draw.test].sum()):,} frauds)")
            scored = _score_draw(config, draw, say)
            record = {"seed": seed, "transactions": len(draw.table), "test_transactions": int(draw.test.sum()),
                      "test_frauds": int(draw.labels[draw.test].sum()), "models": {}}
            for model, s in scored.items():
                record["models"][model] = draw.metrics(s.scores) | {
                    "train_s": s.train_s, "inference_us_per_row": s.inference_us_per_row} | s.detail
                say(f"draw {seed}: {model} AUC {record['models'][model]['auc']:.4f} AP {record['models'][model]['ap']:.4f} "
                    f"CP@100 {record['models'][model]['cp_at_100']:.4f}")
            if seed == config.first_seed:
                _plot(tmp / "pr_curves.png", draw, scored)
            draws.append(record)
            if not config.keep_data:
                draw.data_path.unlink()
                for model in ("mlp", "autoencoder"):
                    shutil.rmtree(directory / model, ignore_errors=True)  # the bundles stay
        result = {
            "config": {"draws": config.draws, "first_seed": config.first_seed, "start": config.start.isoformat(),
                       "simulation": {"customers": config.customers, "terminals": config.terminals, "days": config.days},
                       "feature_spec": config.spec.to_dict(), "features": list(config.model_features),
                       "model_seed": config.model_seed, "epochs": config.epochs, "patience": config.patience,
                       "models": list(config.models), "lightgbm_grid": [list(g) for g in LIGHTGBM_GRID],
                       "inference_batch_rows": BATCH_ROWS},
            "draws": draws,
            "seconds": time.perf_counter() - started,
        }
        result["summary"] = summarise(draws, config.models)
        (tmp / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "compare.md").write_text(markdown(result))
    return result
