"""Shared fixtures: a real Apache Kafka broker for the session, fresh topics for each test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fraudscore import add_baseline_features, simulate, write_table

ROOT = Path(__file__).resolve().parents[1]
_EXE = str(Path(sys.executable).with_name("fraudscore"))
LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: FRAUDSCORE_TEST_BOOTSTRAP, or one started for this session."""
    given = os.environ.get("FRAUDSCORE_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    env = dict(
        os.environ,
        KAFKA_PORT=str(free_port()),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        KAFKA_STATE_DIR=str(tmp_path_factory.mktemp("kafka")),
        KAFKA_HEAP=os.environ.get("KAFKA_HEAP", "512m"),
    )
    started = subprocess.run(
        [str(LOCAL_KAFKA), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if started.returncode != 0:
        pytest.fail(f"could not start Kafka:\n{started.stderr}\n{started.stdout}")
    bootstrap = started.stdout.strip().splitlines()[-1]
    try:
        yield bootstrap
    finally:
        subprocess.run([str(LOCAL_KAFKA), "stop"], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def make_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create fresh, uniquely named topics for one test; delete them afterwards."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 1, prefix: str | None = None) -> str:
        base = (prefix or request.node.name).replace("[", "-").replace("]", "")[:60]
        name = f"{base}-{uuid.uuid4().hex[:8]}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created).values():
            try:
                future.result(timeout=30)
            except Exception:  # a failed clean-up must not fail the test
                pass


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """A real bundle, trained and exported by the project's own commands on a small simulated set."""
    work = tmp_path_factory.mktemp("sidecar-bundle")
    features = work / "features.parquet"
    write_table(add_baseline_features(simulate(customers=400, terminals=800, days=30, seed=5).transactions), features)
    for args in (
        ["train", "--data", features, "--start", "2018-04-09", "--seed", "1", "--epochs", "3", "--ensemble", "1",
         "--out", work / "run", "--quiet"],
        ["export", "--run", work / "run", "--out", work / "bundle", "--quiet"],
    ):
        done = subprocess.run([_EXE, *map(str, args)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return work / "bundle"


class OwnBroker:
    """A second broker the tests may stop and start, with a SASL_SSL (SCRAM-SHA-512) listener
    next to the PLAINTEXT one. Its CA, keystore and user password are generated for the run."""

    def __init__(self, work: Path):
        self.certs = work / "certs"
        subprocess.run([str(ROOT / "deploy" / "kafka" / "dev-certs.sh"), str(self.certs)], check=True,
                        capture_output=True, timeout=60)
        self.user = "fraudscore-test"
        self.password = uuid.uuid4().hex
        password_file = work / "scram.password"
        password_file.write_text(self.password)
        password_file.chmod(0o600)
        self.port, self.sasl_ssl_port = free_port(), free_port()
        self.env = dict(
            os.environ, KAFKA_PORT=str(self.port), KAFKA_CONTROLLER_PORT=str(free_port()),
            KAFKA_SASL_SSL_PORT=str(self.sasl_ssl_port), KAFKA_STATE_DIR=str(work / "state"),
            KAFKA_HEAP=os.environ.get("KAFKA_HEAP", "384m"), KAFKA_SSL_KEYSTORE=str(self.certs / "broker.p12"),
            KAFKA_SSL_KEYSTORE_PASSWORD_FILE=str(self.certs / "keystore.password"),
            KAFKA_SCRAM_USER=self.user, KAFKA_SCRAM_PASSWORD_FILE=str(password_file),
        )
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_ssl_bootstrap = f"127.0.0.1:{self.sasl_ssl_port}"
        self.ca = self.certs / "ca.pem"

    def client_config(self, password: str | None = None) -> dict[str, str]:
        return {"bootstrap.servers": self.sasl_ssl_bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": self.user,
                "sasl.password": self.password if password is None else password, "ssl.ca.location": str(self.ca)}

    def _local(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(LOCAL_KAFKA), action], env=self.env, capture_output=True, text=True, timeout=300)

    def start(self) -> float:
        t0 = time.monotonic()
        done = self._local("start")
        if done.returncode != 0:
            pytest.fail(f"could not start the second broker:\n{done.stderr}")
        return time.monotonic() - t0

    def stop(self) -> None:
        self._local("stop")


@pytest.fixture(scope="session")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path_factory.mktemp("own-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
