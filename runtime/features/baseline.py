"""The baseline features of the handbook, chapter 3.4: the 15 model inputs.

One specification (`BASELINE_FEATURES`, in model-input order) serves training and
serving: the offline transform below computes these columns from raw transactions,
and the runtime reads the same names from each message.

- TX_AMOUNT.
- TX_DURING_WEEKEND (Saturday or Sunday) and TX_DURING_NIGHT (hour <= 6).
- Customer spending over windows of w = 1, 7, 30 days: count and mean amount of the
  customer's own transactions with time in (t - w days, t], the current one included.
- Terminal risk with a 7-day delay (labels arrive late): over the terminal's
  transactions with time in (t - 7 - w days, t - 7 days], the count and the share
  that are fraud (0 when the count is 0). With a terminal resolution r other than
  1 s, the window's end t - 7 days is first rounded down to a multiple of r
  (`FeatureSpec.terminal_window_ends`).
- Version 2 (`SPEC_V2`, 21 inputs) adds, per window of 1, 7, 30 days, the log ratio
  of the amount to the mean of the customer's earlier transactions in the window, and the
  terminal's confirmed frauds in the window: both derived from the columns above
  (`windows.derived_features`, which the online engine calls too), so they need no state.

Windows are time-based and left-open. Transactions at the same second are ordered
by TRANSACTION_ID: for the customer windows, only earlier ids and the current one
count. All windows are computed with one sort per key and `searchsorted` over
composite (entity, time) keys plus cumulative sums: no per-row Python.

The parameters (windows, delay, night hours, tie rule) come from a `FeatureSpec`
(`spec.py`); the online engine (`online.py`) computes the same columns batch by batch
and shares the arithmetic in `windows.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fraudscore.data.table import Table
from fraudscore.errors import InputError
from fraudscore.features.spec import (
    BASELINE_SPEC,
    MAX_AMOUNT,
    SECONDS_PER_DAY,
    FeatureSpec,
    customer_count_name,
    customer_mean_name,
    terminal_count_name,
    terminal_risk_name,
)
from fraudscore.features.windows import calendar_features, cent_sums, derived_features, fraud_shares, mean_amounts

# The handbook's parameters under their historical names; BASELINE_SPEC is the source.
CUSTOMER_WINDOWS_DAYS = BASELINE_SPEC.customer_windows_days
TERMINAL_WINDOWS_DAYS = BASELINE_SPEC.terminal_windows_days
TERMINAL_DELAY_DAYS = BASELINE_SPEC.terminal_delay_days
NIGHT_LAST_HOUR = BASELINE_SPEC.night_last_hour

RAW_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")

BASELINE_FEATURES: tuple[str, ...] = BASELINE_SPEC.names
"""The 15 model inputs, in the order the model takes them."""


def validate_transactions(table: Table, source: str = "input", columns: Mapping[str, str] | None = None) -> None:
    """Raise InputError, naming the column and how many rows, if `table` cannot be featurised.

    `columns` maps the handbook's names (RAW_COLUMNS) to the table's own, e.g.
    {"TX_DATETIME": "ts"}; errors name the table's columns."""
    col = _column_names(columns)
    missing = [col(c) for c in RAW_COLUMNS if col(c) not in table]
    if missing:
        mapped = ", ".join(f"{c}={col(c)}" for c in RAW_COLUMNS if col(c) != c)
        raise InputError(
            f"{source}: missing column(s) {', '.join(missing)}; raw transactions need "
            f"{', '.join(RAW_COLUMNS)} (the output of `fraudscore simulate`)"
            + (f", here mapped as {mapped}" if mapped else "; name columns called otherwise with --id-column, "
               "--time-column, --customer-column, --terminal-column, --amount-column, --label")
        )
    n = len(table)
    problems: list[str] = []
    when = table[col("TX_DATETIME")]
    if when.dtype.kind != "M":
        problems.append(f"column {col('TX_DATETIME')} must hold dates (YYYY-MM-DD HH:MM:SS), got {when.dtype}")
    else:
        problems += _bad_rows(col("TX_DATETIME"), np.isnat(when), "empty or not a date", n)
    for name in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"):
        if table[col(name)].dtype.kind not in "iu":
            problems.append(f"column {col(name)} must hold integers, got {table[col(name)].dtype}")
    amount = table[col("TX_AMOUNT")]
    if amount.dtype.kind not in "iuf":
        problems.append(f"column {col('TX_AMOUNT')} must hold numbers, got {amount.dtype}")
    else:
        amount = amount.astype(np.float64)
        problems += _bad_rows(col("TX_AMOUNT"), np.isnan(amount), "NaN", n)
        problems += _bad_rows(col("TX_AMOUNT"), np.isinf(amount), "infinite", n)
        problems += _bad_rows(col("TX_AMOUNT"), amount < 0, "negative", n)
        problems += _bad_rows(col("TX_AMOUNT"), amount > MAX_AMOUNT, f"above {MAX_AMOUNT:.0e} (the amount rule of every mode)", n)
    if table[col("TX_FRAUD")].dtype.kind in "iu":
        fraud = table[col("TX_FRAUD")]
        problems += _bad_rows(col("TX_FRAUD"), (fraud != 0) & (fraud != 1), "not 0 or 1", n)
    if table[col("TRANSACTION_ID")].dtype.kind in "iu":
        ids = np.sort(table[col("TRANSACTION_ID")])
        dup = ids[1:] == ids[:-1]
        if dup.any():
            problems.append(
                f"column {col('TRANSACTION_ID')}: {int(dup.sum())} of {n} rows repeat an earlier id "
                f"(e.g. {int(ids[1:][dup][0])}); ids must be unique because they order same-second transactions"
            )
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems) + "; fix or drop those rows")


