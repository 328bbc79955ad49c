"""`fraudscore bench --mode kafka`'s arithmetic and parsing, without a broker: stage figures are
the means of what a window added, variants are shell-split (misspelt ones say how to write
them), and the plot has a latency-versus-rate panel."""

from __future__ import annotations

from pathlib import Path

import pytest
from fraudscore.bench.cli import kafka_variants
from fraudscore.bench.kafka_io import parse_metrics, sidecar_figures
from fraudscore.bench.plot import plot_report
from fraudscore.errors import UsageError


EXPOSITION = """# HELP fraudscore_stage_seconds Time of one batch in each stage.
# TYPE fraudscore_stage_seconds histogram
fraudscore_stage_seconds_bucket{le="0.001",stage="decode"} 3.0
fraudscore_stage_seconds_sum{stage="decode"} 0.012
fraudscore_stage_seconds_count{stage="decode"} 4.0
fraudscore_stage_seconds_sum{stage="ack_wait"} 0.5
fraudscore_stage_seconds_count{stage="ack_wait"} 4.0
fraudscore_batch_size_sum 2048.0
fraudscore_batch_size_count 4.0
fraudscore_batch_input_age_seconds_sum 0.04
fraudscore_batch_input_age_seconds_count 4.0
python_gc_objects_collected_total{generation="0"} 10.0
"""


def test_stage_figures_are_the_means_of_what_a_window_added() -> None:
    before = parse_metrics(EXPOSITION.replace("_count{stage=\"decode\"} 4.0", "_count{stage=\"decode\"} 2.0")
                           .replace("_sum{stage=\"decode\"} 0.012", "_sum{stage=\"decode\"} 0.002"))
    after = parse_metrics(EXPOSITION)
    figures = sidecar_figures(before, after)
    assert figures["stages_ms"] == {"decode": pytest.approx(5.0)}  # ack_wait added no batch in the window
    assert sidecar_figures({}, after)["stages_ms"] == {"ack_wait": pytest.approx(125.0), "decode": pytest.approx(3.0)}
    assert sidecar_figures({}, after)["mean_batch_size"] == 512 and sidecar_figures({}, after)["mean_input_age_ms"] == 10
    # Two workers' endpoints add up; a sidecar without these histograms gives {} and None.
    both = parse_metrics(EXPOSITION, parse_metrics(EXPOSITION))
    assert sidecar_figures({}, both)["mean_batch_size"] == 512
    assert sidecar_figures({}, {}) == {"stages_ms": {}, "mean_batch_size": None, "mean_input_age_ms": None}


def test_kafka_variants_are_shell_split_and_misspelt_ones_say_how_to_write_them() -> None:
    assert kafka_variants([]) == (("default", ()),)
    assert kafka_variants(["default=", "serial=--no-pipelining --batch-wait-ms 5", "l5=-X 'linger.ms=5'"]) == (
        ("default", ()), ("serial", ("--no-pipelining", "--batch-wait-ms", "5")), ("l5", ("-X", "linger.ms=5")))
    for bad, says in (("linger", "NAME=ARGS"), ("a-b=-X x=1", "NAME=ARGS"), ("q=-X 'open", "quote")):
        with pytest.raises(UsageError, match=says):
            kafka_variants([bad])
    with pytest.raises(UsageError, match="given twice"):
        kafka_variants(["a=", "a=-X linger.ms=5"])


def test_the_plot_has_a_latency_versus_rate_panel_for_kafka_rate_rows(tmp_path: Path) -> None:
    import matplotlib.image

    rows = [{"mode": "kafka-rate", "batch_size": 4096, "rate_per_s": rate, "p50_ms": p50, "p99_ms": 3 * p50,
             "p999_ms": 5 * p50, "throughput_per_s": rate, **({"variant": variant} if variant else {})}
            for variant in (None, "linger5") for rate, p50 in ((1000, 2.0), (5000, 4.0), (10000, 30.0))]
    report = {"bundle": {"model_version": "v"}, "config": {"slo_ms": 50}, "results": rows}
    plot_report(report, tmp_path / "with.png")
    plot_report(report | {"results": []}, tmp_path / "without.png")
    # A fourth panel: the figure is wider than the three-panel one.
    assert matplotlib.image.imread(tmp_path / "with.png").shape[1] > matplotlib.image.imread(tmp_path / "without.png").shape[1]


