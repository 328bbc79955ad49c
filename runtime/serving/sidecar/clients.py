"""The sidecar's Kafka clients: their configurations and callbacks, the start-up checks,
and how librdkafka's own complaints reach the log.

    check_topics(config, config.topics, stopping=lambda: False)   # exit 3 early, or wait
    consumer, producer, probe = build_clients(config, hooks, assigned)
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from fraudscore.errors import FraudscoreError
from fraudscore.serving.kafka import OFFSET_INVALID
from fraudscore.serving.sidecar.config import SidecarConfig

log = logging.getLogger(__name__)
kafka_log = logging.getLogger("fraudscore.kafka")  # librdkafka's log lines and error callbacks

_NUMBERS = re.compile(r"\d+")


class KafkaUnavailable(FraudscoreError):
    """The broker could not be reached, or a topic is missing or could not be read (exit 3)."""

    exit_code = 3


class RepeatFilter(logging.Filter):
    """Lets a kind of line (its text with the numbers blanked out) through once per
    `interval_s`, and says on the next one how many it held back. librdkafka reports every
    failed reconnect of every connection; a broker outage would otherwise write dozens of
    lines a second.

        logging.getLogger("fraudscore.kafka").addFilter(RepeatFilter(10.0))
    """

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[tuple, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = time.monotonic()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[kind] = [now, 0]
        if seen is not None and seen[1]:
            record.msg, record.args = f"{record.getMessage()} [{seen[1]} similar held back]", ()
        return True


class ExpectedAtStartup(logging.Filter):
    """Lowers to INFO, and explains, what librdkafka warns about while a broker that started
    moments ago still loads its group and transaction coordinators ("Coordinator load in
    progress": librdkafka retries, and the sidecar waits). Only in the first `window_s` after
    the filter is installed; later the same line is a WARNING again, since a coordinator
    that stays unavailable is a broker problem.

        logging.getLogger("fraudscore.kafka").addFilter(ExpectedAtStartup(60.0))
    """

    EXPECTED = ("Coordinator load in progress",)
    WHY = "expected while a freshly started broker loads its coordinators; librdkafka retries"

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self.until = clock() + window_s

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and self.clock() < self.until:
            text = record.getMessage()
            if any(e in text for e in self.EXPECTED):
                record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
                record.msg, record.args = f"{text} ({self.WHY})", ()
                return logging.getLogger(record.name).isEnabledFor(logging.INFO)  # --log-level warning hides it
        return True


def quiet_repeats() -> None:
    """Install the RepeatFilter and ExpectedAtStartup on librdkafka's logger once per process."""
    if not any(isinstance(f, ExpectedAtStartup) for f in kafka_log.filters):
        kafka_log.addFilter(ExpectedAtStartup())  # first: a lowered line is not counted as a warning repeat
    if not any(isinstance(f, RepeatFilter) for f in kafka_log.filters):
        kafka_log.addFilter(RepeatFilter())


def common_config(config: SidecarConfig) -> dict:
    """Settings every client shares; librdkafka's own log lines go through Python logging."""
    return {"bootstrap.servers": config.bootstrap_servers, "client.id": f"fraudscore-{socket.gethostname()}",
            "logger": kafka_log}


@dataclass(frozen=True)
class ClientHooks:
    """The sidecar's callbacks, called from inside librdkafka's poll/consume/flush."""

    on_error: Callable  # (KafkaError) -> None
    on_lag: Callable  # (topic, partition, lag) -> None
    on_delivery: Callable  # (KafkaError | None, Message) -> None
    on_commit: Callable = lambda err, partitions: None  # (KafkaError | None, [TopicPartition]) -> None


class WatermarkProbe:
    """The assigned partitions' high watermarks (last stable offsets with exactly-once), asked every
    `interval_s` by an admin client of its own, in a thread.

    librdkafka's `consumer_lag` knows the high watermark only from the consumer's own fetch
    responses. On a slow link the next response is still on its way, so the lag it reports stays
    near 0 while the real lag grows (a 10 kB/s link: 0 against 7,700 and rising,
    tests/kafka/test_network_faults.py). The probe's small ListOffsets requests go on connections of
    their own, not queued behind a fetch (on a link that is slow for every connection they still
    share its bandwidth, but a few hundred bytes each 5 s), and the stats report the lag from them
    (`consumer_lag`).

        probe = WatermarkProbe(admin_config, read_committed=False).start()
        probe.watch([("transactions", 0)]); probe.high("transactions", 0)  # None until answered
        probe.close()
    """

    def __init__(self, admin_config: dict, read_committed: bool, interval_s: float = 5.0):
        self._config, self._read_committed, self.interval_s = admin_config, read_committed, interval_s
        self._watched: frozenset[tuple[str, int]] = frozenset()
        self._high: dict[tuple[str, int], int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fraudscore-watermarks", daemon=True)

    def start(self) -> WatermarkProbe:
        self._thread.start()
        return self

    def watch(self, partitions: Iterable[tuple[str, int]]) -> None:
        """The partitions to ask about from now on (the others are forgotten)."""
        self._watched = frozenset(partitions)

    def high(self, topic: str, partition: int) -> int | None:
        return self._high.get((topic, partition))

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        admin = AdminClient(self._config)
        level = IsolationLevel.READ_COMMITTED if self._read_committed else IsolationLevel.READ_UNCOMMITTED
        warned = 0.0
        while not self._done.wait(self.interval_s):
            admin.poll(0)  # serves the client's log and error callbacks, which queue up otherwise
            watched = self._watched
            self._high = {key: value for key, value in self._high.items() if key in watched}
            if not watched:
                continue
            try:
                futures = admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in watched},
                                             isolation_level=level, request_timeout=self.interval_s)
                for tp, future in futures.items():
                    try:
                        self._high[(tp.topic, tp.partition)] = future.result().offset
                    except KafkaException:  # unanswered (broker away): keep the last known one
                        pass
            except Exception as exc:  # noqa: BLE001 - never let the thread die: the lag would read 0 again
                if time.monotonic() - warned > 60:
                    log.warning("consumer lag: high watermarks not asked (%s: %s); librdkafka's own figure stands",
                                type(exc).__name__, exc)
                    warned = time.monotonic()


