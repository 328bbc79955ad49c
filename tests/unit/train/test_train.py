"""Training's pieces in process: the feature matrix refuses missing and non-finite values,
ensemble members never share a seed, the warm-up warning names the first full day, progress
is throttled, and output directories are created atomically."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from fraudscore import InputError, Table, UsageError
from fraudscore.data.matrix import feature_matrix


def test_feature_matrix_refuses_missing_and_non_finite() -> None:
    t = Table({"a": np.array([1.0, np.inf]), "b": np.array([1, 2])})
    with pytest.raises(InputError, match="missing feature column"):
        feature_matrix(t, ["a", "c"])
    with pytest.raises(InputError, match="1 rows have NaN"):
        feature_matrix(t, ["a", "b"])


def test_ensemble_members_of_neighbouring_seeds_never_share_a_seed() -> None:
    from fraudscore.train.trainer import member_seed

    seeds = [member_seed(s, m) for s in range(50) for m in range(5)]
    assert len(set(seeds)) == len(seeds)
    assert member_seed(7, 2) == member_seed(7, 2)  # reproducible


def test_the_warm_up_warning_names_the_first_full_day_for_the_features_trained_on() -> None:
    from fraudscore.train.trainer import warm_up_warning

    times = np.array(["2018-04-01T00:03:10", "2018-06-30T12:00:00"], dtype="datetime64[s]")
    baseline = ["TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_30DAY_WINDOW"]
    assert "Start on or after 2018-05-08" in warm_up_warning(times, dt.date(2018, 5, 7), baseline)
    assert warm_up_warning(times, dt.date(2018, 5, 8), baseline) == ""  # 37 days of history before it
    # Customer windows only: 30 days.
    assert "Start on or after 2018-05-01" in warm_up_warning(times, dt.date(2018, 4, 10), baseline[:2])
    assert warm_up_warning(times, dt.date(2018, 5, 1), baseline[:2]) == ""
    assert warm_up_warning(times, dt.date(2018, 4, 2), ["TX_AMOUNT", "MY_OWN_FEATURE"]) == ""


def test_progress_throttle_lets_a_line_through_per_interval_and_forced_ones() -> None:
    from fraudscore.progress import Throttle

    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    seen = []
    for second in range(0, 35):
        now[0] = float(second)
        if throttle.due(force=second == 34):
            seen.append(second)
    assert seen == [0, 10, 20, 30, 34]
    assert all(Throttle(0.0, clock=lambda: 1.0).due() for _ in range(3))


def test_output_directories_get_their_parents_created_and_stay_atomic(tmp_path: Path) -> None:
    from fraudscore.atomic import check_new_directory, new_directory

    out = tmp_path / "a" / "b" / "run"
    check_new_directory(out)
    assert not (tmp_path / "a").exists()  # nothing is created before there is something to write
    with pytest.raises(RuntimeError):
        with new_directory(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("training failed")
    assert not out.exists() and list((tmp_path / "a" / "b").iterdir()) == []
    with new_directory(out) as tmp:
        (tmp / "model").write_text("x")
    assert (out / "model").read_text() == "x"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_new_directory(tmp_path / "file" / "run")
