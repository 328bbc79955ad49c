"""Experiment tracking: a training run logged to an MLflow tracking server (`train --mlflow-uri`).

What goes to MLflow, in one run of the experiment (default "fraudscore") named after the run
directory:

- parameters: the training configuration (`params.json`: split, model, seed, epochs, ...),
  the features and the feature specification;
- metrics: AUC, AP, card precision@100, precision and recall at the alert threshold and
  alerts a day, for the validation and the test split (`validation_ap`, `test_auc`, ...),
  and the threshold;
- tags: the data file's sha256 (`fraudscore.data_sha256`, from `fingerprint.json`), the
  training rows, the data file, the model kind and the command;
- artefacts: the whole run directory (model.keras, params, metrics, history, fingerprint,
  held-out rows, the PR curve).

The run's id is written to the run directory's `tracking.json`; `fraudscore export` copies it
into the bundle's manifest (`tracking`), so a bundle in production leads back to its run.
MLflow's client is an optional extra (`pip install 'fraudscore[tracking]'`), imported only
inside these functions, when `train` or `evaluate` is given --mlflow-uri: `import fraudscore`
and the sidecar never import it (tests/unit/test_package.py).

    check_server(uri)                           # before training: UsageError if nobody answers
    record = log_training_run(uri, "fraudscore", run_dir)
    record["run_id"]
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fraudscore.errors import FraudscoreError, UsageError

TRACKING_FILE = "tracking.json"
START_SERVER = ("start one with deploy/mlflow/local.sh start (a local server on SQLite), or `mlflow server "
                "--backend-store-uri sqlite:///mlflow.db --port 5000` where full MLflow is installed")
METRICS = ("auc", "ap", "cp_at_100", "precision_at_threshold", "recall_at_threshold", "alerts_per_day")


class TrackingError(FraudscoreError):
    """The tracking server refused or lost a run (the run directory itself is complete)."""

    exit_code = 1


def require_mlflow():
    """The mlflow module, or a UsageError saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise UsageError("--mlflow-uri needs MLflow: pip install 'fraudscore[tracking]'") from None
    return mlflow


DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail before training, not after it, when the tracking URI cannot work.

    http(s): a server must answer (an answer of 401/403 is a server that wants the
    credentials MLflow's client reads from MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN; with
    MLFLOW_TRACKING_SERVER_CERT_PATH or MLFLOW_TRACKING_INSECURE_TLS set, the client's TLS
    settings are its own and the check is left to it). A database store needs SQLAlchemy,
    which the `tracking` extra (MLflow's client) does not bring; `file:` stores are MLflow's
    to check."""
    require_mlflow()
    scheme = urllib.parse.urlparse(uri).scheme.split("+")[0]
    if scheme in DATABASES:
        import importlib.util

        if importlib.util.find_spec("sqlalchemy") is None:
            raise UsageError(f"--mlflow-uri {public_uri(uri)}: a database store needs the full mlflow package (the "
                             f"`tracking` extra is its client only); log to a tracking server instead: {START_SERVER}")
        return
    if scheme in ("file", "databricks"):
        return
    if scheme not in ("http", "https"):
        raise UsageError(f"--mlflow-uri {public_uri(uri)}: not a tracking URI; give the server's address with its "
                         "scheme, e.g. http://127.0.0.1:5000")
    if scheme == "https" and (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or os.environ.get("MLFLOW_TRACKING_INSECURE_TLS")):
        return
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # a server, asking for the credentials MLflow's client will send
        raise UsageError(f"--mlflow-uri {public_uri(uri)}: the server answered HTTP {exc.code} to a search of "
                         "experiments; is it an MLflow tracking server?") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"--mlflow-uri {public_uri(uri)}: no MLflow tracking server answers there ({reason}); "
                         f"{START_SERVER}") from None


def public_uri(uri: str) -> str:
    """`uri` without a user and password in it: what is written to files and messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _bounded_requests() -> None:
    """MLflow's client retries a dead server with back-off for minutes: 2 retries, 30 s each
    (unless the environment sets MLflow's own variables)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _params(params: dict) -> dict[str, str]:
    """params.json as MLflow parameters: strings, the long ones (features, spec) as compact JSON."""
    out = {}
    for key, value in params.items():
        if key in ("libraries",):
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        out[key] = text[:6000]  # MLflow's limit for a parameter's value
    return out


def log_training_run(uri: str, experiment: str, run_dir: Path) -> dict:
    """Log the finished run directory `run_dir` as one MLflow run; write and return its `tracking.json`."""
    mlflow = require_mlflow()
    run_dir = Path(run_dir)
    params = json.loads((run_dir / "params.json").read_text())
    if isinstance(params.get("command"), str):  # the URI's credentials stay out of MLflow
        params["command"] = params["command"].replace(uri, public_uri(uri))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    _bounded_requests()
    try:
        mlflow.set_tracking_uri(uri)
        found = mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_dir.resolve().name) as run:
            mlflow.log_params(_params(params))
            values = {f"{split}_{name}": float(metrics[split][name]) for split in ("validation", "test")
                      for name in METRICS if isinstance(metrics.get(split, {}).get(name), (int, float))}
            values["threshold"] = float(metrics["threshold"]["value"])
            mlflow.log_metrics(values)
            mlflow.set_tags({
                "fraudscore.model": str(params.get("model", "")),
                "fraudscore.data": str(params.get("data", "")),
                "fraudscore.data_sha256": str(fingerprint.get("sha256", "")),
                "fraudscore.training_rows": str(fingerprint.get("rows", "")),
                "fraudscore.command": str(params.get("command", ""))[:5000],
                "fraudscore.threshold_rule": str(metrics["threshold"].get("rule", "")),
            })
            mlflow.log_dict(fingerprint, "fingerprint.json")
            mlflow.log_artifacts(str(run_dir), artifact_path="run")
            record = {"uri": public_uri(uri), "experiment": experiment, "experiment_id": found.experiment_id,
                      "run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri}
    except FraudscoreError:
        raise
    except Exception as exc:  # MLflow raises its own and requests' errors; the run directory is complete
        raise TrackingError(f"--mlflow-uri {public_uri(uri)}: the run was not logged ({type(exc).__name__}: {exc}); "
                            f"{run_dir} is complete and exports as it is, without a tracking run") from None
    (run_dir / TRACKING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _key(text: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / and spaces) from a model version."""
    return "".join(c if c.isalnum() or c in "_-./" else "_" for c in text)


def log_evaluation(uri: str, experiment: str, evaluation: dict, table: str) -> dict:
    """Log `fraudscore evaluate`'s comparison of bundles as one MLflow run: per bundle (keyed by
    its model version) the protocol's and the production-like figures, the split as parameters,
    each bundle's own tracking run as a tag, and the report and its table as artefacts."""
    mlflow = require_mlflow()
    _bounded_requests()
    split = evaluation["split"]
    try:
        mlflow.set_tracking_uri(uri)
        found = mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"evaluate {split['test']}") as run:
            mlflow.log_params({"data": evaluation["data"], "split_source": split.get("source", ""),
                               "train": split["train"], "test": split["test"], "delay_days": split.get("delay_days", ""),
                               "bundles": len(evaluation["bundles"])})
            values, tags = {}, {"fraudscore.kind": "evaluation"}
            for i, bundle in enumerate(evaluation["bundles"]):
                label = _key(bundle["model_version"])
                names = ["auc", "ap", "alerts_per_day", "precision_at_threshold"] + [k for k in bundle if k.startswith("cp_at_")]
                for name in names:
                    if isinstance(bundle.get(name), (int, float)) and bundle[name] == bundle[name]:  # not NaN
                        values[f"{label}/{name}"] = float(bundle[name])
                for name in ("alerts_per_day", "precision_at_threshold", "recall_at_threshold", "ap"):
                    value = bundle.get("all_cards", {}).get(name)
                    if isinstance(value, (int, float)) and value == value:
                        values[f"{label}/all_cards_{name}"] = float(value)
                tags[f"fraudscore.bundle.{i}"] = f"{bundle['model_version']} {bundle['bundle']}"
                tracked = bundle.get("tracking") or {}
                if tracked.get("run_id"):
                    tags[f"fraudscore.bundle.{i}.run_id"] = tracked["run_id"]
            mlflow.log_metrics(values)
            mlflow.set_tags(tags)
            mlflow.log_dict(evaluation, "evaluate.json")
            mlflow.log_text(table + "\n", "evaluate.txt")
            return {"uri": public_uri(uri), "experiment": experiment, "experiment_id": found.experiment_id,
                    "run_id": run.info.run_id}
    except FraudscoreError:
        raise
    except Exception as exc:
        raise TrackingError(f"--mlflow-uri {public_uri(uri)}: the evaluation was not logged ({type(exc).__name__}: {exc})") from None