def consumer_lag(p: dict, high: int | None, exactly_once: bool = False) -> int:
    """A partition's lag from its librdkafka statistics and a high watermark asked on the side:
    `high` less the next offset the consumer hands to the application (the committed one before
    the first message), or librdkafka's `consumer_lag` (end less committed offset) when that is
    larger; -1 when neither is known. With exactly-once the offsets are committed inside
    transactions, which the consumer's statistics never see (their committed offset stays where
    the assignment found it, and librdkafka's figure only grows): `high` alone counts there.

        >>> consumer_lag({"consumer_lag": 3, "committed_offset": 10, "app_offset": 12}, 40)
        28
        >>> consumer_lag({"consumer_lag": 900, "committed_offset": 10, "app_offset": 12}, 40, exactly_once=True)
        28
        >>> consumer_lag({"consumer_lag": -1, "committed_offset": -1001, "app_offset": -1001}, 40)
        -1
    """
    own = -1 if exactly_once else p.get("consumer_lag", -1)
    position = p.get("app_offset", OFFSET_INVALID)
    if position < 0:
        position = p.get("committed_offset", OFFSET_INVALID)
    if high is not None and high >= 0 and position >= 0:
        return max(own, high - position, 0)
    return own


def consumer_config(config: SidecarConfig, hooks: ClientHooks, assigned: Callable[[str, int], bool],
                    probe: WatermarkProbe | None = None) -> dict:
    """The group consumer: manual offset store and commits, batches from `consume()`; with a
    `probe`, the lag it reports also counts the probe's high watermarks (`consumer_lag`)."""

    def stats(stats_json: str) -> None:
        watched = []
        for topic, data in orjson.loads(stats_json).get("topics", {}).items():
            for partition, p in data.get("partitions", {}).items():
                if partition == "-1" or not assigned(topic, int(partition)):
                    continue
                watched.append((topic, int(partition)))
                lag = consumer_lag(p, None if probe is None else probe.high(topic, int(partition)), config.exactly_once)
                if lag >= 0:
                    hooks.on_lag(topic, partition, lag)
        if probe is not None:
            probe.watch(watched)

    return common_config(config) | {
        "group.id": config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": config.offset_reset,
        "isolation.level": "read_committed" if config.exactly_once else "read_uncommitted",
        "statistics.interval.ms": 5000,
        # Bounds the prefetched backlog held in memory when input arrives faster than it is
        # scored (librdkafka's default is 64 MiB); the rest waits in the broker, visible as lag.
        "queued.max.messages.kbytes": 16384,
        "stats_cb": stats,
        "error_cb": hooks.on_error,
        "on_commit": hooks.on_commit,
        "fetch.wait.max.ms": 10,
        # A crashed sidecar's partitions move after 10 s instead of librdkafka's 45 s default.
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 2000,
        "partition.assignment.strategy": config.assignment_strategy,
    } | ({"group.instance.id": config.group_instance_id} if config.group_instance_id else {}) | config.kafka


