"""`fraudscore run`: the Kafka sidecar. One batch, top to bottom:

    consume(batch_size, timeout)            -> up to batch_size messages
    Pipeline.run(values)                    -> results and rejections (decode, one ORT call, encode)
    produce results to the scores topic     (keyed like the input)
    produce alerts to the alerts topic      (results at or above the threshold)
    produce rejections to the dead-letter topic, original bytes + headers with the reason
        and the source topic/partition/offset
    flush, then commit the batch's offsets  (at least once: only what the broker acknowledged)

With `exactly_once`, the produce and the offsets of a batch go in one Kafka transaction
(send_offsets_to_transaction); a failed transaction is aborted and the batch re-read.

A delivery failure never commits: the batch's partitions are rewound to its first
offsets and it is processed again. A key longer than MAX_KEY_BYTES is rejected
(`oversized_key`), and a dead letter's value is cut to its first TRUNCATED_DLQ_BYTES when
it would not fit the dead-letter topic (header `fraudscore.truncated` = original length;
the source offset headers point at the full message), so no input can make a batch
undeliverable for ever. SIGTERM/SIGINT stop consuming, finish the batch in
flight, flush, commit and exit 0. SIGHUP (or `watch`) reloads the bundle between
batches: the new one is verified and loaded first, and the old one keeps serving if it
fails.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from fraudscore.serving.bundle import load_bundle
from fraudscore.errors import FraudscoreError, UsageError
from fraudscore.serving.drift import psi
from fraudscore.serving.metrics import HealthServer, SidecarMetrics
from fraudscore.serving.pipeline import Pipeline
from fraudscore.serving.scorer import Scorer

log = logging.getLogger("fraudscore.sidecar")
kafka_log = logging.getLogger("fraudscore.kafka")  # librdkafka's log lines and error callbacks

SECRET_MARKERS = ("password", "secret", "jaas", "key", "token", "credential")
MAX_KEY_BYTES = 4096
# Dead letters carry the original value when it fits under the producer's and the broker's
# default 1 MB message limits (with room for the headers); otherwise its first 64 KiB.
DLQ_MAX_BYTES = 900_000
TRUNCATED_DLQ_BYTES = 64 * 1024
TLS_PROTOCOLS = ("ssl", "sasl_ssl")


class RepeatFilter(logging.Filter):
    """Lets a kind of line (its text with the numbers blanked out) through once per
    `interval_s`, and says on the next one how many it held back. librdkafka reports every
    failed reconnect of every connection; a broker outage would otherwise write dozens of
    lines a second."""

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


_NUMBERS = re.compile(r"\d+")


class KafkaUnavailable(FraudscoreError):
    """The broker could not be reached, or a topic is missing, at start-up."""

    exit_code = 3


@dataclass(frozen=True)
class SidecarConfig:
    bundle: Path
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    alerts_topic: str
    dlq_topic: str
    group_id: str
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    batch_size: int = 4096
    poll_timeout_s: float = 0.005
    device: str = "cpu"
    threads: int = 1
    exactly_once: bool = False
    transactional_id: str = ""
    offset_reset: str = "earliest"
    wait: bool = False
    startup_timeout_s: float = 15.0
    drain_timeout_s: float = 30.0
    watch: bool = False
    watch_interval_s: float = 5.0
    max_message_bytes: int = 64 * 1024
    require_tls: bool = False
    kafka: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("bootstrap_servers", "input_topic", "output_topic", "alerts_topic", "dlq_topic", "group_id"):
            if not getattr(self, name):
                raise UsageError(f"--{name.replace('_', '-')} is required (flag, FRAUDSCORE_{name.upper()} or config file)")
        if self.offset_reset not in ("earliest", "latest"):
            raise UsageError("--offset-reset must be earliest or latest")
        if self.batch_size < 1 or self.threads < 1:
            raise UsageError("--batch-size and --threads must be positive")
        if len({self.input_topic, self.output_topic, self.alerts_topic, self.dlq_topic}) < 4:
            raise UsageError("input, output, alerts and dead-letter topics must be four different topics")
        protocol = self.kafka.get("security.protocol", "plaintext").lower()
        if self.require_tls:
            if protocol not in TLS_PROTOCOLS:
                raise UsageError(
                    f"--require-tls: security.protocol is {protocol!r}, which sends transactions (and any "
                    "credentials) in plaintext; refusing to start. Set -X security.protocol=SASL_SSL (or SSL) "
                    "and -X ssl.ca.location=CA.pem")
            if (self.kafka.get("enable.ssl.certificate.verification", "true").lower() in ("false", "0")
                    or self.kafka.get("ssl.endpoint.identification.algorithm", "https").lower() == "none"):
                raise UsageError("--require-tls: certificate or host name verification is switched off "
                                 "(enable.ssl.certificate.verification / ssl.endpoint.identification.algorithm); "
                                 "refusing a TLS connection that anyone in the middle could answer")

    @property
    def plaintext_credentials(self) -> bool:
        """SASL credentials configured over an unencrypted connection."""
        return self.kafka.get("security.protocol", "plaintext").lower() == "sasl_plaintext"

    def redacted_kafka(self) -> dict[str, str]:
        return {k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in self.kafka.items()}


class Sidecar:
    def __init__(self, config: SidecarConfig):
        config.validate()
        self.config = config
        if not any(isinstance(f, RepeatFilter) for f in kafka_log.filters):
            kafka_log.addFilter(RepeatFilter())
        self.metrics = SidecarMetrics()
        self.pipeline = self._load_pipeline()
        self._stop = False
        self._reload = False
        self._assignment: set[tuple[str, int]] = set()
        self._done: dict[tuple[str, int], object] = {}  # partition -> next offset, fully delivered
        self._failures: list = []  # delivery errors of the batch in flight
        self._dlq_limit = DLQ_MAX_BYTES  # lowered when the broker refuses a dead letter as too large
        self._watch_state = self._bundle_state()
        self._last_watch = time.monotonic()
        self.http: HealthServer | None = None
        self.consumer = None
        self.producer = None

    # ------------------------------------------------------------------ set-up

    def _load_pipeline(self) -> Pipeline:
        bundle = load_bundle(self.config.bundle)
        scorer = Scorer(bundle, device=self.config.device, intra_op_threads=self.config.threads)
        pipeline = Pipeline(bundle, scorer, self.config.max_message_bytes)
        self.metrics.set_model(bundle.manifest.model_version, bundle.manifest.model_sha256, bundle.manifest.model_kind)
        log.info("model %s (%s) on %s, threshold %.6g", bundle.manifest.model_version, bundle.manifest.model_kind,
                 scorer.provider, pipeline.threshold)
        return pipeline

    def _bundle_state(self) -> tuple:
        try:
            return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(self.config.bundle).iterdir()))
        except OSError:
            return ()

    def _common(self) -> dict:
        # librdkafka's own log lines go through Python logging (same format, same level filter).
        return {"bootstrap.servers": self.config.bootstrap_servers, "client.id": f"fraudscore-{socket.gethostname()}",
                "logger": kafka_log}

    def _error_cb(self, err) -> None:
        self.metrics.consume_errors.inc()
        kafka_log.warning("%s", err.str())

    def _stats_cb(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        for topic, data in stats.get("topics", {}).items():
            for partition, p in data.get("partitions", {}).items():
                if partition != "-1" and (topic, int(partition)) in self._assignment and p.get("consumer_lag", -1) >= 0:
                    self.metrics.lag.labels(topic, partition).set(p["consumer_lag"])

    def _check_topics(self) -> None:
        """Fail fast (or wait, if asked) when the broker is unreachable or a topic is missing."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient

        cfg = self._common() | self.config.kafka
        topics = [self.config.input_topic, self.config.output_topic, self.config.alerts_topic, self.config.dlq_topic]
        errors: list = []
        admin = AdminClient(cfg | {"error_cb": errors.append})
        said = 0.0
        while True:
            try:
                md = admin.list_topics(timeout=self.config.startup_timeout_s)
                missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
                if not missing:
                    return
                problem = f"topic(s) {', '.join(missing)} do not exist on {self.config.bootstrap_servers}; create them first"
            except KafkaException as exc:
                admin.poll(0.2)  # serves error_cb: an authentication or TLS failure says more than a timeout
                refused = [e for e in errors if e.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL)]
                errors.clear()
                if refused:
                    problem = f"Kafka at {self.config.bootstrap_servers} refused the connection: {refused[-1].str()}"
                else:
                    problem = (f"cannot reach Kafka at {self.config.bootstrap_servers} within "
                               f"{self.config.startup_timeout_s:g} s ({exc.args[0].str() if exc.args else exc})")
            if not self.config.wait or self._stop:
                raise KafkaUnavailable(problem + ("" if self.config.wait else "; or pass --wait to wait for it"))
            if time.monotonic() - said > 10:
                log.warning("waiting: %s", problem)
                said = time.monotonic()
            time.sleep(1.0)

    def _start_clients(self) -> None:
        from confluent_kafka import Consumer, Producer

        c = self.config
        consumer_cfg = self._common() | {
            "group.id": c.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": c.offset_reset,
            "isolation.level": "read_committed" if c.exactly_once else "read_uncommitted",
            "statistics.interval.ms": 5000,
            # Bounds the prefetched backlog held in memory when input arrives faster than it is
            # scored (librdkafka's default is 64 MiB); the rest waits in the broker, visible as lag.
            "queued.max.messages.kbytes": 16384,
            "stats_cb": self._stats_cb,
            "error_cb": self._error_cb,
            "fetch.wait.max.ms": 10,
            # A crashed sidecar's partitions move after 10 s instead of librdkafka's 45 s default.
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
        } | c.kafka
        producer_cfg = self._common() | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "error_cb": self._error_cb,
            # Only failed deliveries call back into Python: success is known from flush()
            # returning with nothing outstanding, which saves a callback per message.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        } | c.kafka
        if c.exactly_once:
            producer_cfg["transactional.id"] = c.transactional_id or f"fraudscore-{c.group_id}-{socket.gethostname()}"
        self.consumer = Consumer(consumer_cfg)
        self.producer = Producer(producer_cfg)
        if c.exactly_once:
            self.producer.init_transactions(c.startup_timeout_s)
        self.consumer.subscribe([c.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _on_assign(self, consumer, partitions) -> None:
        self._assignment |= {(p.topic, p.partition) for p in partitions}
        self._update_ready()
        log.info("assigned %s", sorted(p for _, p in self._assignment))

    def _on_revoke(self, consumer, partitions) -> None:
        # Every batch is delivered before the next consume() call, which is where this
        # callback runs; its asynchronous commit may still be in flight, so commit the
        # revoked partitions' offsets synchronously before giving them up.
        self._commit_done({(p.topic, p.partition) for p in partitions})
        for p in partitions:
            self._done.pop((p.topic, p.partition), None)
            self._assignment.discard((p.topic, p.partition))
            try:
                self.metrics.lag.remove(p.topic, str(p.partition))
            except KeyError:
                pass
        self._update_ready()
        log.info("revoked %s", sorted(p.partition for p in partitions))

    def _update_ready(self) -> None:
        self.metrics.assigned_partitions.set(len(self._assignment))
        self.metrics.ready.set(1 if self.ready() else 0)

    def ready(self) -> bool:
        return self.pipeline is not None and bool(self._assignment)

    # ------------------------------------------------------------------ the loop

    def request_stop(self, *_args) -> None:
        self._stop = True

    def request_reload(self, *_args) -> None:
        self._reload = True

    def run(self) -> int:
        c = self.config
        log.info("config: bootstrap %s, group %s, %s -> %s / %s / %s, batch %d, %s, kafka %s",
                 c.bootstrap_servers, c.group_id, c.input_topic, c.output_topic, c.alerts_topic, c.dlq_topic,
                 c.batch_size, "exactly-once" if c.exactly_once else "at-least-once", c.redacted_kafka())
        if c.plaintext_credentials:
            log.warning("security.protocol is SASL_PLAINTEXT: credentials and transactions cross the network "
                        "unencrypted; use SASL_SSL (and --require-tls to enforce it)")
        self.http = HealthServer(c.metrics_host, c.metrics_port, self.metrics.registry, self.ready)
        log.info("metrics on http://%s:%d/metrics", c.metrics_host, self.http.port)
        try:
            self._check_topics()
            self._start_clients()
            while not self._stop:
                self._maybe_reload()
                messages = self.consumer.consume(num_messages=c.batch_size, timeout=c.poll_timeout_s)
                if messages:
                    self._process(messages)
            log.info("stopping: batch in flight done, flushing")
            return 0
        finally:
            self._shutdown()

    def _commit_done(self, only: set | None = None) -> None:
        if self.consumer is None or self.config.exactly_once or not self._done:
            return
        offsets = [tp for key, tp in self._done.items() if only is None or key in only]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # nothing to commit, or the group is gone: logged, not fatal
                log.warning("commit of finished offsets failed: %s", exc)

    def _shutdown(self) -> None:
        if self.producer is not None:
            left = self.producer.flush(self.config.drain_timeout_s)
            if left:
                log.error("%d messages not delivered at shutdown; their inputs were not committed", left)
        if self.consumer is not None:
            self._commit_done()
            self.consumer.close()
        if self.http is not None:
            self.http.close()

    def _maybe_reload(self) -> None:
        if self.config.watch and time.monotonic() - self._last_watch >= self.config.watch_interval_s:
            self._last_watch = time.monotonic()
            state = self._bundle_state()
            if state != self._watch_state:
                self._watch_state = state
                self._reload = True
        if not self._reload:
            return
        self._reload = False
        try:
            new = self._load_pipeline()
        except Exception as exc:  # any failure keeps the old model serving
            self.metrics.reloads.labels("failure").inc()
            log.error("model reload failed, still serving %s: %s", self.pipeline.model_version, exc)
            return
        self.pipeline = new
        self.metrics.reloads.labels("success").inc()
        log.info("model reloaded: now serving %s", new.model_version)

    def _process(self, messages: list) -> None:
        from confluent_kafka import KafkaException

        c, m = self.config, self.metrics
        t0 = time.perf_counter()
        good = []
        for msg in messages:
            if msg.error() is not None:
                m.consume_errors.inc()
                log.warning("consume error: %s", msg.error())
            else:
                good.append(msg)
        if not good:
            return
        m.consumed.inc(len(good))
        m.batch_size.observe(len(good))
        everything = good
        long_keys = [msg for msg in good if len(msg.key() or b"") > MAX_KEY_BYTES]
        if long_keys:
            good = [msg for msg in good if len(msg.key() or b"") <= MAX_KEY_BYTES]
        pipeline = self.pipeline
        result = pipeline.run([msg.value() for msg in good])
        m.inference_seconds.observe(result.inference_seconds)

        failures = self._failures = []
        if c.exactly_once:
            self.producer.begin_transaction()
        send = self.producer.produce
        for pos, payload, alert in zip(result.index.tolist(), result.payloads, result.alerts.tolist()):
            key = good[pos].key()
            try:
                send(c.output_topic, payload, key)
            except (BufferError, KafkaException):
                self._produce(c.output_topic, payload, key, None)
            if alert:
                self._produce(c.alerts_topic, payload, key, None)
        rejected = [(good[r.index], r.reason, r.detail) for r in result.rejections]
        rejected += [(msg, "oversized_key", f"key is {len(msg.key())} bytes, limit {MAX_KEY_BYTES}") for msg in long_keys]
        for msg, reason, detail in rejected:
            self._dead_letter(msg, reason, detail, pipeline.model_version)

        offsets = self._next_offsets(everything)
        if c.exactly_once:
            ok = self._commit_transaction(offsets)
        else:
            left = self.producer.flush(c.drain_timeout_s)
            ok = not left and not failures
            if ok:
                # Everything in the batch is acknowledged; the commit itself may complete in the
                # background (offsets only move forward). Revoke and shutdown commit synchronously.
                self.consumer.commit(offsets=offsets, asynchronous=True)
                self._done.update({(tp.topic, tp.partition): tp for tp in offsets})
        if not ok:
            m.produce_errors.inc(max(1, len(failures)))
            log.error("batch of %d not fully delivered (%s); rewinding to reprocess it",
                      len(good), failures[0] if failures else "timeout")
            self._rewind(everything)
            return
        now_ms = time.time() * 1e3
        stamps = np.array([t for _, t in map(_timestamp, everything)], dtype=np.float64)
        m.end_to_end_seconds.observe_many(np.maximum(now_ms - stamps[stamps > 0], 0) / 1e3)
        m.scored.inc(len(result.index))
        m.alerts.inc(int(result.alerts.sum()))
        for _, reason, _ in rejected:
            m.dead_letters.labels(reason).inc()
        m.scores.observe_many(result.scores)
        self._observe_drift(pipeline, result)
        m.batch_seconds.observe(time.perf_counter() - t0)

    def _dead_letter(self, msg, reason: str, detail: str, model_version: str) -> None:
        """The original value and key, with the reason and where the message came from."""
        value, key = msg.value(), msg.key()
        headers = [
            ("fraudscore.reason", reason.encode()),
            ("fraudscore.detail", detail[:500].encode()),
            ("fraudscore.source.topic", msg.topic().encode()),
            ("fraudscore.source.partition", str(msg.partition()).encode()),
            ("fraudscore.source.offset", str(msg.offset()).encode()),
            ("fraudscore.model.version", model_version.encode()),
        ]
        if value is not None and len(value) > self._dlq_limit:
            headers.append(("fraudscore.truncated", str(len(value)).encode()))
            value = value[:TRUNCATED_DLQ_BYTES]
        if key is not None and len(key) > MAX_KEY_BYTES:
            headers.append(("fraudscore.key.truncated", str(len(key)).encode()))
            key = key[:MAX_KEY_BYTES]
        self._produce(self.config.dlq_topic, value, key, headers)

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failures.append(err)
            if err.code() == _MSG_SIZE_TOO_LARGE and msg.topic() == self.config.dlq_topic:
                # The dead-letter topic takes less than the input topic: from now on dead letters
                # carry a prefix of the value; the rewound batch then goes through.
                self._dlq_limit = TRUNCATED_DLQ_BYTES

    def _produce(self, topic: str, value: bytes | None, key, headers) -> None:
        from confluent_kafka import KafkaException

        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused locally (e.g. too large): the batch is rewound
                self._failures.append(exc.args[0])
                return

    def _next_offsets(self, messages: list) -> list:
        """The offset after the last message of each partition in the batch (one input topic)."""
        from confluent_kafka import TopicPartition

        partitions = np.array(list(map(_partition, messages)))
        offsets = np.array(list(map(_offset, messages)))
        out = []
        for p in np.unique(partitions).tolist():
            out.append(TopicPartition(self.config.input_topic, p, int(offsets[partitions == p].max()) + 1))
        return out

    def _rewind(self, messages: list) -> None:
        from confluent_kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            first[key] = min(first.get(key, msg.offset()), msg.offset())
        for (t, p), o in first.items():
            if (t, p) in self._assignment:
                self.consumer.seek(TopicPartition(t, p, o))

    def _commit_transaction(self, offsets: list) -> bool:
        from confluent_kafka import KafkaException

        try:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), self.config.drain_timeout_s)
            self.producer.commit_transaction(self.config.drain_timeout_s)
            return True
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self.producer.abort_transaction(self.config.drain_timeout_s)
                return False
            if error.retriable():
                try:
                    self.producer.commit_transaction(self.config.drain_timeout_s)
                    return True
                except KafkaException:
                    self.producer.abort_transaction(self.config.drain_timeout_s)
                    return False
            raise FraudscoreError(f"fatal transaction error (fenced by a newer instance?): {error.str()}") from None

    def _observe_drift(self, pipeline: Pipeline, result) -> None:
        """PSI of this batch against the training fingerprint, for batches big enough to say anything."""
        if len(result.index) < 500:
            return
        for j, name, shares, edges in pipeline.drift_baselines:
            self.metrics.feature_psi.labels(name).set(psi(shares, result.matrix[:, j], edges))


_MSG_SIZE_TOO_LARGE = 10  # confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, without importing it at start-up


def _timestamp(msg) -> tuple[int, int]:
    return msg.timestamp()


def _partition(msg) -> int:
    return msg.partition()


def _offset(msg) -> int:
    return msg.offset()


def install_signal_handlers(sidecar: Sidecar) -> None:
    import faulthandler

    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack on stderr, for a stuck process
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGTERM, sidecar.request_stop)
    signal.signal(signal.SIGINT, sidecar.request_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, sidecar.request_reload)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
