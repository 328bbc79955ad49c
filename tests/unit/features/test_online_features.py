"""Online features: batch by batch, they equal the offline `baseline_features` of what has arrived.

The reference for every scored row is the offline transform over the transactions
accepted so far (earlier batches and the row's own), with TX_FRAUD set only for frauds
whose confirmation was delivered before the batch. In event-time order that is the
whole table; out of order, within the allowed lateness, it is what the engine promises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fraudscore import BASELINE_FEATURES, InputError, Table, baseline_features, simulate
from fraudscore.features import (
    SPEC_V2,
    BASELINE_SPEC,
    CustomerState,
    FeatureSpec,
    LabelCounts,
    OnlineFeatures,
    TerminalState,
    calendar_features,
)
from fraudscore.features.windows import cent_sums

DAY = 86_400
EPOCH = 1_522_540_800  # 2018-04-01 00:00:00 UTC
SMALL_SPEC = FeatureSpec(customer_windows_days=(2, 5), terminal_windows_days=(1, 3), terminal_delay_days=2, night_last_hour=5)
# Coarse terminal resolutions (per-terminal bucket counts online). Their delays exceed every
# lateness drawn here: a transaction arriving after its own confirmation is then never in
# a window yet (see features/buckets.py for where the two stores differ).
BUCKET_SPECS = [
    FeatureSpec(terminal_resolution_s=6 * 3600),
    FeatureSpec(terminal_resolution_s=DAY),
    FeatureSpec(customer_windows_days=(2, 5), terminal_windows_days=(1, 3), terminal_delay_days=4, terminal_resolution_s=3600),
]
# Version 2: the customer amount ratios and terminal fraud counts beside the baseline features.
RATIO_SPECS = [
    SPEC_V2,
    FeatureSpec(version=2, customer_windows_days=(2, 5), amount_ratio_windows_days=(5,), terminal_windows_days=(1, 3),
                fraud_count_windows_days=(3,), terminal_delay_days=4, terminal_resolution_s=3600),
]


@dataclass
class Stream:
    """Raw transactions as columns; rows are referred to by index."""

    ids: np.ndarray
    seconds: np.ndarray
    customers: np.ndarray
    terminals: np.ndarray
    amounts: np.ndarray
    fraud: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, table: Table) -> Stream:
        return cls(
            table["TRANSACTION_ID"],
            table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64),
            table["CUSTOMER_ID"],
            table["TERMINAL_ID"],
            table["TX_AMOUNT"],
            table["TX_FRAUD"],
        )

    def columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "ids": self.ids[rows],
            "seconds": self.seconds[rows],
            "customers": self.customers[rows],
            "terminals": self.terminals[rows],
            "amounts": self.amounts[rows],
        }

    def offline(self, rows: np.ndarray, fraud: np.ndarray, spec: FeatureSpec) -> Table:
        """`baseline_features` of the rows (sorted, unique indices) with these fraud flags."""
        table = Table(
            {
                "TRANSACTION_ID": self.ids[rows],
                "TX_DATETIME": self.seconds[rows].astype("datetime64[s]"),
                "CUSTOMER_ID": self.customers[rows],
                "TERMINAL_ID": self.terminals[rows],
                "TX_AMOUNT": self.amounts[rows],
                "TX_FRAUD": fraud[rows].astype(np.int64),
            }
        )
        return baseline_features(table, spec)


def assert_same_features(got: np.ndarray, want: Table, spec: FeatureSpec, exact_amounts: bool, where: str = "") -> None:
    """Counts and risks exactly; means exactly for whole-cent amounts, else within 1e-9."""
    for j, name in enumerate(spec.names):
        expected = want[name].astype(np.float64)
        if "AVG_AMOUNT" in name and not exact_amounts:
            np.testing.assert_allclose(got[:, j], expected, rtol=1e-9, atol=1e-9, err_msg=f"{name} {where}")
        elif "AMOUNT_RATIO" in name and not exact_amounts:
            # From a mean that may differ by 1e-9 of the window's sum: the earlier rows' mean
            # (sum - amount) / (count - 1) inherits that absolute error, however small it is.
            w = name.removeprefix("CUSTOMER_ID_LOG_AMOUNT_RATIO_").removesuffix("DAY_WINDOW")
            count = want[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"].astype(np.float64)
            total = count * want[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"]
            earlier = np.maximum((total - want["TX_AMOUNT"]) / np.maximum(count - 1, 1), 0.0)
            tolerance = 1e-8 * total / np.maximum(count - 1, 1) / (1 + earlier) + 1e-9
            assert (np.abs(got[:, j] - expected) <= tolerance).all(), f"{name} {where}"
        else:
            np.testing.assert_array_equal(got[:, j], expected, err_msg=f"{name} {where}")


def whole_cents(amounts: np.ndarray) -> bool:
    """Whether the engines sum these amounts as exact integer cents (their own rule,
    windows.cent_sums): a looser test here once expected exact means for 6.6e-12, which the
    engines rightly sum as floats (equal within 1e-18, not bit for bit)."""
    return cent_sums(np.asarray(amounts, dtype=np.float64))[1] == 100.0


def play(stream: Stream, batches: list[np.ndarray], labels_before: dict[int, np.ndarray], online: OnlineFeatures, spec: FeatureSpec) -> np.ndarray:
    """Deliver labels and batches (one partition); check every on-time row against the offline reference.

    Returns the rows that were accepted (scored), in the order of acceptance.
    """
    lateness = online.allowed_lateness_s
    accepted = np.zeros(len(stream), bool)
    confirmed = np.zeros(len(stream), bool)
    exact = whole_cents(stream.amounts)
    watermark = None
    order = []
    for k, batch in enumerate(batches):
        labelled = labels_before.get(k, np.empty(0, np.int64))
        if len(labelled):
            online.add_labels(stream.ids[labelled], stream.seconds[labelled], stream.terminals[labelled])
            confirmed[labelled] = True
        late = online.late_mask(0, stream.seconds[batch])
        expected, newest = [], watermark  # arrival order: earlier rows of the batch count too
        for t in stream.seconds[batch].tolist():
            expected.append(newest is not None and t < newest - lateness)
            newest = t if newest is None else max(newest, t)
        np.testing.assert_array_equal(late, expected, err_msg=f"late rows of batch {k}")
        batch = batch[~late]  # dead-lettered: never stored, never scored
        if not len(batch):
            continue
        got = online.features(0, **stream.columns(batch))
        accepted[batch] = True
        order += list(batch)
        high = int(stream.seconds[batch].max())
        watermark = high if watermark is None else max(watermark, high)
        rows = np.flatnonzero(accepted)
        want = stream.offline(rows, stream.fraud.astype(bool) & confirmed, spec).take(np.searchsorted(rows, batch))
        assert_same_features(got, want, spec, exact, f"batch {k}")
    return np.array(order, dtype=np.int64)


# ------------------------------------------------------------------ random streams

# Whole days apart and on hour edges, so that left-open window edges and same-second
# ties are hit often, not by luck.
times = st.one_of(
    st.builds(lambda d, s: d * DAY + s, st.integers(0, 60), st.sampled_from([0, 1, 6 * 3600 + 3599, 43_200, DAY - 1])),
    st.integers(0, 60 * DAY),
)
# Ids inside [0, 2**28) are their own slot; the others go through the id table.
entity_ids = st.sampled_from([0, 1, 2, 7, 2**28 + 5, -3, 2**62 + 1])
amounts = st.one_of(st.integers(0, 500_000).map(lambda c: c / 100), st.floats(0, 1e4, allow_nan=False, allow_infinity=False))


@st.composite
def streams(draw) -> Stream:
    n = draw(st.integers(1, 50))
    ids = draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n, unique=True))
    cents = draw(st.booleans())
    amount = st.integers(0, 500_000).map(lambda c: c / 100) if cents else amounts
    rows = [(draw(times), draw(entity_ids), draw(entity_ids), draw(amount), draw(st.integers(0, 1))) for _ in range(n)]
    t, c, term, a, f = (np.array(column) for column in zip(*rows))
    return Stream(np.array(ids, np.int64), EPOCH + t.astype(np.int64), c.astype(np.int64), term.astype(np.int64), a.astype(np.float64), f.astype(np.int64))


def split(draw, order: np.ndarray) -> list[np.ndarray]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(order) - 1)), max_size=12))))
    return [b for b in np.split(order, cuts) if len(b)]


def confirmations(draw, stream: Stream, n_batches: int) -> dict[int, np.ndarray]:
    """Each fraud's confirmation before a random batch: before or after its transaction arrives."""
    labels: dict[int, list[int]] = {}
    for row in np.flatnonzero(stream.fraud):
        labels.setdefault(draw(st.integers(0, n_batches)), []).append(int(row))
    return {k: np.array(v, np.int64) for k, v in labels.items()}


