"""fraudscore: real-time card-fraud scoring with ONNX Runtime beside a payment processor.

This package is the runtime core. It never imports TensorFlow, Keras, tf2onnx or onnx;
training and export live in the optional subpackages `fraudscore.train` and
`fraudscore.export` (install the `train` extra).
"""

from fraudscore.errors import FraudscoreError, InputError, UsageError
from fraudscore.features.baseline import BASELINE_FEATURES, add_baseline_features, baseline_features, validate_transactions
from fraudscore.data.simulate import Simulation, SimulationConfig, simulate
from fraudscore.data.table import Table, read_table, write_table

__version__ = "0.1.0"

__all__ = [
    "BASELINE_FEATURES",
    "FraudscoreError",
    "InputError",
    "Simulation",
    "SimulationConfig",
    "Table",
    "UsageError",
    "__version__",
    "add_baseline_features",
    "baseline_features",
    "read_table",
    "simulate",
    "validate_transactions",
    "write_table",
]
