"""What the Kafka tests drive: the `fraudscore` command, sidecar processes, clients, topics, a second broker.

Plain functions and classes; the fixtures built on them (`kafka_bootstrap`, `make_topic`,
`topics`, `transactions`, `own_broker`, `no_leftover_sidecars`) are in conftest.py.

    produce(kafka_bootstrap, topics["in"], keys, values)
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-example")
    sidecar.wait_ready()
    scores = drain(kafka_bootstrap, [topics["out"]], len(values))
    assert sorted(transaction_ids(scores)) == sorted(expected_ids)
    assert sidecar.stop()[0] == 0
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from commands import EXE
from fraudscore.bench.kafka_io import free_port  # noqa: F401  (outside the ephemeral range: see there)
from fraudscore.serving.kafka import produce_waiting
from project import ROOT
from waiting import wait_until

LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local.sh"

# Every sidecar process a test starts, so that `no_leftover_sidecars` can kill what a failing test left behind.
STARTED: list[subprocess.Popen] = []


def client(bootstrap: str | dict) -> dict:
    """Client settings: a bootstrap address, or a full configuration (TLS, SASL). librdkafka's
    log lines go to Python logging, which pytest shows only for a failing test (a test client
    that outlives a stopped broker would otherwise print reconnect errors to the CI log)."""
    base = dict(bootstrap) if isinstance(bootstrap, dict) else {"bootstrap.servers": bootstrap}
    return base | {"logger": logging.getLogger("tests.kafka")}


def produce(bootstrap: str | dict, topic: str, keys: list[bytes], values: list[bytes | None]) -> None:
    """Produce every (key, value) to `topic` with an idempotent producer; fail unless all are acknowledged."""
    producer = Producer(client(bootstrap) | {"linger.ms": 5, "enable.idempotence": True})
    for key, value in zip(keys, values):
        produce_waiting(producer, topic, value, key)
    assert producer.flush(60) == 0


def drain(bootstrap: str | dict, topics: list[str], expected: int, timeout_s: float = 90, committed_only: bool = False) -> list:
    """Read `topics` from the start in a fresh group until `expected` messages arrived (then 2 s more, so
    duplicates show) or `timeout_s` passed; `committed_only` reads as `read_committed`."""
    consumer = Consumer(client(bootstrap) | {
        "group.id": f"reader-{time.time_ns()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "isolation.level": "read_committed" if committed_only else "read_uncommitted",
    })
    consumer.subscribe(topics)
    got, deadline, quiet_since = [], time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        got += batch
        if len(got) >= expected:
            # Keep reading briefly: duplicates would show up here.
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:
                break
    consumer.close()
    return got


def written(bootstrap: str | dict, topic: str) -> int:
    """Messages on `topic` so far (the sum of its partitions' high watermarks): where a kill fell."""
    consumer = Consumer(client(bootstrap) | {"group.id": f"written-{time.time_ns()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def transaction_ids(messages) -> list:
    """The `transaction_id` of each result message, in order (duplicates kept)."""
    return [json.loads(m.value())["transaction_id"] for m in messages]


def four_topics(make_topic, partitions: int = 3) -> dict[str, str]:
    """Fresh input (with `partitions`), scores, alerts and dead-letter topics."""
    return {"in": make_topic(partitions=partitions, prefix="in"), "out": make_topic(prefix="scores"),
            "alerts": make_topic(prefix="alerts"), "dlq": make_topic(prefix="dlq")}


def own_topics(broker: OwnBroker, partitions: int = 2) -> dict[str, str]:
    """Fresh input (with `partitions`), scores, alerts and dead-letter topics on the second broker (`own_broker`)."""
    admin = AdminClient(client(broker.bootstrap))
    names = {role: f"sec-{role}-{uuid.uuid4().hex[:8]}" for role in ("in", "out", "alerts", "dlq")}
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions if r == "in" else 1, replication_factor=1)
                                   for r, n in names.items()])
    for future in futures.values():
        future.result(timeout=30)
    return names


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:`port``path`; an error status is returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60, output: Callable[[], str] = lambda: "") -> None:
    """Poll the sidecar's /readyz on `port` until it answers 200 (model loaded, partitions assigned).

    Fails with `output()` as soon as `proc` exits, and when `timeout_s` passes first."""
    def ready() -> bool:
        assert proc.poll() is None, output()
        try:
            return http_get(port, "/readyz")[0] == 200
        except OSError:
            return False

    wait_until(ready, timeout_s, f"the process on port {port} ready (/readyz 200)", interval_s=0.2)