def _bad_rows(column: str, bad: np.ndarray, what: str, n: int) -> list[str]:
    if not bad.any():
        return []
    count = int(bad.sum())
    return [f"column {column}: {count} of {n} rows {'is' if count == 1 else 'are'} {what} (first at data row {int(np.argmax(bad)) + 1})"]


def _column_names(columns: Mapping[str, str] | None):
    """handbook name -> the table's column name, under the mapping `columns` (identity by default)."""
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(RAW_COLUMNS))
    if unknown:
        raise ValueError(f"column mapping keys must be among {', '.join(RAW_COLUMNS)}, got {', '.join(unknown)}")
    return lambda name: mapping.get(name, name)


def baseline_features(table: Table, spec: FeatureSpec = BASELINE_SPEC, *, source: str = "input",
                      columns: Mapping[str, str] | None = None) -> Table:
    """The baseline features (`spec.names`) of `table`'s raw transactions, row-aligned with it.

    `columns` maps the handbook's raw column names to `table`'s (see `validate_transactions`)."""
    validate_transactions(table, source, columns)
    col = _column_names(columns)
    seconds = table[col("TX_DATETIME")].astype("datetime64[s]").astype(np.int64)
    ids = table[col("TRANSACTION_ID")]
    amount = table[col("TX_AMOUNT")].astype(np.float64)
    out: dict[str, np.ndarray] = {"TX_AMOUNT": amount}
    out.update(calendar_features(seconds, spec))
    out.update(_customer_windows(table[col("CUSTOMER_ID")], seconds, ids, amount, spec))
    out.update(_terminal_windows(table[col("TERMINAL_ID")], seconds, ids, table[col("TX_FRAUD")], spec))
    out.update(derived_features(out, spec))
    return Table((name, out[name]) for name in spec.names)


