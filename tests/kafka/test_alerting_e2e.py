"""End to end: sidecar on the real broker -> Prometheus (repo config and rules) -> Alertmanager -> webhook.

The repo's rules are used with their time windows scaled down (5 minutes -> 10 s, 6 hours ->
10 minutes, every `for:` -> 3 s) so that a burst of fraud-like transactions after a calm
stream raises FraudscoreAlertRateSpike within a minute.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import yaml

from fraudscore import add_baseline_features, simulate
from fraudscore.serving.bundle import load_bundle
from fraudscore.data.loadgen import transaction_messages
from commands import EXE
from kafka_helpers import ROOT, Sidecar, client, free_port
from waiting import wait_http, wait_until

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager")


def scaled_prometheus(tmp_path: Path, targets: dict[str, int], replacements: tuple[tuple[str, str], ...] = (),
                      alertmanager_port: int | None = None) -> Path:
    """The repo's Prometheus config and rules (deploy/prometheus), scaled down for a test and written
    under `tmp_path`; the config file's path. Windows of 5 min -> 10 s, 15 min -> 30 s, 6 h and 7 d ->
    10 min, every `for:` -> 3 s, scraped and evaluated every second; only the jobs in `targets`, each
    at its port; `replacements` (old, new) applied to the rules, each required to match; alerts sent
    to `alertmanager_port` (none without it)."""
    rules = (ROOT / "deploy/prometheus/rules.yml").read_text()
    rules = rules.replace("[5m]", "[10s]").replace("[15m]", "[30s]").replace("[6h]", "[10m]").replace("[7d]", "[10m]")
    rules = re.sub(r"for: \d+[mhd]", "for: 3s", rules)
    for old, new in replacements:
        assert old in rules, f"the rules no longer say {old!r}"
        rules = rules.replace(old, new)
    (tmp_path / "rules.yml").write_text(rules)
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    prom["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom["rule_files"] = [str(tmp_path / "rules.yml")]
    if alertmanager_port is None:
        prom.pop("alerting", None)
    else:
        prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{alertmanager_port}"]
    prom["scrape_configs"] = [c for c in prom["scrape_configs"] if c["job_name"] in targets]
    for config in prom["scrape_configs"]:
        config["static_configs"][0]["targets"] = [f"127.0.0.1:{targets[config['job_name']]}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    return tmp_path / "prometheus.yml"


@pytest.mark.skipif(not (PROMETHEUS and ALERTMANAGER), reason="prometheus / alertmanager missing: scripts/setup.sh installs them")
def test_alert_rate_spike_reaches_the_webhook(kafka_bootstrap, small_bundle, make_topic, tmp_path: Path) -> None:
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    metrics_port, prom_port, am_port = free_port(), free_port(), free_port()

    scaled_prometheus(tmp_path, {"fraudscore": metrics_port}, alertmanager_port=am_port)
    am = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    am["route"].update({"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"})
    for route in am["route"].get("routes", []):
        route["group_wait"] = "1s"
    am["receivers"][0]["webhook_configs"][0]["url"] = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am))

    topics = {k: make_topic(prefix=k) for k in ("in", "out", "alerts", "dlq")}
    procs = []
    try:
        procs.append(subprocess.Popen([ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
                                       f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                                       "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'prom'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(Sidecar(kafka_bootstrap, small_bundle, topics, "g-alerting", "--log-level", "WARNING",
                             "--batch-size", "4096", port=metrics_port).proc)  # run's default batch size
        wait_http(f"http://127.0.0.1:{am_port}/-/ready")
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz")

        bundle = load_bundle(small_bundle)
        table = add_baseline_features(simulate(customers=400, terminals=800, days=20, seed=17).transactions)
        calm = table.take((table["TX_FRAUD"] == 0) & (table["TX_AMOUNT"] < 60))
        _, calm_values = transaction_messages(calm, bundle.features)
        fraud_like = []
        for i, value in enumerate(calm_values[:2000]):
            doc = orjson.loads(value)
            doc.update({"TRANSACTION_ID": 10**9 + i, "TX_AMOUNT": 2500.0, "TERMINAL_ID_RISK_1DAY_WINDOW": 1.0,
                        "TERMINAL_ID_RISK_7DAY_WINDOW": 1.0, "TERMINAL_ID_RISK_30DAY_WINDOW": 1.0})
            fraud_like.append(orjson.dumps(doc))

        from confluent_kafka import Producer

        producer = Producer(client(kafka_bootstrap) | {"linger.ms": 5})

        def stream(values, seconds: float, rate: int = 100) -> None:
            for i in range(int(seconds * rate)):
                producer.produce(topics["in"], values[i % len(values)], b"k")
                if i % rate == rate - 1:
                    producer.flush(10)
                    time.sleep(1)
            producer.flush(10)

        stream(calm_values, 40)  # a calm baseline: few alerts
        t_burst = time.monotonic()
        deadline = t_burst + 60
        fired = []
        while time.monotonic() < deadline and not fired:
            stream(fraud_like, 2)
            fired = [a for batch in received for a in batch.get("alerts", [])
                     if a["labels"].get("alertname") == "FraudscoreAlertRateSpike" and a["status"] == "firing"]
        assert fired, f"no FraudscoreAlertRateSpike at the webhook; got {[a['labels'] for b in received for a in b['alerts']]}"
        alert = fired[0]
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"] == "https://github.com/fraudscore/fraudscore/blob/main/docs/operations.md#fraudscorealertratespike"
    finally:
        _stop_all(procs)
        hook.shutdown()


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _prometheus_alerts(port: int) -> dict[str, str]:
    """alertname -> state (pending/firing) of the alerts a Prometheus holds now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as r:
        alerts = json.loads(r.read())["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in alerts}


@pytest.mark.skipif(not PROMETHEUS, reason="prometheus missing: scripts/setup.sh installs it")
def test_live_quality_alerts_fire_in_prometheus_when_the_challenger_is_the_better_model(
        kafka_bootstrap, small_bundle, make_topic, tmp_path: Path) -> None:
    """Roles swapped: a deliberately worse champion (noise alerting on ~10 % of transactions) and
    the trained bundle as its challenger. `fraudscore quality` reads their results and the
    confirmations; a real Prometheus with the repo's rules (7-day windows scaled to 10 minutes,
    every `for:` to 3 s) scrapes it and the sidecar: FraudscoreChallengerBetter and
    FraudscoreModelPrecisionLow fire."""
    from bundle_helpers import noise_bundle
    from fraudscore.data.replay import raw_stream
    from kafka_helpers import STARTED
    from test_raw_mode import raw_sidecar, raw_topics, send

    champion = noise_bundle(small_bundle, tmp_path / "noise", "noise-champion", threshold=0.9)
    quality_port, prom_port = free_port(), free_port()
    topics = raw_topics(make_topic, partitions=2)
    sidecar = raw_sidecar(kafka_bootstrap, champion, topics, "g-quality-e2e", "--challenger", str(small_bundle))

    scaled_prometheus(tmp_path, {"fraudscore": sidecar.port, "fraudscore_quality": quality_port})

    procs = []
    try:
        procs.append(subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'prom'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([EXE, "quality", "--bootstrap-servers", kafka_bootstrap, "--output-topic", topics["out"],
                                       "--labels-topic", topics["labels"], "--top-k", "20", "--metrics-port", str(quality_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        STARTED.extend(procs)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        wait_http(f"http://127.0.0.1:{quality_port}/readyz")
        sidecar.wait_ready(120)
        time.sleep(3)  # Prometheus has scraped both before any result exists
        send(kafka_bootstrap, topics, raw_stream(simulate(customers=300, terminals=600, days=30, seed=13).transactions, seed=4))
        def both_firing() -> dict:
            state = _prometheus_alerts(prom_port)
            firing = {name for name, value in state.items() if value == "firing"}
            return state if {"FraudscoreChallengerBetter", "FraudscoreModelPrecisionLow"} <= firing else {}

        wait_until(both_firing, 120, "FraudscoreChallengerBetter and FraudscoreModelPrecisionLow firing", interval_s=1)
        assert sidecar.stop()[0] == 0
    finally:
        _stop_all(procs)
