"""The sidecar's loop: consume a batch, score it, deliver it; reload and stop between batches.

One batch, top to bottom (`Sidecar.run`):

    _take()                                  -> what is queued, up to batch_size (adaptive:
                                                no wait for a full batch; --batch-wait-ms)
    Pipeline.score_batch(values)             -> results and rejections (decode, one ORT call, encode)
    _complete() of the batch in flight       -> Delivery.finish: flush (its acknowledgements
                                                arrived while this batch was consumed and
                                                scored), then its offsets may be committed (at
                                                least once: only what the broker acknowledged), or
                                                one Kafka transaction with --exactly-once; a
                                                failure rewinds it and this batch together
    Delivery.send_results / dead_letter      -> scores topic (keyed like the input), alerts topic,
                                                dead-letter topic (original bytes + reason headers);
                                                this batch is now the one in flight

With --no-pipelining (and always with --exactly-once) a batch is completed before the next
is consumed. Offsets of delivered batches are committed asynchronously every
--commit-interval (0.1 s) or once --batch-size delivered messages wait, one commit at a
time, and synchronously on revoke (after the batch in flight is completed) and at exit.

SIGTERM/SIGINT stop consuming, finish the batch in flight, flush, commit and exit 0, all
within --drain-timeout; what is consumed after the signal is not scored (its offsets are
not committed: the next owner reads it). A stop blocked past --drain-timeout + 2 s (a
broker or coordinator gone) ends the process with exit 4 (process.StopBound).
SIGHUP (or `watch`) reloads the bundle between batches: the new one is verified and
loaded first, and the old one keeps serving if it fails.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.metrics import HealthServer, SidecarMetrics
from fraudscore.serving.pipeline import BatchResult, Challenger, Pipeline, load_challenger
from fraudscore.serving.scorer import Scorer
from fraudscore.serving.sidecar.clients import ClientHooks, build_clients, check_topics, kafka_log, quiet_repeats
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.delivery import Delivery
from fraudscore.serving.sidecar.process import OVERDUE_EXIT
from fraudscore.serving.sidecar.state import FeatureState, input_spec
from fraudscore.serving.wire import MAX_KEY_BYTES

log = logging.getLogger(__name__)
PARTIAL_LOG_INTERVAL_S = 300.0  # results on partial state: one warning at most this often
CHALLENGER_LOG_INTERVAL_S = 60.0  # a failing challenger: one error at most this often
IDLE_CATCH_UP_S = 1.0


@dataclass
class InFlight:
    """A batch whose outputs were produced, not yet known to be acknowledged."""

    messages: list  # every consumed message of the batch: its offsets, and what a rewind reads again
    result: object  # the pipeline's BatchResult
    reasons: list  # dead-letter reasons
    started: float  # time.perf_counter() when the batch was taken


class Sidecar:
    """`fraudscore run`: scores the input topic's batches until asked to stop.

        sidecar = Sidecar(SidecarConfig(bundle=Path("bundles/mlp"), bootstrap_servers="127.0.0.1:9092",
                                        input_topic="tx-in", output_topic="tx-scores", alerts_topic="tx-alerts",
                                        dlq_topic="tx-dlq", group_id="fraudscore"))
        install_signal_handlers(sidecar)
        exit_code = sidecar.run()
    """

    def __init__(self, config: SidecarConfig):
        config.validate()
        self.config = config
        quiet_repeats()
        self.metrics = SidecarMetrics()
        self.spec = None  # the feature specification raw mode computes; None in feature mode
        self.pipeline = self._load_pipeline()
        self._stop = False
        self._stop_deadline: float | None = None  # time.monotonic() by which the stop must be done
        self._stage = "starting"  # what the stop is doing, for StopBound's report
        self._unfinished: list[str] = []  # what the stop left undone (exit OVERDUE_EXIT): outputs not acknowledged
        self._reload = False
        self._assignment: set[tuple[str, int]] = set()
        self._gaps_reported: set[tuple[str, int, int]] = set()  # (topic, partition, committed offset) logged once
        self._was_ready = False
        self._last_catch_up = 0.0
        self._watch_state = self._bundle_state()
        self._last_watch = time.monotonic()
        self.http: HealthServer | None = None
        self.consumer = None
        self.producer = None
        self.watermarks = None  # the consumer lag's high watermarks, asked on the side (clients.WatermarkProbe)
        self.delivery: Delivery | None = None
        self.state: FeatureState | None = None
        self.in_flight: InFlight | None = None
        self._completing: InFlight | None = None  # the batch finish() is waiting on (stop_report)
        self._stale: list | None = None  # a batch in flight failed inside a rebalance: rewind what comes next too
        self._revoked_in_take: set = set()  # partitions revoked during the current _take()
        self.pipelined = config.pipelining and not config.exactly_once
        self._score_from_s = config.score_from_s  # raw mode: results only from this event time on
        self._backfill_logged = self._scoring_logged = False
        self._backfilled = 0
        self._partial_since, self._partial_logged = 0, -float("inf")  # _partial_report
        self._challenger_failed_since, self._challenger_logged = 0, -float("inf")  # _challenger_failed

    # ------------------------------------------------------------------ set-up

    def _load_pipeline(self, serving: Pipeline | None = None) -> Pipeline:
        """The champion (--bundle) and its challenger (--challenger), at start (`serving` None: any
        failure is raised) or on a reload (the champion's failure is raised and the old pipeline
        kept; the challenger's is counted and logged, and the one `serving` has stays if it still
        fits the new champion)."""
        bundle = load_bundle(self.config.bundle)
        scorer = Scorer(bundle, device=self.config.device, intra_op_threads=self.config.threads)
        self.spec = input_spec(self.config, bundle.manifest, self.spec)
        challenger = self._load_challenger(bundle.manifest, serving)
        pipeline = Pipeline(bundle.manifest, scorer, self.config.max_message_bytes, challenger=challenger)
        self.metrics.set_model(bundle.manifest)
        self.metrics.set_challenger(*((None, None) if challenger is None else (challenger.version, challenger.validation)))
        log.info("model %s (%s) on %s, threshold %.6g%s", bundle.manifest.model_version, bundle.manifest.model_kind,
                 scorer.provider, pipeline.threshold,
                 "" if challenger is None else f"; shadow challenger {challenger.version}, threshold {challenger.threshold:.6g}")
        return pipeline

    def _load_challenger(self, champion, serving: Pipeline | None) -> Challenger | None:
        c = self.config
        if not c.challenger:
            return None
        if serving is None:
            return load_challenger(c.challenger, champion, c.device, c.threads)
        try:
            return load_challenger(c.challenger, champion, c.device, c.threads)
        except Exception as exc:  # whatever the bundle's failure, the champion keeps serving
            previous = serving.challenger
            kept = previous if previous is not None and not previous.mismatch(champion) else None
            self.metrics.challenger_failures.labels(previous.version if previous else "none", "load").inc()
            log.error("challenger reload failed, %s: %s",
                      f"still shadowing with {kept.version}" if kept else "no challenger until the next reload", exc)
            return kept

    def _bundle_state(self) -> tuple:
        """What --watch compares: where the bundle and the challenger resolve to (a link moved to
        another bundle is a change), and their files."""
        state = []
        for root in (self.config.bundle, *((self.config.challenger,) if self.config.challenger else ())):
            try:
                state.append((str(Path(root).resolve()), None, None))
                state += [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(root).iterdir())]
            except OSError:
                state.append((str(root), None, None))
        return tuple(state)

    def _start_clients(self) -> None:
        hooks = ClientHooks(on_error=self._on_error, on_lag=self._on_lag,
                            on_delivery=lambda err, msg: self.delivery.on_delivery(err, msg),
                            on_commit=lambda err, partitions: self.delivery.on_commit(err, partitions))
        self.consumer, self.producer, self.watermarks = build_clients(self.config, hooks,
                                                                      lambda t, p: (t, p) in self._assignment)
        self.delivery = self._make_delivery()
        if self.spec is not None:
            self.state = FeatureState(self.config, self.spec, self.metrics)
            if self.state.snapshots is not None:
                self.state.snapshots.budget = self._stop_budget
            self.state.stopping = self._stop
            self.state.start()
        self.consumer.subscribe([self.config.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _make_delivery(self) -> Delivery:
        delivery = Delivery(self.config, self.consumer, self.producer)
        delivery.budget = self._stop_budget  # a stop's flushes and transactions wait only what is left
        return delivery

    def _on_error(self, err) -> None:
        self.metrics.consume_errors.inc()
        kafka_log.warning("%s", err.str())

    def _on_lag(self, topic: str, partition: str, lag: int) -> None:
        self.metrics.lag.labels(topic, partition).set(lag)

    def _on_assign(self, consumer, partitions) -> None:
        if self._stop and self.state is not None:
            # Stopping (a rebalance answered inside the last consume() or close()): nothing more
            # is scored here, so their windows are not rebuilt only to be given up again.
            self._assignment |= {(p.topic, p.partition) for p in partitions}
            log.info("assigned %s while stopping: not restored", sorted(p.partition for p in partitions))
            return
        if not partitions:  # an incremental (cooperative) round that gave this member nothing new
            self._update_ready()
            return
        if self.state is not None:  # not ready from the first moment these partitions are ours
            self.state.restoring |= {p.partition for p in partitions}
        self._assignment |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s (now %s)", sorted(p.partition for p in partitions), sorted(p for _, p in self._assignment))
        self._retention_gaps(consumer, partitions)
        if self.state is not None and partitions:
            # Before any message of these partitions is scored: their customer windows come
            # back from the input topic, up to the committed offsets (not ready meanwhile).
            self.metrics.restoring.set(1)
            self._update_ready()
            self.state.restore(consumer, [p.partition for p in partitions])
            self.metrics.restoring.set(0)
            self.state.report(self.metrics)
        self._update_ready()

    def _retention_gaps(self, consumer, partitions) -> None:
        """Committed offsets below their partition's first retained offset (retention passed while
        the group was down): the messages in between are gone and are never scored. Checked when a
        partition is assigned; counted in fraudscore_input_skipped_messages_total and logged, with
        what the consumer does next (--offset-reset earliest resumes at the first retained message,
        latest at the end, and the retained ones passed over are counted too). In at-least-once
        mode the first retained offset is then committed, so the gap is reported once, not again at
        every assignment; each process also reports a (partition, offset) only once."""
        from confluent_kafka import KafkaException, TopicPartition

        if self._stop:
            return
        deadline = time.monotonic() + min(10.0, self.config.startup_timeout_s)
        left = lambda: max(0.1, min(5.0, deadline - time.monotonic()))  # noqa: E731
        try:
            committed = consumer.committed([TopicPartition(p.topic, p.partition) for p in partitions], timeout=left())
        except KafkaException as exc:
            log.warning("committed offsets of %s unavailable (%s): a retention gap would go unreported",
                        sorted(p.partition for p in partitions), exc)
            return
        for tp in committed:
            if tp.error is not None or tp.offset < 0 or (tp.topic, tp.partition, tp.offset) in self._gaps_reported:
                continue  # no commit yet: --offset-reset decides, as documented
            if time.monotonic() >= deadline:
                log.warning("retention check of partition %d skipped: out of time", tp.partition)
                continue
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=left(),
                                                           cached=False)
            except KafkaException as exc:
                log.warning("partition %d: watermarks unavailable (%s): a retention gap would go unreported",
                            tp.partition, exc)
                continue
            if tp.offset >= low:
                continue
            self._gaps_reported.add((tp.topic, tp.partition, tp.offset))
            self.metrics.skipped.labels(str(tp.partition), "retention").inc(low - tp.offset)
            latest = self.config.offset_reset == "latest"
            if latest:
                self.metrics.skipped.labels(str(tp.partition), "reset_latest").inc(max(0, high - low))
            log.error("partition %d of %s: the group's committed offset %d is below the first retained offset %d: %d "
                      "messages were deleted by retention before any member read them and will never be scored; %s. "
                      "Keep the input's retention longer than the longest outage (docs/operations.md, "
                      "FraudscoreInputSkipped)", tp.partition, tp.topic, tp.offset, low, low - tp.offset,
                      f"--offset-reset latest resumes at the end, passing over the {high - low} retained ones too"
                      if latest else "scoring resumes at the first retained message")
            if not self.config.exactly_once:
                resume = high if latest else low
                try:
                    consumer.commit(offsets=[TopicPartition(tp.topic, tp.partition, resume)], asynchronous=False)
                except KafkaException as exc:
                    log.warning("partition %d: could not commit the resume offset %d (%s); the gap may be reported "
                                "again by the next owner", tp.partition, resume, exc)

    def _on_revoke(self, consumer, partitions) -> None:
        # Runs inside consume()/poll(). The batch in flight is completed first; the delivered
        # offsets of the revoked partitions (asynchronous commits may be pending, or not yet
        # due) are then committed synchronously before the partitions are given up.
        if not partitions:  # an incremental (cooperative) round that took nothing from this member
            return
        revoked = {(p.topic, p.partition) for p in partitions}
        self._revoked_in_take |= revoked
        if self.in_flight is not None:
            # Its outputs must be acknowledged (and its offsets committed) before the partitions go.
            flight = self.in_flight
            if not self._complete(assignment=self._assignment - revoked):
                self._stale = flight.messages  # what this consume() returns came after it: read again too
        committed = self.delivery.commit_done(revoked)
        if self.state is not None and self._stop_budget() > 0:
            # Their next owner (maybe this instance again) restores from here, not from the start
            # (skipped when a stop has spent its budget: the next owner restores from an older
            # snapshot and replays the input after it).
            self._write_snapshots(sorted(p for _, p in revoked), committed)
        self.delivery.forget(revoked)
        self._assignment -= revoked
        if self.state is not None:
            self.state.revoke([p for _, p in revoked])
        for topic, partition in revoked:
            try:
                self.metrics.lag.remove(topic, str(partition))
            except KeyError:
                pass
        self._update_ready()
        log.info("revoked %s (now %s)", sorted(p for _, p in revoked), sorted(p for _, p in self._assignment))

    def _update_ready(self) -> None:
        ready = self.ready()
        if ready and self.state is not None and not self._was_ready:
            log.info("ready: feature state restored")
        self._was_ready = ready
        self.metrics.assigned_partitions.set(len(self._assignment))
        self.metrics.ready.set(1 if ready else 0)

    def ready(self) -> bool:
        """Serving: a model loaded, at least one partition assigned, and (raw mode) feature state
        restored; with --require-full-state, also covering what the windows reach back."""
        return not self.not_ready_because()

    def not_ready_because(self) -> str:
        """Why the sidecar is not ready ("" when it is): what /readyz says with its 503."""
        if self.pipeline is None:
            return "no model loaded"
        if not self._assignment:
            return "no partition assigned yet"
        if self.state is None:
            return ""
        if not self.state.ready():
            restoring = sorted(self.state.restoring)
            return (f"restoring the feature state of partitions {restoring}" if restoring
                    else "the terminal table is reading the input and labels topics")
        if self.config.require_full_state:
            # tuple() copies the set in one step: /readyz's thread must not iterate it while a
            # rebalance on the main thread changes it.
            return self.state.short_coverage(sorted(p for _, p in tuple(self._assignment)))
        return ""

    # ------------------------------------------------------------------ the loop

    def request_stop(self, *_args) -> None:
        if not self._stop:
            self._stop = True
            if self._stop_deadline is None:  # StopBound usually set it already, from the signal's arrival
                self._stop_deadline = time.monotonic() + self.config.drain_timeout_s
            if self.state is not None:
                self.state.stopping = True  # a restore or terminal-table read in progress ends early

    def stop_signalled(self, at: float) -> None:
        """StopBound's thread: the first stop signal arrived at `at` (time.monotonic()); the
        budget counts from then, even while the main thread has not run the handler yet."""
        deadline = at + self.config.drain_timeout_s
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline

    def _stop_budget(self) -> float:
        """Seconds left of --drain-timeout since the stop was asked (all of it before)."""
        if self._stop_deadline is None:
            return self.config.drain_timeout_s
        return max(0.0, self._stop_deadline - time.monotonic())

    def stop_report(self) -> str:
        """What the stop was doing and had not finished (for StopBound's log line)."""
        flight, completing = self.in_flight, self._completing
        left = (f"a batch of {len(completing.messages)} being completed" if completing is not None else
                f"a batch of {len(flight.messages)} in flight" if flight is not None else "no batch in flight")
        queued = len(self.producer) if self.producer is not None else 0
        return f"{self._stage}; {left}; {queued} outputs not acknowledged by the broker"

    def request_reload(self, *_args) -> None:
        self._reload = True

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
            check_topics(c, c.topics, stopping=lambda: self._stop)
            if self._stop:  # asked to stop while waiting for the broker: nothing was started
                return 0
            self._start_clients()
            self._stage = "scoring"
            while not self._stop:
                self._maybe_reload()
                messages = self._take()
                if self._stop:
                    break  # consumed after the signal: not scored, not committed, read again by the next owner
                if self.state is not None and not messages:
                    self._catch_up_idle()
                if messages:
                    self._process(messages)
                self.delivery.commit_due()
                self.delivery.dead_letters.tick()
                if self.state is not None and self.state.snapshot_due():
                    self._snapshot()
            log.info("stopping: batch in flight done, flushing")
        finally:
            self._shutdown()
        if self._unfinished:
            log.error("the stop did not finish its work within --drain-timeout (%s); exiting %d. Nothing "
                      "unacknowledged was committed: the partitions' next owner reads it again",
                      "; ".join(self._unfinished), OVERDUE_EXIT)
            return OVERDUE_EXIT
        return 0

    def _shutdown(self) -> None:
        """Complete the batch in flight, flush, commit, snapshot, leave the group: each step
        within what is left of --drain-timeout (StopBound ends a step that cannot be bounded)."""
        if self._stop_deadline is None:  # an error, not a signal: the same bound from now
            self._stop_deadline = time.monotonic() + self.config.drain_timeout_s
        if self.in_flight is not None:
            self._stage = "completing the batch in flight"
            size = len(self.in_flight.messages)
            if not self._complete():  # rewound: its outputs may have left the queue undelivered (or aborted)
                self._unfinished.append(f"a batch of {size} in flight not delivered")
        if self.producer is not None:
            self._stage = "flushing outputs"
            left = self.producer.flush(self._stop_budget())
            if left:
                log.error("%d messages not delivered at shutdown; their inputs were not committed", left)
                self._unfinished.append(f"{left} outputs not acknowledged")
        if self.watermarks is not None:
            self.watermarks.close()
        if self.consumer is not None:
            self._stage = "committing delivered offsets"
            committed = self.delivery.commit_done()
            if self.state is not None and self._assignment and self._stop_budget() > 0:
                self._stage = "writing snapshots"
                self._write_snapshots(sorted(p for _, p in self._assignment), committed)
            self.delivery.dead_letters.close()
            self._stage = "leaving the consumer group"
            self.consumer.close()
        if self.state is not None:
            self.state.close()
        if self.http is not None:
            self.http.close()
        self._stage = "stopped"

    def _snapshot(self) -> None:
        """Raw mode with --state-topic, when due: the batch in flight completed and every delivered
        offset committed, so each partition's snapshot covers exactly its committed offset."""
        if self.in_flight is not None and not self._complete():
            return
        self._write_snapshots(sorted(p for _, p in self._assignment), self.delivery.commit_done())

    def _write_snapshots(self, partitions: list[int], committed: bool) -> None:
        """Snapshots of these partitions' customer windows at their committed offsets (only what the
        group has committed is covered), and of the terminal table by partition 0's owner.
        `committed`: the caller's synchronous commit of the delivered offsets succeeded."""
        from confluent_kafka import KafkaException, TopicPartition

        state, topic = self.state, self.config.input_topic
        if state.snapshots is None:
            return
        if not partitions:
            state.write_snapshots({}, terminals=False, only=[])  # nothing to write: next round in an interval
            return
        if self.config.exactly_once:  # offsets went with each batch's transaction: ask the broker
            try:
                answer = self.consumer.committed([TopicPartition(topic, p) for p in partitions],
                                                 timeout=min(5.0, self.config.drain_timeout_s))
            except KafkaException as exc:
                log.warning("snapshots skipped: committed offsets unavailable (%s)", exc)
                return
            committed = {tp.partition: tp.offset for tp in answer if tp.error is None and tp.offset >= 0}
        else:
            if not committed:
                log.warning("snapshots skipped: the delivered offsets could not be committed")
                return
            committed = {p: self.delivery.done[(topic, p)].offset for p in partitions if (topic, p) in self.delivery.done}
        state.write_snapshots(committed, terminals=0 in partitions, only=partitions)

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
            new = self._load_pipeline(self.pipeline)
        except Exception as exc:  # any failure keeps the old model serving
            self.metrics.reloads.labels("failure").inc()
            log.error("model reload failed, still serving %s: %s", self.pipeline.model_version, exc)
            return
        self.pipeline = new
        self.metrics.reloads.labels("success").inc()
        log.info("model reloaded: now serving %s", new.model_version)

    def _take(self) -> list:
        """The next batch: what is queued now, up to batch_size, without waiting for a full one.

        Nothing queued: the batch in flight is completed first (its commit does not wait for
        traffic), then one wait of up to poll_timeout_s for a first message. With
        batch_wait_ms, a batch that is not full waits that long for more."""
        c, consumer = self.config, self.consumer
        self._revoked_in_take = set()
        messages = consumer.consume(num_messages=c.batch_size, timeout=0)
        if not messages and self.in_flight is not None:
            self._complete()
            messages = consumer.consume(num_messages=c.batch_size, timeout=0)
        if not messages:
            first = consumer.poll(c.poll_timeout_s)
            messages = [first] if first is not None else []
        if messages and c.batch_wait_ms > 0 and len(messages) < c.batch_size:
            messages += consumer.consume(num_messages=c.batch_size - len(messages), timeout=c.batch_wait_ms / 1e3)
        elif len(messages) == 1 and c.batch_size > 1:
            messages += consumer.consume(num_messages=c.batch_size - 1, timeout=0)
        if self._stale is not None:
            # A batch in flight failed during a rebalance inside these calls: these messages
            # come after it, so they are read again with it, not scored now.
            self.delivery.rewind([*self._stale, *messages], self._assignment)
            self._stale, messages = None, []
        if self._revoked_in_take and messages:
            # A partition was revoked by one of these calls after an earlier one had returned
            # some of its messages: they are not ours to score (the next owner, or this
            # instance after a fresh assignment, reads them from the committed offset).
            gone = [m for m in messages if (m.topic(), m.partition()) in self._revoked_in_take]
            if gone:
                messages = [m for m in messages if (m.topic(), m.partition()) not in self._revoked_in_take]
                self.delivery.rewind(gone, self._assignment)  # only partitions assigned again are sought
        return messages

    def _process(self, messages: list) -> None:
        m, t0 = self.metrics, time.perf_counter()
        good = [msg for msg in messages if msg.error() is None]
        for msg in messages:
            if msg.error() is not None:
                m.consume_errors.inc()
                log.warning("consume error: %s", msg.error())
        if not good:
            return
        m.consumed.inc(len(good))
        m.batch_size.observe(len(good))
        everything = good
        long_keys = [msg for msg in good if len(msg.key() or b"") > MAX_KEY_BYTES]
        if long_keys:
            good = [msg for msg in good if len(msg.key() or b"") <= MAX_KEY_BYTES]
        pipeline = self.pipeline
        values = [msg.value() for msg in good]
        stamps = np.fromiter((msg.timestamp()[1] for msg in everything), np.int64, len(everything))
        if len(stamps) and stamps.min() > 0:
            m.input_age_seconds.observe(max(0.0, time.time() - float(stamps.min()) / 1e3))
        if self.state is None:
            result = pipeline.score_batch(values)
        else:
            partitions = np.fromiter((msg.partition() for msg in good), np.int64, len(good))
            own = stamps if good is everything else np.fromiter((msg.timestamp()[1] for msg in good), np.int64, len(good))
            raw = self.state.read(values, own)
            offsets = np.fromiter((msg.offset() for msg in good), np.int64, len(good))
            all_partitions = partitions if good is everything else np.fromiter((msg.partition() for msg in everything), np.int64, len(everything))
            all_offsets = offsets if good is everything else np.fromiter((msg.offset() for msg in everything), np.int64, len(everything))
            self.state.publish(all_partitions, all_offsets, raw, partitions[raw.index], offsets[raw.index])
            if not self._catch_up(everything, int(raw.seconds.max()) if len(raw) else None):
                return  # read again once the terminal table has caught up
            decoded, emitted = self.state.decode(values, partitions, [msg.key() for msg in good], pipeline.features, own, raw)
            self.state.consumed(all_partitions, all_offsets)
            result = pipeline.score_decoded(decoded, emitted if self.config.emit_features else None)
            if self._score_from_s is not None:
                result = self._without_backfill(result, raw)
        scored = time.perf_counter()
        m.inference_seconds.observe(result.inference_seconds)
        m.stage_seconds.labels("inference").observe(result.inference_seconds)
        m.stage_seconds.labels("decode").observe(max(0.0, scored - t0 - result.inference_seconds - result.challenger_seconds))
        if result.challenger_version is not None:
            m.stage_seconds.labels("challenger").observe(result.challenger_seconds)
            if result.challenger_error is not None:
                self._challenger_failed(result)

        if self.in_flight is not None and not self._complete(rewind_also=everything):
            return  # the batch in flight was not delivered: it and this one are read again

        delivery = self.delivery
        delivery.begin()
        delivery.send_results([good[i].key() for i in result.index.tolist()], result.payloads, result.alerts.tolist())
        rejected = [(good[r.index], r.reason, r.detail) for r in result.rejections]
        rejected += [(msg, "oversized_key", f"key is {len(msg.key())} bytes, limit {MAX_KEY_BYTES}") for msg in long_keys]
        for msg, reason, detail in rejected:
            delivery.dead_letter(msg, reason, detail, pipeline.model_version)
        m.stage_seconds.labels("produce").observe(time.perf_counter() - scored)
        self.in_flight = InFlight(everything, result, [reason for _, reason, _ in rejected], t0)
        if not self.pipelined:
            self._complete()

    def _without_backfill(self, result: BatchResult, raw) -> BatchResult:
        """--score-from: the results of transactions before it are dropped (their features are
        already in the state); counted, and logged when the backfill starts and when scoring does.
        `raw`: the batch's RawBatch (event times of its valid messages, by position)."""
        live = raw.seconds[np.searchsorted(raw.index, result.index)] >= self._score_from_s
        backfilled = len(live) - int(live.sum())
        if backfilled:
            if not self._backfill_logged:
                self._backfill_logged = True
                log.info("backfill: transactions before %s update the feature state only (no result, no alert)",
                         self.config.score_from)
            self.metrics.backfilled.inc(backfilled)
            self._backfilled += backfilled
        if live.any() and not self._scoring_logged:
            self._scoring_logged = True
            log.info("scoring transactions from %s on (%d before it folded into the state so far)",
                     self.config.score_from, self._backfilled)
        return result.take(np.flatnonzero(live)) if backfilled else result

    def _complete(self, rewind_also: list = (), assignment: set | None = None) -> bool:
        """Wait for the batch in flight's acknowledgements and move its offsets (or rewind it,
        with `rewind_also`, the batch consumed after it); its metrics once delivered."""
        flight, self.in_flight = self.in_flight, None
        m, delivery = self.metrics, self.delivery
        self._completing = flight  # for stop_report while finish() waits
        try:
            ok = delivery.finish(flight.messages, self._assignment if assignment is None else assignment, rewind_also)
        finally:
            self._completing = None
        m.stage_seconds.labels("ack_wait").observe(delivery.ack_wait_s)
        m.stage_seconds.labels("commit").observe(delivery.commit_s)
        if not ok:
            m.produce_errors.inc(max(1, len(delivery.failures)))
            log.error("batch of %d not fully delivered (%s); rewound to reprocess it%s", len(flight.messages),
                      delivery.failures[0] if delivery.failures else "timeout",
                      f" with the {len(rewind_also)} consumed after it" if len(rewind_also) else "")
            return False
        m.observe_batch(flight.messages, flight.result, flight.reasons)
        m.batch_seconds.observe(time.perf_counter() - flight.started)
        if flight.result.partial is not None and flight.result.partial.any():
            self._partial_report(int(flight.result.partial.sum()))
        return True

    def _challenger_failed(self, result: BatchResult) -> None:
        """A batch's challenger call failed (its results carry no challenger; counted on delivery):
        an error at once, then at most one every CHALLENGER_LOG_INTERVAL_S with the count since."""
        self._challenger_failed_since += 1
        now = time.monotonic()
        if now - self._challenger_logged < CHALLENGER_LOG_INTERVAL_S:
            return
        self._challenger_logged = now
        log.error("challenger %s failed on %d batch(es) since the last report (their results carry no challenger; "
                  "the champion's are whole): %s", result.challenger_version, self._challenger_failed_since,
                  result.challenger_error)
        self._challenger_failed_since = 0

    def _partial_report(self, count: int) -> None:
        """A warning when results are scored on partial state: the first at once, then at most one
        every PARTIAL_LOG_INTERVAL_S with the count since (the result says "state":"partial")."""
        self._partial_since += count
        now = time.monotonic()
        if now - self._partial_logged < PARTIAL_LOG_INTERVAL_S:
            return
        self._partial_logged = now
        state, spec = self.state, self.spec
        days = {p: round(s.coverage_s / 86_400, 1) for p, s in sorted(state.customers.items())}
        log.warning("%d results scored on partial state (marked \"state\":\"partial\"): their windows reach back "
                    "before the oldest history here (customer coverage by partition, days: %s of %g; terminal "
                    "coverage %.1f days of %g). Load history before going live: docs/raw-transactions.md, "
                    "\"Going live\"", self._partial_since, days, spec.customer_reach_s / 86_400,
                    state.terminals.coverage_s / 86_400, spec.terminal_reach_s / 86_400)
        self._partial_since = 0

    def _catch_up(self, messages: list, newest_s: int | None) -> bool:
        """Raw mode, before a batch is scored: the terminal table reads what its windows need (every
        confirmation written before it was consumed, and each input partition to its end or past
        the batch's event-time bound, FeatureState.catch_up). If not every partition could be read
        in time, nothing is scored now: the batch is read again, and the batch in flight is
        completed meanwhile (its offsets and metrics do not wait). False then."""
        self._last_catch_up = time.monotonic()
        caught_up = newest_s is None or self.state.catch_up(newest_s)  # no transaction: no window to fill
        if not caught_up:
            self.delivery.rewind(messages, self._assignment)
            if self.in_flight is not None:
                self._complete()
        self._update_ready()
        self.state.report(self.metrics)
        return caught_up

    def _catch_up_idle(self) -> None:
        """Raw mode with nothing to score: the terminal table reads to the topics' ends, at most once
        a second when ready (a high-watermark query per partition is a broker round trip), and in
        1 s slices when not (a restore without a terminal snapshot), so the first batch, whose
        bound may need far less, is taken as soon as it is there."""
        if self.state.ready() and time.monotonic() - self._last_catch_up < IDLE_CATCH_UP_S:
            return
        self._last_catch_up = time.monotonic()
        self.state.catch_up(None, None if self.state.ready() else IDLE_CATCH_UP_S, idle=True)
        self._update_ready()
        self.state.report(self.metrics)
        if self.in_flight is None:
            self.state.idle()
