"""`fraudscore features --terminal-resolution`: the resolution is recorded for `train` (so the
bundle carries it), and refused without a Parquet output that can record it."""

from __future__ import annotations

import dataclasses
import subprocess


from fraudscore import simulate, write_table
from fraudscore.features.baseline import recorded_spec
from fraudscore.features.spec import BASELINE_SPEC


def test_features_records_the_resolution_for_train_and_refuses_it_without_parquet(tmp_path) -> None:
    from commands import EXE

    write_table(simulate(customers=50, terminals=100, days=10, seed=2).transactions, tmp_path / "tx.parquet")
    done = subprocess.run([EXE, "features", "--in", str(tmp_path / "tx.parquet"), "--out", str(tmp_path / "f.parquet"),
                           "--terminal-resolution", "6h"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert recorded_spec(tmp_path / "f.parquet") == dataclasses.replace(BASELINE_SPEC, terminal_resolution_s=21_600)
    done = subprocess.run([EXE, "features", "--in", str(tmp_path / "tx.parquet"), "--out", str(tmp_path / "f.csv"),
                           "--terminal-resolution", "1d"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs a .parquet --out" in done.stderr, done.stderr
    done = subprocess.run([EXE, "features", "--in", str(tmp_path / "tx.parquet"), "--out", str(tmp_path / "g.parquet"),
                           "--terminal-resolution", "90m"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--terminal-resolution" in done.stderr and "1d" in done.stderr, done.stderr
    assert recorded_spec(tmp_path / "tx.parquet") is None  # a table `features` did not write records none