settings_ = settings(max_examples=250, deadline=None)
lateness = st.sampled_from([0, 3600, DAY, 3 * DAY])
fold_rows = st.sampled_from([1, 2, 7, 10**6])  # 1: fold before every batch; 10**6: never
exact_specs = st.sampled_from([BASELINE_SPEC, SMALL_SPEC, SPEC_V2])
specs = st.sampled_from([BASELINE_SPEC, SMALL_SPEC, *BUCKET_SPECS, *RATIO_SPECS])


@settings_
@given(st.data(), streams(), lateness, fold_rows, specs)
def test_in_event_time_order_every_row_equals_the_whole_table(data, stream: Stream, late_s: int, fold: int, spec: FeatureSpec) -> None:
    order = np.lexsort((stream.ids, stream.seconds))
    batches = split(data.draw, order)
    online = OnlineFeatures(spec, allowed_lateness_s=late_s, fold_min_rows=fold)
    # All confirmations up front: held pending, then applied as their transactions arrive.
    play(stream, batches, {0: np.flatnonzero(stream.fraud)}, online, spec)
    got = np.empty((len(stream), len(spec.names)))
    again = OnlineFeatures(spec, allowed_lateness_s=late_s, fold_min_rows=fold)
    again.add_labels(**{k: v for k, v in stream.columns(np.flatnonzero(stream.fraud)).items() if k in ("ids", "seconds", "terminals")})
    for batch in batches:
        got[batch] = again.features(0, **stream.columns(batch))
    everything = np.arange(len(stream))
    assert_same_features(got, stream.offline(everything, stream.fraud, spec), spec, whole_cents(stream.amounts))
    assert again.terminals.labels.applied == int(stream.fraud.sum()) and again.terminals.pending_labels == 0


