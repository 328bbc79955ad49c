"""`fraudscore topics create` against the real brokers: idempotent, refusing an existing topic with
another partition count before creating anything, settings from variables and --config as
for `run`, and over SASL_SSL."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from commands import EXE, topic_names, topics_create
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka_helpers import client

from fraudscore.serving.topics import DAY_MS


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



def test_create_is_idempotent_and_refuses_a_different_partition_count(kafka_bootstrap: str) -> None:
    t = topic_names(uuid.uuid4().hex[:8])
    try:
        done = topics_create(kafka_bootstrap, t, "--partitions", "3")
        assert done.returncode == 0, done.stderr
        assert "5 created, 0 already there" in done.stdout
        found = describe(kafka_bootstrap, list(t.values()))
        assert {name: found[name][:2] for name in t.values()} == {name: (3, 1) for name in t.values()}
        retention = {role: int(found[name][2]["retention.ms"]) // DAY_MS for role, name in t.items()}
        assert retention == {"in": 39, "labels": 39, "scores": 7, "alerts": 7, "dlq": 30}
        assert {found[name][2]["cleanup.policy"] for name in t.values()} == {"delete"}

        again = topics_create(kafka_bootstrap, t, "--partitions", "3")
        assert again.returncode == 0, again.stderr
        assert "0 created, 5 already there" in again.stdout
        assert f"exists  {t['in']} (input): 3 partitions, replication 1" in again.stdout
        assert "warning" not in again.stdout + again.stderr

        # Another partition count: refused, and the one topic that is missing is not created either.
        other = t | {"labels": f"labels-new-{uuid.uuid4().hex[:8]}"}
        refused = topics_create(kafka_bootstrap, other, "--partitions", "2")
        assert refused.returncode == 2, refused.stderr
        assert f"{t['in']} (input) exists with 3 partitions, --partitions asks 2: pass --partitions 3" in refused.stderr
        assert "nothing was created" in refused.stderr and "Traceback" not in refused.stderr
        assert other["labels"] not in describe(kafka_bootstrap, [other["labels"]])

        # More replicas than brokers: the broker's refusal, with the fix.
        lone = {k: f"{v}-rf" for k, v in t.items()}
        done = topics_create(kafka_bootstrap, lone, "--replication-factor", "3", labels=False)
        assert done.returncode == 2 and "pass --replication-factor 1" in done.stderr, done.stderr
    finally:
        delete(kafka_bootstrap, list(t.values()))


def test_variables_and_config_file_as_for_run_and_a_short_retention_warned(kafka_bootstrap: str, make_topic,
                                                                           tmp_path: Path) -> None:
    t = topic_names(uuid.uuid4().hex[:8])
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


def test_create_over_sasl_ssl_with_the_password_from_the_environment(own_broker, tmp_path: Path) -> None:
    t = topic_names(uuid.uuid4().hex[:8])
    props = tmp_path / "kafka.properties"
    props.write_text(f"sasl.mechanism=SCRAM-SHA-512\nsasl.username={own_broker.user}\nssl.ca.location={own_broker.ca}\n")
    args = ("--kafka-properties-file", str(props), "-X", "security.protocol=SASL_SSL", "--startup-timeout", "5")
    wrong = f"wrong-{uuid.uuid4().hex}"
    done = topics_create(own_broker.sasl_ssl_bootstrap, t, *args, env={"FRAUDSCORE_KAFKA_SASL_PASSWORD": wrong})
    assert done.returncode == 3 and "refused the connection" in done.stderr, done.stderr
    assert wrong not in done.stdout + done.stderr
    done = topics_create(own_broker.sasl_ssl_bootstrap, t, *args, env={"FRAUDSCORE_KAFKA_SASL_PASSWORD": own_broker.password})
    assert done.returncode == 0, done.stderr
    assert "5 created" in done.stdout and own_broker.password not in done.stdout + done.stderr
    assert set(describe(own_broker.client_config(), list(t.values()))) == set(t.values())
