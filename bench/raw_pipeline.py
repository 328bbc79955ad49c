"""`fraudscore bench --mode raw`: the raw-mode pipeline in process, at the handbook's reference size.

Each timed call is one batch of what a raw-mode instance does per batch, without Kafka:
the terminal table's reader decodes the transactions and stores them, then the sidecar's
`FeatureState.decode` (decode, late rows, customer windows, terminal windows) and
`Pipeline.score_decoded` (one ONNX Runtime call, encoded results). State is warmed with
30 days of history of 5,000 customers and 10,000 terminals, and every fraud confirmation
is given up front (those of later transactions wait as pending until they arrive). Every
call takes the next batch of the stream, so state grows, folds and evicts as in
production. The report carries the state's memory after the warm-up and the parity of
every computed feature with `fraudscore features` on the same transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

WARMUP_DAYS = 30
REFERENCE = {"customers": 5000, "terminals": 10000, "days": 183, "seed": 0}


def raw_stream_values(table) -> tuple[list[bytes], list[bytes], np.ndarray]:
    """(keys, raw message values, event seconds) of `table`'s transactions, in event-time order."""
    from fraudscore.data.replay import raw_stream

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
    from fraudscore import baseline_features, simulate
    from fraudscore.serving.transactions import decode_transactions

    from .timing import injected_delays, summarise, timed_runs

    say("raw: simulating the reference size (5,000 customers, 10,000 terminals, 183 days)")
    table = simulate(**REFERENCE).transactions
    keys, values, seconds = raw_stream_values(table)
    frauds = np.flatnonzero(table["TX_FRAUD"] == 1)
    fraud_seconds = table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64)[frauds]
    warm = int(np.searchsorted(seconds, seconds[0] + WARMUP_DAYS * 86_400))
    sidecar_config = SidecarConfig(bundle=Path(config.bundle), bootstrap_servers="-", input_topic="in",
                                   output_topic="out", alerts_topic="alerts", dlq_topic="dlq", group_id="bench",
                                   labels_topic="labels")  # the confirmations are fed in-process, below
    spec = input_spec(sidecar_config, bundle.manifest, None)
    if spec is None:
        from fraudscore.errors import UsageError

        raise UsageError(f"--mode raw: {config.bundle} records no feature specification; re-export it")
    offline = baseline_features(table, spec)  # what every online row must equal (the report's parity)
    results: list[dict] = []
    for device in config.devices:
        pipeline = Pipeline(bundle.manifest, Scorer(bundle, device=device, intra_op_threads=config.threads))
        for batch in config.batch_sizes:
            state = FeatureState(sidecar_config, spec, SidecarMetrics())
            history = decode_transactions(values[:warm])
            state.online.partition(0).add(history.ids, history.seconds, history.customers, history.amounts)
            state.terminals.add_transactions(history.ids, history.seconds, history.terminals)
            state.terminals.add_labels(table["TRANSACTION_ID"][frauds], fraud_seconds, table["TERMINAL_ID"][frauds])
            memory = {"customer_bytes": state.customers[0].nbytes, "terminal_bytes": state.terminals.nbytes,
                      "customers": REFERENCE["customers"], "terminals": REFERENCE["terminals"],
                      "history_days": WARMUP_DAYS, "history_transactions": warm}
            cursor = {"at": warm}
            partitions = np.zeros(batch, np.int64)
            computed: list = []  # (ids, feature rows) of every scored batch, for the parity check

            def one(b=batch, st=state, cur=cursor, parts=partitions, out=computed):
                lo = cur["at"]
                if lo + b > len(values):
                    raise RuntimeError("raw bench ran out of stream; lower --seconds or --repeats")
                cur["at"] = lo + b
                chunk = values[lo : lo + b]
                seen = decode_transactions(chunk)  # the terminal table's reader: every transaction, again
                st.terminals.add_transactions(seen.ids, seen.seconds, seen.terminals)
                decoded, emitted = st.decode(chunk, parts, keys[lo : lo + b], pipeline.features)
                pipeline.score_decoded(decoded)
                out.append((decoded.ids, emitted.values))

            say(f"raw {device} batch {batch}")
            runs = max(1, config.repeats)
            repeats = [timed_runs(one, config.seconds, min(config.warmup_s, 0.05), min_runs=3,
                                  inject_ms=injected_delays().get("raw", 0.0)) for _ in range(runs)]
            row = summarise("raw", device, batch, repeats)
            row["state"] = memory
            row["parity"] = parity(computed, offline, spec.names)
            results.append(row)
    return results, {}


def parity(computed: list, offline, names: tuple[str, ...]) -> dict:
    """Rows compared and the largest differences between online and offline features
    (TRANSACTION_ID is the row number of the simulated table)."""
    if not computed:
        return {"rows": 0}
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in computed])
    online = np.concatenate([v for _, v in computed])
    reference = np.stack([np.asarray(offline[n], dtype=np.float64)[ids] for n in names], axis=1)
    diff = np.abs(online - reference)
    return {"rows": int(len(ids)), "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / np.maximum(1.0, np.abs(reference))).max())}
