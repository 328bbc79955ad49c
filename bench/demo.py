"""The demo's streaming part: a raw-mode sidecar, a history, a measured stream, a summary.

    python -m fraudscore.bench.demo --bundle DIR --transactions PATH --bootstrap-servers HOST:PORT \\
        --input-topic tx-in --labels-topic tx-labels --output-topic tx-scores --alerts-topic tx-alerts \\
        --dlq-topic tx-dlq [--rate 2000] [--seconds 20] [--metrics-port 9464] [--prometheus-url URL]

Called by scripts/demo.sh after it has started Kafka and Prometheus, built the bundle and
created the topics (`fraudscore topics create`). The sidecar computes the features itself
(raw mode): the simulated months before the streamed part go first, at full speed, with
every fraud confirmation, as the history its customer windows and terminal table are
built from; then the last transactions stream at --rate and are measured.

Every figure of the summary is about the streamed transactions alone: results are read
from where the output topic ended after the history, input timestamps only for the ids
streamed, and the sidecar's counters and latency histogram (and Prometheus' view of them)
as their increase over the stream. The history's figures are on a line of their own.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudscore.data.replay import Events, raw_stream, replay
from fraudscore.serving.sidecar.clients import quiet_repeats

from .kafka_io import Results, collect, end_offsets, produce_at_rate, start_sidecar, streamed_latencies
from .scrape import histogram_buckets, metric_sum

LATENCY = "fraudscore_end_to_end_latency_seconds"
SCORED = "fraudscore_transactions_scored_total"
DEAD_LETTERS = "fraudscore_dead_letters_total"
ALERTS = "fraudscore_alerts_total"


def split_history(events: Events, n: int) -> tuple[Events, list[bytes], list[bytes]]:
    """(history: every event but the last `n` transactions, with all confirmations; keys and values of those `n`)."""
    tx = np.flatnonzero(~events.is_label)
    streamed = np.zeros(len(events), bool)
    streamed[tx[len(tx) - min(n, len(tx)):]] = True
    keep = np.flatnonzero(~streamed).tolist()
    history = Events(events.seconds[~streamed], events.is_label[~streamed],
                     [events.keys[i] for i in keep], [events.values[i] for i in keep])
    rows = np.flatnonzero(streamed).tolist()
    return history, [events.keys[i] for i in rows], [events.values[i] for i in rows]


def bucket_delta(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The observations made between two scrapes of one histogram (its buckets' increase)."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def bucket_quantiles(buckets: list[tuple[float, float]], quantiles: tuple[float, ...]) -> list[float]:
    """Quantiles from cumulative buckets, interpolated as PromQL's histogram_quantile does."""
    total = buckets[-1][1] if buckets else 0.0
    out = []
    for q in quantiles:
        if total == 0:
            out.append(float("nan"))
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                out.append(lower if bound == float("inf")
                           else lower + (bound - lower) * (rank - below) / max(count - below, 1e-12))
                break
            lower, below = bound, count
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def settled_scrape(port: int, processed: int, timeout_s: float = 15) -> str:
    """/metrics once the sidecar has accounted for `processed` inputs (scored or dead-lettered).

    A result can be read from the output topic a moment before the sidecar updates its
    counters (it does so after the whole batch is acknowledged); a scrape taken then would
    put part of one set of transactions into the next."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(port)
        if metric_sum(text, SCORED) + metric_sum(text, DEAD_LETTERS) >= processed or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def prometheus_value(url: str, query: str) -> float | None:
    """An instant query's single value, None when Prometheus has none (or cannot be reached)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(query)}", timeout=5) as r:
            result = json.loads(r.read())["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def prometheus_sees(url: str, query: str, expected: float, timeout_s: float = 15) -> float | None:
    """Wait until Prometheus' latest scrape of `query` equals `expected` (scrapes come every
    few seconds); the last value it returned."""
    deadline = time.monotonic() + timeout_s
    value = prometheus_value(url, query)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        value = prometheus_value(url, query)
    return value


@dataclass(frozen=True)
class Measurement:
    """One stream and what was measured about it; every field is about the streamed transactions."""

    streamed: list  # their transaction ids, in sending order
    sent_at: dict  # id -> input message timestamp (s), read back from the input topic
    results: Results  # the output topic from where it ended after the history
    before: str  # the sidecar's /metrics once the history was processed
    after: str  # ... once the stream was
    rate: float
    prometheus_scored: tuple[float | None, float | None] = (None, None)  # Prometheus' counter before, after

    @property
    def span_s(self) -> float:
        """Seconds from the first streamed input's timestamp to the last streamed result read."""
        latencies = self.latencies
        if not latencies:
            return float("nan")
        return max(self.sent_at[i] + s for i, s in latencies.items()) - min(self.sent_at.values())

    @property
    def latencies(self) -> dict:
        """id -> seconds from input timestamp to its result read by a consumer, streamed ids only."""
        return streamed_latencies(self.sent_at, self.results)

    def counter(self, name: str) -> float:
        """How much the sidecar's counter `name` rose over the stream."""
        return metric_sum(self.after, name) - metric_sum(self.before, name)

    def histogram(self) -> list[tuple[float, float]]:
        """The end-to-end latency histogram's observations over the stream."""
        return bucket_delta(histogram_buckets(self.before, LATENCY), histogram_buckets(self.after, LATENCY))

    def summary(self, history_transactions: int, history_labels: int) -> list[str]:
        """The demo's summary lines."""
        n = len(self.streamed)
        streamed = set(self.streamed)
        got = streamed & set(self.results.ids)
        alerts = {i for i, a in zip(self.results.ids, self.results.alerts.tolist()) if a and i in streamed}
        other = len(set(self.results.ids) - streamed)
        latency = np.array(list(self.latencies.values()))
        p50, p99 = (np.median(latency) * 1e3, np.quantile(latency, 0.99) * 1e3) if len(latency) else (float("nan"),) * 2
        hist = self.histogram()
        h50, h99 = bucket_quantiles(hist, (0.5, 0.99))
        observed = hist[-1][1] if hist else 0
        lines = [
            f"demo summary: the {n:,} transactions streamed at {self.rate:,.0f}/s (every figure is about them)",
            f"  history (not measured)  {history_transactions:,} transactions and {history_labels:,} fraud confirmations, "
            "sent first at full speed and all scored before the stream started",
            f"  scored                  {len(got):,} of {n:,} (missing {n - len(got):,}); the sidecar's counter rose by "
            f"{self.counter(SCORED):,.0f}" + (f"; {other:,} other result(s) on the topic" if other else ""),
            f"  alerts raised           {len(alerts):,} (results with decision \"alert\"; the sidecar's counter rose by "
            f"{self.counter(ALERTS):,.0f})",
            f"  dead letters            {self.counter(DEAD_LETTERS):,.0f}",
            f"  throughput              {len(got) / self.span_s:,.0f} transactions/s over {self.span_s:.1f} s "
            f"(offered {self.rate:,.0f}/s; first input sent to last result read)",
            f"  end-to-end latency      p50 {p50:.1f} ms, p99 {p99:.1f} ms (input timestamp -> result read by a consumer; "
            f"{len(latency):,} transactions)",
            f"  sidecar's histogram     p50 {h50 * 1e3:.1f} ms, p99 {h99 * 1e3:.1f} ms (input timestamp -> result "
            f"acknowledged; {observed:,.0f} observations, interpolated in buckets as histogram_quantile does)",
        ]
        before, after = self.prometheus_scored
        if before is not None and after is not None:
            behind = after != metric_sum(self.after, SCORED) or before != metric_sum(self.before, SCORED)
            lines.append(f"  Prometheus              {SCORED} rose by {after - before:,.0f} over the stream "
                         f"({after:,.0f} in all, history included)"
                         + ("; its last scrapes lagged the sidecar's counter" if behind else ""))
        return lines


def stream(bootstrap: str, topics: dict[str, str], keys: list[bytes], values: list[bytes], rate: float,
           metrics_port: int, history_transactions: int, prometheus_url: str | None = None,
           timeout_s: float = 60) -> Measurement:
    """Stream `values` at `rate` into a sidecar that has processed `history_transactions`, and
    measure exactly them. The output topic is read from where it ends now."""
    before = settled_scrape(metrics_port, history_transactions)
    prom_before = prometheus_sees(prometheus_url, f"sum({SCORED})", metric_sum(before, SCORED)) if prometheus_url else None
    start = end_offsets(bootstrap, topics["out"])
    collected: dict = {}
    reader = threading.Thread(target=lambda: collected.update(
        results=collect(bootstrap, topics["out"], len(values), len(values) / rate + timeout_s, start=start)))
    reader.start()
    sent_at = produce_at_rate(bootstrap, topics["in"], keys, values, rate)
    reader.join()
    after = settled_scrape(metrics_port, history_transactions + len(values))
    prom_after = prometheus_sees(prometheus_url, f"sum({SCORED})", metric_sum(after, SCORED)) if prometheus_url else None
    ids = [json.loads(v)["TRANSACTION_ID"] for v in values]
    return Measurement(ids, sent_at, collected["results"], before, after, rate, (prom_before, prom_after))


def run_demo(bootstrap: str, bundle: Path, topics: dict[str, str], events: Events, *, rate: float, seconds: float,
             metrics_port: int, group: str, prometheus_url: str | None = None,
             say=lambda line: print(line, flush=True)) -> tuple[Measurement, int, int]:
    """History, sidecar, stream; (the measurement, history transactions, history confirmations).
    The sidecar is stopped (SIGTERM) before returning."""
    history, keys, values = split_history(events, int(rate * seconds))
    warm, labels = int((~history.is_label).sum()), int(history.is_label.sum())
    say(f"demo: sending the history first: {warm:,} transactions and {labels:,} fraud confirmations, at full speed")
    quiet_repeats()  # a freshly started broker's "Coordinator load in progress" is expected, not a warning
    replay(history, {"bootstrap.servers": bootstrap}, topics["in"], topics["labels"])
    sidecar, _ = start_sidecar(bootstrap, bundle, topics, group=group, metrics_port=metrics_port, ready_timeout_s=300,
                               extra=("--input", "raw", "--labels-topic", topics["labels"],
                                      *(("--state-topic", topics["state"]) if topics.get("state") else ())))
    try:
        # The history's results are awaited before the stream starts: it builds the sidecar's
        # feature state, and warms up a broker started seconds ago (slow for its first seconds).
        collect(bootstrap, topics["out"], warm, 300)
        say(f"demo: sidecar ready; streaming {len(values):,} transactions at {rate:,.0f}/s")
        measurement = stream(bootstrap, topics, keys, values, rate, metrics_port, warm, prometheus_url)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(60)
    return measurement, warm, labels


def main() -> None:
    from fraudscore import read_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--transactions", type=Path, required=True, help="raw transactions (fraudscore simulate)")
    parser.add_argument("--bootstrap-servers", required=True)
    for flag in ("--input-topic", "--labels-topic", "--output-topic", "--alerts-topic", "--dlq-topic"):
        parser.add_argument(flag, required=True, help="an existing topic (fraudscore topics create)")
    parser.add_argument("--state-topic", help="the sidecar's snapshot topic (fraudscore topics create --state-topic)")
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--prometheus-url", help="Prometheus scraping the sidecar, e.g. http://127.0.0.1:9090")
    args = parser.parse_args()

    topics = {"in": args.input_topic, "labels": args.labels_topic, "out": args.output_topic,
              "alerts": args.alerts_topic, "dlq": args.dlq_topic, "state": args.state_topic}
    print(f"demo: topics {', '.join(t for t in topics.values() if t)}", flush=True)
    measurement, warm, labels = run_demo(
        args.bootstrap_servers, args.bundle, topics, raw_stream(read_table(args.transactions)), rate=args.rate,
        seconds=args.seconds, metrics_port=args.metrics_port, group=f"demo-{args.input_topic}",
        prometheus_url=args.prometheus_url)
    for line in measurement.summary(warm, labels):
        print(line, flush=True)


if __name__ == "__main__":
    main()
