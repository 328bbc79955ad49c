"""Terminal windows at a coarse resolution (`features/buckets.py`): per-terminal bucket counts
that give the offline engine's windows at the same resolution, in memory bounded by
terminals x buckets, through snapshots, and with the confirmation rules the module states.
The random-stream parity properties run in test_online_features.py (BUCKET_SPECS)."""

from __future__ import annotations


import numpy as np
import pytest

from fraudscore import InputError, baseline_features, simulate
from fraudscore.features.buckets import TerminalBuckets, columns_needed
from fraudscore.features.online import OnlineFeatures, TerminalState, terminal_state
from fraudscore.features.spec import BASELINE_SPEC, FeatureSpec, parse_resolution, resolution_name

DAY = 86_400
EPOCH = 1_522_540_800  # 2018-04-01 00:00:00 UTC
DAILY = FeatureSpec(terminal_resolution_s=DAY)


def test_the_resolution_is_recorded_only_when_it_is_not_the_handbooks() -> None:
    assert "terminal_resolution_s" not in BASELINE_SPEC.to_dict()  # bundles and snapshots written before it still match
    assert FeatureSpec.from_dict(BASELINE_SPEC.to_dict()) == BASELINE_SPEC
    assert FeatureSpec.from_dict(DAILY.to_dict()) == DAILY
    assert DAILY.to_dict()["terminal_resolution_s"] == DAY
    with pytest.raises(InputError, match="terminal_resolution_s must be one of"):
        FeatureSpec(terminal_resolution_s=60)
    assert [parse_resolution(x) for x in ("1s", "6h", "1d", "3600")] == [1, 21_600, DAY, 3600]
    with pytest.raises(InputError, match="not one of"):
        parse_resolution("5m")
    assert resolution_name(DAY) == "1d"
    assert isinstance(terminal_state(BASELINE_SPEC), TerminalState) and isinstance(terminal_state(DAILY), TerminalBuckets)


def test_window_ends_round_down_to_the_resolution() -> None:
    t = np.array([EPOCH + 7 * DAY, EPOCH + 7 * DAY + 1, EPOCH + 8 * DAY - 1])
    assert (DAILY.terminal_window_ends(t) - EPOCH).tolist() == [0, 0, 0]
    assert (BASELINE_SPEC.terminal_window_ends(t) - EPOCH).tolist() == [0, 1, DAY - 1]
    assert DAILY.terminal_reach_s == BASELINE_SPEC.terminal_reach_s + DAY - 1


def test_a_day_bucket_holds_its_left_open_edges() -> None:
    state = TerminalBuckets(DAILY)
    # Bucket k is (k - 1) days, k days]: midnight belongs to the day before.
    state.add_transactions(ids=[1, 2, 3], seconds=[EPOCH, EPOCH + 1, EPOCH + DAY], terminals=[5, 5, 5])
    f = state.features(seconds=[EPOCH + 8 * DAY], terminals=[5])  # window (day 0, day 1]
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [2]
    f = state.features(seconds=[EPOCH + 8 * DAY - 1], terminals=[5])  # window (day -1, day 0]
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [1]


