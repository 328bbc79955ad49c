"""`fraudscore simulate` as a user runs it: byte-identical output for one seed in every format,
and bad flags refused with the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commands import fraudscore
from fraudscore import read_table, simulate


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_cli_output_is_byte_identical_for_the_same_seed(tmp_path: Path, suffix: str) -> None:
    args = ["--customers", "200", "--terminals", "400", "--days", "15", "--seed", "5", "--start", "2019-01-01"]
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    assert fraudscore("simulate", *args, "--out", str(first)).returncode == 0
    assert fraudscore("simulate", *args, "--out", str(second), "--quiet").returncode == 0
    assert first.read_bytes() == second.read_bytes()
    table = read_table(first)
    expected = simulate(customers=200, terminals=400, days=15, seed=5, start=np.datetime64("2019-01-01").item())
    assert table.equals(expected.transactions)


def test_cli_rejects_bad_flags_with_a_fix(tmp_path: Path) -> None:
    bad_suffix = fraudscore("simulate", "--out", str(tmp_path / "x.txt"))
    assert bad_suffix.returncode == 2 and "*.csv, *.csv.gz or *.parquet" in bad_suffix.stderr
    bad_date = fraudscore("simulate", "--out", str(tmp_path / "x.csv"), "--start", "01/04/2018")
    assert bad_date.returncode == 2 and "2018-04-01" in bad_date.stderr
    zero = fraudscore("simulate", "--out", str(tmp_path / "x.csv"), "--customers", "0")
    assert zero.returncode == 2
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("")
    through_file = fraudscore("simulate", "--out", str(tmp_path / "afile" / "x.csv"))
    assert through_file.returncode == 2 and "is a file" in through_file.stderr
    fresh = fraudscore("simulate", "--out", str(tmp_path / "new" / "dir" / "x.csv"), "--days", "2", "--customers", "5",
                        "--terminals", "10")
    assert fresh.returncode == 0 and (tmp_path / "new" / "dir" / "x.csv").is_file()  # parents created
