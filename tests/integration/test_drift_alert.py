"""Feature drift measured over a window by Prometheus, from bins the sidecar's metric code counts.

Two streams of simulated, time-ordered traffic from the handbook's generator, scored by the
real pipeline and counted by the real `SidecarMetrics`, against a training fingerprint of the
week before them (after the generator's 37-day warm-up, as a model trained on it would have):

- a week with no drift: FraudscoreFeatureDrift never pending or firing, while the PSI is
  measured all the time (over the last hour by day, over the last day at night);
- the same week with every amount x3 from its third day: TX_AMOUNT fires.

The week runs through Prometheus's rule engine in `promtool test rules`: the sidecar's
exposition, read after every 10 simulated minutes, becomes the input series. The live path (a
real Prometheus scraping the metrics over HTTP, the repo's rules with their windows shortened)
is the last test.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fakes import Message
from fraudscore import add_baseline_features, simulate
from fraudscore.data.fingerprint import fingerprint
from fraudscore.data.loadgen import transaction_messages
from fraudscore.data.table import Table
from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.drift import CALENDAR_FEATURES
from fraudscore.serving.metrics import HealthServer, SidecarMetrics
from fraudscore.serving.pipeline import Pipeline
from fraudscore.serving.scorer import Scorer
from kafka_helpers import free_port
from project import RULES
from waiting import wait_http

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# 10,000 customers: ~1,400 transactions in a daytime hour, ~150 in a night hour, ~19,000 a day.
CUSTOMERS, SEED = 10_000, 3
TRAIN_START, WEEK_START, SHIFT_START = np.datetime64("2018-05-09"), np.datetime64("2018-05-16"), np.datetime64("2018-05-18")
STEP_S = 600
SERIES = ("fraudscore_feature_bin_total", "fraudscore_feature_training_share")


def _features(amount_factor: float = 1.0) -> Table:
    raw = simulate(customers=CUSTOMERS, terminals=2 * CUSTOMERS, days=52, seed=SEED).transactions
    if amount_factor != 1.0:
        shifted = raw["TX_DATETIME"] >= SHIFT_START
        raw = raw.with_columns({"TX_AMOUNT": np.where(shifted, raw["TX_AMOUNT"] * amount_factor, raw["TX_AMOUNT"])})
    return add_baseline_features(raw)


def _window(table: Table, start: np.datetime64, days: int) -> Table:
    t = table["TX_DATETIME"]
    rows = np.flatnonzero((t >= start) & (t < start + np.timedelta64(days, "D")))
    return table.take(rows[np.argsort(t[rows], kind="stable")])


@pytest.fixture(scope="module")
def calm() -> Table:
    return _features()


@pytest.fixture(scope="module")
def drift_bundle(small_bundle: Path, calm: Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_bundle's model with the fingerprint of the training week before the streams."""
    bundle = load_bundle(small_bundle)
    train = _window(calm, TRAIN_START, 7)
    matrix = np.column_stack([train[f] for f in bundle.features]).astype(np.float64)
    manifest = dataclasses.replace(bundle.manifest, fingerprint=fingerprint(matrix, train["TX_FRAUD"], list(bundle.features), None))
    out = tmp_path_factory.mktemp("drift-bundle")
    shutil.copy(small_bundle / "model.onnx", out / "model.onnx")
    manifest.write(out / "manifest.json")
    return out


