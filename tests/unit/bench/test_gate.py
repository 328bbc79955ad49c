"""The bench gate's file checking and verdicts, the report's run identity: pure logic, no bench is run."""

from __future__ import annotations

import datetime as dt

import pytest
from project import ROOT

from fraudscore.bench.gate import check, format_outcomes, load_gate, parse_gate, verdict
from fraudscore.bench.harness import SCHEMA
from fraudscore.bench.provenance import run_identity
from fraudscore.errors import UsageError



def _report(**figures: float) -> dict:
    """A report with one pipeline b64 case and the ratio; figures override the defaults."""
    row = {"mode": "pipeline", "device": "cpu", "variant": "fp32", "batch_size": 64, "p50_ms": 0.3, "p99_ms": 0.5,
           "throughput_per_s": 200_000.0, "spread": {"p99_ms": [0.45, 0.55]}}
    row.update({k: v for k, v in figures.items() if k != "ratio"})
    return {"schema": SCHEMA, "results": [row], "ratios": {"pipeline_overhead.cpu.b64": figures.get("ratio", 10.0)}}


CASE = {"mode": "pipeline", "batch_size": 64, "metric": "p99_ms"}


@pytest.mark.parametrize(("bound", "named", "suggested"), [
    (CASE | {"maximum": 1}, "maximum", "max"),
    (CASE | {"max_increse": 0.2}, "max_increse", "max_increase"),
    (CASE | {"max": 1, "batchsize": 64}, "batchsize", "batch_size"),
    ({"ratio": "pipeline_overhead.cpu.b64", "max": 40, "metric": "p99_ms"}, "metric", None),
])
def test_an_unknown_key_in_a_bound_is_refused_with_the_valid_keys_and_the_closest(bound, named, suggested) -> None:
    with pytest.raises(UsageError) as caught:
        parse_gate({"bound": [bound]}, "g.toml")
    message = str(caught.value)
    assert f"unknown key {named!r}" in message and "bound 1" in message
    valid = "ratio, min, max" if "ratio" in bound else "mode, batch_size, device, variant, rate_per_s, metric, min, max"
    assert f"valid keys for a {'ratio' if 'ratio' in bound else 'case'} bound: {valid}" in message
    if suggested:
        assert f"did you mean {suggested!r}" in message


def test_unknown_top_level_keys_and_bounds_that_check_nothing_are_refused() -> None:
    with pytest.raises(UsageError, match=r"unknown top-level key 'bounds' \(did you mean 'bound'\?\)"):
        parse_gate({"bounds": [CASE | {"max": 1}]})
    with pytest.raises(UsageError, match="none found"):
        parse_gate({"bound": []})
    with pytest.raises(UsageError, match="no limit"):
        parse_gate({"bound": [CASE]})
    with pytest.raises(UsageError, match="must be a finite number"):
        parse_gate({"bound": [CASE | {"max": "1"}]})
    with pytest.raises(UsageError, match="metric 'p95_ms' is not one of"):
        parse_gate({"bound": [CASE | {"metric": "p95_ms", "max": 1}]})
    with pytest.raises(UsageError, match="missing batch_size"):
        parse_gate({"bound": [{"mode": "model", "metric": "p99_ms", "max": 1}]})
    with pytest.raises(UsageError, match="negative"):
        parse_gate({"bound": [CASE | {"max_increase": -0.1}]})


def test_the_shipped_gates_are_valid_and_check_something_without_a_baseline() -> None:
    for name in ("gate.toml", "ci-gate.toml", "ci-gate-kafka.toml"):
        bounds = load_gate(ROOT / "deploy" / "bench" / name)
        assert any(b.ratio is not None or b.is_absolute for b in bounds), name


def _kafka_report(p99_at_1000: float = 40.0, lost: int = 0) -> dict:
    """A kafka report: a drain row and two kafka-rate rows that differ only in their offered rate."""
    rate = {"mode": "kafka-rate", "device": "cpu", "batch_size": 4096, "throughput_per_s": 1000.0, "messages": 10000,
            "repeats": 1}
    return {"schema": SCHEMA, "ratios": {}, "results": [
        {"mode": "kafka-drain", "device": "cpu", "batch_size": 4096, "p50_ms": None, "p99_ms": None,
         "throughput_per_s": 30_000.0, "messages": 20000, "lost": 0, "repeats": 1},
        rate | {"rate_per_s": 1000.0, "p50_ms": 12.0, "p99_ms": p99_at_1000, "lost": lost},
        rate | {"rate_per_s": 5000.0, "throughput_per_s": 5000.0, "p50_ms": 300.0, "p99_ms": 900.0, "lost": 0},
    ]}


KAFKA_RATE = {"mode": "kafka-rate", "batch_size": 4096, "rate_per_s": 1000}


