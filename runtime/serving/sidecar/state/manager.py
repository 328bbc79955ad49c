"""Online feature state of one sidecar, kept and rebuilt through Kafka (raw input mode).

Two kinds of state, partitioned the way Kafka partitions the input:

- Customer windows live with their input partition (input keyed by customer id): when
  this instance is assigned a partition it replays that partition from its first
  retained offset up to the group's committed offset into a fresh `CustomerState`,
  without scoring, and only then scores from the committed offset on. A revoked
  partition's state is dropped. Replaying the source is the changelog: nothing else is
  written, and the same messages in the same order rebuild the same state.
- Terminal windows need every partition's transactions (a terminal is used by customers
  on every partition) and the fraud confirmations: a second consumer outside the group
  (the "global table" pattern) reads the whole input topic and the labels topic into one
  `TerminalState`. Before a batch is scored it reads up to the high watermarks, so every
  transaction and confirmation written before the batch was consumed is counted.

With --state-topic both kinds are snapshotted to Kafka (`snapshots.py`): a partition's
customer windows at the group's committed offset by its owner, the terminal table with
the offset it has read of every partition by the owner of input partition 0; every
--snapshot-interval, when a partition is revoked, and at exit. A restore then loads the
snapshot and reads only the input after it; one that is missing or does not fit is
refused (counted, logged) and the input is replayed instead.

Readiness stays false until the terminal table has caught up once and no partition is
restoring; restore time, rows and progress are metrics.

    state = FeatureState(config, spec, metrics)
    state.start()                          # the terminal table's reader (terminal_table.py)
    state.restore(consumer, assigned)      # on assignment (recovery.py)
    state.consumed(partitions, offsets)    # after each batch: what the customer windows cover
    state.write_snapshots(committed, terminals=True)   # when due, on revoke, at exit
    state.catch_up()                       # before each batch
    decoded, emitted = state.decode(values, partitions, keys, model_features)
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from fraudscore.features.online import CustomerState, OnlineFeatures, TerminalBuckets, TerminalState, terminal_state
from fraudscore.features.spec import FeatureSpec
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.state.batch import late_mask, partial_mask, short_coverage, terminal_horizon_cap
from fraudscore.serving.sidecar.state.feed import FeedWriter
from fraudscore.serving.sidecar.state.recovery import RestoreAbandoned, restore_partitions
from fraudscore.serving.sidecar.state.rounds import SNAPSHOT_BACKOFF_MAX_S as _SNAPSHOT_BACKOFF_MAX_S
from fraudscore.serving.sidecar.state.rounds import SnapshotRounds
from fraudscore.serving.sidecar.state.snapshots import TERMINALS, SnapshotRefused, SnapshotStore, decode
from fraudscore.serving.sidecar.state.terminal_table import TerminalTable
from fraudscore.serving.decode import FLOAT32_MAX, DecodedBatch, Rejection
from fraudscore.serving.pipeline import Emitted
from fraudscore.serving.transactions import RawBatch, decode_transactions

log = logging.getLogger(__name__)


def input_spec(config: SidecarConfig, manifest, current: FeatureSpec | None) -> FeatureSpec | None:
    """The feature specification raw mode computes for this bundle; None in feature mode.

    Raw mode is the default for a bundle whose manifest records a specification. A reload
    may not change it: the state was built for the old one."""
    from fraudscore.errors import UsageError

    recorded = manifest.feature_spec
    if config.input_mode == "features" or (config.input_mode == "" and not recorded):
        if current is not None:
            raise UsageError("the new bundle has no feature specification; restart with --input features to serve it")
        if config.require_full_state:
            raise UsageError("--require-full-state is for raw mode: with --input features there is no feature state")
        if config.score_from:
            raise UsageError("--score-from is for raw mode (it folds history into the feature state without scoring "
                             "it); with --input features there is no state: produce only the messages to score")
        return None
    if not recorded:
        raise UsageError(f"{config.bundle}: --input raw needs a bundle whose manifest records its feature specification "
                         "(bundles exported by fraudscore 0.2+); re-export it, or pass --input features and send "
                         "the feature fields in each message")
    spec = FeatureSpec.from_dict(recorded)
    missing = [f for f in manifest.features if f not in spec.names]
    if missing:
        raise UsageError(f"{config.bundle}: model inputs {', '.join(missing)} are not features raw mode computes; "
                         "use --input features")
    if current is not None and spec != current:
        raise UsageError("the new bundle's feature specification differs from the one being served; restart the sidecar")
    if not config.labels_topic and not config.no_labels:
        risk = ", ".join(n for n in spec.names if n.startswith("TERMINAL_ID_RISK"))
        raise UsageError(f"raw mode needs the fraud confirmations: without --labels-topic every terminal-risk feature "
                         f"({risk}) reads 0, blinding the model's strongest inputs. Pass --labels-topic TOPIC (the "
                         "topic `fraudscore replay` and your case management write confirmations to), or --no-labels "
                         "to run without them on purpose")
    return spec


SNAPSHOT_BACKOFF_MAX_S = _SNAPSHOT_BACKOFF_MAX_S  # its old name here; the rounds live in rounds.py
ENTITIES_EVERY_S = 30.0  # how often fraudscore_state_entities is counted
# While batches are folded, the C heap's free pages go back to the system this often, and once
# when the sidecar goes idle (release_free_memory: ~5 ms for a 300 MB heap).
RELEASE_EVERY_S = 5.0
FEED_FLUSH_ON_REVOKE_S = 1.0  # at most this long a revoke waits for the terminal feed's queued records


MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.cache
def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def map_large_arrays() -> None:
    """Give every allocation of MMAP_THRESHOLD_BYTES or more its own mapping, returned to the system
    when freed. glibc raises its threshold to the largest block freed so far (up to 32 MiB), so
    after the first folds of a large state its multi-MB sorted runs come from the heap, whose
    freed pages stay in RSS. At 10x the reference size this fixed threshold took RSS after a
    drain from 552 to 407 MB and after a restart from 361 to 244 MB (docs/performance.md).
    MALLOC_MMAP_THRESHOLD_ in the environment takes precedence; a no-op without glibc."""
    import os

    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim) after a restore or a
    snapshot, which free large transient buffers (blobs, decoded chunks). A no-op without glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class FeatureState:
    """Customer windows per assigned input partition and the terminal table of the whole topic.

    `metrics` is the sidecar's SidecarMetrics (restore and label series).
    """

    def __init__(self, config: SidecarConfig, spec: FeatureSpec, metrics):
        map_large_arrays()
        self.config = config
        self.spec = spec
        self.metrics = metrics
        self.online = OnlineFeatures(spec, allowed_lateness_s=config.allowed_lateness_s)
        self.stopping = False  # set by the sidecar's stop: reads in progress end early, restores are given up
        self.table = TerminalTable(config, self.terminals, metrics, before_apply=self._cap_terminal_horizon,
                                   stopping=lambda: self.stopping)
        self.restoring: set[int] = set()
        self.snapshots = SnapshotStore(config) if config.state_topic else None
        self.rounds = SnapshotRounds(self.snapshots, config, metrics) if self.snapshots is not None else None
        self.feed: FeedWriter | None = None  # with --state-topic and its feed topic: this instance's rows for the others
        self.offsets: dict[int, int] = {}  # partition -> the next input offset its customer windows cover
        # partition -> offset of its last snapshot written or restored
        self.snapshotted: dict[int, int] = self.rounds.written if self.rounds is not None else {}
        self.committed: dict[int, int] = {}  # partition -> the group's committed offset when it was restored
        self._reported: set[str] = set()  # partitions with a fraudscore_state_partition_bytes series
        metrics.state_coverage_required.labels("customer").set(spec.customer_reach_s)
        metrics.state_coverage_required.labels("terminal").set(spec.terminal_reach_s)
        self._entities_counted = -float("inf")
        self._released, self._freed_since = time.monotonic(), False  # release_free_memory, see idle()

    @property
    def customers(self) -> dict[int, CustomerState]:
        """Customer windows by assigned input partition."""
        return self.online.customers

    @property
    def terminals(self) -> TerminalState | TerminalBuckets:
        """The terminal table's state: every partition's transactions and the confirmations."""
        return self.online.terminals

    def start(self) -> None:
        """Start reading the terminal table: every partition of the input and labels topics, from
        the beginning, or from where its snapshot left off."""
        self.table.start(self._restore_terminals() if self.snapshots is not None else None)
        if self.table.feed:
            self.feed = FeedWriter(self.config, self.metrics, partitions=len(self.table.inputs))
        release_free_memory()

    def publish(self, partitions: np.ndarray, offsets: np.ndarray, raw: RawBatch, row_partitions: np.ndarray,
                row_offsets: np.ndarray) -> None:
        """A batch read from the input (every message's partition and offset; `raw` its decoded
        transactions with theirs) into the terminal feed, for every instance's table (feed.py)."""
        if self.feed is not None:
            self.feed.publish(partitions, offsets, row_partitions, row_offsets, raw.ids, raw.seconds, raw.terminals)

    def _expect(self, kind: str) -> dict:
        """What a snapshot of `kind` must have been made for, to be used here."""
        c = self.config
        common = {"kind": kind, "spec": self.spec.state_dict(), "allowed_lateness_s": c.allowed_lateness_s, "input_topic": c.input_topic}
        if kind == "terminals":
            return common | {"labels_topic": c.labels_topic}
        return common | {"group_id": c.group_id}

    def _restore_terminals(self) -> dict | None:
        """The terminal table from its snapshot; the positions to read on from, or None (from the beginning)."""
        t0 = time.monotonic()
        try:
            blob = self.snapshots.read([TERMINALS])[TERMINALS]
            if isinstance(blob, SnapshotRefused):
                raise blob
            fresh = terminal_state(self.spec, allowed_lateness_s=self.config.allowed_lateness_s)
            header, state = decode(blob, self._expect("terminals"), fresh)
            try:
                positions = {(str(t), int(p)): int(o) for t, p, o in header["positions"]}
                watermarks = {int(p): int(w) for p, w in header["partition_watermarks"]}
            except (KeyError, TypeError, ValueError):
                raise SnapshotRefused("corrupt", "terminal snapshot without readable positions") from None
        except SnapshotRefused as refused:
            self.metrics.snapshot_restores.labels("terminals", refused.reason).inc()
            (log.info if refused.reason == "missing" else log.warning)(
                "terminal table: snapshot not used (%s: %s); reading every partition from the beginning", refused.reason, refused)
            return None
        self.online.terminals = self.table.terminals = state
        self.table.partition_watermarks.update(watermarks)
        self.rounds.terminal_positions = positions
        self.metrics.snapshot_restores.labels("terminals", "restored").inc()
        self.metrics.snapshot_bytes.labels("terminals").set(len(blob))
        log.info("terminal table: restored from a snapshot (%d transactions of %d terminals, %.1f MB) in %.2f s; "
                 "reading on from its offsets", len(state), state.entities, len(blob) / 1e6, time.monotonic() - t0)
        return positions

    def catch_up(self, newest_s: int | None = None, timeout_s: float | None = None, idle: bool = False) -> bool:
        """Read the terminal table as far as a batch whose newest event time is `newest_s` needs
        (None: to the topics' current ends); False if not every partition was read in time.

        Its terminal windows end the spec's delay before `newest_s`, and a partition that has
        shown an event time more than the allowed lateness past that end holds no row those
        windows still need (terminal_table.py). `idle`: nothing to score, and ready: read what the
        terminal feed holds (if there is one) and the labels, never the input itself."""
        bound = None if newest_s is None else newest_s - self.spec.terminal_delay_s + self.config.allowed_lateness_s
        return self.table.catch_up(bound, timeout_s, feed_only=idle and self.ready())

    def restore(self, consumer, partitions: list[int]) -> None:
        """Rebuild newly assigned partitions' customer windows from the input topic (not ready meanwhile)."""
        self.restoring |= set(partitions)
        try:
            try:
                restored = restore_partitions(self.config, consumer, partitions, self.spec, self.metrics, self.snapshots,
                                              stopping=lambda: self.stopping)
            except RestoreAbandoned:
                log.info("restore of partitions %s given up: stopping", partitions)
                return
            for p, r in restored.items():
                self.customers[p] = r.state
                self.offsets[p] = r.offset
                if r.committed:
                    self.committed[p] = r.offset
                else:
                    self.committed.pop(p, None)
                if r.snapshot is not None and r.snapshot == r.offset:
                    self.snapshotted[p] = r.offset
                else:
                    self.snapshotted.pop(p, None)
            self._rebuild_terminals_if_needed({p: r.state for p, r in restored.items()})
        finally:
            self.restoring -= set(partitions)
            release_free_memory()

    def consumed(self, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """A batch's messages (their partitions and offsets) went through the customer windows."""
        self._freed_since = True
        if time.monotonic() - self._released >= RELEASE_EVERY_S:
            self._release()
        for p in np.unique(partitions).tolist():
            last = int(offsets[partitions == p].max()) + 1
            self.offsets[p] = max(self.offsets.get(p, last), last)

    def idle(self) -> None:
        """Nothing to score: what the last batches freed goes back to the system once.

        Folds, decoded batches and the table's reads free tens of MB a second in the middle of
        glibc's heap, which it keeps (malloc_trim is what returns them). At 10x the reference
        size the heap held 140-240 MB of free pages while draining; see docs/performance.md."""
        if self._freed_since:
            self._release()

    def _release(self) -> None:
        self._released, self._freed_since = time.monotonic(), False
        release_free_memory()

    def snapshot_due(self) -> bool:
        """Whether a snapshot round is due (rounds.SnapshotRounds: every --snapshot-interval,
        backing off after failures); never without --state-topic."""
        return self.rounds is not None and self.rounds.due()

    def write_snapshots(self, committed: dict[int, int], terminals: bool, only: list[int] | None = None) -> None:
        """Snapshot the customer windows of partitions (`only` these) whose state covers exactly their
        committed offset (`committed`, or the one they were restored at) and changed since their last snapshot; and, with `terminals`, the terminal
        table if it read anything since. A failure is logged and counted; the state is unharmed."""
        if self.rounds is None:
            return
        self.rounds.started()
        committed = self.committed | committed
        due = {p: (self.customers[p], self.offsets[p]) for p in sorted(self.customers if only is None else only)
               if self.customers.get(p) is not None and self.offsets.get(p) is not None
               and committed.get(p) == self.offsets[p] and self.snapshotted.get(p) != self.offsets[p]}
        table_due = terminals and self.table.positions != self.rounds.terminal_positions
        if not due and not table_due:
            return
        if self.rounds.write(due, self.table if table_due else None, self.terminals, self._expect):
            release_free_memory()

    def _rebuild_terminals_if_needed(self, restored: dict[int, CustomerState]) -> None:
        """A partition taken over from another instance may lag the ones scored here so far:
        if the terminal table has already evicted rows its next transactions need, the table
        is read again from the beginning (not ready until it has caught up)."""
        evicted = self.terminals.evicted_through
        if evicted is None:
            return
        floors = [s.watermark for s in restored.values()]
        needed = (None if None in floors else min(floors)) if floors else None
        reach = self.config.allowed_lateness_s + self.spec.terminal_reach_s
        if needed is None or needed - reach <= evicted:
            log.info("terminal table: a newly assigned partition needs rows already evicted; reading it again")
            self.online.terminals = terminal_state(self.spec, allowed_lateness_s=self.config.allowed_lateness_s)
            self.table.reset(self.terminals)

    def revoke(self, partitions: list[int]) -> None:
        """Forget the customer state of partitions this instance no longer owns."""
        if self.feed is not None:
            # Their records out before the next owner's: otherwise its first record could land
            # first and the readers would see a gap (and read the input) where there is none.
            self.feed.flush(FEED_FLUSH_ON_REVOKE_S)
            self.feed.forget(partitions)
        for p in partitions:
            self.online.drop_partition(p)
            self.restoring.discard(p)
            self.offsets.pop(p, None)
            self.snapshotted.pop(p, None)
            self.committed.pop(p, None)
            if str(p) in self._reported:
                self.metrics.state_partition_bytes.remove(str(p))
                for series, labels in ((self.metrics.state_coverage, ("customer", str(p))), (self.metrics.event_watermark, (str(p),))):
                    try:
                        series.remove(*labels)
                    except KeyError:  # never set (no transaction yet)
                        pass
                self._reported.discard(str(p))

    # ------------------------------------------------------------- scoring

    def read(self, values: list, timestamps_ms: np.ndarray | None = None) -> RawBatch:
        """Raw messages decoded (`decode_transactions`), before any state is asked."""
        return decode_transactions(values, max_message_bytes=self.config.max_message_bytes, timestamps_ms=timestamps_ms)

    def decode(self, values: list, partitions: np.ndarray, keys: list, model_features: tuple[str, ...],
               timestamps_ms: np.ndarray | None = None, raw: RawBatch | None = None) -> tuple[DecodedBatch, Emitted]:
        """Raw messages -> the model's rows (online features, stored first) and the rejections.

        `partitions` and `keys` are the messages' Kafka partitions and keys; `raw`, the
        messages as `read` decoded them, if that was done already. Late rows are rejected
        (`late`); a row whose feature falls outside float32 is `out_of_range`."""
        if raw is None:
            raw = self.read(values, timestamps_ms)
        rejections = list(raw.rejections)
        parts = partitions[raw.index]
        # Compared as fixed-width byte strings, in numpy (a per-message Python loop costs ~1 ms a batch).
        given = np.array([keys[i] or b"" for i in raw.index.tolist()], dtype="S21")
        mismatched = int((given != raw.customers.astype("S21")).sum()) if len(raw) else 0
        if mismatched:
            self.metrics.key_mismatches.inc(mismatched)
        late = self.late_mask(raw, parts)
        for i in np.flatnonzero(late).tolist():
            rejections.append(Rejection(int(raw.index[i]), "late", f"TX_DATETIME is more than {self.config.allowed_lateness_s} s "
                                        "older than the newest transaction of its partition; its windows may be incomplete"))
        on = np.flatnonzero(~late)
        full = self.features(raw.take(on), parts[on])
        columns = [self.spec.names.index(f) for f in model_features]
        matrix = full[:, columns]
        in_range = (np.abs(matrix) <= FLOAT32_MAX).all(axis=1)
        for i in np.flatnonzero(~in_range).tolist():
            rejections.append(Rejection(int(raw.index[on[i]]), "out_of_range", "a feature is outside float32's range"))
        keep = on[in_range]
        rejections.sort(key=lambda r: r.index)
        decoded = DecodedBatch(raw.index[keep], raw.ids[keep].tolist(), matrix[in_range].astype(np.float32), rejections,
                               event_seconds=raw.seconds[keep], partial=self.partial_mask(raw.seconds[keep], parts[keep]))
        return decoded, Emitted(self.spec.names, full[in_range])

    def partial_mask(self, seconds: np.ndarray, partitions: np.ndarray) -> np.ndarray:
        """Rows whose windows reach back before the oldest event the state has seen (batch.partial_mask)."""
        return partial_mask(self.online, self.spec, seconds, partitions)

    def late_mask(self, raw: RawBatch, partitions: np.ndarray) -> np.ndarray:
        """Rows too late for their partition (batch.late_mask)."""
        return late_mask(self.online, self.config.allowed_lateness_s, raw, partitions)

    def _cap_terminal_horizon(self) -> None:
        """Keep in the terminal table everything the partitions scored here can still ask for
        (batch.terminal_horizon_cap)."""
        self.terminals.horizon_cap = terminal_horizon_cap(self.customers, self.table.partition_watermarks, self.spec,
                                                          self.config.allowed_lateness_s)

    def features(self, raw: RawBatch, partitions: np.ndarray) -> np.ndarray:
        """float64 rows x spec.names for the batch's (on-time) transactions; stores them first."""
        self._cap_terminal_horizon()
        return self.online.features_of_partitions(partitions, raw.ids, raw.seconds, raw.customers, raw.terminals, raw.amounts)

    def short_coverage(self, partitions: list[int]) -> str:
        """What the state of `partitions` is short of for --require-full-state ("" if nothing)."""
        return short_coverage(self.customers, self.terminals, self.spec, partitions)

    def ready(self) -> bool:
        """The terminal table has caught up once and no partition is restoring."""
        return self.table.caught_up and not self.restoring

    def report(self, metrics) -> None:
        """Memory and rows held, as gauges."""
        customer_bytes = sum(state.nbytes for state in self.customers.values())
        metrics.state_bytes.labels("terminal").set(self.terminals.nbytes)
        metrics.state_bytes.labels("customer").set(customer_bytes)
        metrics.state_rows.labels("terminal").set(len(self.terminals))
        metrics.state_rows.labels("customer").set(sum(len(state) for state in self.customers.values()))
        for p, state in self.customers.items():
            metrics.state_partition_bytes.labels(str(p)).set(state.nbytes)
            metrics.state_coverage.labels("customer", str(p)).set(state.coverage_s)
            if state.watermark is not None:
                metrics.event_watermark.labels(str(p)).set(state.watermark)
            self._reported.add(str(p))
        metrics.state_coverage.labels("terminal", "all").set(self.terminals.coverage_s)
        metrics.labels_pending.set(self.terminals.pending_labels)
        if self.config.labels_topic:
            for p, lag in self.table.lag(self.config.labels_topic).items():
                metrics.labels_lag.labels(str(p)).set(lag)
        if time.monotonic() - self._entities_counted >= ENTITIES_EVERY_S:
            # Distinct ids over millions of rows cost tens of ms: counted now and then, not per batch.
            self._entities_counted = time.monotonic()
            metrics.state_entities.labels("terminal").set(self.terminals.entities)
            metrics.state_entities.labels("customer").set(sum(state.entities for state in self.customers.values()))

    def close(self) -> None:
        self.table.close()
        if self.feed is not None:
            self.feed.close(self.snapshots.budget())
        if self.snapshots is not None:
            self.snapshots.close()
