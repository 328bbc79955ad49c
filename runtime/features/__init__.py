"""The feature specification, shared by training and serving.

`baseline` computes the handbook's 15 features over a whole table of raw transactions
(training, `fraudscore features`).
"""

from fraudscore.features.baseline import (
    BASELINE_FEATURES,
    CUSTOMER_WINDOWS_DAYS,
    NIGHT_LAST_HOUR,
    RAW_COLUMNS,
    SECONDS_PER_DAY,
    TERMINAL_DELAY_DAYS,
    TERMINAL_WINDOWS_DAYS,
    add_baseline_features,
    baseline_features,
    validate_transactions,
)

__all__ = [
    "BASELINE_FEATURES",
    "CUSTOMER_WINDOWS_DAYS",
    "NIGHT_LAST_HOUR",
    "RAW_COLUMNS",
    "SECONDS_PER_DAY",
    "TERMINAL_DELAY_DAYS",
    "TERMINAL_WINDOWS_DAYS",
    "add_baseline_features",
    "baseline_features",
    "validate_transactions",
]