@settings_
@given(st.data(), streams(), lateness, fold_rows, specs)
def test_labels_before_and_after_their_transactions(data, stream: Stream, late_s: int, fold: int, spec: FeatureSpec) -> None:
    batches = split(data.draw, np.lexsort((stream.ids, stream.seconds)))
    online = OnlineFeatures(spec, allowed_lateness_s=late_s, fold_min_rows=fold)
    play(stream, batches, confirmations(data.draw, stream, len(batches)), online, spec)


@settings_
@given(st.data(), streams(), st.sampled_from([3600, DAY, 3 * DAY]), fold_rows, specs)
def test_out_of_order_within_the_lateness_equals_the_rows_seen_so_far(data, stream: Stream, late_s: int, fold: int, spec: FeatureSpec) -> None:
    # Each row is held back by less than the allowed lateness: none may be flagged late.
    delay = np.array(data.draw(st.lists(st.integers(0, late_s - 1), min_size=len(stream), max_size=len(stream))))
    order = np.lexsort((data.draw(st.permutations(range(len(stream)))), stream.seconds + delay))
    batches = split(data.draw, order)
    online = OnlineFeatures(spec, allowed_lateness_s=late_s, fold_min_rows=fold)
    accepted = play(stream, batches, confirmations(data.draw, stream, len(batches)), online, spec)
    assert len(accepted) == len(stream)