def producer_config(config: SidecarConfig, hooks: ClientHooks) -> dict:
    """The idempotent producer of results, alerts and dead letters (transactional with exactly-once)."""
    out = common_config(config) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "error_cb": hooks.on_error,
        # Only failed deliveries call back into Python: success is known from flush()
        # returning with nothing outstanding, which saves a callback per message.
        "delivery.report.only.error": True,
        "on_delivery": hooks.on_delivery,
    } | config.kafka
    if config.exactly_once:
        out["transactional.id"] = config.transactional_id or default_transactional_id(config)
    return out


def default_transactional_id(config: SidecarConfig) -> str:
    """transactional.id when --transactional-id is not given; `--workers` appends -w0, -w1, ..."""
    return f"fraudscore-{config.group_id}-{socket.gethostname()}"


def build_clients(config: SidecarConfig, hooks: ClientHooks, assigned: Callable[[str, int], bool]):
    """(consumer, producer, probe): the producer's transactions initialised in exactly-once mode,
    the consumer's lag completed by a started `WatermarkProbe` (close it after the consumer)."""
    from confluent_kafka import Consumer, Producer

    probe = WatermarkProbe(common_config(config) | config.kafka | {"error_cb": lambda err: None},
                           read_committed=config.exactly_once)
    consumer = Consumer(consumer_config(config, hooks, assigned, probe))
    producer = Producer(producer_config(config, hooks))
    if config.exactly_once:
        producer.init_transactions(config.startup_timeout_s)
    return consumer, producer, probe.start()


def connection_problem(admin, errors: list, exc: Exception, bootstrap: str, timeout_s: float) -> tuple[bool, str]:
    """(refused, message) for a request that failed: the credentials or certificate refused
    (from `errors`, the client's error_cb list, which this empties), or the broker not reached."""
    from confluent_kafka import KafkaError

    admin.poll(0.2)  # serves error_cb: an authentication or TLS failure says more than a timeout
    refused = [e for e in errors if e.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL)]
    errors.clear()
    if refused:
        return True, f"Kafka at {bootstrap} refused the connection: {refused[-1].str()}"
    detail = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    return False, f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s ({detail})"


def check_topics(config: SidecarConfig, topics: Iterable[str], stopping: Callable[[], bool]) -> None:
    """Fail fast (or wait, with `config.wait`) when the broker is unreachable or a topic is missing.
    Returns early, without a verdict, once `stopping()` is true: the broker is asked in slices
    (1 s, then doubling, within --startup-timeout), so a stop during start-up is not held up
    by the whole timeout, and a cluster whose metadata takes seconds to answer still does."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    topics = list(topics)
    errors: list = []
    admin = AdminClient(common_config(config) | config.kafka | {"error_cb": errors.append})
    said = 0.0
    deadline = time.monotonic() + config.startup_timeout_s
    slice_s = 1.0
    while True:
        if stopping():
            return
        asked = time.monotonic()
        try:
            md = admin.list_topics(timeout=min(slice_s, max(0.05, deadline - asked)))
            missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
            if not missing:
                return
            problem = (f"topic(s) {', '.join(missing)} do not exist on {config.bootstrap_servers}; create them with "
                       "`fraudscore topics create` and the same settings (flags, FRAUDSCORE_* or --config)")
        except KafkaException as exc:
            if time.monotonic() < deadline:
                # Not answered within this slice: ask again, longer, until --startup-timeout; an
                # instant failure (connection refused) waits a moment rather than spinning.
                slice_s *= 2
                time.sleep(max(0.0, min(0.2 - (time.monotonic() - asked), deadline - time.monotonic())))
                continue
            _, problem = connection_problem(admin, errors, exc, config.bootstrap_servers, config.startup_timeout_s)
        if stopping():
            return
        if not config.wait:
            raise KafkaUnavailable(problem + "; or pass --wait to wait for it")
        if time.monotonic() - said > 10:
            log.warning("waiting: %s", problem)
            said = time.monotonic()
        time.sleep(1.0)
        deadline, slice_s = time.monotonic() + config.startup_timeout_s, 1.0
