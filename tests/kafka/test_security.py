"""Security against a real broker: TLS + SCRAM-SHA-512, refusal of plaintext and of wrong
credentials, secrets and payloads kept out of logs, metrics on loopback.

The broker (tests/conftest.py `own_broker`) gets a CA, a certificate and a SCRAM user
generated for this run by deploy/kafka/dev-certs.sh and deploy/kafka/local.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from commands import EXE
from kafka_helpers import Sidecar, drain, own_topics, produce, transaction_ids


def listening_address(port: int) -> str:
    """The local address a LISTEN socket on `port` is bound to, from /proc/net/tcp{,6}."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                if len(address) == 8:
                    return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
                return address
    raise AssertionError(f"nothing listens on port {port}")


def secret_env_and_file(broker, tmp_path: Path, password: str) -> tuple[dict, list[str]]:
    """Password in the environment, the rest of the client settings in a properties file."""
    props = tmp_path / "kafka.properties"
    props.write_text(
        "# mounted like a Kubernetes secret\n"
        f"sasl.mechanism=SCRAM-SHA-512\nsasl.username={broker.user}\nssl.ca.location={broker.ca}\n")
    return ({"FRAUDSCORE_KAFKA_SASL_PASSWORD": password},
            ["--kafka-properties-file", str(props), "-X", "security.protocol=SASL_SSL", "--require-tls"])


def test_sasl_ssl_end_to_end_without_leaking_secrets_or_payloads(own_broker, small_bundle, transactions, tmp_path) -> None:
    topics = own_topics(own_broker)
    keys, values = transactions
    keys, values = keys[:3000], values[:3000]
    # Malformed messages carrying identifiers that must never reach a log line.
    marker = f"CARD-{uuid.uuid4().hex}"
    bad = [json.dumps({"TRANSACTION_ID": f"{marker}-{i}", "CUSTOMER_ID": marker, "TX_AMOUNT": "x"}).encode()
           for i in range(20)] + [f"not json {marker}".encode()]
    client = own_broker.client_config()
    produce(client, topics["in"], keys + [marker.encode()] * len(bad), values + bad)

    env, args = secret_env_and_file(own_broker, tmp_path, own_broker.password)
    sidecar = Sidecar(own_broker.sasl_ssl_bootstrap, small_bundle, topics, "g-tls", *args, env=env)
    sidecar.wait_ready()
    assert listening_address(sidecar.port) == "127.0.0.1"
    scores = drain(client, [topics["out"]], len(values))
    dead = drain(client, [topics["dlq"]], len(bad))
    code, log = sidecar.stop()
    assert code == 0, log[-2000:]
    assert sorted(transaction_ids(scores)) == sorted(json.loads(v)["TRANSACTION_ID"] for v in values)
    assert len(dead) == len(bad)
    assert own_broker.password not in log
    assert marker not in log  # neither ids nor payloads of rejected messages
    assert "sasl.password" not in log or "'sasl.password': '***'" in log
    print(f"\nsecurity: SASL_SSL/SCRAM-SHA-512 with --require-tls: {len(values)} scored, {len(bad)} dead letters; "
          f"{len(log.splitlines())} log lines, no password, no ids; metrics bound to 127.0.0.1")


def test_wrong_password_and_untrusted_broker_are_refused_with_a_clear_error(own_broker, small_bundle, tmp_path) -> None:
    topics = own_topics(own_broker)
    base = [EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", own_broker.sasl_ssl_bootstrap,
            "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--group-id", "g-refused", "--metrics-port", "0", "--startup-timeout", "4",
            "--input", "features"]
    wrong = f"wrong-{uuid.uuid4().hex}"
    env, args = secret_env_and_file(own_broker, tmp_path, wrong)
    done = subprocess.run([*base, *args], env=os.environ | env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "refused the connection" in done.stderr and "Authentication failed" in done.stderr
    assert wrong not in done.stdout + done.stderr

    # Right password, but no CA configured: the broker's certificate is not trusted.
    props = tmp_path / "no-ca.properties"
    props.write_text(f"sasl.mechanism=SCRAM-SHA-512\nsasl.username={own_broker.user}\n")
    done = subprocess.run([*base, "--kafka-properties-file", str(props), "-X", "security.protocol=SASL_SSL"],
                          env=os.environ | {"FRAUDSCORE_KAFKA_SASL_PASSWORD": own_broker.password},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "certificate verify failed" in done.stderr, done.stderr[-2000:]
    assert own_broker.password not in done.stdout + done.stderr

    # Plaintext to the TLS port: no metadata, exit 3.
    done = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]


@pytest.mark.parametrize("extra, message", [
    ([], "security.protocol is 'plaintext'"),
    (["-X", "security.protocol=SASL_PLAINTEXT"], "security.protocol is 'sasl_plaintext'"),
    (["-X", "security.protocol=SSL", "-X", "enable.ssl.certificate.verification=false"], "verification is switched off"),
    (["-X", "security.protocol=SASL_SSL", "-X", "ssl.endpoint.identification.algorithm=none"], "verification is switched off"),
])
def test_require_tls_refuses_plaintext_and_unverified_tls(small_bundle, extra, message) -> None:
    done = subprocess.run(
        [EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "a",
         "--output-topic", "b", "--alerts-topic", "c", "--dlq-topic", "d", "--group-id", "g", "--require-tls", *extra],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_kafka_settings_never_echo_secret_values(small_bundle, tmp_path) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    base = [EXE, "run", "--bundle", str(small_bundle), "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "a",
            "--output-topic", "b", "--alerts-topic", "c", "--dlq-topic", "d", "--group-id", "g"]
    done = subprocess.run([*base, "-X", secret], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "-X number 1 is not key=value" in done.stderr and secret not in done.stderr
    props = tmp_path / "bad.properties"
    props.write_text(f"sasl.username=u\n{secret}\n")
    done = subprocess.run([*base, "--kafka-properties-file", str(props)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "line 2 is not key=value" in done.stderr and secret not in done.stderr
    done = subprocess.run([*base, "--kafka-properties-file", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no such file" in done.stderr
