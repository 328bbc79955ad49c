"""Transactions as input-topic messages: one JSON object each, keyed by card (customer) id.

Used by load generators (bench, demo, tests): the message carries the handbook's raw
columns and the feature fields a bundle declares, so the sidecar can score it.
"""

from __future__ import annotations

import numpy as np
import orjson

from fraudscore.data.table import Table

IDENTITY_FIELDS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID")


def transaction_messages(table: Table, features: tuple[str, ...] | list[str]) -> tuple[list[bytes], list[bytes]]:
    """(keys, values) for every row of a feature table."""
    names = [n for n in IDENTITY_FIELDS if n in table] + [f for f in features if f not in IDENTITY_FIELDS]
    columns = []
    for name in names:
        values = table[name]
        if values.dtype.kind == "M":
            columns.append(np.strings.replace(values.astype("datetime64[s]").astype(str), "T", " ").tolist())
        else:
            columns.append(values.tolist())
    values = [orjson.dumps(dict(zip(names, row))) for row in zip(*columns)]
    keys = [str(c).encode() for c in table["CUSTOMER_ID"].tolist()] if "CUSTOMER_ID" in table else [b""] * len(values)
    return keys, values
