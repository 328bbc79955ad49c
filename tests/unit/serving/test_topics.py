"""`fraudscore topics create`'s plan, without a broker: the retention raw-mode recovery needs,
compacted state topics, refusals of existing topics with the fix, and the same settings
sources and option spellings as `fraudscore run` (creation: tests/kafka/test_topics_create.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


# --- against the real broker