def add_baseline_features(table: Table, spec: FeatureSpec = BASELINE_SPEC, *, source: str = "input",
                          columns: Mapping[str, str] | None = None) -> Table:
    """`table` with the baseline features appended under the handbook's names.

    TX_AMOUNT is appended only when the amount column is called otherwise (`columns`): the
    model's inputs are named as `spec.names` say, whatever the raw columns are called."""
    features = baseline_features(table, spec, source=source, columns=columns)
    amount_column = _column_names(columns)("TX_AMOUNT")
    return table.with_columns({name: features[name] for name in spec.names
                               if not (name == "TX_AMOUNT" and amount_column == "TX_AMOUNT")})


SPEC_METADATA_KEY = "fraudscore.feature_spec"
"""Where `fraudscore features` records, in a Parquet feature table, the specification it used."""


def recorded_spec(path) -> FeatureSpec | None:
    """The feature specification `fraudscore features` recorded in a Parquet table; None when the
    table records none (CSV, or written before tables recorded it: the handbook's then)."""
    import json

    from fraudscore.data.table import read_metadata

    text = read_metadata(path).get(SPEC_METADATA_KEY)
    if text is None:
        return None
    try:
        return FeatureSpec.from_dict(json.loads(text))
    except (ValueError, InputError) as exc:
        raise InputError(f"{path}: the feature specification it records is unreadable ({exc}); "
                         "recompute the table with `fraudscore features`") from None


def _sorted_keys(entity: np.ndarray, seconds: np.ndarray, ids: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Order by (entity, time, id) and composite int64 keys that are increasing in that order.

    key = group * stride + (t - t_min) + reach, with stride > time span + reach, so that
    `key - x` for any x <= reach stays above every key of the previous group: a
    window lookup can never reach into another entity's transactions.
    """
    order = np.lexsort((ids, seconds, entity))
    sorted_entity = entity[order]
    group = np.concatenate([[0], np.cumsum(sorted_entity[1:] != sorted_entity[:-1])]) if len(order) else order
    t0 = seconds.min() if len(seconds) else 0
    span = int(seconds.max() - t0) if len(seconds) else 0
    stride = span + reach + 1
    if (int(group[-1]) + 1 if len(group) else 0) * stride >= 2**62:
        raise InputError("time span times number of customers/terminals too large for int64 window keys")
    keys = group.astype(np.int64) * stride + (seconds[order] - t0) + reach
    return order, keys


def _customer_windows(
    customer: np.ndarray, seconds: np.ndarray, ids: np.ndarray, amount: np.ndarray, spec: FeatureSpec
) -> dict[str, np.ndarray]:
    order, keys = _sorted_keys(customer, seconds, ids, spec.customer_reach_s)
    sums, scale = cent_sums(amount[order])
    position = np.arange(len(keys))
    out = {}
    for w in spec.customer_windows_days:
        first = np.searchsorted(keys, keys - w * SECONDS_PER_DAY, side="right")
        count = position - first + 1
        out[customer_count_name(w)] = _unsort(order, count)
        out[customer_mean_name(w)] = _unsort(order, mean_amounts(sums[position + 1] - sums[first], scale, count))
    return out


def _terminal_windows(
    terminal: np.ndarray, seconds: np.ndarray, ids: np.ndarray, fraud: np.ndarray, spec: FeatureSpec
) -> dict[str, np.ndarray]:
    order, keys = _sorted_keys(terminal, seconds, ids, spec.terminal_reach_s)
    frauds = np.concatenate([[0], np.cumsum(fraud[order].astype(np.int64))])
    # keys - (t - end): the window end of each row's own key, t - delay rounded down to the resolution
    ends = keys - (seconds[order] - spec.terminal_window_ends(seconds[order]))
    end = np.searchsorted(keys, ends, side="right")
    out = {}
    for w in spec.terminal_windows_days:
        first = np.searchsorted(keys, ends - w * SECONDS_PER_DAY, side="right")
        count = end - first
        out[terminal_count_name(w)] = _unsort(order, count)
        out[terminal_risk_name(w)] = _unsort(order, fraud_shares(frauds[end] - frauds[first], count))
    return out


def _unsort(order: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out
