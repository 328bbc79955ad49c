"""Prometheus metrics of the sidecar, and the HTTP endpoints /metrics, /healthz, /readyz.

Conventions: `fraudscore_` prefix, seconds, `_total` counters, histograms (never
summaries) so that p99 aggregates across instances. Latency buckets include the SLO
boundaries (5, 10, 25, 50, 100 ms). Per-message histograms (end-to-end latency, score)
are updated a batch at a time with numpy (`BatchHistogram`), which costs no Python per
message. Feature drift is counted the same way (`FeatureBins`): every scored row into the
training fingerprint's bins, PSI computed by Prometheus over a window (rules.yml).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fraudscore.errors import UsageError
from fraudscore.serving.decode import REASONS
from fraudscore.serving.drift import DriftBaseline, bin_counts, drift_baselines
from fraudscore.serving.manifest import Manifest
from fraudscore.serving.transactions import LABEL_OUTCOMES, RAW_REASONS

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384)
STAGE_BUCKETS = (0.0001, 0.00025, *LATENCY_BUCKETS)
STAGES = ("decode", "inference", "produce", "ack_wait", "commit")
# No `*_created` series: a fifth of the exposition, and nothing here queries them.
disable_created_metrics()

SCORE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0, 2.0, 5.0, 10.0, 100.0)


class BatchHistogram:
    """A histogram fed with whole numpy arrays; exposed like prometheus_client's Histogram."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.bounds = np.array(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        values = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self):
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative[:-1])]
        buckets.append(("+Inf", int(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]


class FeatureBins:
    """Scored rows counted into each feature's training bins, and the training share of each bin.

    `fraudscore_feature_bin_total{feature, bin}` (counter) and
    `fraudscore_feature_training_share{feature, bin}` (gauge), `bin` "0".."n" as in
    `DriftBaseline`. At most 13 features x 10 bins: ~130 series of each. A new model with other
    bin edges restarts the counts at zero (a counter reset, which rate/increase handle).

        bins = FeatureBins(registry)
        bins.set_baselines(drift_baselines(manifest.features, manifest.fingerprint))
        bins.observe(result.matrix)  # one np.bincount per feature
    """

    def __init__(self, registry: CollectorRegistry):
        self._baselines: list[DriftBaseline] = []
        self._counts: list[np.ndarray] = []
        self._lock = threading.Lock()
        registry.register(self)

    def set_baselines(self, baselines: list[DriftBaseline]) -> None:
        def key(bs: list[DriftBaseline]) -> list:
            return [(b.column, b.feature, b.edges.tolist(), b.shares.tolist()) for b in bs]

        with self._lock:
            if key(baselines) != key(self._baselines):
                self._baselines = list(baselines)
                self._counts = [np.zeros(len(b.shares), dtype=np.int64) for b in baselines]

    def observe(self, matrix: np.ndarray) -> None:
        if not len(matrix) or not self._baselines:
            return
        with self._lock:
            for baseline, counts in zip(self._baselines, self._counts):
                counts += bin_counts(matrix[:, baseline.column], baseline.edges)

    def collect(self):
        counter = CounterMetricFamily("fraudscore_feature_bin", "Scored rows whose feature value fell in each bin of "
                                      "the training fingerprint (drift; PSI is computed by the recording rules).",
                                      labels=["feature", "bin"])
        share = GaugeMetricFamily("fraudscore_feature_training_share", "Share of the training rows in each bin of "
                                  "the training fingerprint (the drift baseline of the model served).",
                                  labels=["feature", "bin"])
        with self._lock:
            for baseline, counts in zip(self._baselines, self._counts):
                for i, (count, train) in enumerate(zip(counts.tolist(), baseline.shares.tolist())):
                    counter.add_metric([baseline.feature, str(i)], count)
                    share.add_metric([baseline.feature, str(i)], train)
        yield counter
        yield share

    def describe(self):
        return []


class SidecarMetrics:
    """Every series the sidecar exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds ...
        PlatformCollector(registry=r)  # python_info
        self._loop_series(r)
        self._model_series(r)
        self._state_series(r)

    def _loop_series(self, r: CollectorRegistry) -> None:
        """The loop's: batches, stages, latency, counts, dead letters, errors, lag, readiness."""
        self.batch_seconds = Histogram(
            "fraudscore_batch_duration_seconds", "Time of one batch from being taken to its delivery being confirmed "
            "(with pipelining this includes the next batch's decode and scoring).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "fraudscore_inference_duration_seconds", "Time of the ONNX Runtime call for one batch.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = BatchHistogram(
            "fraudscore_end_to_end_latency_seconds",
            "From the input message's Kafka timestamp to its result being acknowledged by the broker.",
            LATENCY_BUCKETS, r)
        self.stage_seconds = Histogram(
            "fraudscore_stage_seconds", "Time of one batch in each stage of the loop: decode (and online features), "
            "inference, produce (handing results to the producer), ack_wait (flush: waiting for the broker's "
            "acknowledgements), commit.", ["stage"], buckets=STAGE_BUCKETS, registry=r)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self.input_age_seconds = Histogram(
            "fraudscore_batch_input_age_seconds", "Age of a batch's oldest message when the batch was consumed "
            "(now minus its Kafka timestamp): the time spent before the sidecar saw it.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fraudscore_batch_size", "Messages in a consumed batch.", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.consumed = Counter("fraudscore_messages_consumed", "Input messages consumed.", registry=r)
        self.scored = Counter("fraudscore_transactions_scored", "Transactions scored (result produced).", registry=r)
        self.alerts = Counter("fraudscore_alerts", "Results at or above the alert threshold.", registry=r)
        self.partial_results = Counter(
            "fraudscore_partial_state_results", "Raw mode: results marked \"state\":\"partial\", scored while their "
            "windows reached back before the oldest history the state had seen (a new stream, or history not loaded).",
            registry=r)
        self.backfilled = Counter(
            "fraudscore_backfilled_transactions", "Raw mode with --score-from: transactions before that instant, "
            "folded into the feature state without a result or an alert.", registry=r)
        self.dead_letters = Counter(
            "fraudscore_dead_letters", "Input messages sent to the dead-letter topic, by reason.", ["reason"], registry=r)
        # oversized_key: the sidecar's check of Kafka keys; non_finite_score: the pipeline's check of the model output
        for reason in (*REASONS, *RAW_REASONS, "oversized_key", "non_finite_score"):
            self.dead_letters.labels(reason)
        self.produce_errors = Counter(
            "fraudscore_produce_errors", "Output messages the broker did not acknowledge (their batch is retried).", registry=r)
        self.consume_errors = Counter("fraudscore_consume_errors", "Errors reported by the consumer.", registry=r)
        self.skipped = Counter(
            "fraudscore_input_skipped_messages", "Input messages never read, by reason: retention (deleted by the "
            "topic's retention below the group's committed offset before any member read them) or reset_latest "
            "(retained ones passed over because --offset-reset latest moved an out-of-range offset to the end).",
            ["partition", "reason"], registry=r)
        self.scores = BatchHistogram("fraudscore_score", "Distribution of scores.", SCORE_BUCKETS, r)
        self.lag = Gauge("fraudscore_consumer_lag", "Messages behind the high watermark, per partition.",
                         ["topic", "partition"], registry=r)
        self.ready = Gauge("fraudscore_ready", "1 when the model is loaded, partitions are assigned and feature state is restored.", registry=r)

    def _model_series(self, r: CollectorRegistry) -> None:
        """The models': what is served, reloads, the shadow challenger, validation figures, drift bins and the score reference."""
        self.model_info = Gauge("fraudscore_model_info", "The model being served (value 1).",
                                ["version", "sha256", "kind"], registry=r)
        self.reloads = Counter("fraudscore_model_reloads", "Model reload attempts, by result.", ["result"], registry=r)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        # Per model version, champion and shadow challenger alike (--challenger; docs/operations.md,
        # "Shadow scoring"): what each scored and would have alerted on, at its own threshold.
        self.model_scored = Counter("fraudscore_model_transactions_scored", "Transactions each model scored, by role "
                                    "(champion: the results' score; challenger: shadow) and model version.",
                                    ["role", "model_version"], registry=r)
        self.model_alerts = Counter("fraudscore_model_alerts", "Scores at or above each model's own threshold, by role "
                                    "and model version (a challenger's are the alerts it would have raised).",
                                    ["role", "model_version"], registry=r)
        self.challenger_info = Gauge("fraudscore_challenger_info", "The shadow challenger scored beside the model "
                                     "(value 1; absent without --challenger).", ["model_version"], registry=r)
        self.model_validation = Gauge(
            "fraudscore_model_validation", "What each model measured on its validation day(s), by role, model version "
            "and metric: precision_at_threshold, recall_at_threshold, cp_at_100, alerts_per_day (the reference of the "
            "live quality alerts; absent for a bundle without them).", ["role", "model_version", "metric"], registry=r)
        self._validation_labels: dict[str, list[tuple]] = {}
        self.challenger_failures = Counter(
            "fraudscore_challenger_failures", "Challenger failures, by reason: load (a reload kept the previous "
            "challenger, or none), inference (a batch's call failed: its results carry no challenger), non_finite "
            "(rows whose challenger score is null). The champion's results are never held back.",
            ["model_version", "reason"], registry=r)
        self.feature_bins = FeatureBins(r)
        # The score-shift alert compares live scores with the model's own scale (docs/operations.md).
        self.score_reference = Gauge(
            "fraudscore_model_score_reference", "The served model's scores on its validation day(s): mean, p50, p90, "
            "p99 (absent for a bundle exported without them).", ["statistic"], registry=r)
        self.scores_compared = Counter(
            "fraudscore_score_reference_compared", "Scores compared with the served model's validation quantiles "
            "(none while the bundle has no score reference).", registry=r)
        self.scores_above_reference = Counter(
            "fraudscore_score_above_reference", "Scores at or above the served model's validation quantile "
            "(p50, p90, p99: 50 %, 10 %, 1 % of scores when nothing shifted).", ["reference"], registry=r)
        self._reference_quantiles: list[tuple[str, float]] = []

    def _state_series(self, r: CollectorRegistry) -> None:
        """Raw input mode's: the online feature state, its coverage and restores (docs/raw-transactions.md)."""
        self.labels = Counter("fraudscore_labels", "Fraud confirmations read from the labels topic, by outcome.",
                              ["outcome"], registry=r)
        for outcome in LABEL_OUTCOMES:
            self.labels.labels(outcome)
        self.key_mismatches = Counter(
            "fraudscore_key_mismatches", "Raw transactions whose Kafka key is not their CUSTOMER_ID (scored; their "
            "customer windows are only complete if every such message lands on one partition).", registry=r)
        self.restore_seconds = Histogram(
            "fraudscore_state_restore_duration_seconds", "Time to rebuild one partition's customer windows from Kafka.",
            buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.restored_transactions = Counter(
            "fraudscore_state_restored_messages", "Input messages replayed into customer windows on assignment.", registry=r)
        self.restore_messages = Gauge(
            "fraudscore_state_restore_progress_messages", "Messages replayed so far by the partition's last or current restore.",
            ["partition"], registry=r)
        self.restoring = Gauge("fraudscore_state_restoring", "1 while feature state is being rebuilt (not ready).", registry=r)
        self.state_bytes = Gauge("fraudscore_state_bytes", "Memory held by online feature state, by kind.", ["kind"], registry=r)
        self.state_rows = Gauge("fraudscore_state_transactions", "Transactions held in online feature state, by kind.",
                                ["kind"], registry=r)
        self.assigned_partitions = Gauge("fraudscore_assigned_partitions", "Input partitions assigned.", registry=r)
        self.state_entities = Gauge(
            "fraudscore_state_entities", "Customers (of the assigned partitions) and terminals with rows in online feature "
            "state, counted every 30 s; bytes per entity = fraudscore_state_bytes / this.", ["kind"], registry=r)
        self.state_partition_bytes = Gauge(
            "fraudscore_state_partition_bytes", "Memory held by one assigned input partition's customer windows.",
            ["partition"], registry=r)
        self.state_coverage = Gauge(
            "fraudscore_state_coverage_seconds", "Event time the feature state has seen, from its first transaction to "
            "its newest: by kind (customer: per assigned partition; terminal: the table, partition \"all\"). History "
            "older than this never reached the state; below fraudscore_state_coverage_required_seconds the oldest "
            "windows are short and scores run low.", ["kind", "partition"], registry=r)
        self.state_coverage_required = Gauge(
            "fraudscore_state_coverage_required_seconds", "Event time the bundle's feature windows reach back, by kind "
            "(customer: the longest window; terminal: the delay plus the longest window).", ["kind"], registry=r)
        self.event_watermark = Gauge(
            "fraudscore_event_time_watermark_seconds", "Newest transaction event time (Unix seconds) in each assigned "
            "input partition's state; time() minus it is how far scoring trails the payments.", ["partition"], registry=r)
        self.labels_lag = Gauge(
            "fraudscore_labels_lag", "Fraud confirmations on the labels topic not yet read into the terminal table, per "
            "labels partition (as of the table's last read).", ["partition"], registry=r)
        self.labels_pending = Gauge(
            "fraudscore_labels_pending", "Confirmations held until their transaction arrives (the same confirmation "
            "counted in fraudscore_labels_total{outcome=\"pending\"} leaves this gauge when it is applied or expires).",
            registry=r)
        self._snapshot_series(r)

    def _snapshot_series(self, r: CollectorRegistry) -> None:
        """Raw input mode's snapshots (--state-topic) and where the terminal table's rows come from."""
        self.snapshot_restores = Counter(
            "fraudscore_state_snapshot_restores", "State restores by kind (customers, terminals) and outcome: restored "
            "from a snapshot, or replayed from the input because it was missing, corrupt, a mismatch (other spec, "
            "lateness, topic or group) or ahead of the committed offset.", ["kind", "outcome"], registry=r)
        self.terminal_rows = Counter(
            "fraudscore_terminal_table_rows", "Transactions applied to the terminal table, by source: the terminal "
            "feed (its owners' decoded rows, 32 bytes each) or the input itself (no feed, or a catch-up the feed "
            "could not serve yet).", ["source"], registry=r)
        self.feed_records = Counter(
            "fraudscore_terminal_feed_records", "Terminal feed records: written by this instance (written, failed), "
            "or read and not usable (gap: it starts after what the table holds; unreadable); the table then reads "
            "that partition's input.", ["outcome"], registry=r)
        self.snapshot_writes = Counter(
            "fraudscore_state_snapshot_writes", "Snapshots due for the state topic, by kind and outcome: ok, failed (the "
            "broker did not take it), skipped (the state topics were missing or the broker did not answer).",
            ["kind", "outcome"], registry=r)
        self.snapshot_bytes = Gauge(
            "fraudscore_state_snapshot_bytes", "Size of the last snapshot written or restored, by kind (customers: one partition).",
            ["kind"], registry=r)
        self.snapshot_seconds = Histogram(
            "fraudscore_state_snapshot_duration_seconds", "Time to encode and write one snapshot (the loop pauses meanwhile).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)

    def observe_scoring(self, result, seconds: float) -> None:
        """A scored batch (`seconds` from taking it to its results): the ONNX Runtime call, the
        challenger's, and the rest (decode and online features) by stage."""
        self.inference_seconds.observe(result.inference_seconds)
        self.stage_seconds.labels("inference").observe(result.inference_seconds)
        self.stage_seconds.labels("decode").observe(max(0.0, seconds - result.inference_seconds - result.challenger_seconds))
        if result.challenger_version is not None:
            self.stage_seconds.labels("challenger").observe(result.challenger_seconds)

    def observe_batch(self, messages: list, result, reasons: list[str]) -> None:
        """A delivered batch: end-to-end latency from each input's Kafka timestamp, counts,
        dead letters by reason, scores, and its feature values counted into the training bins."""
        now_ms = time.time() * 1e3
        stamps = np.fromiter((msg.timestamp()[1] for msg in messages), dtype=np.float64, count=len(messages))
        self.end_to_end_seconds.observe_many(np.maximum(now_ms - stamps[stamps > 0], 0) / 1e3)
        self.scored.inc(len(result.index))
        self.alerts.inc(int(result.alerts.sum()))
        if getattr(result, "partial", None) is not None:
            self.partial_results.inc(int(result.partial.sum()))
        for reason in reasons:
            self.dead_letters.labels(reason).inc()
        self.scores.observe_many(result.scores)
        if result.model_version:
            self.model_scored.labels("champion", result.model_version).inc(len(result.index))
            self.model_alerts.labels("champion", result.model_version).inc(int(result.alerts.sum()))
        challenger = result.challenger_version
        if challenger is not None:
            if result.challenger_scores is None:
                self.challenger_failures.labels(challenger, "inference").inc()
            else:
                self.model_scored.labels("challenger", challenger).inc(len(result.index) - result.challenger_non_finite)
                self.model_alerts.labels("challenger", challenger).inc(int(result.challenger_alerts.sum()))
                if result.challenger_non_finite:
                    self.challenger_failures.labels(challenger, "non_finite").inc(result.challenger_non_finite)
        if self._reference_quantiles and len(result.scores):
            self.scores_compared.inc(len(result.scores))
            for name, value in self._reference_quantiles:
                self.scores_above_reference.labels(name).inc(int(np.count_nonzero(result.scores >= value)))
        self.feature_bins.observe(result.matrix)

    def set_challenger(self, version: str | None, validation: dict[str, float] | None = None) -> None:
        """The shadow challenger now scored beside the model (None: none), and its validation figures."""
        self.challenger_info.clear()
        self._set_validation("challenger", version, validation or {})
        if version is not None:
            self.challenger_info.labels(version).set(1)
            self.model_scored.labels("challenger", version)  # the series exist from the start, at 0
            self.model_alerts.labels("challenger", version)

    def _set_validation(self, role: str, version: str | None, figures: dict[str, float]) -> None:
        for labels in self._validation_labels.pop(role, []):
            self.model_validation.remove(*labels)
        for metric, value in figures.items():
            self.model_validation.labels(role, version, metric).set(value)
            self._validation_labels.setdefault(role, []).append((role, version, metric))

    def set_model(self, manifest: Manifest) -> None:
        """The model now served: its info series, drift baselines and score reference."""
        self.model_info.clear()
        self.model_info.labels(manifest.model_version, manifest.model_sha256, manifest.model_kind).set(1)
        self.model_scored.labels("champion", manifest.model_version)
        self.model_alerts.labels("champion", manifest.model_version)
        self._set_validation("champion", manifest.model_version, manifest.validation_quality)
        self.feature_bins.set_baselines(drift_baselines(manifest.features, manifest.fingerprint))
        self.score_reference.clear()
        reference = manifest.score_reference
        quantiles = [(f"p{round(float(q) * 100):d}", float(v)) for q, v in reference.get("quantiles", {}).items()]
        if reference:
            self.score_reference.labels("mean").set(float(reference["mean"]))
        for name, value in quantiles:
            self.score_reference.labels(name).set(value)
            self.scores_above_reference.labels(name)  # the series exists from the start, at 0
        self._reference_quantiles = quantiles


class HealthServer:
    """/metrics, /healthz (process alive) and /readyz (`ready()` true) on one port, in a daemon thread.
    A 503 from /readyz says why when `why()` is given (e.g. "restoring partitions [0, 2]")."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                 why: Callable[[], str] | None = None):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    body, status, ctype = b"ok\n", 200, "text/plain"
                elif path == "/readyz":
                    # One look: with `why`, ready means no reason (two calls could disagree mid-rebalance).
                    reason = why() if why is not None else ""
                    ok = not reason if why is not None else ready()
                    body = b"ready\n" if ok else f"not ready{': ' + reason if reason else ''}\n".encode()
                    status, ctype = (200 if ok else 503), "text/plain"
                else:
                    body, status, ctype = b"not found: try /metrics, /healthz, /readyz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # requests are not worth a log line each
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # exit 2: no restart can fix it (and --workers stops instead of retrying)
            raise UsageError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                             "choose another port, or 0 for any free one") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="fraudscore-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