@settings_
@given(st.data(), streams(), st.sampled_from([0, 3600, DAY]), fold_rows, exact_specs)
def test_rows_beyond_the_lateness_are_flagged_and_the_rest_are_exact(data, stream: Stream, late_s: int, fold: int, spec: FeatureSpec) -> None:
    delay = np.array(data.draw(st.lists(st.integers(0, late_s + 3 * DAY), min_size=len(stream), max_size=len(stream))))
    order = np.lexsort((data.draw(st.permutations(range(len(stream)))), stream.seconds + delay))
    batches = split(data.draw, order)
    online = OnlineFeatures(spec, allowed_lateness_s=late_s, fold_min_rows=fold)
    accepted = play(stream, batches, confirmations(data.draw, stream, len(batches)), online, spec)  # checks late_mask row by row
    event("some rows late" if len(accepted) < len(stream) else "no row late")


@settings_
@given(st.data(), streams(), lateness, fold_rows, exact_specs)
def test_redelivered_rows_are_counted_once(data, stream: Stream, late_s: int, fold: int, spec: FeatureSpec) -> None:
    order = np.lexsort((stream.ids, stream.seconds))
    batches = split(data.draw, order)
    # Redeliver: repeat rows inside a batch, and replay earlier batches later on.
    noisy = []
    for k, batch in enumerate(batches):
        copies = data.draw(st.lists(st.sampled_from(list(batch)), max_size=3))
        noisy.append(np.concatenate([batch, np.array(copies, np.int64)]))
        if k and data.draw(st.booleans()):
            noisy.append(batches[data.draw(st.integers(0, k))])
    online = OnlineFeatures(spec, allowed_lateness_s=late_s, fold_min_rows=fold)
    play(stream, noisy, confirmations(data.draw, stream, len(noisy)), online, spec)
    if fold == 10**6:  # nothing evicted: every distinct row stored exactly once
        assert len(online.partition(0)) == len(online.terminals) == len(stream)


# ------------------------------------------------------------------ plain behaviour


