"""The evaluation protocol and its metrics, against hand-computed cases."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore import Table
from fraudscore.data.evaluation import (
    Split,
    average_precision,
    card_precision_at_k,
    classification_at,
    roc_auc,
    split_masks,
    threshold_for_budget,
    window_mask,
    threshold_for_precision,
)


def test_auc_hand_computed_with_ties() -> None:
    # Pairs (pos, neg): pos scores 0.9, 0.5; neg scores 0.5, 0.1 -> wins 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4.
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(3.5 / 4)
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.2])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([0, 0]), np.array([0.1, 0.2])))


def test_average_precision_hand_computed() -> None:
    # Ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos): AP = 0.5 * 1 + 0.5 * 2/3.
    y, s = np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])
    assert average_precision(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Tied scores form one threshold: (pos, neg) tied at the top -> precision 1/2 at recall 1.
    assert average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0, 0]), np.array([0.1, 0.2])))


def _reference_ap(y: np.ndarray, s: np.ndarray) -> float:
    thresholds = sorted(set(s.tolist()), reverse=True)
    ap, previous_recall = 0.0, 0.0
    for t in thresholds:
        alert = s >= t
        tp = int((alert & (y == 1)).sum())
        precision, recall = tp / int(alert.sum()), tp / int(y.sum())
        ap += (recall - previous_recall) * precision
        previous_recall = recall
    return ap


def _reference_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40))
def test_auc_and_ap_equal_their_definitions(pairs) -> None:
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] / 6 for p in pairs])  # few distinct values: many ties
    if y.sum() in (0, len(y)):
        return
    assert roc_auc(y, s) == pytest.approx(_reference_auc(y, s))
    assert average_precision(y, s) == pytest.approx(_reference_ap(y, s))


def test_card_precision_fewer_cards_than_k_and_detected_cards_leave() -> None:
    # Day 0: cards 1 (fraud), 2, 3 -> top 5 holds all 3 cards, 1 compromised: 1/5.
    # Day 1: card 1 was detected on day 0 and is left out; card 4 fraud, top-2 = {4, 2}: 1/2 with k=2.
    day = np.array([0, 0, 0, 0, 1, 1, 1])
    card = np.array([1, 1, 2, 3, 1, 2, 4])
    y = np.array([1, 0, 0, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.5, 0.2, 0.99, 0.6, 0.7])
    assert card_precision_at_k(day, card, y, s, k=5) == pytest.approx((1 / 5 + 1 / 5) / 2)
    assert card_precision_at_k(day, card, y, s, k=2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # A card's score is its best transaction of the day; ties between cards go to the lower id.
    assert card_precision_at_k(np.zeros(3), np.array([7, 5, 6]), np.array([0, 1, 0]), np.array([0.5, 0.5, 0.5]), k=1) == 1.0


def _tx(days: list[int], customers: list[int], frauds: list[int]) -> Table:
    start = np.datetime64("2018-07-25T12:00:00")
    return Table(
        {
            "TX_DATETIME": start + (np.array(days) * 86_400).astype("timedelta64[s]"),
            "CUSTOMER_ID": np.array(customers),
            "TX_FRAUD": np.array(frauds),
        }
    )


def test_split_removes_cards_known_before_each_test_day() -> None:
    split = Split(dt.date(2018, 7, 25), train_days=2, delay_days=2, test_days=3)
    # train days 0-1, delay days 2-3, test days 4-6.
    table = _tx(
        days=[0, 1, 2, 3, 4, 4, 4, 5, 5, 6, 6],
        customers=[1, 2, 3, 4, 1, 3, 5, 3, 4, 4, 9],
        frauds=[1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    )
    train, test = split_masks(table, split)
    assert train.tolist() == [True, True] + [False] * 9
    # Test day 4: card 1 known from training -> removed; card 3 (fraud on delay day 2) not yet known.
    # Test day 5: frauds up to day 2 are known -> card 3 removed; card 4 (fraud day 3) still in.
    # Test day 6: card 4 known (fraud day 3) -> removed.
    assert test.tolist() == [False] * 4 + [False, True, True, False, True, False, True]
    # Production-like: every row of the test days, known cards included.
    assert window_mask(table, split).tolist() == [False] * 4 + [True] * 7


def test_recorded_split_round_trips_and_an_overlapping_test_window_is_refused() -> None:
    from types import SimpleNamespace

    from fraudscore import UsageError
    from fraudscore.data.evaluate import choose_split, recorded_split

    trained = Split(dt.date(2018, 4, 10), train_days=20, delay_days=5, test_days=3)
    bundle = _bundle("b", trained)
    assert recorded_split(bundle.manifest) == trained
    assert choose_split([bundle], None) == (trained, "recorded", [])
    # --start alone keeps the recorded lengths: testing after the training window is fine.
    assert choose_split([bundle], dt.date(2018, 4, 30))[0] == Split(dt.date(2018, 4, 30), 20, 5, 3)
    with pytest.raises(UsageError, match=r"2018-04-15..2018-04-21 \(--start\) overlaps b's training window "
                                         r"2018-04-10..2018-04-29.* drop --start .* --start 2018-04-23 "):
        choose_split([bundle], dt.date(2018, 4, 1), 7, 7, 7)
    old = _bundle("old", None)
    with pytest.raises(UsageError, match="pass --start"):
        choose_split([old], None)
    split, source, notes = choose_split([old, bundle], dt.date(2018, 5, 1))
    assert split == Split(dt.date(2018, 5, 1)) and source == "start"
    assert notes == ["note: old records no training window, so this test window is not checked against it"]
    # The first bundle's recorded split testing inside a second bundle's training: no "drop --start".
    later = _bundle("later", Split(dt.date(2018, 5, 1), 30, 7, 7))
    with pytest.raises(UsageError, match=r"\(the split recorded in the bundle\) overlaps later's.* pass --start 2018-05-11 "):
        choose_split([bundle, later], None)
    assert recorded_split(SimpleNamespace(metrics={"split": {"train": 7, "test": "x..y"}})) is None


def _bundle(path: str, split: Split | None):
    from types import SimpleNamespace

    return SimpleNamespace(path=path, manifest=SimpleNamespace(metrics={"split": split.describe()} if split else {}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40)), min_size=1, max_size=4),
       st.integers(0, 120), st.integers(1, 30), st.integers(0, 10), st.integers(1, 14))
def test_a_chosen_split_never_tests_inside_training_and_a_refusal_names_a_start_that_is_taken(
        trainings, start, train_days, delay_days, test_days) -> None:
    from fraudscore import UsageError
    from fraudscore.data.evaluate import choose_split

    day0 = dt.date(2018, 1, 1)
    bundles = [_bundle(f"b{i}", Split(day0 + dt.timedelta(days=s), n, 7, 7)) for i, (s, n) in enumerate(trainings)]
    windows = [(day0 + dt.timedelta(days=s), day0 + dt.timedelta(days=s + n - 1)) for s, n in trainings]

    def clear(split: Split) -> bool:
        first, last = split.test_start, split.test_start + dt.timedelta(days=split.test_days - 1)
        return all(last < a or first > b for a, b in windows)

    try:
        split, _, _ = choose_split(bundles, day0 + dt.timedelta(days=start), train_days, delay_days, test_days)
    except UsageError as exc:
        suggested = dt.date.fromisoformat(str(exc).split("--start ")[-1].split()[0])
        again, _, _ = choose_split(bundles, suggested, train_days, delay_days, test_days)
        assert clear(again)
    else:
        assert clear(split)


def test_thresholds() -> None:
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert threshold_for_precision(y, s, 1.0) == pytest.approx(0.8)
    assert threshold_for_precision(y, s, 0.75) == pytest.approx(0.6)
    day = np.array([0, 0, 0, 1, 1, 1])
    t = threshold_for_budget(day, s, alerts_per_day=1.5)  # 3 alerts over 2 days
    assert classification_at(y, s, t)["alerts"] == 3
    tied = threshold_for_budget(np.zeros(4), np.array([0.9, 0.5, 0.5, 0.1]), alerts_per_day=2)
    assert classification_at(np.zeros(4), np.array([0.9, 0.5, 0.5, 0.1]), tied)["alerts"] == 1  # never over budget
