"""What the sidecar's loop does in raw mode (`--input raw`) around its FeatureState (`RawMode`).

For each batch: read the transactions' fields, publish them to the state (customer windows,
terminal feed), let the terminal table catch up to the batch's event-time bound, compute
the window features and score them; drop the --score-from backfill's results. While idle:
the terminal table reads on. When due: snapshots at the committed offsets. Once a batch is
delivered: a (throttled) warning when results were scored on partial state.

    raw = RawMode(config, state, metrics, checkpoint, assignment=lambda: sidecar.assignment,
                  on_progress=sidecar.update_ready)
    result = raw.score(good, everything, stamps, pipeline)   # None: read the batch again later
    raw.catch_up_idle()                                      # nothing consumed this pass
    raw.snapshot_if_due()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from fraudscore.serving.pipeline import BatchResult, Pipeline
from fraudscore.serving.sidecar.checkpoint import Checkpoint, InFlight
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.reporting import Backfill, Throttled
from fraudscore.serving.sidecar.state import FeatureState

log = logging.getLogger(__name__)
PARTIAL_LOG_INTERVAL_S = 300.0  # results on partial state: one warning at most this often
IDLE_CATCH_UP_S = 1.0


class RawMode:
    """The raw-mode steps of the loop; `assignment()` is the sidecar's assigned (topic,
    partition) set, `on_progress()` updates its readiness after the state moved."""

    def __init__(self, config: SidecarConfig, state: FeatureState, metrics, checkpoint: Checkpoint,
                 assignment: Callable[[], set], on_progress: Callable[[], None]):
        self.config = config
        self.state = state
        self.metrics = metrics
        self.checkpoint = checkpoint
        self.assignment = assignment
        self.on_progress = on_progress
        self.backfill = None if config.score_from_s is None else Backfill(config.score_from_s, config.score_from, metrics)
        self._partial = Throttled(PARTIAL_LOG_INTERVAL_S)
        self._last_catch_up = 0.0
        checkpoint.on_delivered = self.delivered

    def score(self, good: list, everything: list, all_stamps: np.ndarray, pipeline: Pipeline) -> BatchResult | None:
        """The batch's window features from the state, then its scores (None: the terminal table
        could not catch up in time; the batch was rewound and is read again). `everything`: the
        batch with oversized keys (their offsets count as consumed), `all_stamps` its Kafka
        timestamps."""
        state, count = self.state, len(good)
        values = [msg.value() for msg in good]
        stamps = all_stamps if count == len(everything) else np.fromiter((m.timestamp()[1] for m in good), np.int64, count)
        partitions = np.fromiter((msg.partition() for msg in good), np.int64, count)
        offsets = np.fromiter((msg.offset() for msg in good), np.int64, count)
        raw = state.read(values, stamps)
        if count == len(everything):
            all_partitions, all_offsets = partitions, offsets
        else:
            all_partitions = np.fromiter((msg.partition() for msg in everything), np.int64, len(everything))
            all_offsets = np.fromiter((msg.offset() for msg in everything), np.int64, len(everything))
        state.publish(all_partitions, all_offsets, raw, partitions[raw.index], offsets[raw.index])
        if not self.catch_up(everything, int(raw.seconds.max()) if len(raw) else None):
            return None
        decoded, emitted = state.decode(values, partitions, [msg.key() for msg in good], pipeline.features, stamps, raw)
        state.consumed(all_partitions, all_offsets)
        result = pipeline.score_decoded(decoded, emitted if self.config.emit_features else None)
        return result if self.backfill is None else self.backfill.live(result, raw)

    def catch_up(self, messages: list, newest_s: int | None) -> bool:
        """Before a batch is scored: the terminal table reads what its windows need (every
        confirmation written before it was consumed, and each input partition to its end or past
        the batch's event-time bound, FeatureState.catch_up). If not every partition could be read
        in time, nothing is scored now: the batch is read again, and the batch in flight is
        completed meanwhile (its offsets and metrics do not wait). False then."""
        self._last_catch_up = time.monotonic()
        caught_up = newest_s is None or self.state.catch_up(newest_s)  # no transaction: no window to fill
        if not caught_up:
            self.checkpoint.delivery.rewind(messages, self.assignment())
            self.checkpoint.complete(self.assignment())
        self.on_progress()
        self.state.report(self.metrics)
        return caught_up

    def catch_up_idle(self) -> None:
        """Nothing to score: the terminal table reads to the topics' ends, at most once a second
        when ready (a high-watermark query per partition is a broker round trip), and in 1 s
        slices when not (a restore without a terminal snapshot), so the first batch, whose
        bound may need far less, is taken as soon as it is there."""
        state = self.state
        if state.ready() and time.monotonic() - self._last_catch_up < IDLE_CATCH_UP_S:
            return
        self._last_catch_up = time.monotonic()
        state.catch_up(None, None if state.ready() else IDLE_CATCH_UP_S, idle=True)
        self.on_progress()
        state.report(self.metrics)
        if self.checkpoint.in_flight is None:
            state.idle()

    def snapshot_if_due(self) -> None:
        """With --state-topic, when due: the batch in flight completed and every delivered offset
        committed, so each partition's snapshot covers exactly its committed offset."""
        if self.state.snapshot_due() and self.checkpoint.complete(self.assignment()):
            self.write_snapshots(sorted(p for _, p in self.assignment()), self.checkpoint.delivery.commit_done())

    def write_snapshots(self, partitions: list[int], committed: bool) -> None:
        """Snapshots of these partitions' customer windows at their committed offsets (only what the
        group has committed is covered), and of the terminal table by partition 0's owner.
        `committed`: the caller's synchronous commit of the delivered offsets succeeded."""
        if self.state.snapshots is None:
            return
        if not partitions:
            self.state.write_snapshots({}, terminals=False, only=[])  # nothing to write: next round in an interval
            return
        offsets = self.checkpoint.committed_offsets(partitions, committed)
        if offsets is not None:
            self.state.write_snapshots(offsets, terminals=0 in partitions, only=partitions)

    def delivered(self, flight: InFlight) -> None:
        """A batch was delivered: a warning when results were scored on partial state, the first
        at once, then at most one every PARTIAL_LOG_INTERVAL_S with the count since (the results
        say "state":"partial")."""
        partial = flight.result.partial
        if partial is None or not partial.any():
            return
        count = self._partial.add(int(partial.sum()))
        if count:
            state, spec = self.state, self.state.spec
            days = {p: round(s.coverage_s / 86_400, 1) for p, s in sorted(state.customers.items())}
            log.warning("%d results scored on partial state (marked \"state\":\"partial\"): their windows reach "
                        "back before the oldest history here (customer coverage by partition, days: %s of %g; "
                        "terminal coverage %.1f days of %g). Load history before going live: "
                        "docs/raw-transactions.md, \"Going live\"", count, days, spec.customer_reach_s / 86_400,
                        state.terminals.coverage_s / 86_400, spec.terminal_reach_s / 86_400)