def test_same_second_ties_follow_ids_not_arrival() -> None:
    state = CustomerState()
    t = EPOCH + 40 * DAY
    first = state.features(ids=[30], seconds=[t], customers=[1], amounts=[30.0])
    later = state.features(ids=[20, 40], seconds=[t, t], customers=[1, 1], amounts=[20.0, 40.0])
    assert first["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1]  # id 20 had not arrived yet
    assert later["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 3]  # id 20 sees itself; id 40 sees 20, 30, 40
    assert later["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].tolist() == [20.0, 30.0]
    again = state.features(ids=[30], seconds=[t], customers=[1], amounts=[30.0])  # redelivered
    assert again["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [2]  # now with id 20, which is earlier
    assert len(state) == 3


def test_windows_are_left_open() -> None:
    state = CustomerState()
    t = EPOCH + 40 * DAY
    f = state.features(ids=[1, 2, 3], seconds=[t - DAY, t - DAY + 1, t], customers=[5, 5, 5], amounts=[1.0, 2.0, 3.0])
    assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 2, 2]  # the row exactly a day older is out


def test_window_edges_hold_across_folds_and_eviction() -> None:
    # fold_min_rows=1: every call first folds the previous rows into the main run and evicts.
    customers = CustomerState(allowed_lateness_s=DAY, fold_min_rows=1)
    t0 = EPOCH + 5 * DAY
    customers.add(ids=[1], seconds=[t0], customers=[1], amounts=[10.0])
    f = customers.features(ids=[2], seconds=[t0 + DAY - 1], customers=[1], amounts=[20.0])
    assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [2]  # the main run's last row, 1 s inside the window
    customers.add(ids=[3], seconds=[t0 + 31 * DAY - 1], customers=[2], amounts=[1.0])  # watermark
    # Exactly at watermark - lateness: on time, and its 30-day window starts 1 s before row 1.
    assert not customers.late_mask([t0 + 30 * DAY - 1]).any()
    f = customers.features(ids=[4], seconds=[t0 + 30 * DAY - 1], customers=[1], amounts=[30.0])
    assert f["CUSTOMER_ID_NB_TX_30DAY_WINDOW"].tolist() == [3]

    terminals = TerminalState(allowed_lateness_s=DAY, fold_min_rows=1)
    terminals.add_transactions(ids=[1], seconds=[t0], terminals=[1])
    terminals.add_labels(ids=[1], seconds=[t0], terminals=[1])
    terminals.add_transactions(ids=[2], seconds=[t0 + 38 * DAY - 1], terminals=[2])  # watermark
    _, f = terminals.add_and_features(ids=[3], seconds=[t0 + 37 * DAY - 1], terminals=[1])
    assert f["TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist() == [1] and f["TERMINAL_ID_RISK_30DAY_WINDOW"].tolist() == [1.0]


def test_a_label_naming_another_time_or_terminal_waits_and_expires() -> None:
    state = TerminalState()
    t = EPOCH + 10 * DAY
    state.add_labels(ids=[1, 2], seconds=[t + 1, t], terminals=[4, 5])  # id 1 is at t, id 2 on terminal 4
    state.add_transactions(ids=[1, 2], seconds=[t, t], terminals=[4, 4])
    assert state.labels == LabelCounts(pending=2)
    assert state.features(seconds=[t + 7 * DAY], terminals=[4])["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist() == [0.0]
    state.add_transactions(ids=[3], seconds=[t + 60 * DAY], terminals=[4])
    state.evict()
    assert state.labels == LabelCounts(expired=2)


def test_label_outcomes_are_counted() -> None:
    state = TerminalState()
    t = EPOCH + 10 * DAY
    assert state.add_labels(ids=[1], seconds=[t], terminals=[4]) == LabelCounts(pending=1)  # before its transaction
    assert state.add_labels(ids=[1, 1], seconds=[t, t], terminals=[4, 4]) == LabelCounts(duplicate=2)
    state.add_transactions(ids=[1, 2], seconds=[t, t + 1], terminals=[4, 4])
    assert state.labels == LabelCounts(applied=1, pending=0, duplicate=2)
    assert state.add_labels(ids=[2, 1], seconds=[t + 1, t], terminals=[4, 4]) == LabelCounts(applied=1, duplicate=1)
    state.add_transactions(ids=[3], seconds=[t + 60 * DAY], terminals=[4])  # the horizon moves past t
    assert state.add_labels(ids=[9], seconds=[t], terminals=[4]) == LabelCounts(expired=1)
    f = state.features(seconds=[t + 7 * DAY + 5], terminals=[4])
    assert f["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist() == [1.0]


def test_pending_labels_expire_when_the_horizon_passes_them() -> None:
    state = TerminalState(fold_min_rows=1)
    t = EPOCH + 10 * DAY
    state.add_labels(ids=[1], seconds=[t], terminals=[4])  # its transaction never comes
    state.add_transactions(ids=[2], seconds=[t + 60 * DAY], terminals=[4])
    state.evict()
    assert state.pending_labels == 0 and state.labels == LabelCounts(expired=1)


def test_unknown_terminal_has_empty_windows() -> None:
    state = TerminalState()
    assert state.features(seconds=[EPOCH], terminals=[1])["TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist() == [0]
    state.add_transactions(ids=[1], seconds=[EPOCH], terminals=[2])
    f = state.features(seconds=[EPOCH + 8 * DAY, EPOCH + 8 * DAY], terminals=[3, 2])
    assert f["TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist() == [0, 1] and f["TERMINAL_ID_RISK_30DAY_WINDOW"].tolist() == [0.0, 0.0]


def test_late_rows_are_those_older_than_the_watermark_minus_the_lateness() -> None:
    state = CustomerState(allowed_lateness_s=3600)
    assert not state.late_mask([EPOCH]).any()  # nothing seen yet
    state.add(ids=[1], seconds=[EPOCH + DAY], customers=[1], amounts=[1.0])
    assert state.late_mask([EPOCH + DAY - 3601, EPOCH + DAY - 3600, EPOCH]).tolist() == [True, False, True]


def test_calendar_features_equal_the_offline_columns() -> None:
    stream = Stream.of(simulate(customers=30, terminals=60, days=10, seed=2).transactions)
    offline = stream.offline(np.arange(len(stream)), stream.fraud, BASELINE_SPEC)
    for name, values in calendar_features(stream.seconds, BASELINE_SPEC).items():
        np.testing.assert_array_equal(values, offline[name])


def test_empty_batches() -> None:
    online = OnlineFeatures()
    empty = np.empty(0, np.int64)
    x = online.features(0, ids=empty, seconds=empty, customers=empty, terminals=empty, amounts=np.empty(0))
    assert x.shape == (0, 15)
    assert online.add(0, empty, empty, empty, empty, np.empty(0)).shape == (0,)
    assert online.add_labels(empty, empty, empty) == LabelCounts()


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"ids": [1, 2], "seconds": [EPOCH], "customers": [1, 1], "amounts": [1.0, 2.0]}, "different lengths"),
        ({"ids": [1.5], "seconds": [EPOCH], "customers": [1], "amounts": [1.0]}, "ids must hold integers"),
        ({"ids": [1], "seconds": [[EPOCH]], "customers": [1], "amounts": [1.0]}, "seconds must be a 1-D array"),
        ({"ids": [1], "seconds": [EPOCH], "customers": [1], "amounts": ["x"]}, "amounts must be a 1-D array of numbers"),
    ],
)
def test_bad_columns_are_refused(columns: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        CustomerState().features(**columns)


def test_event_times_far_from_the_first_one_are_refused() -> None:
    state = CustomerState()
    state.add(ids=[1], seconds=[EPOCH], customers=[1], amounts=[1.0])
    with pytest.raises(InputError, match="check the producer's TX_DATETIME"):
        state.add(ids=[2], seconds=[EPOCH + 2**34], customers=[1], amounts=[1.0])


# ------------------------------------------------------------------ simulated streams


def labels_due(stream: Stream, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraud confirmations, each due at its transaction's time plus a random delay under 7 days."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(stream.fraud)
    due = stream.seconds[rows] + rng.integers(0, 7 * DAY, len(rows))
    order = np.argsort(due, kind="stable")
    return rows[order], due[order]


@pytest.mark.parametrize("spec", [BASELINE_SPEC, *BUCKET_SPECS[:2], SPEC_V2], ids=["1s", "6h", "1d", "v2"])
def test_a_simulated_month_in_three_partitions_equals_the_offline_table(spec: FeatureSpec) -> None:
    table = simulate(customers=200, terminals=400, days=60, seed=3).transactions
    stream = Stream.of(table)
    order = np.lexsort((stream.ids, stream.seconds))
    label_rows, due = labels_due(stream, seed=1)
    # A 500-row batch spans about a day and a half here, so the partitions' sub-batches
    # lag the terminal state's watermark by that much: its lateness must cover it.
    online = OnlineFeatures(spec, terminal_lateness_s=2 * DAY, fold_min_rows=4096)
    got = np.empty((len(stream), len(spec.names)))
    delivered = 0
    for start in range(0, len(order), 500):
        batch = order[start : start + 500]
        # Confirmations due by the end of the batch: before any transaction that needs them
        # (those come 7 days after the confirmed one), sometimes before the confirmed one.
        upto = int(np.searchsorted(due, stream.seconds[batch].max(), side="right"))
        if upto > delivered:
            rows = label_rows[delivered:upto]
            online.add_labels(stream.ids[rows], stream.seconds[rows], stream.terminals[rows])
            delivered = upto
        for partition in range(3):
            rows = batch[stream.customers[batch] % 3 == partition]
            assert not online.late_mask(partition, stream.seconds[rows]).any()
            got[rows] = online.features(partition, **stream.columns(rows))
    assert_same_features(got, baseline_features(table, spec), spec, exact_amounts=True)
    assert online.terminals.labels == LabelCounts(applied=delivered)  # the last week's are not due yet
    online.evict()
    assert sum(len(state) for state in online.customers.values()) < len(stream)  # old rows were evicted


@pytest.mark.parametrize("spec", [BASELINE_SPEC, BUCKET_SPECS[1], SPEC_V2], ids=["1s", "1d", "v2"])
def test_restored_state_continues_like_an_uninterrupted_one(spec: FeatureSpec) -> None:
    stream = Stream.of(simulate(customers=100, terminals=200, days=50, seed=7).transactions)
    order = np.lexsort((stream.ids, stream.seconds))
    label_rows, _ = labels_due(stream, seed=2)
    prefix, rest = order[: len(order) * 3 // 5], order[len(order) * 3 // 5 :]

    def fresh() -> OnlineFeatures:
        online = OnlineFeatures(spec, fold_min_rows=1000)
        online.add_labels(stream.ids[label_rows], stream.seconds[label_rows], stream.terminals[label_rows])
        return online

    def score(online: OnlineFeatures, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([online.features(0, **stream.columns(rows[s : s + 300])) for s in range(0, len(rows), 300)])

    uninterrupted = fresh()
    score(uninterrupted, prefix)
    restored = fresh()
    for start in range(0, len(prefix), 777):  # replayed in other batches, without scoring
        assert restored.add(0, **stream.columns(prefix[start : start + 777])).all()
    np.testing.assert_array_equal(score(restored, rest), score(uninterrupted, rest))


def test_replaying_a_partition_rebuilds_the_same_state() -> None:
    stream = Stream.of(simulate(customers=60, terminals=120, days=80, seed=8).transactions)
    order = np.lexsort((stream.ids, stream.seconds))
    states = []
    for _ in range(2):
        state = CustomerState(fold_min_rows=500)
        for start in range(0, len(order), 250):
            rows = order[start : start + 250]
            state.add(stream.ids[rows], stream.seconds[rows], stream.customers[rows], stream.amounts[rows])
        states.append(state)
    a, b = states
    assert (len(a), a.nbytes, a.watermark) == (len(b), b.nbytes, b.watermark)
    for run_a, run_b in ((a._main, b._main), (a._recent, b._recent)):
        np.testing.assert_array_equal(run_a.keys, run_b.keys)
        np.testing.assert_array_equal(run_a.ids, run_b.ids)


def test_customer_rows_keep_only_their_cent_sums_and_answer_the_same_after_a_snapshot() -> None:
    stream = Stream.of(simulate(customers=80, terminals=160, days=40, seed=9).transactions)
    order = np.lexsort((stream.ids, stream.seconds))
    state = CustomerState(fold_min_rows=400)
    first, rest = order[: len(order) // 2], order[len(order) // 2 :]
    for start in range(0, len(first), 300):
        rows = first[start : start + 300]
        state.features(stream.ids[rows], stream.seconds[rows], stream.customers[rows], stream.amounts[rows])
    main = state._main
    assert main._values is None and len(main) > 1000  # whole cents: the sums replace the amounts
    assert main.nbytes == 24 * len(main) + 8  # key, id and cent sum a row (+ the sum's leading 0)
    np.testing.assert_array_equal(np.rint(main.values * 100), np.rint(stream.amounts[main.ids] * 100))
    copy = CustomerState(fold_min_rows=400)
    copy.load_arrays(*state.to_arrays())
    for start in range(0, len(rest), 300):
        rows = rest[start : start + 300]
        columns = (stream.ids[rows], stream.seconds[rows], stream.customers[rows], stream.amounts[rows])
        mine, theirs = state.features(*columns), copy.features(*columns)
        for name in mine:
            np.testing.assert_array_equal(mine[name], theirs[name])
    fractional = CustomerState()
    fractional.features([1, 2], [100, 200], [7, 7], [10.001, 0.5])
    assert fractional._recent._values is not None  # not whole cents: the amounts stay


def test_eviction_keeps_only_what_windows_within_the_lateness_can_reach() -> None:
    stream = Stream.of(simulate(customers=100, terminals=200, days=120, seed=5).transactions)
    order = np.lexsort((stream.ids, stream.seconds))
    online = OnlineFeatures(fold_min_rows=2000)
    label_rows, _ = labels_due(stream, seed=3)
    online.add_labels(stream.ids[label_rows], stream.seconds[label_rows], stream.terminals[label_rows])
    for start in range(0, len(order), 1000):
        online.features(0, **stream.columns(order[start : start + 1000]))
    customers, terminals = online.partition(0), online.terminals
    watermark = int(stream.seconds.max())
    reach_c = int((stream.seconds > watermark - 30 * DAY - DAY).sum())  # customer reach + lateness
    reach_t = int((stream.seconds > watermark - 37 * DAY - DAY).sum())  # terminal delay + reach + lateness
    slack = max(2000, len(stream) // 8) + 1000  # a recent run not yet folded, and the last batch
    assert len(customers) <= reach_c + slack and len(terminals) <= reach_t + slack
    online.evict()
    assert (len(customers), len(terminals)) == (reach_c, reach_t)
    assert terminals.pending_labels == 0
    print(
        f"\nafter 120 days: {len(customers)} customer rows, {customers.nbytes / customers.entities:.0f} B per customer "
        f"({customers.nbytes / len(customers):.1f} B/row); {len(terminals)} terminal rows, "
        f"{terminals.nbytes / terminals.entities:.0f} B per terminal ({terminals.nbytes / len(terminals):.1f} B/row)"
    )


def test_large_ids_are_forgotten_once_their_rows_are_evicted() -> None:
    state = CustomerState(fold_min_rows=1)
    big = 2**40
    for day in range(100):  # a new customer every day, each with an id outside the direct range
        state.add(ids=[day], seconds=[EPOCH + day * DAY], customers=[big + day], amounts=[1.0])
    state.evict()
    assert state.entities == len(state) == 31  # rows newer than watermark - 30 days - 1 day
    assert len(state._directory.values) == 31  # the id table forgot the others


def test_spec_feature_names_are_the_model_inputs() -> None:
    assert BASELINE_SPEC.names == BASELINE_FEATURES
    assert OnlineFeatures().features(0, [1], [EPOCH], [1], [1], [2.0]).shape == (1, len(BASELINE_FEATURES))


def test_the_usage_examples_in_the_docstrings_run() -> None:
    import doctest

    from fraudscore.features import customers, online, spec, store, terminals

    for module in (online, store, customers, terminals, spec):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_eviction_is_recorded_and_a_horizon_cap_holds_it_back() -> None:
    """The sidecar caps the terminal table's eviction at the slowest partition it scores, and
    reads the table again when a newly assigned partition needs rows past `evicted_through`."""
    from fraudscore.features.online import TerminalState

    day = 86_400
    seconds = np.arange(0, 80 * day, 3600, dtype=np.int64)
    ids = np.arange(len(seconds), dtype=np.int64)
    free, capped = TerminalState(fold_min_rows=1), TerminalState(fold_min_rows=1)
    capped.horizon_cap = 1 * day
    for state in (free, capped):
        for lo in range(0, len(ids), 100):
            state.add_transactions(ids[lo:lo + 100], seconds[lo:lo + 100], np.zeros(len(ids[lo:lo + 100]), np.int64))
        state.evict()
    assert free.evicted_through == 80 * day - 3600 - free.spec.terminal_reach_s - day
    assert capped.evicted_through == 1 * day
    # A query 30 days in still sees its whole window in the capped table only.
    at = np.array([30 * day + 8 * day], np.int64)
    want = 24 * 30  # one an hour over the 30-day window ending 7 days before
    assert capped.features(at, np.zeros(1, np.int64))["TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist() == [want]
    assert free.features(at, np.zeros(1, np.int64))["TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist() != [want]


def test_a_batch_with_no_rows_left_gives_an_empty_matrix() -> None:
    online = OnlineFeatures()
    empty = np.empty(0, np.int64)
    assert online.features_of_partitions(empty, empty, empty, empty, empty, np.empty(0)).shape == (0, 15)
