"""`fraudscore dlq`'s options as a user passes them: from the config file and the environment,
checked before anything is read."""

from __future__ import annotations

from functools import partial


import pytest

from commands import fraudscore
from fraudscore.errors import UsageError


dlq = partial(fraudscore, "dlq", timeout_s=120)


def test_options_come_from_the_config_file_and_are_checked(tmp_path) -> None:
    no_topic = dlq("show", "--bootstrap-servers", "127.0.0.1:9")
    assert no_topic.returncode == 2 and "missing --dlq-topic" in no_topic.stderr
    no_servers = dlq("show", "--dlq-topic", "x", env={"PATH": "/usr/bin:/bin"}, replace_env=True)
    assert no_servers.returncode == 2 and "missing --bootstrap-servers" in no_servers.stderr
    bad_x = dlq("show", "--bootstrap-servers", "127.0.0.1:9", "--dlq-topic", "x", "-X", "sasl.password")
    assert bad_x.returncode == 2 and "-X number 1 is not key=value" in bad_x.stderr
    bad_since = dlq("show", "--bootstrap-servers", "127.0.0.1:9", "--dlq-topic", "x", "--since", "yesterday")
    assert bad_since.returncode == 2 and "--since must be" in bad_since.stderr
    from fraudscore.serving.dlq import connection, dlq_topic_from

    config = tmp_path / "sidecar.toml"
    config.write_text('bootstrap_servers = "b:9092"\ndlq_topic = "tx-dlq"\n[kafka]\n"security.protocol" = "SSL"\n')
    kafka = connection(bootstrap_servers=None, config_file=config, kafka_flags=["client.id=oncall"], environ={})
    assert kafka == {"bootstrap.servers": "b:9092", "security.protocol": "SSL", "client.id": "oncall"}
    assert dlq_topic_from(None, config) == "tx-dlq" and dlq_topic_from("other", config) == "other"
    with pytest.raises(UsageError, match="missing --dlq-topic"):
        dlq_topic_from(None, None)
