"""`fraudscore topics create`: the sidecar's topics with the retention its recovery needs,
from the same flags, variables and --config file as `fraudscore run`; idempotent, and
refusing an existing topic with another partition count before creating anything.

The plan and the sharing of settings with `run` are checked without a broker; creation,
idempotence, refusals and security against the real brokers.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka_helpers import EXE, client

from fraudscore.errors import UsageError
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.topics import (
    DAY_MS,
    TopicPlan,
    TopicsConfig,
    existing_problems,
    plan_topics,
    retention_warnings,
)

TOPICS = {"bootstrap_servers": "k:9092", "input_topic": "tx-in", "output_topic": "tx-scores",
          "alerts_topic": "tx-alerts", "dlq_topic": "tx-dlq"}


def names(tag: str) -> dict[str, str]:
    return {role: f"{role}-{tag}" for role in ("in", "labels", "scores", "alerts", "dlq")}


def create(bootstrap: str, topics: dict[str, str], *extra: str, env: dict | None = None,
           labels: bool = True) -> subprocess.CompletedProcess:
    """`fraudscore topics create` as a user runs it."""
    args = [EXE, "topics", "create", "--bootstrap-servers", bootstrap, "--input-topic", topics["in"],
            "--output-topic", topics["scores"], "--alerts-topic", topics["alerts"], "--dlq-topic", topics["dlq"],
            *(("--labels-topic", topics["labels"]) if labels else ()), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=None if env is None else os.environ | env)


def describe(bootstrap: str | dict, topics: list[str]) -> dict[str, tuple[int, int, dict[str, str]]]:
    """name -> (partitions, replicas, topic configuration) of existing topics."""
    admin = AdminClient(client(bootstrap))
    md = admin.list_topics(timeout=30)
    out = {}
    present = [ConfigResource("topic", t) for t in topics if t in md.topics]
    futures = admin.describe_configs(present) if present else {}
    for resource, future in futures.items():
        parts = md.topics[resource.name].partitions
        out[resource.name] = (len(parts), len(parts[0].replicas),
                              {k: e.value for k, e in future.result(30).items()})
    return out


def delete(bootstrap: str, topics) -> None:
    admin = AdminClient(client(bootstrap))
    for future in admin.delete_topics(list(topics)).values():
        try:
            future.result(30)
        except Exception:  # already gone: nothing to clean
            pass


# --- the plan, without a broker

def test_retention_keeps_what_raw_mode_recovery_reads_and_nothing_is_compacted() -> None:
    plans = {p.role: p for p in plan_topics(TopicsConfig(**TOPICS, labels_topic="tx-labels"), 6, 3)}
    assert list(plans) == ["input", "labels", "scores", "alerts", "dead letters"]
    # 30-day terminal window ending 7 days back, 1 day of allowed lateness, 1 day of clock margin.
    assert plans["input"].retention_ms == plans["labels"].retention_ms == 39 * DAY_MS
    assert plans["scores"].retention_ms == plans["alerts"].retention_ms == 7 * DAY_MS
    assert plans["dead letters"].retention_ms == 30 * DAY_MS > plans["scores"].retention_ms
    for plan in plans.values():
        assert (plan.partitions, plan.replication_factor) == (6, 3)
        assert plan.topic_config() == {"cleanup.policy": "delete", "retention.ms": str(plan.retention_ms),
                                       "min.insync.replicas": "2"}
    later = {p.role: p for p in plan_topics(TopicsConfig(**TOPICS, labels_topic="l", allowed_lateness_s=3 * 86_400), 1, 1)}
    assert later["input"].retention_ms == later["labels"].retention_ms == 41 * DAY_MS
    assert later["input"].topic_config()["min.insync.replicas"] == "1"
    features = {p.role: p for p in plan_topics(TopicsConfig(**TOPICS, input_mode="features"), 1, 1)}
    assert "labels" not in features and features["input"].retention_ms == 7 * DAY_MS


def test_state_topics_are_compacted_and_kept_no_longer_than_the_input() -> None:
    plans = {p.role: p for p in plan_topics(TopicsConfig(**TOPICS, labels_topic="l", state_topic="tx-state"), 6, 3)}
    assert list(plans)[-3:] == ["state", "state index", "terminal feed"]
    assert (plans["state"].name, plans["state index"].name, plans["terminal feed"].name) == (
        "tx-state", "tx-state-index", "tx-state-feed")
    assert (plans["state"].partitions, plans["state index"].partitions, plans["terminal feed"].partitions) == (6, 1, 6)
    feed = plans["terminal feed"].topic_config()  # one partition per input partition, a day, not compacted
    assert feed["cleanup.policy"] == "delete" and int(feed["retention.ms"]) == DAY_MS
    for role in ("state", "state index"):
        config = plans[role].topic_config()
        assert config["cleanup.policy"] == "compact,delete"
        assert int(config["retention.ms"]) == plans["input"].retention_ms  # card histories leave with the input
        assert int(config["segment.ms"]) <= 3_600_000  # replaced snapshots are cleaned within the hour
    with pytest.raises(UsageError, match="must all be different"):
        TopicsConfig.from_sources(TOPICS | {"state_topic": "tx-in"}, environ={})


def test_an_existing_topic_with_another_partition_count_is_refused_with_the_fix() -> None:
    plan = TopicPlan("input", "tx-in", 6, 1, 39 * DAY_MS)
    assert existing_problems(plan, 6) == []
    [problem] = existing_problems(plan, 3)
    assert "tx-in (input) exists with 3 partitions, --partitions asks 6: pass --partitions 3" in problem
    assert "create a new topic and migrate" in problem


def test_an_existing_input_topic_that_keeps_too_little_is_warned_about() -> None:
    plan = TopicPlan("input", "tx-in", 1, 1, 39 * DAY_MS)
    assert retention_warnings(plan, {"retention.ms": str(39 * DAY_MS), "cleanup.policy": "delete"}) == []
    assert retention_warnings(plan, {"retention.ms": "-1", "cleanup.policy": "delete"}) == []
    short, compact = retention_warnings(plan, {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "compact,delete"})
    assert "7 days" in short and f"--add-config retention.ms={39 * DAY_MS}" in short
    assert "cleanup.policy=delete" in compact
    assert retention_warnings(TopicPlan("scores", "s", 1, 1, 7 * DAY_MS), {"retention.ms": "1"}) == []


def test_settings_come_from_the_same_sources_as_run(tmp_path: Path) -> None:
    config = tmp_path / "fraudscore.toml"
    config.write_text('bundle = "/srv/bundle"\ngroup-id = "fraudscore"\nbootstrap_servers = "file:9092"\n'
                      'input_topic = "tx-in"\noutput_topic = "tx-scores"\nalerts_topic = "tx-alerts"\n'
                      'dlq_topic = "tx-dlq"\nlabels_topic = "tx-labels"\nallowed_lateness = 7200\n'
                      '[kafka]\n"security.protocol" = "SASL_SSL"\n"sasl.username" = "file"\n')
    flags = {"bootstrap_servers": "flag:9092", "input_topic": None}
    environ = {"FRAUDSCORE_KAFKA_SASL_USERNAME": "env"}
    topics = TopicsConfig.from_sources(flags, config_file=config, kafka_flags=["sasl.mechanism=SCRAM-SHA-512"],
                                       environ=environ)
    run = SidecarConfig.from_sources(flags, config_file=config, kafka_flags=["sasl.mechanism=SCRAM-SHA-512"],
                                     environ=environ)
    assert topics.bootstrap_servers == run.bootstrap_servers == "flag:9092"
    assert list(topics.roles().values()) == [run.input_topic, run.labels_topic, run.output_topic, run.alerts_topic,
                                             run.dlq_topic]
    assert topics.kafka == run.kafka == {"security.protocol": "SASL_SSL", "sasl.username": "env",
                                         "sasl.mechanism": "SCRAM-SHA-512"}
    assert topics.allowed_lateness_s == run.allowed_lateness_s == 7200

    config.write_text('bootstrap_servers = "k:9092"\ninput_topic = "a"\nouput_topic = "typo"\n')
    with pytest.raises(UsageError, match="unknown option.*ouput_topic"):
        TopicsConfig.from_sources({}, config_file=config, environ={})
    with pytest.raises(UsageError, match="missing --output-topic, --alerts-topic, --dlq-topic"):
        TopicsConfig.from_sources({"bootstrap_servers": "k:9092", "input_topic": "a"}, environ={})
    with pytest.raises(UsageError, match="must all be different"):
        TopicsConfig.from_sources(TOPICS | {"labels_topic": "tx-in"}, environ={})


def test_shared_options_are_spelled_and_documented_as_for_run() -> None:
    import typer.main

    from fraudscore.cli import app

    group = typer.main.get_command(app)
    run = {p.name: p for p in group.commands["run"].params}
    create_command = group.commands["topics"].commands["create"]
    create_params = {p.name: p for p in create_command.params}
    shared = ["bootstrap_servers", "input_topic", "output_topic", "alerts_topic", "dlq_topic", "labels_topic",
              "input_mode", "allowed_lateness", "startup_timeout", "kafka_property", "kafka_properties_file", "config",
              "state_topic"]
    for name in shared:
        assert create_params[name].opts == run[name].opts, name
        assert create_params[name].envvar == run[name].envvar, name
        if name not in ("input_mode", "allowed_lateness", "startup_timeout"):  # these say what they mean for topics
            assert create_params[name].help == run[name].help, name
    # Every topic and connection option of run is here (the rest are about scoring, not topics).
    assert {n for n in run if n.endswith("_topic") or n.startswith("kafka_") or n == "bootstrap_servers"} <= set(shared)


def test_topics_create_help_is_instant_and_loads_no_kafka_client() -> None:
    code = ("import sys\nfrom fraudscore.cli import app\n"
            "try:\n    app(['topics', 'create', '--help'], prog_name='fraudscore')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('confluent_kafka', 'onnxruntime', 'tensorflow')))")
    done = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "--partitions" in done.stdout and "--replication-factor" in done.stdout


def test_an_unreachable_broker_and_bad_properties_exit_clearly() -> None:
    t = names("x")
    done = create("127.0.0.1:9", t, "--startup-timeout", "2")
    assert done.returncode == 3 and "cannot reach Kafka at 127.0.0.1:9 within 2 s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    secret = uuid.uuid4().hex
    done = create("127.0.0.1:9", t, "-X", "no.such.property=1", env={"FRAUDSCORE_KAFKA_SASL_PASSWORD": secret})
    assert done.returncode == 2 and 'No such configuration property: "no.such.property"' in done.stderr, done.stderr
    assert secret not in done.stderr


# --- against the real broker

@pytest.mark.kafka
def test_create_is_idempotent_and_refuses_a_different_partition_count(kafka_bootstrap: str) -> None:
    t = names(uuid.uuid4().hex[:8])
    try:
        done = create(kafka_bootstrap, t, "--partitions", "3")
        assert done.returncode == 0, done.stderr
        assert "5 created, 0 already there" in done.stdout
        found = describe(kafka_bootstrap, list(t.values()))
        assert {name: found[name][:2] for name in t.values()} == {name: (3, 1) for name in t.values()}
        retention = {role: int(found[name][2]["retention.ms"]) // DAY_MS for role, name in t.items()}
        assert retention == {"in": 39, "labels": 39, "scores": 7, "alerts": 7, "dlq": 30}
        assert {found[name][2]["cleanup.policy"] for name in t.values()} == {"delete"}

        again = create(kafka_bootstrap, t, "--partitions", "3")
        assert again.returncode == 0, again.stderr
        assert "0 created, 5 already there" in again.stdout
        assert f"exists  {t['in']} (input): 3 partitions, replication 1" in again.stdout
        assert "warning" not in again.stdout + again.stderr

        # Another partition count: refused, and the one topic that is missing is not created either.
        other = t | {"labels": f"labels-new-{uuid.uuid4().hex[:8]}"}
        refused = create(kafka_bootstrap, other, "--partitions", "2")
        assert refused.returncode == 2, refused.stderr
        assert f"{t['in']} (input) exists with 3 partitions, --partitions asks 2: pass --partitions 3" in refused.stderr
        assert "nothing was created" in refused.stderr and "Traceback" not in refused.stderr
        assert other["labels"] not in describe(kafka_bootstrap, [other["labels"]])

        # More replicas than brokers: the broker's refusal, with the fix.
        lone = {k: f"{v}-rf" for k, v in t.items()}
        done = create(kafka_bootstrap, lone, "--replication-factor", "3", labels=False)
        assert done.returncode == 2 and "pass --replication-factor 1" in done.stderr, done.stderr
    finally:
        delete(kafka_bootstrap, list(t.values()))


@pytest.mark.kafka
def test_variables_and_config_file_as_for_run_and_a_short_retention_warned(kafka_bootstrap: str, make_topic,
                                                                           tmp_path: Path) -> None:
    t = names(uuid.uuid4().hex[:8])
    t["in"] = make_topic(partitions=2, prefix="short-in")  # the broker's default retention (1 day on the test broker)
    config = tmp_path / "fraudscore.toml"
    config.write_text(f'bundle = "/srv/bundle"\ngroup_id = "fraudscore"\noutput_topic = "{t["scores"]}"\n'
                      f'alerts_topic = "{t["alerts"]}"\n[kafka]\n"client.id" = "from-the-file"\n')
    env = {"FRAUDSCORE_BOOTSTRAP_SERVERS": kafka_bootstrap, "FRAUDSCORE_INPUT_TOPIC": t["in"],
           "FRAUDSCORE_DLQ_TOPIC": t["dlq"], "FRAUDSCORE_LABELS_TOPIC": t["labels"], "FRAUDSCORE_CONFIG": str(config)}
    try:
        done = subprocess.run([EXE, "topics", "create", "--partitions", "2"], capture_output=True, text=True,
                              timeout=120, env=os.environ | env)
        assert done.returncode == 0, done.stderr
        assert "4 created, 1 already there" in done.stdout
        assert f"exists  {t['in']} (input): 2 partitions" in done.stdout
        default = describe(kafka_bootstrap, [t["in"]])[t["in"]][2]["retention.ms"]
        assert f"warning: retention.ms is {default} (" in done.stderr
        assert f"raw mode rebuilds its windows from this topic and needs {39 * DAY_MS} (39 days)" in done.stderr
        assert f"--entity-name {t['in']} --add-config retention.ms={39 * DAY_MS}" in done.stderr
        assert set(describe(kafka_bootstrap, list(t.values()))) == set(t.values())
    finally:
        delete(kafka_bootstrap, [v for k, v in t.items() if k != "in"])


@pytest.mark.kafka
def test_create_over_sasl_ssl_with_the_password_from_the_environment(own_broker, tmp_path: Path) -> None:
    t = names(uuid.uuid4().hex[:8])
    props = tmp_path / "kafka.properties"
    props.write_text(f"sasl.mechanism=SCRAM-SHA-512\nsasl.username={own_broker.user}\nssl.ca.location={own_broker.ca}\n")
    args = ("--kafka-properties-file", str(props), "-X", "security.protocol=SASL_SSL", "--startup-timeout", "5")
    wrong = f"wrong-{uuid.uuid4().hex}"
    done = create(own_broker.sasl_ssl_bootstrap, t, *args, env={"FRAUDSCORE_KAFKA_SASL_PASSWORD": wrong})
    assert done.returncode == 3 and "refused the connection" in done.stderr, done.stderr
    assert wrong not in done.stdout + done.stderr
    done = create(own_broker.sasl_ssl_bootstrap, t, *args, env={"FRAUDSCORE_KAFKA_SASL_PASSWORD": own_broker.password})
    assert done.returncode == 0, done.stderr
    assert "5 created" in done.stdout and own_broker.password not in done.stdout + done.stderr
    assert set(describe(own_broker.client_config(), list(t.values()))) == set(t.values())