def test_memory_is_bounded_by_terminals_and_buckets_not_by_history() -> None:
    """120 days of a small simulation: the state keeps ~40 day buckets per terminal, and after each
    eviction holds exactly the transactions of the buckets an on-time query can reach."""
    table = simulate(customers=300, terminals=500, days=120, seed=4).transactions
    seconds = table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64)
    order = np.argsort(seconds, kind="stable")
    state = TerminalBuckets(DAILY, allowed_lateness_s=DAY)
    sizes = []
    for start in range(0, len(order), 2000):
        rows = order[start:start + 2000]
        state.add_transactions(table["TRANSACTION_ID"][rows], seconds[rows], table["TERMINAL_ID"][rows])
        sizes.append(state.nbytes)
    dropped = state.evict()
    assert dropped > 0
    kept_from = (state.evicted_through // DAY) * DAY
    assert len(state) == int((seconds > kept_from).sum())
    width = columns_needed(DAILY, DAY)
    assert width <= 41
    # 500 terminals (1,024 rows reserved) x at most width * 9 / 8 + 1 columns x two int32 matrices, plus ids.
    bound = 1024 * (width + width // 8 + 2) * 8 + 500 * 16
    assert max(sizes) <= bound, (max(sizes), bound)
    assert sizes[-1] <= bound and sizes[len(sizes) // 3] <= bound  # flat: not growing with the 120 days


def test_snapshot_arrays_round_trip_and_damaged_ones_are_refused() -> None:
    state = TerminalBuckets(DAILY)
    state.add_transactions(ids=[1, 2], seconds=[EPOCH, EPOCH + 3 * DAY], terminals=[7, 2**40])
    state.add_labels(ids=[1, 9], seconds=[EPOCH, EPOCH + 9 * DAY], terminals=[7, 7])  # 9: ahead, pending
    scalars, arrays = state.to_arrays()
    again = TerminalBuckets(DAILY)
    again.load_arrays(scalars, arrays)
    query = dict(seconds=[EPOCH + 8 * DAY, EPOCH + 10 * DAY], terminals=[7, 2**40])
    for name, values in state.features(**query).items():
        np.testing.assert_array_equal(again.features(**query)[name], values)
    assert (again.pending_labels, again.labels, len(again)) == (1, state.labels, 2)
    broken = dict(arrays, counts=arrays["counts"][:, :1])
    with pytest.raises(InputError, match="other types, shapes or orders"):
        TerminalBuckets(DAILY).load_arrays(scalars, broken)
    with pytest.raises(InputError, match="resolution"):
        TerminalBuckets(FeatureSpec(terminal_resolution_s=3600)).load_arrays(scalars, arrays)


def test_confirmations_wait_for_the_watermark_count_once_and_need_no_transaction() -> None:
    state = TerminalBuckets(DAILY)
    counts = state.add_labels(ids=[5], seconds=[EPOCH + 10], terminals=[1])  # nothing seen yet: waits
    assert (counts.pending, state.pending_labels) == (1, 1)
    state.add_transactions(ids=[4], seconds=[EPOCH + 20], terminals=[1])  # passes it: counted
    assert (state.pending_labels, state.labels.applied) == (0, 1)
    assert state.add_labels(ids=[5, 5], seconds=[EPOCH + 10] * 2, terminals=[1, 1]).duplicate == 2
    # A confirmation whose transaction never arrives is still counted (features/buckets.py says so):
    # the window then holds 1 transaction and 2 frauds, and the share is capped at 1.
    state.add_labels(ids=[6], seconds=[EPOCH + 15], terminals=[1])
    f = state.features(seconds=[EPOCH + 8 * DAY], terminals=[1])
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [1]
    assert f["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist() == [1.0]
    state.add_transactions(ids=[7], seconds=[EPOCH + 60 * DAY], terminals=[2])
    assert state.add_labels(ids=[8], seconds=[EPOCH + 11], terminals=[1]).expired == 1  # beyond the horizon


def test_a_horizon_cap_holds_eviction_back_and_the_columns_return_after() -> None:
    state = TerminalBuckets(DAILY)
    state.horizon_cap = EPOCH  # a partition still scoring near EPOCH needs everything after it
    for day in range(0, 90, 3):
        state.add_transactions(ids=[day], seconds=[EPOCH + day * DAY + 5], terminals=[3])
    assert len(state) == 30  # nothing evicted past the cap
    assert state.evicted_through is None or state.evicted_through <= EPOCH
    wide = state.nbytes
    state.horizon_cap = None
    state.evict()
    assert state.nbytes < wide
    assert len(state) == int(sum(1 for day in range(0, 90, 3) if EPOCH + day * DAY + 5 > state.evicted_through))


def test_online_buckets_equal_the_offline_table_with_out_of_order_rows() -> None:
    table = simulate(customers=150, terminals=300, days=50, seed=9).transactions
    features = baseline_features(table, DAILY)
    seconds = table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64)
    rng = np.random.default_rng(1)
    # Every row held back by up to 12 hours, within the default day of lateness.
    order = np.lexsort((rng.permutation(len(seconds)), seconds + rng.integers(0, 12 * 3600, len(seconds))))
    online = OnlineFeatures(DAILY)
    fraud = np.flatnonzero(table["TX_FRAUD"] == 1)
    online.add_labels(table["TRANSACTION_ID"][fraud], seconds[fraud], table["TERMINAL_ID"][fraud])
    got = np.empty((len(order), len(DAILY.names)))
    for start in range(0, len(order), 700):
        rows = order[start:start + 700]
        assert not online.late_mask(0, seconds[rows]).any()
        got[rows] = online.features(0, table["TRANSACTION_ID"][rows], seconds[rows], table["CUSTOMER_ID"][rows],
                                    table["TERMINAL_ID"][rows], table["TX_AMOUNT"][rows])
    for j, name in enumerate(DAILY.names):
        if name.startswith("TERMINAL_ID_"):
            np.testing.assert_array_equal(got[:, j], features[name].astype(np.float64), err_msg=name)


def test_event_times_far_from_the_rest_cannot_blow_up_memory() -> None:
    """One TX_DATETIME of 1970 in a first batch, or a years-old confirmation while a restore holds
    eviction back, is not counted rather than stretching every terminal's columns over decades."""
    hourly = FeatureSpec(terminal_resolution_s=3600)
    state = TerminalBuckets(hourly)
    terminals = np.arange(2000)
    counted = state.add_transactions(ids=np.arange(2001), seconds=np.r_[np.full(2000, EPOCH), 0],
                                     terminals=np.r_[terminals, 1])
    assert counted.tolist() == [True] * 2000 + [False]
    fresh = state.nbytes
    state.horizon_cap = np.iinfo(np.int64).min // 4  # the sidecar's "keep everything" while restoring
    state.add_labels(ids=[10**6], seconds=[EPOCH - 2 * 365 * DAY], terminals=[1])
    assert state.nbytes <= fresh * 4.5, (state.nbytes, fresh)
    for day in range(1, 400, 5):  # a cap held for a year: the columns stop at the limit
        state.add_transactions(ids=[10**7 + day], seconds=[EPOCH + day * DAY], terminals=[1])
    assert state.nbytes <= fresh * 4.5, (state.nbytes, fresh)