def _scrape_week(bundle_dir: Path, week: Table) -> dict[str, list[float]]:
    """Feed `week` 10 simulated minutes at a time through the pipeline and the sidecar's metrics;
    the drift series of the exposition after each step (and one before the first)."""
    bundle = load_bundle(bundle_dir)
    pipeline = Pipeline(bundle.manifest, Scorer(bundle))
    metrics = SidecarMetrics()
    metrics.set_model(bundle.manifest)
    _, values = transaction_messages(week, bundle.features)
    step = ((week["TX_DATETIME"] - WEEK_START) // np.timedelta64(STEP_S, "s")).astype(np.int64)
    bounds = np.searchsorted(step, np.arange(7 * 86_400 // STEP_S + 1))
    series: dict[str, list[float]] = defaultdict(list)

    def scrape() -> None:
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
            for sample in family.samples:
                if sample.name in SERIES:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    series[f'{sample.name}{{job="fraudscore",instance="sidecar",{labels}}}'].append(sample.value)

    scrape()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            result = pipeline.score_batch(values[lo:hi])
            assert not result.rejections
            metrics.observe_batch([Message()] * (hi - lo), result, [])
        scrape()
    return series


def _promtool(tmp_path: Path, series: dict[str, list[float]], checks: list[dict]) -> None:
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": f"{STEP_S}s",
        "tests": [{
            "interval": f"{STEP_S}s",
            "input_series": [{"series": name, "values": " ".join(f"{v:g}" for v in values)}
                             for name, values in series.items()],
            "promql_expr_test": checks,
        }],
    }
    path = tmp_path / "drift_test.yml"
    path.write_text(yaml.safe_dump(test, width=1 << 20))
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def _sample(labels: str, value: float) -> dict:
    return {"labels": labels, "value": value}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/setup.sh installs Debian's prometheus")
def test_a_week_of_traffic_without_drift_never_alerts(drift_bundle: Path, calm: Table, tmp_path: Path) -> None:
    series = _scrape_week(drift_bundle, _window(calm, WEEK_START, 7))
    features = {re.search(r'feature="([^"]+)"', s).group(1) for s in series}
    assert features and not features & CALENDAR_FEATURES
    measured = len(features)
    _promtool(tmp_path, series, [
        # Neither pending nor firing at any evaluation of the week.
        {"expr": 'count_over_time(ALERTS{alertname="FraudscoreFeatureDrift"}[7d])', "eval_time": "7d", "exp_samples": []},
        # Not blind: at night over the last day, by day over the last hour, and well under the bound.
        {"expr": "count by (window) (fraudscore:feature_psi)", "eval_time": "27h",
         "exp_samples": [_sample('{window="1d"}', measured)]},
        {"expr": "count by (window) (fraudscore:feature_psi)", "eval_time": "36h",
         "exp_samples": [_sample('{window="1h"}', measured)]},
        {"expr": "count(fraudscore:feature_psi)", "eval_time": "3h", "exp_samples": []},  # too few rows yet
        {"expr": "max(max_over_time(fraudscore:feature_psi[7d])) < bool 0.1", "eval_time": "7d",
         "exp_samples": [_sample("{}", 1)]},
    ])


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/setup.sh installs Debian's prometheus")
def test_amounts_tripled_from_the_third_day_alert_on_tx_amount(drift_bundle: Path, tmp_path: Path) -> None:
    series = _scrape_week(drift_bundle, _window(_features(amount_factor=3.0), WEEK_START, 7))
    _promtool(tmp_path, series, [
        {"expr": 'count_over_time(ALERTS{alertname="FraudscoreFeatureDrift"}[2d])', "eval_time": "2d", "exp_samples": []},
        {"expr": 'count by (feature) (ALERTS{alertname="FraudscoreFeatureDrift",alertstate="firing",feature="TX_AMOUNT"})',
         "eval_time": "62h", "exp_samples": [_sample('{feature="TX_AMOUNT"}', 1)]},
    ])


def _query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return orjson.loads(r.read())["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: scripts/setup.sh installs it")
def test_prometheus_scrapes_the_bins_and_alerts_on_drift_only(drift_bundle: Path, calm: Table, tmp_path: Path) -> None:
    """The live path: bins served over HTTP, scraped every second by a real Prometheus running the
    repo's rules with the hour's window shortened to 20 s (and the day's to 60 s, `for` to 5 s)."""
    rules = RULES.read_text().replace("[1h]", "[20s]").replace("[1d]", "[60s]")
    rules = re.sub(r"for: \d+m", "for: 5s", rules)
    (tmp_path / "rules.yml").write_text(rules)
    metrics_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "fraudscore", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    bundle = load_bundle(drift_bundle)
    pipeline = Pipeline(bundle.manifest, Scorer(bundle))
    metrics = SidecarMetrics()
    metrics.set_model(bundle.manifest)
    http = HealthServer("127.0.0.1", metrics_port, metrics.registry, lambda: True)
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{prom_port}"
    week = _window(calm, WEEK_START, 7)
    _, values = transaction_messages(week, bundle.features)
    shifted = [orjson.dumps(doc | {"TX_AMOUNT": doc["TX_AMOUNT"] * 3}) for doc in map(orjson.loads, values[:20_000])]

    def feed(stream: list[bytes], seconds: float, rate: int = 200) -> None:
        """`rate` messages a second in batches of 50, in order."""
        sent, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            batch = [stream[(sent + i) % len(stream)] for i in range(50)]
            result = pipeline.score_batch(batch)
            metrics.observe_batch([Message()] * len(batch), result, [])
            sent += len(batch)
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))

    def drift_alerts() -> list[dict]:
        return _query(base, 'ALERTS{alertname="FraudscoreFeatureDrift"}')

    try:
        wait_http(f"{base}/-/ready")
        feed(values, 30)  # no drift: > 1,000 rows in every 20 s window once it is full
        psi = {r["metric"]["feature"]: float(r["value"][1]) for r in _query(base, "fraudscore:feature_psi")}
        assert set(psi) == {f for f in bundle.features if f not in CALENDAR_FEATURES}, psi
        assert max(psi.values()) < 0.2, psi
        assert drift_alerts() == []
        fired: list[dict] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not fired:
            feed(shifted, 2)
            fired = [a for a in drift_alerts() if a["metric"]["alertstate"] == "firing"]
        assert [a["metric"]["feature"] for a in fired] == ["TX_AMOUNT"], fired
        assert fired[0]["metric"]["window"] == "1h"  # the label keeps the rule's name; its range was 20 s here
    finally:
        prom.terminate()
        prom.wait(20)
        http.close()


def test_train_and_export_record_the_models_score_reference(small_bundle: Path) -> None:
    manifest = load_bundle(small_bundle).manifest
    reference = manifest.score_reference
    assert reference["rows"] == manifest.metrics["validation"]["transactions"]
    q = reference["quantiles"]
    assert 0 <= q["0.5"] <= q["0.9"] <= q["0.99"] <= 1 and 0 < reference["mean"] < 1  # an mlp's probabilities
    metrics = SidecarMetrics()
    metrics.set_model(manifest)
    exported = {s.labels["statistic"]: s.value for f in metrics.score_reference.collect() for s in f.samples}
    assert exported == {"mean": reference["mean"], "p50": q["0.5"], "p90": q["0.9"], "p99": q["0.99"]}
