"""Shared fixtures: a real Apache Kafka broker for the session, fresh topics for each test, a small
bundle and its transactions, a second broker, and the clean-up of sidecars. The plain helpers
they use (and the tests import) are in kafka_helpers.py.

The tree says what a test needs (docs/architecture.md, "Tests"):
- tests/unit/ mirrors the packages: in-process tests, no broker, no trained bundle (under 60 s);
- tests/integration/: the commands as processes, trained bundles, real tools (promtool,
  Prometheus, pip), no broker;
- tests/kafka/: against the real broker; every test there is marked `kafka` by its directory,
  and a test elsewhere that asks for a broker fixture fails at once saying where it belongs."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fraudscore import add_baseline_features, simulate, write_table
from fraudscore.data.loadgen import transaction_messages
from fraudscore.serving.bundle import load_bundle
from project import TESTS
from commands import fraudscore
from kafka_helpers import LOCAL_KAFKA, STARTED, OwnBroker, Toxiproxy, client, four_topics, free_port


BROKER_FIXTURES = {"kafka_bootstrap", "make_topic", "topics", "own_broker", "proxied_broker"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/kafka/ is marked `kafka`; a test outside it that asks for a broker
    (directly or through a fixture) is an error of the tree, reported before anything runs."""
    misplaced = []
    for item in items:
        path = Path(str(item.path)).resolve()
        if not path.is_relative_to(TESTS):
            continue
        if path.relative_to(TESTS).parts[0] == "kafka":
            item.add_marker(pytest.mark.kafka)
        elif BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError("tests that need the broker belong under tests/kafka/: " + ", ".join(misplaced))


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

    # client(): librdkafka's lines (e.g. "%6|...|BGQUEUE|...Purging 1 unserved events" when the
    # client is destroyed) go to Python logging, not straight to the terminal.
    admin = AdminClient(client(kafka_bootstrap))
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
        fraudscore(*args, check=True)
    return work / "bundle"


@pytest.fixture(scope="session")
def ratio_bundle(tmp_path_factory) -> Path:
    """A bundle trained on version 2's 21 features (`features --feature-version 2`: customer amount
    ratios and terminal fraud counts besides the 15)."""
    from bundle_helpers import trained_bundle

    return trained_bundle(tmp_path_factory.mktemp("ratio-bundle"), "--feature-version", "2")


@pytest.fixture(scope="session")
def challenger(small_bundle: Path, tmp_path_factory) -> Path:
    """A shadow challenger of `small_bundle`: the same model with its scores squared."""
    from bundle_helpers import squared_bundle

    return squared_bundle(small_bundle, tmp_path_factory.mktemp("challenger") / "bundle", "challenger-squared")


@pytest.fixture(scope="session")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    """The second broker (TLS, SCRAM), started once for the session and stopped at its end."""
    broker = OwnBroker(tmp_path_factory.mktemp("own-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def proxied_broker(own_broker: OwnBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OwnBroker, Toxiproxy]]:
    """The second broker behind Toxiproxy: clients of `own_broker.proxied_bootstrap` go through
    the proxy "kafka" (its toxics cleared after each use by the test), others straight to the broker."""
    proxy = Toxiproxy(tmp_path_factory.mktemp("toxiproxy"))
    proxy.start()
    try:
        proxy.create("kafka", own_broker.proxy_port, own_broker.proxied_port)
        yield own_broker, proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def transactions(small_bundle: Path) -> tuple[list[bytes], list[bytes]]:
    """Keys and values of simulated transactions (12 days) carrying `small_bundle`'s features."""
    table = add_baseline_features(simulate(customers=300, terminals=600, days=12, seed=9).transactions)
    return transaction_messages(table, load_bundle(small_bundle).features)


@pytest.fixture
def topics(make_topic) -> dict[str, str]:
    """Fresh input (3 partitions), scores, alerts and dead-letter topics for one test."""
    return four_topics(make_topic)


@pytest.fixture(autouse=True)
def no_leftover_sidecars() -> Iterator[None]:
    """A failing test must not leave a sidecar running: kill whatever a test started."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