def test_rate_per_s_selects_the_kafka_rate_row_of_that_offered_rate() -> None:
    bounds = parse_gate({"bound": [KAFKA_RATE | {"metric": "p99_ms", "max": 250},
                                   KAFKA_RATE | {"metric": "lost", "max": 0},
                                   {"mode": "kafka-drain", "batch_size": 4096, "metric": "throughput_per_s", "min": 2000}]})
    assert bounds[0].rate_per_s == 1000.0 and bounds[0].label == "kafka-rate b4096 cpu @1000/s p99_ms"
    outcomes = check(_kafka_report(), bounds, None)
    assert [(o.status, o.measured) for o in outcomes] == [("PASS", 40.0), ("PASS", 0.0), ("PASS", 30_000.0)]
    # The 5,000 tx/s row (p99 900 ms) is not the one checked; a slow or lossy 1,000 tx/s row fails.
    assert [o.status for o in check(_kafka_report(p99_at_1000=300.0, lost=2), bounds, None)] == ["FAIL", "FAIL", "PASS"]
    assert "@1000/s p99_ms" in format_outcomes(outcomes)


def test_a_bound_that_selects_several_rows_or_a_rate_not_swept_is_a_usage_error() -> None:
    several = parse_gate({"bound": [{"mode": "kafka-rate", "batch_size": 4096, "metric": "p99_ms", "max": 250}]})
    with pytest.raises(UsageError, match=r"selects 2 results .* add rate_per_s \(one of 1000, 5000\)"):
        check(_kafka_report(), several, None)
    absent = parse_gate({"bound": [KAFKA_RATE | {"rate_per_s": 2000, "metric": "p99_ms", "max": 250}]})
    with pytest.raises(UsageError, match="selects no result .*--kafka-rates"):
        check(_kafka_report(), absent, None)


@pytest.mark.parametrize(("rate", "message"), [("1000", "must be a finite number"), (True, "must be a finite number"),
                                                (0, "not positive"), (-5, "not positive")])
def test_rate_per_s_must_be_a_positive_number(rate, message) -> None:
    with pytest.raises(UsageError, match=f"bound 1: rate_per_s.*{message}"):
        parse_gate({"bound": [KAFKA_RATE | {"rate_per_s": rate, "metric": "p99_ms", "max": 250}]})


def test_relative_bounds_are_skipped_with_a_notice_without_a_usable_baseline() -> None:
    bounds = parse_gate({"bound": [CASE | {"max_increase": 0.5}, CASE | {"max": 1.0}]})
    outcomes = check(_report(), bounds, None)
    assert [o.status for o in outcomes] == ["SKIP", "PASS"]
    assert "not checked: no --baseline given" in format_outcomes(outcomes)
    assert verdict(outcomes) == "gate: PASS, all 1 checked bounds hold; 1 relative bound skipped (see the table)"
    old = _report() | {"schema": "fraudscore.bench/1"}
    assert "schema" in check(_report(), bounds, old)[0].note
    other_case = _report() | {"results": [_report()["results"][0] | {"batch_size": 512}]}
    assert check(_report(), bounds, other_case)[0].note == "not checked: the baseline has no such case"


def test_headroom_has_one_meaning_for_every_kind_of_bound() -> None:
    """Distance to the limit as a fraction of the limit: positive inside, negative beyond."""
    bounds = parse_gate({"bound": [
        CASE | {"max": 1.0},                                                    # 0.5 under 1.0: +50 %
        {"mode": "pipeline", "batch_size": 64, "metric": "throughput_per_s", "min": 100_000},  # +100 %
        {"ratio": "pipeline_overhead.cpu.b64", "max": 8.0},                    # 10 over 8: -25 %
        CASE | {"max_increase": 0.25},                                          # limit 0.4 * 1.25 = 0.5: 0 %
        {"mode": "pipeline", "batch_size": 64, "metric": "throughput_per_s", "max_decrease": 0.5},  # limit 200k: 0 %
    ]})
    baseline = _report(p99_ms=0.4, throughput_per_s=400_000.0)
    outcomes = check(_report(), bounds, baseline)
    assert [round(o.headroom, 6) for o in outcomes] == [0.5, 1.0, -0.25, 0.0, 0.0]
    assert [o.status for o in outcomes] == ["PASS", "PASS", "FAIL", "PASS", "PASS"]
    assert outcomes[3].limit == "<= 0.5 (+25%)" and outcomes[3].baseline == "0.4 (+25.0%)"
    assert verdict(outcomes) == "gate: FAIL, 1 of 5 checked bounds failed"


def test_run_identity_comes_from_the_ci_and_is_safe_as_a_label_and_a_url_segment() -> None:
    github = run_identity(environ={"GITHUB_RUN_ID": "123", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_SHA": "abc"})
    assert github == {"id": "123.2", "commit": "abc", "source": "GITHUB_RUN_ID"}
    gitlab = run_identity(environ={"CI_PIPELINE_ID": "77", "CI_COMMIT_SHA": "def"})
    assert gitlab == {"id": "77", "commit": "def", "source": "CI_PIPELINE_ID"}
    flags = run_identity("nightly/3", "f00", environ={"GITHUB_RUN_ID": "9", "GITHUB_SHA": "abc"})
    assert flags == {"id": "nightly_3", "commit": "f00", "source": "--run-id"}
    local = run_identity(environ={}, now=dt.datetime(2026, 11, 29, 15, 0, tzinfo=dt.UTC))
    assert local["id"].startswith("local-") and local["id"].endswith("-20261129T150000Z") and local["source"] == "local"
    assert local["commit"]  # git rev-parse HEAD here, "unknown" outside a checkout
