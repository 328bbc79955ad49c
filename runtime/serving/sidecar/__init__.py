"""`fraudscore run`: the Kafka sidecar, one module a job.

| module | job |
|---|---|
| `config` | `SidecarConfig`, built once from flags, FRAUDSCORE_* variables and files |
| `clients` | the consumer's and producer's configurations and callbacks; start-up checks |
| `delivery` | produce results, alerts and dead letters; commit after acknowledgement, or rewind |
| `state` | raw mode: online features of a batch; customer windows per assigned partition |
| `restore` | raw mode: a partition's customer windows rebuilt from the input topic |
| `terminal_table` | raw mode: the whole input and labels topics read into the terminal state |
| `loop` | `Sidecar`: consume -> pipeline -> deliver; rebalances, reload |
| `process` | signals and logging of the process |
"""

from fraudscore.serving.sidecar.clients import KafkaUnavailable, RepeatFilter
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.delivery import Delivery
from fraudscore.serving.sidecar.loop import Sidecar
from fraudscore.serving.sidecar.process import configure_logging, install_signal_handlers
from fraudscore.serving.wire import MAX_KEY_BYTES, TRUNCATED_DLQ_BYTES

__all__ = [
    "MAX_KEY_BYTES",
    "TRUNCATED_DLQ_BYTES",
    "Delivery",
    "KafkaUnavailable",
    "RepeatFilter",
    "Sidecar",
    "SidecarConfig",
    "configure_logging",
    "install_signal_handlers",
]
