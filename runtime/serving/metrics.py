"""Prometheus metrics of the sidecar, and the HTTP endpoints /metrics, /healthz, /readyz.

Conventions: `fraudscore_` prefix, seconds, `_total` counters, histograms (never
summaries) so that p99 aggregates across instances. Latency buckets include the SLO
boundaries (5, 10, 25, 50, 100 ms). Per-message histograms (end-to-end latency, score)
are updated a batch at a time with numpy (`BatchHistogram`), which costs no Python per
message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily

from fraudscore.serving.decode import REASONS
from fraudscore.serving.drift import psi
from fraudscore.serving.transactions import LABEL_OUTCOMES, RAW_REASONS

DRIFT_MIN_ROWS = 500  # PSI of a smaller batch says nothing
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384)
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


class SidecarMetrics:
    """Every series the sidecar exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.batch_seconds = Histogram(
            "fraudscore_batch_duration_seconds", "Time to process one batch: decode, score, produce, commit.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "fraudscore_inference_duration_seconds", "Time of the ONNX Runtime call for one batch.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = BatchHistogram(
            "fraudscore_end_to_end_latency_seconds",
            "From the input message's Kafka timestamp to its result being acknowledged by the broker.",
            LATENCY_BUCKETS, r)
        self.batch_size = Histogram("fraudscore_batch_size", "Messages in a consumed batch.", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.consumed = Counter("fraudscore_messages_consumed", "Input messages consumed.", registry=r)
        self.scored = Counter("fraudscore_transactions_scored", "Transactions scored (result produced).", registry=r)
        self.alerts = Counter("fraudscore_alerts", "Results at or above the alert threshold.", registry=r)
        self.dead_letters = Counter(
            "fraudscore_dead_letters", "Input messages sent to the dead-letter topic, by reason.", ["reason"], registry=r)
        # oversized_key: the sidecar's check of Kafka keys; non_finite_score: the pipeline's check of the model output
        for reason in (*REASONS, *RAW_REASONS, "oversized_key", "non_finite_score"):
            self.dead_letters.labels(reason)
        self.produce_errors = Counter(
            "fraudscore_produce_errors", "Output messages the broker did not acknowledge (their batch is retried).", registry=r)
        self.consume_errors = Counter("fraudscore_consume_errors", "Errors reported by the consumer.", registry=r)
        self.scores = BatchHistogram("fraudscore_score", "Distribution of scores.", SCORE_BUCKETS, r)
        self.lag = Gauge("fraudscore_consumer_lag", "Messages behind the high watermark, per partition.",
                         ["topic", "partition"], registry=r)
        self.model_info = Gauge("fraudscore_model_info", "The model being served (value 1).",
                                ["version", "sha256", "kind"], registry=r)
        self.reloads = Counter("fraudscore_model_reloads", "Model reload attempts, by result.", ["result"], registry=r)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.feature_psi = Gauge("fraudscore_feature_psi",
                                 "Population stability index of each feature against the training fingerprint.",
                                 ["feature"], registry=r)
        self.ready = Gauge("fraudscore_ready", "1 when the model is loaded, partitions are assigned and feature state is restored.", registry=r)
        # Raw input mode: the online feature state (docs/raw-transactions.md).
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

    def observe_batch(self, messages: list, result, reasons: list[str], drift_baselines: list) -> None:
        """A delivered batch: end-to-end latency from each input's Kafka timestamp, counts,
        dead letters by reason, scores, and feature drift (PSI) of batches large enough."""
        now_ms = time.time() * 1e3
        stamps = np.fromiter((msg.timestamp()[1] for msg in messages), dtype=np.float64, count=len(messages))
        self.end_to_end_seconds.observe_many(np.maximum(now_ms - stamps[stamps > 0], 0) / 1e3)
        self.scored.inc(len(result.index))
        self.alerts.inc(int(result.alerts.sum()))
        for reason in reasons:
            self.dead_letters.labels(reason).inc()
        self.scores.observe_many(result.scores)
        if len(result.index) >= DRIFT_MIN_ROWS:
            for j, name, shares, edges in drift_baselines:
                self.feature_psi.labels(name).set(psi(shares, result.matrix[:, j], edges))

    def set_model(self, version: str, sha256: str, kind: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version, sha256, kind).set(1)


class HealthServer:
    """/metrics, /healthz (process alive) and /readyz (`ready()` true) on one port, in a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    body, status, ctype = b"ok\n", 200, "text/plain"
                elif path == "/readyz":
                    ok = ready()
                    body, status, ctype = (b"ready\n", 200, "text/plain") if ok else (b"not ready\n", 503, "text/plain")
                else:
                    body, status, ctype = b"not found: try /metrics, /healthz, /readyz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # requests are not worth a log line each
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="fraudscore-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