class SidecarProcess:
    """`fraudscore` started with `args` (after the command) as a subprocess, its metrics on
    `port`, `env` added to the environment; the log goes to a file (`output()`).

        sidecar = SidecarProcess(["run", "--config", "sidecar.toml"], port, env={"FRAUDSCORE_BUNDLE": ...})
        sidecar.wait_ready()
        code, log = sidecar.stop()  # SIGTERM: 0 after a clean stop
    """

    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None):
        self.port = port
        self.args = [EXE, *args]
        # The log goes to a file, not a pipe: a pipe nobody reads fills up, and a sidecar that
        # logs a lot (a broker outage) would block writing to it.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     env=None if env is None else os.environ | env)
        STARTED.append(self.proc)

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of GET `path` on the sidecar's metrics server."""
        return http_get(self.port, path)

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Wait until /readyz answers 200; fail with the log if the sidecar exits first."""
        wait_ready(self.port, self.proc, timeout_s, self.output)

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 40) -> tuple[int, str]:
        """Send `sig`, wait for the exit; (exit code, log). A sidecar still running after
        `timeout_s` is killed and the test fails with the end of its log, which says where it hung."""
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"the sidecar did not exit within {timeout_s:g} s of signal {int(sig)}; "
                        f"its log ends:\n{self.output()[-6000:]}")
        return self.proc.returncode, self.output()

    def output(self) -> str:
        """Everything the sidecar has logged so far (stdout and stderr)."""
        self.log.seek(0)
        return self.log.read()


class Sidecar(SidecarProcess):
    """`fraudscore run` on `topics` (roles "in", "out", "alerts", "dlq"), batch size 500, feature
    input unless `extra` says `--input`, metrics on `port` (a free one by default); `extra`
    flags are appended, `env` is added to the environment.

        sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-example", "--exactly-once")
        sidecar.wait_ready()
        status, metrics = sidecar.get("/metrics")
        code, log = sidecar.stop()  # SIGTERM: 0 after a clean stop
    """

    def __init__(self, bootstrap: str, bundle: Path, topics: dict[str, str], group: str, *extra: str,
                 env: dict[str, str] | None = None, port: int | None = None):
        port = free_port() if port is None else port
        super().__init__([
            "run", "--bundle", str(bundle), "--bootstrap-servers", bootstrap,
            "--input-topic", topics["in"], "--output-topic", topics["out"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--group-id", group, "--metrics-port", str(port), "--batch-size", "500",
            *(() if "--input" in extra else ("--input", "features")),
            *extra,
        ], port, env)


class OwnBroker:
    """A second broker the tests may stop and start, with a SASL_SSL (SCRAM-SHA-512) listener
    next to the PLAINTEXT one. Its CA, keystore and user password are generated for the run.

        broker = OwnBroker(tmp_path)
        broker.start()
        produce(broker.client_config(), topic, keys, values)  # over SASL_SSL
        broker.stop()
    """

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
        # A third listener for clients that go through a fault proxy (`Toxiproxy`): the broker
        # listens on proxied_port and advertises proxy_port, where the proxy listens.
        self.proxied_port, self.proxy_port = free_port(), free_port()
        self.env = dict(
            os.environ, KAFKA_PORT=str(self.port), KAFKA_CONTROLLER_PORT=str(free_port()),
            KAFKA_SASL_SSL_PORT=str(self.sasl_ssl_port), KAFKA_STATE_DIR=str(work / "state"),
            KAFKA_PROXIED_PORT=str(self.proxied_port), KAFKA_PROXIED_ADVERTISED_PORT=str(self.proxy_port),
            KAFKA_HEAP=os.environ.get("KAFKA_HEAP", "384m"), KAFKA_SSL_KEYSTORE=str(self.certs / "broker.p12"),
            KAFKA_SSL_KEYSTORE_PASSWORD_FILE=str(self.certs / "keystore.password"),
            KAFKA_SCRAM_USER=self.user, KAFKA_SCRAM_PASSWORD_FILE=str(password_file),
        )
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_ssl_bootstrap = f"127.0.0.1:{self.sasl_ssl_port}"
        self.proxied_bootstrap = f"127.0.0.1:{self.proxy_port}"  # answers only while a proxy forwards it
        self.ca = self.certs / "ca.pem"

    def client_config(self, password: str | None = None) -> dict[str, str]:
        """Client settings for the SASL_SSL listener: this run's user, its password (or `password`), the CA."""
        return {"bootstrap.servers": self.sasl_ssl_bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": self.user,
                "sasl.password": self.password if password is None else password, "ssl.ca.location": str(self.ca)}

    def _local(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(LOCAL_KAFKA), action], env=self.env, capture_output=True, text=True, timeout=300)

    def start(self) -> float:
        """Start the broker (deploy/kafka/local.sh); the seconds it took."""
        t0 = time.monotonic()
        done = self._local("start")
        if done.returncode != 0:
            pytest.fail(f"could not start the second broker:\n{done.stderr}")
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop the broker; its state stays for the next start."""
        self._local("stop")

    def signal(self, sig: int) -> None:
        """Send `sig` to the broker's process: SIGSTOP freezes it (connections stay open, nothing
        answers: a hung broker or a partition), SIGCONT lets it go on."""
        os.kill(int((Path(self.env["KAFKA_STATE_DIR"]) / "broker.pid").read_text()), sig)


class Toxiproxy:
    """Shopify's TCP fault proxy (deploy/toxiproxy/local.sh), driven through its HTTP API.

        proxy = Toxiproxy(tmp_path)
        proxy.start()
        proxy.create("kafka", listen_port, upstream_port)
        proxy.toxic("kafka", "latency", latency=300)   # ms, broker -> client
        proxy.enable("kafka", False)                   # connections closed, new ones refused
        proxy.clear("kafka")                           # every toxic removed, the proxy enabled
        proxy.stop()
    """

    SCRIPT = ROOT / "deploy" / "toxiproxy" / "local.sh"

    def __init__(self, work: Path):
        self.port = free_port()
        self.env = dict(os.environ, TOXIPROXY_PORT=str(self.port), TOXIPROXY_STATE_DIR=str(work / "toxiproxy"))
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        done = subprocess.run([str(self.SCRIPT), "start"], env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"could not start Toxiproxy:\n{done.stderr}")

    def stop(self) -> None:
        subprocess.run([str(self.SCRIPT), "stop"], env=self.env, capture_output=True, timeout=60)

    def _call(self, method: str, path: str, body: dict | None = None) -> object:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            text = r.read()
        return json.loads(text) if text else None

    def create(self, name: str, listen_port: int, upstream_port: int) -> None:
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen_port}",
                                        "upstream": f"127.0.0.1:{upstream_port}", "enabled": True})

    def toxic(self, proxy: str, kind: str, stream: str = "downstream", **attributes: int) -> str:
        """Add a toxic (`latency`, `bandwidth`, `timeout`, `reset_peer`, ...) to one direction
        (downstream: broker -> client); its name."""
        name = f"{kind}_{stream}"
        self._call("POST", f"/proxies/{proxy}/toxics",
                   {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes})
        return name

    def enable(self, proxy: str, enabled: bool) -> None:
        """Disabled, the proxy closes its connections and refuses new ones: the broker is unreachable."""
        self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def clear(self, proxy: str) -> None:
        for toxic in self._call("GET", f"/proxies/{proxy}/toxics"):
            self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")
        self.enable(proxy, True)


class PacketLoss:
    """Random packet loss on one local TCP port, both ways (deploy/packet-loss/local.sh:
    iptables' statistic match; root or CAP_NET_ADMIN needed).

        loss = PacketLoss()
        if reason := loss.unavailable():
            pytest.skip(reason)
        loss.add(port, 10)    # 10 % of the packets to and from `port` dropped
        loss.clear()          # every rule the script added removed
    """

    SCRIPT = ROOT / "deploy" / "packet-loss" / "local.sh"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.SCRIPT), *args], capture_output=True, text=True, timeout=30)

    def unavailable(self) -> str | None:
        """Why packet loss cannot be made on this machine, or None when it can."""
        done = self._run("status")
        return None if done.returncode == 0 else (done.stderr.strip() or f"{self.SCRIPT} status exited {done.returncode}")

    def add(self, port: int, percent: float) -> None:
        done = self._run("add", str(port), str(percent))
        assert done.returncode == 0, done.stderr

    def clear(self) -> None:
        done = self._run("clear")
        assert done.returncode == 0, done.stderr


class TwoBrokers:
    """A cluster of two brokers (deploy/kafka/local.sh: node 1 broker and controller, node 2 a
    broker that joins it; internal topics, the group coordinator's among them, with two
    replicas), for faults that move a partition leader or a group's coordinator: stopping node 2
    moves what it led to node 1; starting it and electing the preferred leaders moves it back.

        cluster = TwoBrokers(tmp_path)
        cluster.start()
        group = cluster.group_on(2)        # a group id whose coordinator is node 2
        topics = cluster.topics()          # two replicas each
        cluster.stop(2); cluster.coordinator(group)  # -> 1
        cluster.start(2); cluster.prefer_leaders()   # -> 2 again
        cluster.stop()
    """

    def __init__(self, work: Path):
        ports, controller = (free_port(), free_port()), free_port()
        base = dict(os.environ, KAFKA_REPLICATION="2", KAFKA_HEAP=os.environ.get("KAFKA_HEAP", "384m"))
        self.env = {1: base | dict(KAFKA_PORT=str(ports[0]), KAFKA_CONTROLLER_PORT=str(controller),
                                   KAFKA_STATE_DIR=str(work / "node1")),
                    2: base | dict(KAFKA_PORT=str(ports[1]), KAFKA_NODE_ID="2", KAFKA_JOIN=f"127.0.0.1:{controller}",
                                   KAFKA_STATE_DIR=str(work / "node2"))}
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in ports)

    def _local(self, node: int, action: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(LOCAL_KAFKA), action], env=self.env[node], capture_output=True, text=True, timeout=300)

    def start(self, node: int | None = None) -> None:
        """Both nodes (node 2 joining node 1's cluster), or just `node` again."""
        for n in (1, 2) if node is None else (node,):
            if n == 2 and "KAFKA_CLUSTER_ID" not in self.env[2]:
                self.env[2]["KAFKA_CLUSTER_ID"] = self._local(1, "cluster-id").stdout.strip()
            done = self._local(n, "start")
            if done.returncode != 0:
                pytest.fail(f"could not start broker {n} of the cluster:\n{done.stderr}")

    def stop(self, node: int | None = None) -> None:
        """Stop `node` (a controlled shutdown: what it leads moves first), or both, node 2 first."""
        for n in (2, 1) if node is None else (node,):
            self._local(n, "stop")

    def admin(self) -> AdminClient:
        """One client for the cluster, kept (a dropped client fails its futures with _DESTROY)."""
        if getattr(self, "_admin", None) is None:
            self._admin = AdminClient(client(self.bootstrap))
        return self._admin

    def coordinator(self, group: str) -> int:
        """The id of the node that coordinates `group` now (asked again while the cluster answers
        NOT_COORDINATOR or "loading": its offsets topic being made, or a coordinator moving)."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + 60
        while True:
            admin = AdminClient(client(self.bootstrap))  # fresh: no coordinator cached from before a move
            try:
                return admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15).coordinator.id
            except (KafkaException, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def group_on(self, node: int) -> str:
        """A fresh group id whose coordinator is `node` (its __consumer_offsets partition is led there)."""
        for _ in range(64):
            group = f"g-coord-{uuid.uuid4().hex[:8]}"
            if self.coordinator(group) == node:
                return group
        raise AssertionError(f"no group id found whose coordinator is node {node}")

    def topics(self, partitions: int = 2) -> dict[str, str]:
        """Fresh input (`partitions`), scores, alerts and dead-letter topics, two replicas each."""
        names = {role: f"two-{role}-{uuid.uuid4().hex[:8]}" for role in ("in", "out", "alerts", "dlq")}
        futures = self.admin().create_topics([NewTopic(n, num_partitions=partitions if r == "in" else 1, replication_factor=2)
                                              for r, n in names.items()])
        for future in futures.values():
            future.result(timeout=30)
        return names

    def prefer_leaders(self, timeout_s: float = 60) -> None:
        """Once every replica is back in sync, elect each partition's preferred leader (Kafka
        does this by itself every 5 minutes): node 2 leads again what it led before its stop."""
        from confluent_kafka import ElectionType, KafkaException, TopicPartition

        admin = self.admin()

        lagging: list = []

        def in_sync() -> tuple:
            topics = admin.list_topics(timeout=10).topics
            lagging[:] = [(t, p) for t, meta in topics.items() for p, pm in meta.partitions.items()
                          if len(pm.isrs) < len(pm.replicas)]
            return () if lagging else (topics,)

        try:
            (topics,) = wait_until(in_sync, timeout_s, "every replica back in sync", interval_s=0.5)
        except AssertionError:
            raise AssertionError(f"replicas not back in sync within {timeout_s:g} s: {lagging[:5]}") from None
        partitions = [TopicPartition(t, p) for t, meta in topics.items() for p, pm in meta.partitions.items()
                      if pm.replicas and pm.leader != pm.replicas[0]]
        if partitions:
            try:
                admin.elect_leaders(ElectionType.PREFERRED, partitions).result(timeout=30)
            except KafkaException:  # some already led by their preferred replica: the others were elected
                pass
