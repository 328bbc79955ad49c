"""fraudscore: real-time card-fraud scoring with ONNX Runtime beside a payment processor.

This package is the runtime core. It never imports TensorFlow, Keras, tf2onnx or onnx;
training and export live in the optional subpackages `fraudscore.train` and
`fraudscore.export` (install the `train` extra).
"""

from importlib import import_module

from fraudscore.errors import FraudscoreError, InputError, UsageError

__version__ = "0.1.0"

# The public API of the data side, imported on first use: `fraudscore run` needs none of it,
# so the sidecar's process never loads the simulator.
_LAZY = {
    "BASELINE_FEATURES": "fraudscore.features.baseline",
    "add_baseline_features": "fraudscore.features.baseline",
    "baseline_features": "fraudscore.features.baseline",
    "validate_transactions": "fraudscore.features.baseline",
    "Simulation": "fraudscore.data.simulate",
    "SimulationConfig": "fraudscore.data.simulate",
    "simulate": "fraudscore.data.simulate",
    "Table": "fraudscore.data.table",
    "read_table": "fraudscore.data.table",
    "write_table": "fraudscore.data.table",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fraudscore' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
