"""`fraudscore bench`: the report, Prometheus outputs, and a gate that fails on a real regression only."""

from __future__ import annotations

from functools import partial

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from commands import EXE, fraudscore
from kafka_helpers import free_port
from project import ROOT
from waiting import wait_http

SMALL = ["--mode", "model", "--mode", "pipeline", "--batch-sizes", "1,64", "--seconds", "0.2", "--repeats", "3", "--quiet"]


bench = partial(fraudscore, "bench", timeout_s=900)


@pytest.fixture(scope="module")
def baseline(small_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "baseline.json"
    done = bench("--bundle", small_bundle, *SMALL, "--json", out)
    assert done.returncode == 0, done.stderr
    return out


def test_report_has_every_case_with_spread_machine_and_versions(baseline: Path) -> None:
    report = json.loads(baseline.read_text())
    assert report["schema"] == "fraudscore.bench/2"
    cases = {(r["mode"], r["batch_size"]) for r in report["results"]}
    assert cases == {("model", 1), ("model", 64), ("pipeline", 1), ("pipeline", 64)}
    for r in report["results"]:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput_per_s"] > 0
        assert r["repeats"] == 3 and r["spread"]["p99_ms"][0] <= r["spread"]["p99_ms"][1]
        # One definition of each figure: the headline p50/p99 are the pooled percentiles.
        assert r["p50_ms"] == r["percentiles_ms"]["50"] and r["p99_ms"] == r["percentiles_ms"]["99"]
        assert r["throughput_per_s"] == pytest.approx(r["batch_size"] / (r["p50_ms"] / 1e3))
    assert report["ratios"]["pipeline_overhead.cpu.b64"] > 1
    assert report["machine"]["cpus"] and "onnxruntime" in report["libraries"] and "numpy" in report["libraries"]
    assert report["run"]["id"] and report["run"]["commit"] and report["run"]["source"]


def test_every_report_field_is_documented(baseline: Path) -> None:
    """docs/bench.md has a table row for every key a model/pipeline report carries."""
    report = json.loads(baseline.read_text())
    documented = set(re.findall(r"^\| `([a-z_0-9.\[\]\"*]+)`", (ROOT / "docs" / "bench.md").read_text(), re.M))
    keys = {k for k in report} | {f"{k}.{sub}" for k in ("run", "machine", "libraries", "bundle", "config")
                                  for sub in report[k] if k != "libraries"}
    keys |= {f"results[].{k}" for r in report["results"] for k in r}
    keys |= {"libraries.*", "ratios.*", "results[].percentiles_ms.*"}
    assert keys - documented == set(), "add these to docs/bench.md's table of report fields"


def test_shadow_scoring_is_measured_beside_the_pipeline_and_documented(small_bundle, tmp_path: Path) -> None:
    from bundle_helpers import squared_bundle

    challenger = squared_bundle(small_bundle, tmp_path / "challenger", "challenger-squared")
    out = tmp_path / "shadow.json"
    done = bench("--bundle", small_bundle, "--mode", "pipeline", "--batch-sizes", "64", "--seconds", "0.1",
                 "--repeats", "2", "--challenger", challenger, "--json", out)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [(r["mode"], r["variant"]) for r in report["results"]] == [("pipeline", "fp32"), ("pipeline", "shadow")]
    shadow, plain = report["results"][1], report["results"][0]
    assert report["ratios"]["shadow_overhead.cpu.b64"] == pytest.approx(shadow["p50_ms"] / plain["p50_ms"])
    assert report["config"]["challenger"] == str(challenger)
    assert "pipeline shadow" in done.stdout  # the table names the variant
    documented = (ROOT / "docs" / "bench.md").read_text()
    assert "`config.challenger`" in documented and "shadow_overhead.DEVICE.bBATCH" in documented
    refused = bench("--bundle", small_bundle, "--mode", "model", "--challenger", challenger)
    assert refused.returncode == 2 and "--mode pipeline" in refused.stderr


def _gate(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_gate_passes_unchanged_and_fails_on_a_slowed_scorer(small_bundle, baseline: Path, tmp_path: Path) -> None:
    # Bounds wide enough for a 0.2 s run beside another test worker on two cores (a CI run
    # measured -61.7 % throughput unchanged), yet far inside what 5 ms per batch costs:
    # p50 >= 5 ms against ~0.25 ms, throughput <= 64 / 5 ms = 12,800/s against millions.
    gate = _gate(tmp_path / "gate.toml", """
[[bound]]
mode = "pipeline"
batch_size = 64
metric = "p50_ms"
max_increase = 5

[[bound]]
mode = "model"
batch_size = 64
metric = "throughput_per_s"
max_decrease = 0.9

[[bound]]
ratio = "pipeline_overhead.cpu.b64"
max = 200
""")
    unchanged = bench("--bundle", small_bundle, *SMALL, "--gate", gate, "--baseline", baseline)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "FAIL" not in unchanged.stdout

    slowed = bench("--bundle", small_bundle, *SMALL, "--gate", gate, "--baseline", baseline,
                   env={"FRAUDSCORE_BENCH_INJECT_DELAY_MS": "5"})
    assert slowed.returncode == 1, slowed.stdout + slowed.stderr
    failing = [line for line in slowed.stdout.splitlines() if line.startswith("FAIL")]
    assert any("pipeline b64 cpu p50_ms vs baseline" in line for line in failing)
    assert any("model b64 cpu throughput_per_s" in line for line in failing)
    assert "gate: FAIL" in slowed.stdout and "checked bounds failed" in slowed.stdout  # the verdict beside its table


def test_absolute_bounds_and_usage_errors(small_bundle, baseline: Path, tmp_path: Path) -> None:
    strict = _gate(tmp_path / "strict.toml", '[[bound]]\nmode = "model"\nbatch_size = 1\nmetric = "p99_ms"\nmax = 0.000001\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", strict)
    assert done.returncode == 1 and "FAIL" in done.stdout and "<= 1e-06" in done.stdout

    relative = _gate(tmp_path / "rel.toml", '[[bound]]\nmode = "model"\nbatch_size = 1\nmetric = "p99_ms"\nmax_increase = 0.1\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", relative)
    assert done.returncode == 2 and "no bound would be checked" in done.stderr and "--baseline" in done.stderr
    ratio_and_relative = _gate(tmp_path / "both.toml", relative.read_text() + '[[bound]]\nratio = "pipeline_overhead.cpu.b64"\nmax = 500\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", ratio_and_relative)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SKIP" in done.stdout and "not checked: no --baseline given" in done.stdout
    assert "gate: PASS, all 1 checked bounds hold; 1 relative bound skipped" in done.stdout
    nothing = _gate(tmp_path / "none.toml", '[[bound]]\nmode = "model"\nbatch_size = 999\nmetric = "p99_ms"\nmax = 1\n')
    done = bench("--bundle", small_bundle, *SMALL, "--gate", nothing)
    assert done.returncode == 2 and "selects no result" in done.stderr
    assert bench("--bundle", small_bundle, "--mode", "fast").returncode == 2
    assert bench("--bundle", small_bundle, *SMALL, "--gate", tmp_path / "absent.toml").returncode == 2
    done = bench("--bundle", small_bundle, "--mode", "kafka")
    assert done.returncode == 2 and "--bootstrap-servers" in done.stderr


PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_prom_file_plot_and_a_real_pushgateway(small_bundle, tmp_path: Path) -> None:
    gateway = shutil.which("prometheus-pushgateway")
    assert gateway, "prometheus-pushgateway missing: scripts/setup.sh installs it"
    port = free_port()
    proc = subprocess.Popen([gateway, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", 20)
        prom, png = tmp_path / "bench.prom", tmp_path / "bench.png"
        done = bench("--bundle", small_bundle, *SMALL, "--pushgateway", f"http://127.0.0.1:{port}",
                     "--prom-file", prom, "--plot", png, env={"GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "1",
                                                             "GITHUB_SHA": "c0ffee"})
        assert done.returncode == 0, done.stderr
        again = bench("--bundle", small_bundle, *SMALL, "--pushgateway", f"http://127.0.0.1:{port}",
                      "--run-id", "4243.1", "--commit", "beef")
        assert again.returncode == 0, again.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            pushed = r.read().decode()
        # Each run is its own group, named by run and commit, so a figure leads back to its CI run.
        for run_id, commit in (("4242.1", "c0ffee"), ("4243.1", "beef")):
            assert (f'fraudscore_bench_ratio{{commit="{commit}",instance="",job="fraudscore_bench",'
                    f'name="pipeline_overhead.cpu.b64",run_id="{run_id}"}}') in pushed
            assert f'push_time_seconds{{commit="{commit}",instance="",job="fraudscore_bench",run_id="{run_id}"}}' in pushed
        assert 'fraudscore_bench_latency_p99_seconds{batch_size="64",commit="c0ffee",device="cpu",instance=""' in pushed
        text = prom.read_text()
        assert 'run_id="4242.1"' in text and 'commit="c0ffee"' in text and "quantile" not in text
        # The exposition conventions, as Prometheus' own linter reads them.
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert png.read_bytes()[:4] == b"\x89PNG"
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_shipped_ci_gate_catches_each_kind_of_slowdown_on_the_bound_meant_for_it(small_bundle) -> None:
    """docs/bench.md "What each bound catches": the ratio's max catches a slower pipeline around
    the model, its min a cost added to model and pipeline alike (which a max alone cannot see)."""
    sweep = ["--bundle", small_bundle, "--mode", "model", "--mode", "pipeline", "--batch-sizes", "1,64,512,4096",
             "--repeats", "1", "--seconds", "0.1", "--quiet", "--gate", ROOT / "deploy" / "bench" / "ci-gate.toml"]
    unchanged = bench(*sweep)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    def failing(done: subprocess.CompletedProcess) -> set[str]:
        assert done.returncode == 1, done.stdout + done.stderr
        return {" ".join(line.split()[1:3]) for line in done.stdout.splitlines() if line.startswith("FAIL")}

    pipeline_only = failing(bench(*sweep, env={"FRAUDSCORE_BENCH_INJECT_DELAY_MS": "pipeline=5"}))
    assert pipeline_only == {"ratio pipeline_overhead.cpu.b512"}
    alike = bench(*sweep, env={"FRAUDSCORE_BENCH_INJECT_DELAY_MS": "5"})
    assert {"ratio pipeline_overhead.cpu.b512", "model b1"} <= failing(alike)
    ratio_row = next(line for line in alike.stdout.splitlines() if "ratio pipeline_overhead.cpu.b512" in line)
    assert "<= 40 and >= 2" in ratio_row and float(ratio_row.split()[3]) < 2  # failed on its min


WORKFLOW = ROOT / "deploy" / "ci" / "github-actions.yml"


def _workflow_steps() -> list[dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_every_artefact_the_ci_example_downloads_is_uploaded_and_the_baseline_comes_from_main() -> None:
    steps = _workflow_steps()
    uploads = {s["with"]["name"]: s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")}
    scripts = "\n".join(str(s.get("run", "")) for s in steps)
    downloaded = {s["with"]["name"] for s in steps if str(s.get("uses", "")).startswith("actions/download-artifact")}
    downloaded |= set(re.findall(r"gh run download [^\n]*--name (\S+)", scripts))
    assert downloaded, "the example compares against a baseline"
    assert downloaded - set(uploads) == set(), "downloaded artefacts nothing uploads"
    baseline = uploads["bench-baseline"]
    assert "refs/heads/main" in baseline["if"] and baseline["with"]["path"] == "baseline.json"
    assert "--baseline baseline.json" in scripts and "[ -f baseline.json ]" in scripts
    # docs/performance.md shows the shipped file, not a variant of it.
    assert WORKFLOW.read_text() in (ROOT / "docs" / "performance.md").read_text()


def test_the_ci_examples_bench_step_runs_as_written_first_without_then_with_a_baseline(small_bundle, tmp_path: Path) -> None:
    (step,) = [s["run"] for s in _workflow_steps() if "fraudscore bench" in str(s.get("run", ""))]
    (tmp_path / "bundle").symlink_to(small_bundle)  # what the workflow's export step leaves
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    env = dict(os.environ, PATH=f"{Path(EXE).parent}{os.pathsep}{os.environ['PATH']}")
    shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step]  # GitHub's `run:` shell

    first = subprocess.run(shell, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "not checked: no --baseline given" in first.stdout and "gate: PASS" in first.stdout

    (tmp_path / "baseline.json").write_bytes((tmp_path / "bench.json").read_bytes())  # main's upload, downloaded
    second = subprocess.run(shell, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "SKIP" not in second.stdout and "vs baseline" in second.stdout


@pytest.mark.parametrize("version", [1, 2])
def test_raw_mode_streams_the_reference_size_with_exact_features(version: int, request, tmp_path: Path) -> None:
    """With the bundle's own feature version: 15 features, or version 2's 21."""
    bundle = request.getfixturevalue("small_bundle" if version == 1 else "ratio_bundle")
    out = tmp_path / "raw.json"
    done = bench("--bundle", bundle, "--mode", "pipeline", "--mode", "raw", "--batch-sizes", "4096",
                 "--repeats", "1", "--seconds", "0.3", "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    (raw,) = [r for r in report["results"] if r["mode"] == "raw"]
    assert raw["throughput_per_s"] > 0 and raw["p99_ms"] >= raw["p50_ms"]
    assert raw["parity"]["rows"] >= 4096 and raw["parity"]["max_abs_diff"] == 0.0
    assert raw["state"]["customers"] == 5000 and raw["state"]["customer_bytes"] > 0 and raw["state"]["terminal_bytes"] > 0
    assert "raw_overhead.cpu.b4096" in report["ratios"]
