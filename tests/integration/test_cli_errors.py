"""Bad files and flags for every command: exit code 2, a message that says what to fix, no
traceback, and nothing written where the output would have gone."""

from __future__ import annotations

from functools import partial

import shutil
import subprocess
from pathlib import Path

import pytest

from fraudscore import Table, read_table, write_table
from commands import EXE, fraudscore

START = ["--start", "2018-04-01"]
KAFKA = ["--bootstrap-servers", "127.0.0.1:9", "--input-topic", "a", "--output-topic", "b", "--alerts-topic", "c",
         "--dlq-topic", "d", "--group-id", "g"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_bundle: Path) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("bad-files")
    run = partial(fraudscore, check=True, timeout_s=120)
    run("simulate", "--customers", "50", "--terminals", "100", "--days", "10", "--out", work / "tx.csv", "-q")
    run("features", "--in", work / "tx.csv", "--out", work / "features.parquet", "-q")
    feats = read_table(work / "features.parquet")
    write_table(Table({c: feats[c] for c in feats.columns if c != "TRANSACTION_ID"}), work / "no-id.csv")
    garbage = bytes(range(256)) * 12
    (work / "garbage.csv").write_bytes(garbage)
    (work / "garbage.parquet").write_bytes(garbage)
    data = (work / "features.parquet").read_bytes()
    (work / "truncated.parquet").write_bytes(data[: len(data) // 2])
    lines = (work / "tx.csv").read_text().splitlines()
    (work / "header-only.csv").write_text(lines[0] + "\n")
    (work / "few-columns.csv").write_text("\n".join(",".join(line.split(",")[:3]) for line in lines[:50]) + "\n")
    (work / "bad.toml").write_text("not = [toml")
    shutil.copytree(small_bundle, work / "bad-manifest")
    (work / "bad-manifest" / "manifest.json").write_text('{"model_version": ')
    (work / "full").mkdir()
    (work / "full" / "x").write_text("taken")
    return {"dir": work, "bundle": small_bundle, "run": small_bundle.parent / "run"} | {
        p.stem.replace("-", "_") + ("_" + p.suffix[1:] if p.suffix else ""): p for p in work.iterdir()}


# (command line with {placeholders}, a phrase the message must contain, the output that must not appear)
CASES = [
    ("simulate --out {dir}/x.txt", "*.csv, *.csv.gz or *.parquet", "x.txt"),
    ("simulate --out {full}/x/y.csv", "is a file", None),
    ("simulate --out {dir}/x.csv --days 0", "--days", "x.csv"),
    ("simulate --out {dir}/x.csv --start 2018-02-30", "2018-04-01", "x.csv"),
    ("features --in {garbage_csv} --out {dir}/o.parquet", "not a well-formed CSV file", "o.parquet"),
    ("features --in {truncated_parquet} --out {dir}/o.parquet", "not a readable Parquet file", "o.parquet"),
    ("features --in {few_columns_csv} --out {dir}/o.parquet", "missing column(s)", "o.parquet"),
    ("features --in {dir}/absent.csv --out {dir}/o.parquet", "no such file", "o.parquet"),
    ("train --data {header_only_csv} --out {dir}/run1 --start 2018-04-01", "missing feature column(s)", "run1"),
    ("train --data {features_parquet} --features NOPE --out {dir}/run1 --start 2018-04-01", "missing feature column(s) NOPE", "run1"),
    ("train --data {features_parquet} --model xgboost --out {dir}/run1 --start 2018-04-01", "mlp, autoencoder", "run1"),
    ("train --data {features_parquet} --out {dir}/run1 --start 2018-13-01", "a date like 2018-04-01", "run1"),
    ("train --data {garbage_parquet} --out {dir}/run1 --start 2018-04-01", "not a readable Parquet file", "run1"),
    ("export --run {dir} --out {dir}/b1", "a run directory", "b1"),
    ("export --run {run} --out {full}", "exists; choose another --out", None),
    ("evaluate --bundle {bundle} --data {garbage_parquet}", "not a readable Parquet file", None),
    # small_bundle trained on 2018-04-09..15: a split from 04-01 would test on 04-15..21.
    ("evaluate --bundle {bundle} --data {features_parquet} --start 2018-04-01", "overlaps", None),
    ("evaluate --bundle {dir}/absent --data {features_parquet}", "not a bundle directory", None),
    ("evaluate --bundle {bundle} --data {features_parquet} --device tpu", "auto, cpu, cuda", None),
    ("evaluate --bundle {bundle} --data {features_parquet} --json {full}/x/r.json", "is a file", None),
    ("score --bundle {bundle} --in {garbage_csv} --out {dir}/s.csv", "not a well-formed CSV file", "s.csv"),
    ("score --bundle {bundle} --in {tx_csv} --out {dir}/s.csv", "missing feature column(s)", "s.csv"),
    ("score --bundle {bad_manifest} --in {features_parquet} --out {dir}/s.csv", "not a readable JSON manifest", "s.csv"),
    ("score --bundle {bundle} --in {features_parquet} --out {dir}/s.csv --device tpu", "auto, cpu, cuda", "s.csv"),
    ("score --bundle {bundle} --in {features_parquet} --out {dir}/s.csv --threads 0", "--threads", "s.csv"),
    ("score --bundle {bundle} --in {features_parquet} --out {full}/x/s.csv", "is a file", None),
    ("score --bundle {bundle} --in {no_id_csv} --out {dir}/s.csv", "no id column TRANSACTION_ID", "s.csv"),
    ("score --bundle {bundle} --in {no_id_csv} --out {dir}/s.csv --id-column REF", "no id column REF", "s.csv"),
    ("bench --bundle {dir} --json {dir}/j.json", "a bundle directory holds model.onnx and manifest.json", "j.json"),
    ("bench --bundle {bundle} --gate {bad_toml} --json {dir}/j.json", "not valid TOML", "j.json"),
    ("bench --bundle {bundle} --batch-sizes a,b --json {dir}/j.json", "comma-separated integers", "j.json"),
    ("bench --bundle {bundle} --mode fast --json {dir}/j.json", "choose model, pipeline, raw or kafka", "j.json"),
    ("run --config {bad_toml}", "not valid TOML", None),
    ("run --bundle {bundle} {kafka} --offset-reset middle", "earliest or latest", None),
    ("run --bundle {bundle} {kafka} --batch-size 0", "must be positive", None),
    ("run --bundle {dir}/absent {kafka}", "not a bundle directory", None),
    ("run --bundle {bad_manifest} {kafka}", "not a readable JSON manifest", None),
    ("run --bundle {bundle} {kafka} --device tpu", "auto, cpu, cuda", None),
    ("run --bundle {bundle}", "missing --bootstrap-servers", None),
]


@pytest.mark.parametrize("line, phrase, output", CASES, ids=[c[0].split()[0] + "-" + str(i) for i, c in enumerate(CASES)])
def test_bad_files_and_flags_fail_clearly_and_write_nothing(files, line, phrase, output) -> None:
    before = sorted(p.relative_to(files["dir"]) for p in files["dir"].rglob("*"))
    args = line.format(kafka=" ".join(KAFKA), **{k: str(v) for k, v in files.items()}).split()
    done = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert phrase in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    after = sorted(p.relative_to(files["dir"]) for p in files["dir"].rglob("*"))
    assert after == before  # no output, no temporary file left behind
    if output:
        assert not (files["dir"] / output).exists()


def test_score_takes_ids_from_the_id_column_and_never_invents_them(files, tmp_path) -> None:
    feats = read_table(files["features_parquet"])
    renamed = tmp_path / "renamed.csv"
    write_table(Table({("tx_ref" if c == "TRANSACTION_ID" else c): feats[c] for c in feats.columns}), renamed)
    refused = subprocess.run([EXE, "score", "--bundle", str(files["bundle"]), "--in", str(renamed), "--out",
                              str(tmp_path / "s.csv")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "pass --id-column NAME" in refused.stderr and not (tmp_path / "s.csv").exists()
    done = subprocess.run([EXE, "score", "--bundle", str(files["bundle"]), "--in", str(renamed), "--out",
                           str(tmp_path / "s.csv"), "--id-column", "tx_ref"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scored = read_table(tmp_path / "s.csv")
    assert scored.columns == ["tx_ref", "score", "decision"]
    assert scored["tx_ref"].tolist() == feats["TRANSACTION_ID"].tolist()  # the input's ids, in its order
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"TRANSACTION_ID": 1}\n')
    wrong = subprocess.run([EXE, "score", "--bundle", str(files["bundle"]), "--in", str(jsonl), "--out",
                            str(tmp_path / "s.jsonl"), "--id-column", "tx_ref"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "--id-column applies to tables" in wrong.stderr
