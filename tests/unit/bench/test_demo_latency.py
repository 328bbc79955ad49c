"""The demo measures what it says: latency and counts of exactly the streamed transactions,
never of the history sent before them, in agreement with the sidecar's own histogram.

The first demo read input timestamps from the topic's earliest offset and stopped after as
many messages as it had streamed, so it measured the history's transactions (sent long
before their results were read) and printed p50 ~900 ms, p99 ~7 s at 2,000 tx/s while the
sidecar's histogram said tens of milliseconds. These tests pin the measurement.
"""

from __future__ import annotations


import numpy as np
import pytest

from fraudscore.bench.demo import Measurement, bucket_delta, bucket_quantiles, histogram_buckets
from fraudscore.bench.kafka_io import Results, streamed_latencies


def exposition(scored: int, alerts: int, buckets: dict[str, int]) -> str:
    lines = [f"fraudscore_transactions_scored_total {scored}.0", f"fraudscore_alerts_total {alerts}.0",
             'fraudscore_dead_letters_total{reason="late"} 0.0']
    lines += [f'fraudscore_end_to_end_latency_seconds_bucket{{le="{le}"}} {n}.0' for le, n in buckets.items()]
    return "\n".join(lines) + "\n"


def test_latencies_are_those_of_the_streamed_ids_only_at_their_first_arrival() -> None:
    sent_at = {10: 100.0, 11: 100.5}
    # A history result (id 1) read during the stream, a redelivered result (id 10 twice).
    results = Results(np.array([100.2, 100.3, 100.6, 101.0]), np.zeros(4), [1, 10, 11, 10],
                      np.array([True, False, True, True]))
    assert streamed_latencies(sent_at, results) == pytest.approx({10: 0.3, 11: 0.1})


def test_the_histogram_is_taken_over_the_stream_alone() -> None:
    before = histogram_buckets(exposition(0, 0, {"0.01": 0, "0.1": 0, "10.0": 1000, "+Inf": 1000}),
                               "fraudscore_end_to_end_latency_seconds")
    after = histogram_buckets(exposition(0, 0, {"0.01": 60, "0.1": 100, "10.0": 1100, "+Inf": 1100}),
                              "fraudscore_end_to_end_latency_seconds")
    stream = bucket_delta(before, after)
    assert stream == [(0.01, 60), (0.1, 100), (10.0, 100), (float("inf"), 100)]
    # The history's 1,000 slow observations would put the median at seconds.
    assert bucket_quantiles(after, (0.5,))[0] > 1.0
    assert bucket_quantiles(stream, (0.5,))[0] == pytest.approx(0.01 * 50 / 60)


def test_every_figure_of_the_summary_describes_the_streamed_set() -> None:
    m = Measurement(
        streamed=[10, 11, 12], sent_at={10: 100.0, 11: 100.1, 12: 100.2},
        results=Results(np.array([100.01, 100.02, 100.12, 100.23]), np.zeros(4), [1, 10, 11, 12],
                        np.array([True, True, False, False])),
        before=exposition(500, 40, {"0.025": 0, "+Inf": 500}), after=exposition(503, 41, {"0.025": 3, "+Inf": 503}),
        rate=12.0, prometheus_scored=(500.0, 503.0))
    text = "\n".join(m.summary(500, 7))
    assert "the 3 transactions streamed" in text and "500 transactions and 7 fraud confirmations" in text
    assert "scored                  3 of 3 (missing 0); the sidecar's counter rose by 3; 1 other result(s)" in text
    assert "alerts raised           1 (results" in text and "counter rose by 1)" in text  # history's alert left out
    assert "(input timestamp -> result read by a consumer; 3 transactions)" in text
    assert "3 observations" in text and "rose by 3 over the stream (503 in all, history included)" in text
    assert "p50 20.0 ms" in text  # the three streamed latencies: 20, 20, 30 ms
    assert "throughput              13 transactions/s over 0.2 s" in text  # 3 results from 100.0 to 100.23 s


