"""`fraudscore bench --mode raw`: the raw-mode pipeline in process, at the handbook's reference size.

Raw transaction bytes -> decode -> online features (customer windows and terminal
table, warmed with 30 days of history of 5,000 customers and 10,000 terminals) -> one
ONNX Runtime call -> encoded results: the sidecar's `FeatureState.decode` and
`Pipeline.score_decoded`, without Kafka. Every timed call takes the next batch of the
stream, so state grows, folds and evicts as it does in production; the report also
carries the state's memory after the warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

WARMUP_DAYS = 30
REFERENCE = {"customers": 5000, "terminals": 10000, "days": 183, "seed": 0}


def raw_stream_values() -> tuple[list[bytes], list[bytes], np.ndarray]:
    """(keys, raw message values, event seconds) of the reference simulation, in event-time order."""
    from fraudscore import simulate
    from fraudscore.data.replay import raw_stream

    table = simulate(**REFERENCE).transactions
    events = raw_stream(table)
    tx = ~events.is_label
    values = [v for v, t in zip(events.values, tx.tolist()) if t]
    keys = [k for k, t in zip(events.keys, tx.tolist()) if t]
    return keys, values, events.seconds[tx]


def run_raw_pipeline(config, bundle, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """Results (mode "raw", per batch size and device) and the ratio of raw to feature-mode pipeline cost."""
    from fraudscore.serving.metrics import SidecarMetrics
    from fraudscore.serving.pipeline import Pipeline
    from fraudscore.serving.scorer import Scorer
    from fraudscore.serving.sidecar.config import SidecarConfig
    from fraudscore.serving.sidecar.state import FeatureState, input_spec
    from fraudscore.serving.transactions import decode_transactions

    from .harness import _summarise, _timed_runs

    say("raw: simulating the reference size (5,000 customers, 10,000 terminals, 183 days)")
    keys, values, seconds = raw_stream_values()
    warm = int(np.searchsorted(seconds, seconds[0] + WARMUP_DAYS * 86_400))
    sidecar_config = SidecarConfig(bundle=Path(config.bundle), bootstrap_servers="-", input_topic="in",
                                   output_topic="out", alerts_topic="alerts", dlq_topic="dlq", group_id="bench")
    spec = input_spec(sidecar_config, bundle.manifest, None)
    if spec is None:
        from fraudscore.errors import UsageError

        raise UsageError(f"--mode raw: {config.bundle} records no feature specification; re-export it")
    results: list[dict] = []
    for device in config.devices:
        pipeline = Pipeline(bundle.manifest, Scorer(bundle, device=device, intra_op_threads=config.threads))
        for batch in config.batch_sizes:
            state = FeatureState(sidecar_config, spec, SidecarMetrics())
            history = decode_transactions(values[:warm])
            state.customer_state(0).add(history.ids, history.seconds, history.customers, history.amounts)
            state.terminals.add_transactions(history.ids, history.seconds, history.terminals)
            memory = {"customer_bytes": state.customers[0].nbytes, "terminal_bytes": state.terminals.nbytes,
                      "customers": REFERENCE["customers"], "terminals": REFERENCE["terminals"],
                      "history_days": WARMUP_DAYS, "history_transactions": warm}
            cursor = {"at": warm}
            partitions = np.zeros(batch, np.int64)

            def one(b=batch, st=state, cur=cursor, parts=partitions):
                lo = cur["at"]
                if lo + b > len(values):
                    raise RuntimeError("raw bench ran out of stream; lower --seconds or --repeats")
                cur["at"] = lo + b
                decoded, _ = st.decode(values[lo : lo + b], parts, keys[lo : lo + b], pipeline.features)
                pipeline.score_decoded(decoded)

            say(f"raw {device} batch {batch}")
            runs = max(1, config.repeats)
            repeats = [_timed_runs(one, config.seconds, min(config.warmup_s, 0.05), min_runs=3) for _ in range(runs)]
            row = _summarise("raw", device, batch, repeats)
            row["state"] = memory
            results.append(row)
    return results, {}
