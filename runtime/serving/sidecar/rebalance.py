"""The partitions a sidecar owns (`Assignment`): what an assignment and a revoke do, and
whether the sidecar is ready.

An assignment checks the partitions for retention gaps and, in raw mode, restores their
customer windows before any of their messages is scored (not ready meanwhile). A revoke
runs inside consume()/poll(): the checkpoint completes the batch in flight and commits the
revoked partitions' delivered offsets (Checkpoint.revoke), their snapshots are written at
those offsets, and their state is dropped. Both keep fraudscore_ready and
fraudscore_assigned_partitions current.

    assignment = Assignment(config, metrics, stop, has_model=lambda: True)
    assignment.checkpoint = checkpoint             # once the clients exist
    assignment.attach_state(state, raw)            # raw mode
    consumer.subscribe([topic], on_assign=assignment.on_assign, on_revoke=assignment.on_revoke,
                       on_lost=assignment.on_revoke)
    assignment.not_ready_because()                 # "" when ready: what /readyz says
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fraudscore.serving.sidecar.checkpoint import Checkpoint
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.process import Stop
from fraudscore.serving.sidecar.retention import report_retention_gaps

log = logging.getLogger(__name__)


class Assignment:
    """The assigned (topic, partition) pairs (`partitions`), the rebalance callbacks and readiness."""

    def __init__(self, config: SidecarConfig, metrics, stop: Stop, has_model: Callable[[], bool]):
        self.config = config
        self.metrics = metrics
        self.stop = stop
        self.has_model = has_model
        self.partitions: set[tuple[str, int]] = set()
        self.checkpoint: Checkpoint | None = None
        self.state = None  # raw mode: the FeatureState, and the loop's RawMode steps around it
        self.raw = None
        self._gaps_reported: set[tuple[str, int, int]] = set()  # (topic, partition, committed offset) logged once
        self._was_ready = False

    def attach_state(self, state, raw) -> None:
        """Raw mode: the feature state to restore and revoke, and the loop's steps around it."""
        self.state, self.raw = state, raw

    def owns(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self.partitions

    def on_assign(self, consumer, partitions) -> None:
        if self.stop.asked and self.state is not None:
            # Stopping (a rebalance answered inside the last consume() or close()): nothing more
            # is scored here, so their windows are not rebuilt only to be given up again.
            self.partitions |= {(p.topic, p.partition) for p in partitions}
            log.info("assigned %s while stopping: not restored", sorted(p.partition for p in partitions))
            return
        if not partitions:  # an incremental (cooperative) round that gave this member nothing new
            self.update_ready()
            return
        if self.state is not None:  # not ready from the first moment these partitions are ours
            self.state.restoring |= {p.partition for p in partitions}
        self.partitions |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s (now %s)", sorted(p.partition for p in partitions), sorted(p for _, p in self.partitions))
        if not self.stop.asked:
            report_retention_gaps(consumer, partitions, self.config, self.metrics, self._gaps_reported)
        if self.state is not None:
            # Before any message of these partitions is scored: their customer windows come
            # back from the input topic, up to the committed offsets (not ready meanwhile).
            self.metrics.restoring.set(1)
            self.update_ready()
            self.state.restore(consumer, [p.partition for p in partitions])
            self.metrics.restoring.set(0)
            self.state.report(self.metrics)
        self.update_ready()

    def on_revoke(self, consumer, partitions) -> None:
        # Runs inside consume()/poll(): the checkpoint completes the batch in flight and commits
        # the revoked partitions' delivered offsets before they are given up.
        if not partitions:  # an incremental (cooperative) round that took nothing from this member
            return
        revoked = {(p.topic, p.partition) for p in partitions}
        committed = self.checkpoint.revoke(revoked, self.partitions)
        if self.raw is not None and self.stop.budget() > 0:
            # Their next owner (maybe this instance again) restores from here, not from the start
            # (skipped when a stop has spent its budget: the next owner restores from an older
            # snapshot and replays the input after it).
            self.raw.write_snapshots(sorted(p for _, p in revoked), committed)
        self.checkpoint.delivery.forget(revoked)
        self.partitions -= revoked
        if self.state is not None:
            self.state.revoke([p for _, p in revoked])
        for topic, partition in revoked:
            try:
                self.metrics.lag.remove(topic, str(partition))
            except KeyError:
                pass
        self.update_ready()
        log.info("revoked %s (now %s)", sorted(p for _, p in revoked), sorted(p for _, p in self.partitions))

    def update_ready(self) -> None:
        ready = self.ready()
        if ready and self.state is not None and not self._was_ready:
            log.info("ready: feature state restored")
        self._was_ready = ready
        self.metrics.assigned_partitions.set(len(self.partitions))
        self.metrics.ready.set(1 if ready else 0)

    def ready(self) -> bool:
        """Serving: a model loaded, at least one partition assigned, and (raw mode) feature state
        restored; with --require-full-state, also covering what the windows reach back."""
        return not self.not_ready_because()

    def not_ready_because(self) -> str:
        """Why the sidecar is not ready ("" when it is): what /readyz says with its 503."""
        if not self.has_model():
            return "no model loaded"
        if not self.partitions:
            return "no partition assigned yet"
        if self.state is None:
            return ""
        if not self.state.ready():
            restoring = sorted(self.state.restoring)
            return (f"restoring the feature state of partitions {restoring}" if restoring
                    else "the terminal table is reading the input and labels topics")
        if self.config.require_full_state:
            # tuple() copies the set in one step: /readyz's thread must not iterate it while a
            # rebalance on the main thread changes it.
            return self.state.short_coverage(sorted(p for _, p in tuple(self.partitions)))
        return ""
