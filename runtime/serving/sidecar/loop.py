"""The sidecar's loop: consume a batch, score it, deliver it; reload and stop between batches.

One batch, top to bottom (`Sidecar.run`, then `_take` and `_process`):

    models.maybe_reload()                    -> SIGHUP or --watch: a new bundle between batches
    _take()                                  -> what is queued, up to batch_size (adaptive: no
                                                wait for a full batch; --batch-wait-ms), less
                                                what a rebalance inside it took away
                                                (Checkpoint.settle)
    RawMode.score() (raw mode)               -> FeatureState: read the batch's fields, catch the
                                                terminal table up, compute the window features
    Pipeline.score_batch / score_decoded     -> results and rejections (decode, one ORT call, encode)
    Checkpoint.complete()                    -> the batch in flight: Delivery.finish flushes (its
                                                acknowledgements arrived while this batch was
                                                consumed and scored), then its offsets may be
                                                committed (at least once: only what the broker
                                                acknowledged), or one Kafka transaction with
                                                --exactly-once; a failure rewinds it and this
                                                batch together
    Delivery.send_results / dead_letter      -> scores topic (keyed like the input), alerts topic,
                                                dead-letter topic (original bytes + reason headers)
    Checkpoint.hand_over()                   -> this batch is now the one in flight
    Delivery.commit_due()                    -> delivered offsets, asynchronously when due
    RawMode.snapshot_if_due()                -> raw mode with --state-topic: when due, snapshots
                                                at the committed offsets

With --no-pipelining (and always with --exactly-once) a batch is completed before the next
is consumed. Offsets of delivered batches are committed asynchronously every
--commit-interval (0.1 s) or once --batch-size delivered messages wait, one commit at a
time, and synchronously on revoke (after the batch in flight is completed:
Checkpoint.revoke, called by Assignment.on_revoke) and at exit.

SIGTERM/SIGINT stop consuming, finish the batch in flight, flush, commit and exit 0, all
within --drain-timeout; what is consumed after the signal is not scored (its offsets are
not committed: the next owner reads it). A stop blocked past --drain-timeout + 2 s (a
broker or coordinator gone) ends the process with exit 4 (process.StopBound).
SIGHUP (or `watch`) reloads the bundle between batches (sidecar.models): the new one is
verified and loaded first, and the old one keeps serving if it fails.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from fraudscore.serving.metrics import HealthServer, SidecarMetrics
from fraudscore.serving.pipeline import BatchResult
from fraudscore.serving.sidecar.checkpoint import Checkpoint, InFlight
from fraudscore.serving.sidecar.clients import ClientHooks, build_clients, check_topics, kafka_log, quiet_repeats
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.delivery import Delivery
from fraudscore.serving.sidecar.models import Models
from fraudscore.serving.sidecar.process import OVERDUE_EXIT, Stop
from fraudscore.serving.sidecar.raw_mode import IDLE_CATCH_UP_S, PARTIAL_LOG_INTERVAL_S, RawMode
from fraudscore.serving.sidecar.rebalance import Assignment
from fraudscore.serving.sidecar.reporting import Throttled
from fraudscore.serving.sidecar.state import FeatureState
from fraudscore.serving.wire import MAX_KEY_BYTES

log = logging.getLogger(__name__)
CHALLENGER_LOG_INTERVAL_S = 60.0  # a failing challenger: one error at most this often

__all__ = ["Sidecar", "InFlight", "PARTIAL_LOG_INTERVAL_S", "IDLE_CATCH_UP_S"]  # the last two live in raw_mode now


class Sidecar:
    """`fraudscore run`: scores the input topic's batches until asked to stop.

        sidecar = Sidecar(SidecarConfig(bundle=Path("bundles/mlp"), bootstrap_servers="127.0.0.1:9092",
                                        input_topic="tx-in", output_topic="tx-scores", alerts_topic="tx-alerts",
                                        dlq_topic="tx-dlq", group_id="fraudscore"))
        install_signal_handlers(sidecar)
        exit_code = sidecar.run()

    Its parts: `models` (the pipeline and its reloads), `assignment` (the partitions owned,
    the rebalance callbacks, readiness), `checkpoint` (the batch in flight, what a revoke
    must finish), `delivery` (outputs and offset commits), `stop` (the stop's deadline and
    stage) and, in raw mode, `state` and `raw` (the feature state and the loop's steps
    around it).
    """

    def __init__(self, config: SidecarConfig):
        config.validate()
        self.config = config
        quiet_repeats()
        self.metrics = SidecarMetrics()
        self.models = Models(config, self.metrics)
        self.stop = Stop(config.drain_timeout_s)
        self.assignment = Assignment(config, self.metrics, self.stop, has_model=lambda: self.pipeline is not None)
        self.http: HealthServer | None = None
        self.consumer = self.producer = None
        self.watermarks = None  # the consumer lag's high watermarks, asked on the side (clients.WatermarkProbe)
        self.delivery: Delivery | None = None
        self.checkpoint: Checkpoint | None = None
        self.state: FeatureState | None = None  # raw mode: the online feature state
        self.raw: RawMode | None = None  # ... and the loop's steps around it
        self.pipelined = config.pipelining and not config.exactly_once
        self._challenger_failures = Throttled(CHALLENGER_LOG_INTERVAL_S)

    @property
    def pipeline(self):
        return self.models.pipeline

    @pipeline.setter
    def pipeline(self, pipeline) -> None:
        self.models.pipeline = pipeline

    @property
    def in_flight(self) -> InFlight | None:
        """The batch whose outputs were produced, not yet known to be acknowledged (Checkpoint)."""
        return self.checkpoint.in_flight if self.checkpoint is not None else None

    @property
    def spec(self):
        """The feature specification raw mode computes; None in feature mode."""
        return self.models.spec

    def ready(self) -> bool:
        return self.assignment.ready()

    def not_ready_because(self) -> str:
        return self.assignment.not_ready_because()

    # ------------------------------------------------------------------ set-up

    def _start_clients(self) -> None:
        hooks = ClientHooks(on_error=self._on_error, on_lag=self._on_lag,
                            on_delivery=lambda err, msg: self.delivery.on_delivery(err, msg),
                            on_commit=lambda err, partitions: self.delivery.on_commit(err, partitions))
        consumer, producer, self.watermarks = build_clients(self.config, hooks, self.assignment.owns)
        self._attach(consumer, producer)
        if self.spec is not None:
            self.state = FeatureState(self.config, self.spec, self.metrics)
            if self.state.snapshots is not None:
                self.state.snapshots.budget = self.stop.budget
            self.state.stopping = self.stop.asked
            self.raw = RawMode(self.config, self.state, self.metrics, self.checkpoint,
                               assignment=lambda: self.assignment.partitions, on_progress=self.assignment.update_ready)
            self.assignment.attach_state(self.state, self.raw)
            self.state.start()
        self.consumer.subscribe([self.config.input_topic], on_assign=self.assignment.on_assign,
                                on_revoke=self.assignment.on_revoke, on_lost=self.assignment.on_revoke)

    def _attach(self, consumer, producer) -> None:
        """The clients, and the delivery and checkpoint built on them."""
        self.consumer, self.producer = consumer, producer
        self.delivery = Delivery(self.config, consumer, producer)
        self.delivery.budget = self.stop.budget  # a stop's flushes and transactions wait only what is left
        self.checkpoint = Checkpoint(self.delivery, self.metrics)
        self.assignment.checkpoint = self.checkpoint

    def _on_error(self, err) -> None:
        self.metrics.consume_errors.inc()
        kafka_log.warning("%s", err.str())

    def _on_lag(self, topic: str, partition: str, lag: int) -> None:
        self.metrics.lag.labels(topic, partition).set(lag)

    # ------------------------------------------------------------------ signals

    def request_stop(self, *_args) -> None:
        if self.stop.ask() and self.state is not None:
            self.state.stopping = True  # a restore or terminal-table read in progress ends early

    def stop_signalled(self, at: float) -> None:
        """StopBound's thread: the first stop signal arrived at `at` (time.monotonic())."""
        self.stop.signalled(at)

    def stop_report(self) -> str:
        """What the stop was doing and had not finished (for StopBound's log line)."""
        left = self.checkpoint.report() if self.checkpoint is not None else "no batch in flight"
        queued = len(self.producer) if self.producer is not None else 0
        return f"{self.stop.stage}; {left}; {queued} outputs not acknowledged by the broker"

    def request_reload(self, *_args) -> None:
        self.models.reload_asked = True

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code (0 after a clean stop)."""
        c = self.config
        log.info("config: bootstrap %s, group %s, %s -> %s / %s / %s, batch %d, %s, kafka %s",
                 c.bootstrap_servers, c.group_id, c.input_topic, c.output_topic, c.alerts_topic, c.dlq_topic,
                 c.batch_size, "exactly-once" if c.exactly_once else "at-least-once", c.redacted_kafka())
        if c.plaintext_credentials:
            log.warning("security.protocol is SASL_PLAINTEXT: credentials and transactions cross the network "
                        "unencrypted; use SASL_SSL (and --require-tls to enforce it)")
        self.http = HealthServer(c.metrics_host, c.metrics_port, self.metrics.registry, self.ready, self.not_ready_because)
        log.info("metrics on http://%s:%d/metrics", c.metrics_host, self.http.port)
        try:
            check_topics(c, c.topics, stopping=lambda: self.stop.asked)
            if self.stop.asked:  # asked to stop while waiting for the broker: nothing was started
                return 0
            self._start_clients()
            self.stop.stage = "scoring"
            while not self.stop.asked:
                self.models.maybe_reload()
                messages = self._take()
                if self.stop.asked:
                    break  # consumed after the signal: not scored, not committed, read again by the next owner
                if self.raw is not None and not messages:
                    self.raw.catch_up_idle()
                if messages:
                    self._process(messages)
                self.delivery.commit_due()
                self.delivery.dead_letters.tick()
                if self.raw is not None:
                    self.raw.snapshot_if_due()
            log.info("stopping: batch in flight done, flushing")
        finally:
            self._shutdown()
        if self.stop.unfinished:
            log.error("the stop did not finish its work within --drain-timeout (%s); exiting %d. Nothing "
                      "unacknowledged was committed: the partitions' next owner reads it again",
                      "; ".join(self.stop.unfinished), OVERDUE_EXIT)
            return OVERDUE_EXIT
        return 0

    def _take(self) -> list:
        """The next batch: what is queued now, up to batch_size, without waiting for a full one.

        Nothing queued: the batch in flight is completed first (its commit does not wait for
        traffic), then one wait of up to poll_timeout_s for a first message. With
        batch_wait_ms, a batch that is not full waits that long for more."""
        c, consumer = self.config, self.consumer
        self.checkpoint.start_take()
        messages = consumer.consume(num_messages=c.batch_size, timeout=0)
        if not messages and self.checkpoint.in_flight is not None:
            self._complete()
            messages = consumer.consume(num_messages=c.batch_size, timeout=0)
        if not messages:
            first = consumer.poll(c.poll_timeout_s)
            messages = [first] if first is not None else []
        if messages and c.batch_wait_ms > 0 and len(messages) < c.batch_size:
            messages += consumer.consume(num_messages=c.batch_size - len(messages), timeout=c.batch_wait_ms / 1e3)
        elif len(messages) == 1 and c.batch_size > 1:
            messages += consumer.consume(num_messages=c.batch_size - 1, timeout=0)
        return self.checkpoint.settle(messages, self.assignment.partitions)

    def _process(self, messages: list) -> None:
        m, t0 = self.metrics, time.perf_counter()
        for msg in messages:
            if msg.error() is not None:
                m.consume_errors.inc()
                log.warning("consume error: %s", msg.error())
        everything = [msg for msg in messages if msg.error() is None]
        if not everything:
            return
        m.consumed.inc(len(everything))
        m.batch_size.observe(len(everything))
        good = [msg for msg in everything if len(msg.key() or b"") <= MAX_KEY_BYTES]
        long_keys = [msg for msg in everything if len(msg.key() or b"") > MAX_KEY_BYTES] if len(good) < len(everything) else []
        stamps = np.fromiter((msg.timestamp()[1] for msg in everything), np.int64, len(everything))
        if stamps.min() > 0:
            m.input_age_seconds.observe(max(0.0, time.time() - float(stamps.min()) / 1e3))
        pipeline = self.pipeline
        if self.state is None:
            result = pipeline.score_batch([msg.value() for msg in good])
        else:
            result = self.raw.score(good, everything, stamps, pipeline)
        if result is None:
            return  # read again once the terminal table has caught up
        scored = time.perf_counter()
        m.observe_scoring(result, scored - t0)
        if result.challenger_version is not None and result.challenger_error is not None:
            self._challenger_failed(result)

        if not self._complete(rewind_also=everything):
            return  # the batch in flight was not delivered: it and this one are read again

        delivery = self.delivery
        delivery.begin()
        delivery.send_results([good[i].key() for i in result.index.tolist()], result.payloads, result.alerts.tolist())
        rejected = [(good[r.index], r.reason, r.detail) for r in result.rejections]
        rejected += [(msg, "oversized_key", f"key is {len(msg.key())} bytes, limit {MAX_KEY_BYTES}") for msg in long_keys]
        for msg, reason, detail in rejected:
            delivery.dead_letter(msg, reason, detail, pipeline.model_version)
        m.stage_seconds.labels("produce").observe(time.perf_counter() - scored)
        self.checkpoint.hand_over(InFlight(everything, result, [reason for _, reason, _ in rejected], t0))
        if not self.pipelined:
            self._complete()

    def _complete(self, rewind_also: list = ()) -> bool:
        """Complete the batch in flight (Checkpoint.complete); True if delivered or none."""
        return self.checkpoint.complete(self.assignment.partitions, rewind_also)

    def _challenger_failed(self, result: BatchResult) -> None:
        """A batch's challenger call failed (its results carry no challenger; counted on delivery):
        an error at once, then at most one every CHALLENGER_LOG_INTERVAL_S with the count since."""
        count = self._challenger_failures.add(1)
        if count:
            log.error("challenger %s failed on %d batch(es) since the last report (their results carry no "
                      "challenger; the champion's are whole): %s", result.challenger_version, count,
                      result.challenger_error)

    def _shutdown(self) -> None:
        """Complete the batch in flight, flush, commit, snapshot, leave the group: each step
        within what is left of --drain-timeout (StopBound ends a step that cannot be bounded)."""
        self.stop.bound()  # after an error, not a signal: the same bound from now
        flight = self.checkpoint.in_flight if self.checkpoint is not None else None
        if flight is not None:
            self.stop.stage = "completing the batch in flight"
            if not self._complete():  # rewound: its outputs may have left the queue undelivered (or aborted)
                self.stop.unfinished.append(f"a batch of {len(flight.messages)} in flight not delivered")
        if self.producer is not None:
            self.stop.stage = "flushing outputs"
            left = self.producer.flush(self.stop.budget())
            if left:
                log.error("%d messages not delivered at shutdown; their inputs were not committed", left)
                self.stop.unfinished.append(f"{left} outputs not acknowledged")
        if self.watermarks is not None:
            self.watermarks.close()
        if self.consumer is not None:
            self.stop.stage = "committing delivered offsets"
            committed = self.delivery.commit_done()
            if self.raw is not None and self.assignment.partitions and self.stop.budget() > 0:
                self.stop.stage = "writing snapshots"
                self.raw.write_snapshots(sorted(p for _, p in self.assignment.partitions), committed)
            self.delivery.dead_letters.close()
            self.stop.stage = "leaving the consumer group"
            self.consumer.close()
        if self.state is not None:
            self.state.close()
        if self.http is not None:
            self.http.close()
        self.stop.stage = "stopped"
