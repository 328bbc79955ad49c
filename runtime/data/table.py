"""A small columnar table and its files: CSV, gzipped CSV, Parquet.

`Table` is an ordered mapping of column names to 1-D numpy arrays of one length.
It is what `simulate` returns and what `features` consumes, so the bench and the
demo can drive load in process without touching a file.

Reading CSV uses pyarrow's multithreaded parser when pyarrow is installed (about
1 s for 1.75 M rows) and a pure numpy path otherwise (several seconds); both go
through the same column coercion, and a test checks they agree. Writing has one
path so that the same table always gives the same bytes. Every write goes to a
temporary file that is renamed into place: a failed write leaves nothing behind.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from fraudscore.atomic import check_parent, replacing
from fraudscore.errors import InputError

STRING = np.dtypes.StringDType()

# Columns whose type is known from the handbook's schema. Unknown columns are inferred.
COLUMN_TYPES: dict[str, str] = {
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": "datetime64[s]",
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    "TX_AMOUNT": "float64",
    "TX_TIME_SECONDS": "int64",
    "TX_TIME_DAYS": "int64",
    "TX_FRAUD": "int64",
    "TX_FRAUD_SCENARIO": "int64",
}

SUFFIXES = (".csv", ".csv.gz", ".parquet")

# zlib level 1: about 3x faster than the default 6 on these tables, for files ~25 % larger.
GZIP_LEVEL = 1


class Table:
    """Named 1-D numpy columns of equal length, in insertion order. Immutable by convention.

    `len(table)` is the number of rows; iterating yields column names.
    """

    def __init__(self, columns: Mapping[str, np.ndarray] | Table | Iterable[tuple[str, np.ndarray]]):
        items = list(columns.items()) if hasattr(columns, "items") else list(columns)
        self._columns: dict[str, np.ndarray] = {}
        length = None
        for name, values in items:
            array = np.asarray(values)
            if array.ndim != 1:
                raise ValueError(f"column {name!r} must be 1-D, got shape {array.shape}")
            if length is None:
                length = len(array)
            elif len(array) != length:
                raise ValueError(f"column {name!r} has {len(array)} rows, expected {length}")
            self._columns[name] = array
        self._length = length or 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns are {', '.join(self._columns)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return self._length

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def items(self):
        return self._columns.items()

    def values(self):
        return self._columns.values()

    @property
    def rows(self) -> int:
        return self._length

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def with_columns(self, columns: Mapping[str, np.ndarray]) -> Table:
        """A new table with `columns` added (or replaced, keeping their position)."""
        merged = dict(self._columns)
        merged.update(columns)
        return Table(merged)

    def select(self, names: Iterable[str]) -> Table:
        return Table((name, self[name]) for name in names)

    def take(self, indices: np.ndarray) -> Table:
        """Rows at `indices` (an integer index array or a boolean mask)."""
        return Table((name, values[indices]) for name, values in self._columns.items())

    def equals(self, other: Table) -> bool:
        return self.columns == other.columns and all(
            self[c].dtype == other[c].dtype and np.array_equal(self[c], other[c], equal_nan=self[c].dtype.kind == "f")
            for c in self.columns
        )

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}:{a.dtype}" for n, a in self._columns.items())
        return f"Table({self._length} rows; {cols})"


def file_format(path: str | os.PathLike[str]) -> str:
    """'csv', 'csv.gz' or 'parquet' from the file name; an InputError for anything else."""
    name = str(path).lower()
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if name.endswith(suffix):
            return suffix[1:]
    raise InputError(f"{path}: unknown file type; name it *.csv, *.csv.gz or *.parquet")


def pyarrow_or_none():
    """The pyarrow module with its csv and parquet parts, or None where pyarrow is not installed."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.csv
        import pyarrow.parquet

        return pyarrow
    except ImportError:
        return None


# ---------------------------------------------------------------------------- reading


