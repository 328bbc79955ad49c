"""Deployment artefacts, validated statically (no container engine runs here)."""

from __future__ import annotations

import json
import re

import yaml
from project import ROOT

DEPLOY = ROOT / "deploy"


def _exported_metric_names() -> set[str]:
    from fraudscore.serving.metrics import SidecarMetrics

    names = set()
    for family in SidecarMetrics().registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    names |= {"fraudscore_bench_throughput_per_second", "fraudscore_bench_latency_p50_seconds", "fraudscore_bench_latency_p99_seconds", "fraudscore_bench_ratio"}
    recorded = {r["record"] for g in yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())["groups"]
                for r in g["rules"] if "record" in r}
    return names | recorded


def test_every_yaml_file_parses() -> None:
    files = list(DEPLOY.rglob("*.yml")) + list(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_dashboard_queries_use_only_exported_metrics_and_recording_rules() -> None:
    dashboard = json.loads((DEPLOY / "grafana/fraudscore-dashboard.json").read_text())
    known = _exported_metric_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    used = {m for e in exprs for m in re.findall(r"\b(fraudscore[_:][a-z0-9_:]+)", e)}
    assert used - known == set()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "batch size", "alert rate", "score", "dead letters", "lag", "drift"):
        assert topic in titles, topic


def test_kubernetes_sidecar_has_probes_resources_scrape_annotations_and_bundle_volume() -> None:
    deployment = yaml.safe_load((DEPLOY / "kubernetes/payment-processor-with-fraudscore.yaml").read_text())
    pod = deployment["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"payment-processor", "fraudscore"}
    side = containers["fraudscore"]
    assert side["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert side["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert side["resources"]["limits"] and side["resources"]["requests"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    env = {e["name"] for e in side["env"]}
    assert {"FRAUDSCORE_BUNDLE", "FRAUDSCORE_BOOTSTRAP_SERVERS", "FRAUDSCORE_GROUP_ID"} <= env
    by_name = {e["name"]: e for e in side["env"]}
    assert by_name["FRAUDSCORE_REQUIRE_TLS"]["value"] == "true"
    assert by_name["FRAUDSCORE_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert "secretKeyRef" in by_name["FRAUDSCORE_KAFKA_SASL_PASSWORD"]["valueFrom"]  # not a literal in the manifest
    assert any(m["mountPath"] == "/bundle" for m in side["volumeMounts"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_lag_autoscaler_targets_the_sidecar_s_group_within_the_partition_count() -> None:
    """deploy/kubernetes/fraudscore-autoscaler.yaml: a KEDA ScaledObject on the sidecar's consumer
    lag, pointed at the Deployment, topic, group and brokers of the sidecar example, bounded by
    the input's partitions, scaling down slower than a moved partition restores."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes/payment-processor-with-fraudscore.yaml").read_text())
    env = {e["name"]: e for c in deployment["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes/fraudscore-autoscaler.yaml").read_text())}
    assert set(docs) == {"ScaledObject", "TriggerAuthentication"}
    scaled, auth = docs["ScaledObject"]["spec"], docs["TriggerAuthentication"]
    assert docs["ScaledObject"]["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == env["FRAUDSCORE_GROUP_ID"]["value"]
    assert meta["topic"] == env["FRAUDSCORE_INPUT_TOPIC"]["value"]
    assert meta["bootstrapServers"] == env["FRAUDSCORE_BOOTSTRAP_SERVERS"]["value"]
    assert meta["sasl"] == env["FRAUDSCORE_KAFKA_SASL_MECHANISM"]["value"].lower().replace("-", "_").replace("sha_", "sha")
    assert meta["tls"] == "enable" and env["FRAUDSCORE_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert meta["allowIdleConsumers"] == "false" and int(meta["lagThreshold"]) > 0
    # The partition count that bounds maxReplicaCount is the one its comment names.
    text = (DEPLOY / "kubernetes/fraudscore-autoscaler.yaml").read_text()
    assert f"maxReplicaCount: {scaled['maxReplicaCount']} " in text
    assert f"--partitions {scaled['maxReplicaCount']}" in text
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]
    # The credentials are the sidecar's own secret, never literals.
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "ca"}
    assert refs["password"]["name"] == env["FRAUDSCORE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    assert refs["password"]["key"] == env["FRAUDSCORE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]


def test_the_quality_monitor_runs_once_against_the_sidecars_topics_with_their_credentials() -> None:
    """deploy/kubernetes/fraudscore-quality.yaml: `fraudscore quality`, one replica (Recreate), the
    sidecar example's results and labels topics, brokers and secrets, probes on its metrics port,
    and every FRAUDSCORE_* variable one that `fraudscore quality` reads."""
    import typing

    from fraudscore import cli

    sidecar = yaml.safe_load((DEPLOY / "kubernetes/payment-processor-with-fraudscore.yaml").read_text())
    side_env = {e["name"]: e for c in sidecar["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    deployment = yaml.safe_load((DEPLOY / "kubernetes/fraudscore-quality.yaml").read_text())
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["fraudscore", "quality"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("FRAUDSCORE_BOOTSTRAP_SERVERS", "FRAUDSCORE_OUTPUT_TOPIC", "FRAUDSCORE_LABELS_TOPIC",
                 "FRAUDSCORE_KAFKA_SECURITY_PROTOCOL", "FRAUDSCORE_KAFKA_SASL_MECHANISM", "FRAUDSCORE_KAFKA_SASL_PASSWORD"):
        assert env[name] == side_env[name], name
    hints = typing.get_type_hints(cli.quality, include_extras=True)
    read = {m.envvar for hint in hints.values() for m in getattr(hint, "__metadata__", ()) if getattr(m, "envvar", None)}
    assert {n for n in env if not n.startswith("FRAUDSCORE_KAFKA_")} <= read, "a variable `fraudscore quality` ignores"
    port = int(env["FRAUDSCORE_QUALITY_METRICS_PORT"]["value"])
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_runtime_image_is_non_root_without_the_training_stack_and_has_a_healthcheck() -> None:
    runtime = (DEPLOY / "docker/Dockerfile.runtime").read_text()
    installs = " ".join(line for line in runtime.replace("\\\n", " ").splitlines() if line.startswith("RUN"))
    assert '"fraudscore[cpu]"' in installs and "train" not in installs and "tensorflow" not in installs.lower()
    assert re.search(r"^USER 10001$", runtime, re.M)
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    train = (DEPLOY / "docker/Dockerfile.train").read_text()
    assert ".[cpu,train]" in train and re.search(r"^USER ", train, re.M)


def test_compose_systemd_and_ci_definitions() -> None:
    compose = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())
    assert {"kafka", "fraudscore", "prometheus", "alertmanager", "grafana"} <= set(compose["services"])
    unit = (DEPLOY / "systemd/fraudscore.service").read_text()
    assert "ExecStart=/opt/fraudscore/bin/fraudscore run" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "Restart=on-failure" in unit and "User=fraudscore" in unit
    workflow = yaml.safe_load((DEPLOY / "ci/github-actions.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["model-and-bench"]["steps"])
    for command in ("pytest", "fraudscore train", "fraudscore export", "fraudscore bench", "--gate"):
        assert command in steps, command
