"""A raw-mode batch's rows against the online state, as pure functions of that state: which rows
are late, which were scored on partial state, how far back the terminal table must keep
rows, and what the state is short of for --require-full-state (`FeatureState` calls them)."""

from __future__ import annotations

import numpy as np

from fraudscore.features.online import OnlineFeatures, late_in_order
from fraudscore.features.spec import FeatureSpec
from fraudscore.serving.transactions import RawBatch


def partial_mask(online: OnlineFeatures, spec: FeatureSpec, seconds: np.ndarray, partitions: np.ndarray) -> np.ndarray:
    """Rows (already stored) whose windows reach back before the oldest event the state has
    seen: a customer window starts `customer_reach_s` (30 days) before the row, before the
    first transaction of its partition; or a terminal window `terminal_reach_s` (7 + 30
    days) before it, before the terminal table's first. Their features may be short."""
    first_terminal = online.terminals.first_event
    partial = (seconds - (first_terminal if first_terminal is not None else np.iinfo(np.int64).max // 2)
               < spec.terminal_reach_s)
    for p in np.unique(partitions).tolist():
        rows = partitions == p
        first = online.partition(p).first_event
        partial[rows] |= seconds[rows] - (first if first is not None else seconds[rows]) < spec.customer_reach_s
    return partial


def late_mask(online: OnlineFeatures, allowed_lateness_s: int, raw: RawBatch, partitions: np.ndarray) -> np.ndarray:
    """Rows older than the newest earlier transaction of their partition minus the allowed lateness.

    "Earlier" is in arrival order, row by row, so the decision does not depend on how
    messages were cut into batches: a restore replaying the partition in other batches
    rejects exactly the rows the live run rejected."""
    late = np.zeros(len(raw.seconds), bool)
    for p in np.unique(partitions).tolist():
        rows = np.flatnonzero(partitions == p)
        state = online.partition(p)
        late[rows] = late_in_order(raw.seconds[rows], state.watermark, allowed_lateness_s)
        if late[rows].any():
            # A redelivery (a rewound batch) was on time the first time: it is scored again.
            late[rows] &= ~state.stored_mask(raw.ids[rows], raw.seconds[rows], raw.customers[rows])
    return late


def terminal_horizon_cap(customers: dict, table_partitions: dict, spec: FeatureSpec, allowed_lateness_s: int) -> int | None:
    """The oldest event time the terminal table must keep for the partitions scored here.

    The table reads every partition, some far ahead of the ones scored here (a backlog,
    a restore): its own watermark would evict rows they need. The cap follows the
    slowest assigned partition; one with unscored data but no history yet stops eviction.
    None: nothing is scored here, and the table keeps its own horizon (a later assignment
    that needs older rows has them read again). `table_partitions`: the table's watermark
    by partition."""
    if not customers:
        return None
    floors = []
    for p, state in customers.items():
        if state.watermark is not None:
            floors.append(state.watermark)
        elif p in table_partitions:
            floors.append(None)
    if not floors or None in floors:
        return np.iinfo(np.int64).min // 4
    return min(floors) - allowed_lateness_s - spec.terminal_reach_s


def short_coverage(customers: dict, terminals, spec: FeatureSpec, partitions: list[int]) -> str:
    """"" when the customer state of `partitions` and the terminal table cover what the windows
    reach back (--require-full-state); else what is short and how to fix it."""
    short = []
    for p in partitions:
        state = customers.get(p)  # read from /readyz's thread: never created here
        covered = state.coverage_s if state is not None else 0
        if covered < spec.customer_reach_s:
            short.append(f"partition {p}'s customer state covers {covered / 86_400:.1f} days of the "
                         f"{spec.customer_reach_s / 86_400:g} its windows need")
    if terminals.coverage_s < spec.terminal_reach_s:
        short.append(f"the terminal table covers {terminals.coverage_s / 86_400:.1f} days of the "
                     f"{spec.terminal_reach_s / 86_400:g} its windows need")
    if not short:
        return ""
    return ("; ".join(short) + " (--require-full-state). Load that much history into the input and labels "
            "topics first (docs/raw-transactions.md, \"Going live\"), or drop --require-full-state to be "
            "ready with results marked \"state\":\"partial\"")
