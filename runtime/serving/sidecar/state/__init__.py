"""Raw mode's feature state in the sidecar, and how it survives restarts and rebalances.

- `manager`: `FeatureState`, what the loop talks to: the customer windows of the assigned
  partitions, the terminal table, readiness, which snapshots are due;
- `recovery`: a newly assigned partition's customer windows from its snapshot and the input
  after it (or the whole retained input);
- `terminal_table`: the reader of every input and labels partition into one `TerminalState`;
- `snapshots`: the state's snapshots in compacted Kafka topics (`--state-topic`).

    state = FeatureState(config, spec, metrics)
    state.start()
"""

from fraudscore.serving.sidecar.state.manager import FeatureState, input_spec, release_free_memory

__all__ = ["FeatureState", "input_spec", "release_free_memory"]
