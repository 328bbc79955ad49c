"""The feature specification, shared by training and serving.

`spec` describes the handbook's 15 features (`FeatureSpec`, `BASELINE_SPEC`) and version 2's
21 (`SPEC_V2`);
`baseline` computes them over a whole table of raw transactions (training,
`fraudscore features`); `online` computes the same columns batch by batch from a
Kafka stream (serving); `windows` holds the arithmetic both engines share.
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
from fraudscore.features.online import FOLD_MIN_ROWS, CustomerState, LabelCounts, OnlineFeatures, TerminalState
from fraudscore.features.spec import SPEC_V2, BASELINE_SPEC, FeatureSpec
from fraudscore.features.windows import calendar_features

__all__ = [
    "BASELINE_FEATURES",
    "SPEC_V2",
    "BASELINE_SPEC",
    "CUSTOMER_WINDOWS_DAYS",
    "FOLD_MIN_ROWS",
    "NIGHT_LAST_HOUR",
    "RAW_COLUMNS",
    "SECONDS_PER_DAY",
    "TERMINAL_DELAY_DAYS",
    "TERMINAL_WINDOWS_DAYS",
    "CustomerState",
    "FeatureSpec",
    "LabelCounts",
    "OnlineFeatures",
    "TerminalState",
    "add_baseline_features",
    "baseline_features",
    "calendar_features",
    "validate_transactions",
]