def read_table(path: str | os.PathLike[str], *, engine: str = "auto") -> Table:
    """Read a CSV, gzipped CSV or Parquet file. `engine` is 'auto', 'pyarrow' or 'numpy' (CSV only)."""
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    pa = pyarrow_or_none()
    if fmt == "parquet":
        if pa is None:
            raise InputError(f"{path}: reading Parquet needs pyarrow; pip install 'fraudscore[parquet]' or use CSV")
        try:
            arrow = pa.parquet.read_table(path)
        except pa.ArrowException as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        raw = {name: _arrow_to_numpy(arrow.column(name)) for name in arrow.column_names}
    elif engine == "numpy" or (engine == "auto" and pa is None):
        raw = _read_csv_numpy(path, fmt)
    else:
        if pa is None:
            raise InputError("engine 'pyarrow' requested but pyarrow is not installed")
        raw = _read_csv_arrow(pa, path)
    if not raw:
        raise InputError(f"{path}: no columns; the first line must be a header")
    return Table((name, _coerce(path, name, values)) for name, values in raw.items())


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata `write_table` stored in a Parquet file; {} for CSV or a file without any."""
    path = Path(path)
    if file_format(path) != "parquet" or not path.is_file() or pyarrow_or_none() is None:
        return {}
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        raw = pq.read_schema(path).metadata or {}
    except pa.ArrowException as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW:")}


def _arrow_to_numpy(column) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("s"))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(column.to_pylist(), dtype=STRING)
    return column.to_numpy()


def _read_csv_arrow(pa, path: Path) -> dict[str, np.ndarray]:
    csv = pa.csv
    # Known non-numeric columns are read as text and coerced by our own code, so a bad
    # value gives the same error on both engines.
    convert = csv.ConvertOptions(
        column_types={"TX_DATETIME": pa.string()},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        arrow = csv.read_csv(path, convert_options=convert)
    except pa.ArrowInvalid as exc:
        # Mixed columns (e.g. a word in a number column): fall back to text for all.
        if "CSV parse error" in str(exc) or "Empty CSV file" in str(exc):
            # pyarrow appends the offending row; a transaction file's rows stay out of messages.
            reason = re.sub(r"(got \d+):.*", r"\1", str(exc), flags=re.DOTALL)
            raise InputError(f"{path}: not a well-formed CSV file ({reason})") from None
        return _read_csv_numpy(path, file_format(path))
    return {name: _arrow_to_numpy(arrow.column(name)) for name in arrow.column_names}


def _read_csv_numpy(path: Path, fmt: str) -> dict[str, np.ndarray]:
    opener = gzip.open if fmt == "csv.gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as {fmt} ({exc})") from None
    if '"' in text:
        return _read_quoted_csv(path, text)
    lines = text.splitlines()
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        return {}
    header = lines[0].split(",")
    width = len(header)
    body = lines[1:]
    if not body:
        return {name: np.array([], dtype=STRING) for name in header}
    counts = np.strings.count(np.array(body, dtype=STRING), ",") + 1
    ragged = counts != width
    if ragged.any():
        raise InputError(
            f"{path}: {int(ragged.sum())} rows do not have {width} fields like the header "
            f"(first at line {int(np.argmax(ragged)) + 2})"
        )
    fields = ",".join(body).split(",")
    return {name: np.array(fields[i::width], dtype=STRING) for i, name in enumerate(header)}


def _read_quoted_csv(path: Path, text: str) -> dict[str, np.ndarray]:
    import csv

    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise InputError(f"{path}: {sum(len(r) != len(header) for r in body)} rows do not have {len(header)} fields like the header")
    return {name: np.array([r[i] for r in body], dtype=STRING) for i, name in enumerate(header)}


def _coerce(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """Give a column its schema type (known columns) or the narrowest of int64/float64/text."""
    want = COLUMN_TYPES.get(name)
    if want is None:
        if values.dtype.kind in "iufbM":
            return values.astype(np.int64) if values.dtype.kind in "bu" else values
        for candidate in ("int64", "float64"):
            try:
                return values.astype(candidate)
            except ValueError:
                continue
        return values.astype(STRING)
    if values.dtype == np.dtype(want):
        return values
    if want.startswith("datetime64") and values.dtype.kind == "M":
        return values.astype(want)
    if want == "int64" and values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise InputError(
                f"{path}: column {name}: {int(bad.sum())} rows empty or not whole numbers "
                f"(first at data row {int(np.argmax(bad)) + 1}); fix or drop them"
            )
        return values.astype(np.int64)
    try:
        return values.astype(want)
    except (ValueError, TypeError, OverflowError):
        bad = _unparseable(values, want)
        kind = "dates (expected YYYY-MM-DD HH:MM:SS)" if want.startswith("datetime64") else want
        raise InputError(
            f"{path}: column {name}: {int(bad.sum())} rows not valid {kind} "
            f"(first at data row {int(np.argmax(bad)) + 1}: {str(values[np.argmax(bad)])!r}); fix or drop them"
        ) from None


def _unparseable(values: np.ndarray, dtype: str) -> np.ndarray:
    """Mask of the values that do not convert; used only to explain an error."""
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        try:
            np.array([v]).astype(dtype)
        except (ValueError, TypeError, OverflowError):
            bad[i] = True
    return bad


# ---------------------------------------------------------------------------- writing


def write_table(table: Table, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Write atomically as CSV, gzipped CSV (deterministic: no timestamp in the header) or Parquet.
    `metadata` (Parquet only: CSV has nowhere to keep it) is stored in the file's schema;
    `read_metadata` gives it back."""
    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet" and pyarrow_or_none() is None:
        raise InputError(f"{path}: writing Parquet needs pyarrow; pip install 'fraudscore[parquet]' or use .csv")
    check_parent(path)  # missing directories are created by the atomic write
    with replacing(path) as tmp:
        if fmt == "parquet":
            _write_parquet(table, tmp, metadata)
        else:
            data = csv_bytes(table)
            with open(tmp, "wb") as raw:
                if fmt == "csv.gz":
                    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz:
                        gz.write(data)
                else:
                    raw.write(data)


