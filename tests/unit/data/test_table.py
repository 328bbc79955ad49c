"""Table files: both CSV readers agree, writes are atomic and deterministic, bad files get clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fraudscore import InputError, Table, read_table, simulate, write_table
from fraudscore.data import table as table_module


@pytest.fixture(scope="module")
def tx() -> Table:
    return simulate(customers=100, terminals=200, days=10, seed=3).transactions


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_numpy_and_pyarrow_readers_agree(tmp_path: Path, tx: Table, suffix: str) -> None:
    path = tmp_path / f"tx{suffix}"
    write_table(tx, path)
    by_numpy = read_table(path, engine="numpy")
    by_arrow = read_table(path, engine="pyarrow")
    assert by_numpy.equals(tx)
    assert by_arrow.equals(tx)


def test_unknown_columns_are_inferred_and_text_is_quoted(tmp_path: Path) -> None:
    table = Table(
        {
            "n": np.array([1, -2, 3]),
            "x": np.array([0.1, 1e-7, 2.5]),
            "note": np.array(['plain', 'with, comma', 'say "hi"'], dtype=np.dtypes.StringDType()),
        }
    )
    path = tmp_path / "t.csv"
    write_table(table, path)
    for engine in ("numpy", "pyarrow"):
        back = read_table(path, engine=engine)
        assert back["n"].dtype == np.int64 and list(back["n"]) == [1, -2, 3]
        assert back["x"].dtype == np.float64 and np.array_equal(back["x"], table["x"])
        assert list(back["note"]) == ["plain", "with, comma", 'say "hi"'], engine


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, tx: Table, monkeypatch) -> None:
    path = tmp_path / "tx.csv"
    path.write_text("previous contents\n")

    def boom(_table):
        raise RuntimeError("disk full")

    monkeypatch.setattr(table_module, "csv_bytes", boom)
    with pytest.raises(RuntimeError):
        write_table(tx, path)
    assert path.read_text() == "previous contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tx.csv"]


def test_gzip_output_has_no_timestamp(tmp_path: Path, tx: Table) -> None:
    write_table(tx, tmp_path / "a.csv.gz")
    header = (tmp_path / "a.csv.gz").read_bytes()[:10]
    assert header[4:8] == b"\x00\x00\x00\x00"  # MTIME field is zero: same table, same bytes


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\*\.csv, \*\.csv\.gz or \*\.parquet"):
        read_table(tmp_path / "x.xlsx")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n4,5,6\n")
    with pytest.raises(InputError, match="2 rows do not have 2 fields"):
        read_table(ragged, engine="numpy")
    not_gzip = tmp_path / "plain.csv.gz"
    not_gzip.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="cannot be read"):
        read_table(not_gzip, engine="numpy")
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("a,b\n")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_table(not_parquet)
    bad_id = tmp_path / "bad_id.csv"
    bad_id.write_text("TRANSACTION_ID,TX_AMOUNT\n1,2.0\nx,3.0\n")
    for engine in ("numpy", "pyarrow"):
        with pytest.raises(InputError, match="column TRANSACTION_ID: 1 rows"):
            read_table(bad_id, engine=engine)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


@st.composite
def tables(draw) -> Table:
    n = draw(st.integers(1, 30))
    floats = hnp.arrays(np.float64, n, elements=st.floats(allow_nan=False, allow_infinity=False, width=64))
    repeated = st.lists(st.sampled_from([0.0, 0.25, 1 / 3, 220.01, -5.5]), min_size=n, max_size=n).map(np.array)
    stamps = hnp.arrays(np.int64, n, elements=st.integers(-2_000_000_000, 4_000_000_000))
    return Table(
        {
            "TRANSACTION_ID": draw(hnp.arrays(np.int64, n, elements=st.integers(-(2**62), 2**62))),
            "TX_DATETIME": draw(stamps).astype("datetime64[s]"),
            "TX_AMOUNT": draw(st.one_of(floats, repeated)),
            "COUNT": draw(hnp.arrays(np.int64, n, elements=st.integers(0, 3))),
        }
    )


@settings(max_examples=100, deadline=None)
@given(tables())
def test_csv_round_trip_is_exact(tmp_path_factory, table: Table) -> None:
    path = tmp_path_factory.mktemp("rt") / "t.csv"
    write_table(table, path)
    for engine in ("numpy", "pyarrow"):
        assert read_table(path, engine=engine).equals(table), engine
