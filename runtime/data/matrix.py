"""A feature table as the model's input: the float32 matrix in the bundle's feature order.

Training and evaluation refuse a table with missing or non-finite feature values outright
(`feature_matrix`); scoring a file instead rejects the bad rows one by one
(`fraudscore.serving.decode.decode_table`).
"""

from __future__ import annotations

import numpy as np

from fraudscore.data.table import Table
from fraudscore.errors import InputError


def feature_matrix(table: Table, features: tuple[str, ...] | list[str], source: str = "input") -> np.ndarray:
    """The (rows, features) float32 matrix in the bundle's feature order; refuses missing or non-finite values."""
    missing = [f for f in features if f not in table]
    if missing:
        raise InputError(
            f"{source}: missing feature column(s) {', '.join(missing)}; run `fraudscore features` on raw transactions first"
        )
    matrix = np.empty((len(table), len(features)), dtype=np.float32)
    for i, name in enumerate(features):
        column = table[name]
        if column.dtype.kind not in "iufb":
            raise InputError(f"{source}: feature column {name} must be numeric, got {column.dtype}")
        matrix[:, i] = column
    bad = ~np.isfinite(matrix)
    if bad.any():
        rows, cols = np.nonzero(bad)
        names = sorted({features[c] for c in cols})
        raise InputError(
            f"{source}: {len(np.unique(rows))} rows have NaN, infinite or out-of-float32-range values "
            f"in {', '.join(names)}; fix or drop them"
        )
    return matrix