def _write_parquet(table: Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in table.items():
        if values.dtype == STRING or values.dtype.kind in "UO":
            arrays[name] = pa.array(values.astype(object).tolist(), type=pa.string())
        else:
            arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays, metadata=metadata or None), path, compression="zstd")


def csv_bytes(table: Table) -> bytes:
    """The table as UTF-8 CSV with a header line; one formatting per dtype, so output is stable."""
    header = ",".join(table.columns)
    if table.rows == 0:
        return (header + "\n").encode()
    columns = [_format_column(values) for values in table.values()]
    body = "\n".join(map(",".join, zip(*columns)))
    return (header + "\n" + body + "\n").encode()


def _format_column(values: np.ndarray) -> list[str]:
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.int8).astype(STRING).tolist()
    if kind == "M":
        # ISO 8601 with a space, as in the handbook's data: 2018-04-01 00:00:31. Built from
        # two small lookup tables (dates, times of day) instead of formatting every stamp.
        values = values.astype("datetime64[s]")
        missing = np.isnat(values)
        seconds = np.where(missing, 0, values.astype(np.int64)) if missing.any() else values.astype(np.int64)
        day, second = np.divmod(seconds, 86_400)
        first_day, last_day = (int(day.min()), int(day.max())) if len(day) else (0, 0)
        if last_day - first_day > 100_000:
            stamps = np.strings.replace(values.astype(STRING), "T", " ").astype(object)
        else:
            dates = np.arange(first_day, last_day + 1).astype("datetime64[D]").astype(str)
            clock = (np.datetime64(0, "s") + np.arange(86_400).astype("timedelta64[s]")).astype(str)
            date_part = np.array([d + " " for d in dates.tolist()], dtype=object)[day - first_day]
            stamps = date_part + np.array([c[11:] for c in clock.tolist()], dtype=object)[second]
        stamps[missing] = ""
        return stamps.tolist()
    if kind in "iu":
        distinct, inverse = np.unique(values, return_inverse=True)
        if len(distinct) <= len(values) // 2:
            return np.array(list(map(str, distinct.tolist())), dtype=object)[inverse].tolist()
        return list(map(str, values.tolist()))
    if kind == "f":
        # Shortest repr that reads back to the same double (Python's repr is faster here
        # than numpy's string conversion). Formatting dominates the cost of writing CSV, so
        # columns with many repeats (risks, flags, amounts) format each distinct value once.
        values = values.astype(np.float64)
        distinct, inverse = np.unique(values, return_inverse=True)
        if len(distinct) <= len(values) // 2:
            return np.array(list(map(repr, distinct.tolist())), dtype=object)[inverse].tolist()
        return list(map(repr, values.tolist()))
    text = values.astype(STRING)
    special = np.strings.find(text, ",") >= 0
    for ch in ('"', "\n", "\r"):
        special |= np.strings.find(text, ch) >= 0
    if special.any():
        quoted = np.strings.add(np.strings.add('"', np.strings.replace(text, '"', '""')), '"')
        text = np.where(special, quoted, text)
    return text.tolist()
