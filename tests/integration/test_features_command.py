"""`fraudscore features` as a user runs it: round trips in every format, bad files refused with
nothing written, renamed raw columns mapped (and refused when one column has two roles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commands import fraudscore
from fraudscore import BASELINE_FEATURES, Table, add_baseline_features, baseline_features, read_table, simulate, write_table


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_cli_round_trip(tmp_path: Path, suffix: str) -> None:
    tx = simulate(customers=80, terminals=160, days=20, seed=9).transactions
    raw, out = tmp_path / f"raw{suffix}", tmp_path / f"features{suffix}"
    write_table(tx, raw)
    done = fraudscore("features", "--in", str(raw), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert read_table(out).equals(add_baseline_features(tx))


def test_cli_refuses_bad_files_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "features.csv"
    bad_dates = tmp_path / "bad_dates.csv"
    bad_dates.write_text(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
        "1,2018-04-01 00:00:01,1,1,5.00,0\n2,yesterday,1,1,3.00,0\n3,2018-02-30 10:00:00,1,1,3.00,0\n"
    )
    done = fraudscore("features", "--in", str(bad_dates), "--out", str(out))
    assert done.returncode == 2
    assert "column TX_DATETIME: 2 rows not valid" in done.stderr and "yesterday" in done.stderr

    negative = tmp_path / "negative.csv"
    negative.write_text(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
        "1,2018-04-01 00:00:01,1,1,-5.00,0\n2,2018-04-01 00:00:02,1,1,,0\n"
    )
    done = fraudscore("features", "--in", str(negative), "--out", str(out))
    assert done.returncode == 2
    assert "TX_AMOUNT" in done.stderr and "negative" in done.stderr and "NaN" in done.stderr

    missing = tmp_path / "missing.csv"
    missing.write_text("TRANSACTION_ID,CUSTOMER_ID\n1,2\n")
    done = fraudscore("features", "--in", str(missing), "--out", str(out))
    assert done.returncode == 2 and "missing column(s) TX_DATETIME" in done.stderr

    done = fraudscore("features", "--in", str(tmp_path / "absent.csv"), "--out", str(out))
    assert done.returncode == 2 and "no such file" in done.stderr

    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


RENAMED = {"TRANSACTION_ID": "tx_ref", "TX_DATETIME": "ts", "CUSTOMER_ID": "card", "TERMINAL_ID": "pos",
           "TX_AMOUNT": "amount", "TX_FRAUD": "is_fraud"}


def test_renamed_raw_columns_are_mapped_and_give_the_same_features(tmp_path: Path) -> None:
    tx = simulate(customers=60, terminals=120, days=12, seed=4).transactions
    renamed = Table({RENAMED.get(c, c): tx[c] for c in tx.columns})
    expected = baseline_features(tx)
    assert baseline_features(renamed, columns=RENAMED).equals(expected)
    raw, out = tmp_path / "raw.csv", tmp_path / "features.csv"
    write_table(renamed, raw)
    refused = fraudscore("features", "--in", str(raw), "--out", str(out))
    assert refused.returncode == 2 and "missing column(s) tx_ref" not in refused.stderr
    assert "missing column(s) TRANSACTION_ID" in refused.stderr and "--time-column" in refused.stderr
    done = fraudscore("features", "--in", str(raw), "--out", str(out), "--id-column", "tx_ref", "--time-column", "ts",
                       "--customer-column", "card", "--terminal-column", "pos", "--amount-column", "amount",
                       "--label", "is_fraud")
    assert done.returncode == 0, done.stderr
    table = read_table(out)
    assert table.columns[: len(renamed.columns)] == renamed.columns  # raw columns kept under their own names
    for name in BASELINE_FEATURES:  # the model's inputs under the handbook's names, TX_AMOUNT included
        assert np.allclose(table[name], expected[name]), name


def test_cli_refuses_two_roles_for_one_column(tmp_path: Path) -> None:
    done = fraudscore("features", "--in", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o.csv"),
                       "--time-column", "CUSTOMER_ID")
    assert done.returncode == 2 and "six different columns" in done.stderr
