"""Reading a Prometheus text exposition (a sidecar's /metrics) with prometheus_client's own parser.

    >>> text = 'x_total{stage="a"} 2.0\\nx_total{stage="b"} 3.0\\nh_bucket{le="0.1"} 1.0\\nh_bucket{le="+Inf"} 4.0\\n'
    >>> metric_sum(text, "x_total"), metric_sum(text, "x_total", stage="b"), metric_sum(text, "absent")
    (5.0, 3.0, 0.0)
    >>> histogram_buckets(text, "h")
    [(0.1, 1.0), (inf, 4.0)]
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> Iterator[Sample]:
    """Every sample of the exposition, whatever its family."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` (all label sets, or those that carry `labels`)."""
    return sum((s.value for s in samples(text)
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())), 0.0)


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram `name`'s buckets, summed over its other
    labels, +Inf last."""
    buckets: dict[float, float] = {}
    for s in samples(text):
        if s.name == name + "_bucket":
            bound = float(s.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + s.value
    return sorted(buckets.items())


def sums_by_label(text: str, label: str, prefix: str = "fraudscore_",
                  into: dict[tuple[str, str], float] | None = None) -> dict[tuple[str, str], float]:
    """{(sample name, its `label` or ""): value} of the samples whose name starts with `prefix`,
    summed over every other label, added to `into` when given (several endpoints add up)."""
    out = {} if into is None else into
    for s in samples(text):
        if s.name.startswith(prefix):
            key = (s.name, s.labels.get(label, ""))
            out[key] = out.get(key, 0.0) + s.value
    return out
