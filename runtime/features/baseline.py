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
  that are fraud (0 when the count is 0).

Windows are time-based and left-open. Transactions at the same second are ordered
by TRANSACTION_ID: for the customer windows, only earlier ids and the current one
count. All windows are computed with one sort per key and `searchsorted` over
composite (entity, time) keys plus cumulative sums: no per-row Python.
"""

from __future__ import annotations

import numpy as np

from fraudscore.errors import InputError
from fraudscore.data.table import Table

SECONDS_PER_DAY = 86_400
CUSTOMER_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_DELAY_DAYS = 7
NIGHT_LAST_HOUR = 6

RAW_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")


def _baseline_names() -> tuple[str, ...]:
    names = ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    for w in CUSTOMER_WINDOWS_DAYS:
        names += [f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"]
    for w in TERMINAL_WINDOWS_DAYS:
        names += [f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", f"TERMINAL_ID_RISK_{w}DAY_WINDOW"]
    return tuple(names)


BASELINE_FEATURES: tuple[str, ...] = _baseline_names()
"""The 15 model inputs, in the order the model takes them."""


def validate_transactions(table: Table, source: str = "input") -> None:
    """Raise InputError, naming the column and how many rows, if `table` cannot be featurised."""
    missing = [c for c in RAW_COLUMNS if c not in table]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {', '.join(missing)}; raw transactions need "
            f"{', '.join(RAW_COLUMNS)} (the output of `fraudscore simulate`)"
        )
    n = len(table)
    problems: list[str] = []
    when = table["TX_DATETIME"]
    if when.dtype.kind != "M":
        problems.append(f"column TX_DATETIME must hold dates (YYYY-MM-DD HH:MM:SS), got {when.dtype}")
    else:
        problems += _bad_rows("TX_DATETIME", np.isnat(when), "empty or not a date", n)
    for name in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"):
        if table[name].dtype.kind not in "iu":
            problems.append(f"column {name} must hold integers, got {table[name].dtype}")
    amount = table["TX_AMOUNT"]
    if amount.dtype.kind not in "iuf":
        problems.append(f"column TX_AMOUNT must hold numbers, got {amount.dtype}")
    else:
        amount = amount.astype(np.float64)
        problems += _bad_rows("TX_AMOUNT", np.isnan(amount), "NaN", n)
        problems += _bad_rows("TX_AMOUNT", np.isinf(amount), "infinite", n)
        problems += _bad_rows("TX_AMOUNT", amount < 0, "negative", n)
    if table["TX_FRAUD"].dtype.kind in "iu":
        fraud = table["TX_FRAUD"]
        problems += _bad_rows("TX_FRAUD", (fraud != 0) & (fraud != 1), "not 0 or 1", n)
    if table["TRANSACTION_ID"].dtype.kind in "iu":
        ids = np.sort(table["TRANSACTION_ID"])
        dup = ids[1:] == ids[:-1]
        if dup.any():
            problems.append(
                f"column TRANSACTION_ID: {int(dup.sum())} of {n} rows repeat an earlier id "
                f"(e.g. {int(ids[1:][dup][0])}); ids must be unique because they order same-second transactions"
            )
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems) + "; fix or drop those rows")


def _bad_rows(column: str, bad: np.ndarray, what: str, n: int) -> list[str]:
    if not bad.any():
        return []
    count = int(bad.sum())
    return [f"column {column}: {count} of {n} rows {'is' if count == 1 else 'are'} {what} (first at data row {int(np.argmax(bad)) + 1})"]


def baseline_features(table: Table, *, source: str = "input") -> Table:
    """The 15 baseline features of `table`'s raw transactions, row-aligned with it."""
    validate_transactions(table, source)
    seconds = table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64)
    ids = table["TRANSACTION_ID"]
    amount = table["TX_AMOUNT"].astype(np.float64)
    out: dict[str, np.ndarray] = {"TX_AMOUNT": amount}

    day = seconds // SECONDS_PER_DAY
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    out["TX_DURING_WEEKEND"] = (weekday >= 5).astype(np.int64)
    out["TX_DURING_NIGHT"] = ((seconds % SECONDS_PER_DAY) // 3600 <= NIGHT_LAST_HOUR).astype(np.int64)

    out.update(_customer_windows(table["CUSTOMER_ID"], seconds, ids, amount))
    out.update(_terminal_windows(table["TERMINAL_ID"], seconds, ids, table["TX_FRAUD"]))
    return Table((name, out[name]) for name in BASELINE_FEATURES)


def add_baseline_features(table: Table, *, source: str = "input") -> Table:
    """`table` with the 15 baseline features appended (TX_AMOUNT is already there)."""
    features = baseline_features(table, source=source)
    return table.with_columns({name: features[name] for name in BASELINE_FEATURES if name != "TX_AMOUNT"})


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


def _cent_sums(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Prefix sums, exact (int64 cents) when every value is a whole number of cents."""
    cents = np.rint(values * 100)
    if len(values) and np.all(np.abs(cents - values * 100) < 1e-6) and np.abs(cents).sum() < 2**62:
        return np.concatenate([[0], np.cumsum(cents.astype(np.int64))]), 100.0
    return np.concatenate([[0.0], np.cumsum(values)]), 1.0


def _customer_windows(customer: np.ndarray, seconds: np.ndarray, ids: np.ndarray, amount: np.ndarray) -> dict[str, np.ndarray]:
    reach = max(CUSTOMER_WINDOWS_DAYS) * SECONDS_PER_DAY
    order, keys = _sorted_keys(customer, seconds, ids, reach)
    sums, scale = _cent_sums(amount[order])
    position = np.arange(len(keys))
    out = {}
    for w in CUSTOMER_WINDOWS_DAYS:
        first = np.searchsorted(keys, keys - w * SECONDS_PER_DAY, side="right")
        count = position - first + 1
        mean = (sums[position + 1] - sums[first]) / scale / count
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = _unsort(order, count)
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = _unsort(order, mean.astype(np.float64))
    return out


def _terminal_windows(terminal: np.ndarray, seconds: np.ndarray, ids: np.ndarray, fraud: np.ndarray) -> dict[str, np.ndarray]:
    delay = TERMINAL_DELAY_DAYS * SECONDS_PER_DAY
    reach = delay + max(TERMINAL_WINDOWS_DAYS) * SECONDS_PER_DAY
    order, keys = _sorted_keys(terminal, seconds, ids, reach)
    frauds = np.concatenate([[0], np.cumsum(fraud[order].astype(np.int64))])
    end = np.searchsorted(keys, keys - delay, side="right")
    out = {}
    for w in TERMINAL_WINDOWS_DAYS:
        first = np.searchsorted(keys, keys - delay - w * SECONDS_PER_DAY, side="right")
        count = end - first
        risk = np.divide(frauds[end] - frauds[first], count, out=np.zeros(len(count)), where=count > 0)
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = _unsort(order, count)
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = _unsort(order, risk)
    return out


def _unsort(order: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out
