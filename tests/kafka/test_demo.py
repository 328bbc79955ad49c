"""The demo against the broker measures exactly the streamed transactions, as the sidecar's own
histogram does (the measurement's logic: tests/unit/bench/test_demo_latency.py)."""

from __future__ import annotations

import subprocess
import uuid

import numpy as np
from commands import EXE
from kafka_helpers import free_port

from fraudscore import simulate
from fraudscore.bench.demo import bucket_quantiles, run_demo
from fraudscore.data.replay import raw_stream


def test_the_demo_measures_exactly_the_streamed_transactions_as_the_sidecar_does(kafka_bootstrap, small_bundle) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = {"in": f"demo-in-{tag}", "labels": f"demo-labels-{tag}", "out": f"demo-scores-{tag}",
              "alerts": f"demo-alerts-{tag}", "dlq": f"demo-dlq-{tag}"}
    done = subprocess.run([EXE, "topics", "create", "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics["in"],
                           "--labels-topic", topics["labels"], "--output-topic", topics["out"], "--alerts-topic",
                           topics["alerts"], "--dlq-topic", topics["dlq"], "--partitions", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = raw_stream(simulate(customers=200, terminals=400, days=20, seed=4).transactions)
    rate, seconds = 400, 4
    m, history, _ = run_demo(kafka_bootstrap, small_bundle, topics, events, rate=rate, seconds=seconds,
                             metrics_port=free_port(), group=f"demo-{tag}", say=lambda _: None)
    n = int(rate * seconds)
    assert history > 2 * n  # the history is larger than the stream, as in the demo

    latencies = m.latencies
    assert len(m.streamed) == n
    assert set(latencies) == set(m.streamed) == set(m.sent_at)  # exactly the streamed ids, every one of them
    assert m.counter("fraudscore_transactions_scored_total") == n
    hist = m.histogram()
    assert hist[-1][1] == n  # the sidecar observed the same n transactions over the stream

    ms = np.array(list(latencies.values())) * 1e3
    p50, p99 = np.median(ms), np.quantile(ms, 0.99)
    h50, h99 = (q * 1e3 for q in bucket_quantiles(hist, (0.5, 0.99)))
    print(f"\ndemo measurement: {n} streamed after {history} of history; consumer p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"sidecar's histogram p50 {h50:.1f} ms, p99 {h99:.1f} ms")
    # A result is read by a consumer about when the sidecar's flush is acknowledged; the
    # histogram interpolates within buckets (10-25, 25-50, 50-100 ms ...). The history's
    # results, read late, would put the consumer's median at seconds.
    assert abs(p50 - h50) <= 25 + 0.5 * h50, (p50, h50)
    assert p99 <= 2 * h99 + 100, (p99, h99)
