"""`fraudscore topics create` as a user runs it, without a broker: `--help` is instant and loads
no Kafka client; an unreachable broker and bad properties exit clearly."""

from __future__ import annotations

import os
import subprocess
import uuid

from commands import topic_names, topics_create



def test_topics_create_help_is_instant_and_loads_no_kafka_client() -> None:
    code = ("import sys\nfrom fraudscore.cli import app\n"
            "try:\n    app(['topics', 'create', '--help'], prog_name='fraudscore')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('confluent_kafka', 'onnxruntime', 'tensorflow')))")
    done = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "--partitions" in done.stdout and "--replication-factor" in done.stdout


def test_an_unreachable_broker_and_bad_properties_exit_clearly() -> None:
    t = topic_names("x")
    done = topics_create("127.0.0.1:9", t, "--startup-timeout", "2")
    assert done.returncode == 3 and "cannot reach Kafka at 127.0.0.1:9 within 2 s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    secret = uuid.uuid4().hex
    done = topics_create("127.0.0.1:9", t, "-X", "no.such.property=1", env={"FRAUDSCORE_KAFKA_SASL_PASSWORD": secret})
    assert done.returncode == 2 and 'No such configuration property: "no.such.property"' in done.stderr, done.stderr
    assert secret not in done.stderr
