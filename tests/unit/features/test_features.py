"""Baseline features: the vectorised transform equals a plain per-row reference, and bad input is refused."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore import BASELINE_FEATURES, InputError, Table, add_baseline_features, baseline_features, simulate
from fraudscore.features import SPEC_V2, BASELINE_SPEC, FeatureSpec

DAY = 86_400
EPOCH = dt.datetime(2018, 4, 1)


def reference_features(tx: list[dict], spec: FeatureSpec = BASELINE_SPEC) -> list[dict]:
    """The definitions of data.md, one transaction at a time, with no cleverness."""
    out = []
    for row in tx:
        t, when = row["t"], EPOCH + dt.timedelta(seconds=row["t"])
        f = {
            "TX_AMOUNT": row["amount"],
            "TX_DURING_WEEKEND": int(when.weekday() >= 5),
            "TX_DURING_NIGHT": int(when.hour <= spec.night_last_hour),
        }
        for w in spec.customer_windows_days:
            mine = [
                o["amount"]
                for o in tx
                if o["customer"] == row["customer"]
                and t - w * DAY < o["t"] <= t
                and (o["t"] < t or o["id"] <= row["id"])
            ]
            f[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = len(mine)
            f[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = math.fsum(mine) / len(mine)
            if w in spec.amount_ratio_windows_days:
                earlier = [o["amount"] for o in tx if o["customer"] == row["customer"] and t - w * DAY < o["t"] <= t
                           and (o["t"] < t or o["id"] < row["id"])]
                f[f"CUSTOMER_ID_LOG_AMOUNT_RATIO_{w}DAY_WINDOW"] = (
                    math.log1p(row["amount"]) - math.log1p(math.fsum(earlier) / len(earlier)) if earlier else 0.0)
        for w in spec.terminal_windows_days:
            end = t - spec.terminal_delay_days * DAY
            seen = [o["fraud"] for o in tx if o["terminal"] == row["terminal"] and end - w * DAY < o["t"] <= end]
            f[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = len(seen)
            f[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = sum(seen) / len(seen) if seen else 0.0
            if w in spec.fraud_count_windows_days:
                f[f"TERMINAL_ID_NB_FRAUD_{w}DAY_WINDOW"] = sum(seen)
        out.append(f)
    return out


def to_table(tx: list[dict]) -> Table:
    return Table(
        {
            "TRANSACTION_ID": np.array([r["id"] for r in tx], dtype=np.int64),
            "TX_DATETIME": np.datetime64(EPOCH, "s") + np.array([r["t"] for r in tx], dtype="timedelta64[s]"),
            "CUSTOMER_ID": np.array([r["customer"] for r in tx], dtype=np.int64),
            "TERMINAL_ID": np.array([r["terminal"] for r in tx], dtype=np.int64),
            "TX_AMOUNT": np.array([r["amount"] for r in tx], dtype=np.float64),
            "TX_FRAUD": np.array([r["fraud"] for r in tx], dtype=np.int64),
        }
    )


def assert_matches_reference(tx: list[dict], spec: FeatureSpec = BASELINE_SPEC) -> None:
    got = baseline_features(to_table(tx), spec)
    want = reference_features(tx, spec)
    assert got.columns == list(spec.names)
    for name in spec.names:
        expected = np.array([w[name] for w in want])
        if "NB_" in name or "DURING" in name:
            assert got[name].dtype.kind == "i", name
            assert np.array_equal(got[name], expected), name
        elif "RATIO" in name:
            # (count * mean - amount) / (count - 1) cancels: absolute error ~1e-16 of the window's sum.
            np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-9, err_msg=name)


# Times cluster on exact window edges (whole days apart, same second) so that the
# left-open boundaries and same-second ties are hit often, not by luck.
times = st.one_of(
    st.builds(lambda d, s: d * DAY + s, st.integers(0, 45), st.sampled_from([0, 1, 6 * 3600 + 3599, 7 * 3600, 43_200, DAY - 1])),
    st.integers(0, 45 * DAY),
)
amounts = st.one_of(
    st.integers(0, 500_000).map(lambda c: c / 100),  # whole cents: the exact integer path
    st.floats(0, 1e4, allow_nan=False, allow_infinity=False),  # anything else: the float path
)


@st.composite
def transactions(draw) -> list[dict]:
    n = draw(st.integers(1, 40))
    ids = draw(st.permutations(list(range(1000, 1000 + n))))  # id order differs from time order
    same_amount_kind = draw(st.booleans())
    amount = st.integers(0, 500_000).map(lambda c: c / 100) if same_amount_kind else amounts
    return [
        {
            "id": ids[i],
            "t": draw(times),
            "customer": draw(st.integers(0, 3)),
            "terminal": draw(st.integers(0, 3)),
            "amount": draw(amount),
            "fraud": draw(st.integers(0, 1)),
        }
        for i in range(n)
    ]


@settings(max_examples=300, deadline=None)
@given(transactions())
def test_vectorised_features_equal_the_reference(tx: list[dict]) -> None:
    assert_matches_reference(tx)


specs = st.builds(
    FeatureSpec,
    customer_windows_days=st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True).map(tuple),
    terminal_windows_days=st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True).map(tuple),
    terminal_delay_days=st.integers(0, 10),
    night_last_hour=st.integers(0, 23),
)


@settings(max_examples=100, deadline=None)
@given(transactions(), specs)
def test_any_spec_equals_the_reference(tx: list[dict], spec: FeatureSpec) -> None:
    assert_matches_reference(tx, spec)


@settings(max_examples=100, deadline=None)
@given(transactions(), st.data())
def test_version_2_amount_ratios_and_fraud_counts_equal_the_reference(tx: list[dict], data) -> None:
    customer = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True).map(tuple))
    terminal = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True).map(tuple))
    ratios = data.draw(st.lists(st.sampled_from(customer), unique=True).map(tuple))
    frauds = data.draw(st.lists(st.sampled_from(terminal), min_size=0 if ratios else 1, unique=True).map(tuple))
    assert_matches_reference(tx, FeatureSpec(version=2, customer_windows_days=customer, terminal_windows_days=terminal,
                                             amount_ratio_windows_days=ratios, fraud_count_windows_days=frauds,
                                             terminal_delay_days=data.draw(st.integers(0, 10))))


def test_single_transaction() -> None:
    tx = [{"id": 1, "t": 5 * DAY + 3600, "customer": 9, "terminal": 4, "amount": 12.5, "fraud": 1}]
    f = baseline_features(to_table(tx))
    assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"][0] == 1
    assert f["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"][0] == 12.5
    assert f["TERMINAL_ID_NB_TX_7DAY_WINDOW"][0] == 0
    assert f["TERMINAL_ID_RISK_7DAY_WINDOW"][0] == 0.0  # empty window: risk 0, not NaN
    assert f["TX_DURING_NIGHT"][0] == 1


def test_windows_are_left_open_and_same_second_ties_follow_ids() -> None:
    base = 40 * DAY
    tx = [
        {"id": 10, "t": base - DAY, "customer": 1, "terminal": 1, "amount": 100.0, "fraud": 1},  # exactly 1 day before
        {"id": 30, "t": base, "customer": 1, "terminal": 1, "amount": 30.0, "fraud": 0},
        {"id": 20, "t": base, "customer": 1, "terminal": 1, "amount": 20.0, "fraud": 0},  # same second, smaller id
        {"id": 40, "t": base + 7 * DAY, "customer": 2, "terminal": 1, "amount": 1.0, "fraud": 0},
    ]
    f = baseline_features(to_table(tx))
    one_day = f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"]
    assert list(one_day[:3]) == [1, 2, 1]  # id 30 sees id 20 and itself; id 20 only itself; day-old tx excluded
    assert list(f["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"][:3]) == [100.0, 25.0, 20.0]
    assert f["CUSTOMER_ID_NB_TX_7DAY_WINDOW"][1] == 3
    # Terminal window for id 40 ends exactly 7 days before it: both same-second rows count, the older one not.
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"][3] == 2
    assert f["TERMINAL_ID_RISK_1DAY_WINDOW"][3] == 0.0
    assert f["TERMINAL_ID_NB_TX_7DAY_WINDOW"][3] == 3
    assert f["TERMINAL_ID_RISK_7DAY_WINDOW"][3] == pytest.approx(1 / 3)


def test_weekend_and_night_flags() -> None:
    # 2018-04-01 was a Sunday; 2018-04-02 a Monday.
    tx = [
        {"id": 1, "t": 6 * 3600 + 3599, "customer": 1, "terminal": 1, "amount": 1.0, "fraud": 0},  # Sun 06:59:59
        {"id": 2, "t": DAY + 7 * 3600, "customer": 1, "terminal": 1, "amount": 1.0, "fraud": 0},  # Mon 07:00
        {"id": 3, "t": 6 * DAY + 23 * 3600, "customer": 1, "terminal": 1, "amount": 1.0, "fraud": 0},  # Sat 23:00
    ]
    f = baseline_features(to_table(tx))
    assert list(f["TX_DURING_WEEKEND"]) == [1, 0, 1]
    assert list(f["TX_DURING_NIGHT"]) == [1, 0, 0]


def test_row_order_of_the_input_does_not_matter() -> None:
    tx = simulate(customers=100, terminals=200, days=40, seed=2).transactions
    shuffled = tx.take(np.random.default_rng(0).permutation(len(tx)))
    a, b = baseline_features(tx), baseline_features(shuffled)
    order = np.argsort(shuffled["TRANSACTION_ID"])
    assert b.take(order).equals(a)


def test_simulated_table_matches_the_reference_on_a_sample() -> None:
    tx = simulate(customers=20, terminals=40, days=45, seed=4).transactions
    rows = [
        {"id": int(i), "t": int(s), "customer": int(c), "terminal": int(term), "amount": float(a), "fraud": int(f)}
        for i, s, c, term, a, f in zip(
            tx["TRANSACTION_ID"], tx["TX_TIME_SECONDS"], tx["CUSTOMER_ID"], tx["TERMINAL_ID"], tx["TX_AMOUNT"], tx["TX_FRAUD"]
        )
    ]
    assert len(rows) > 500
    assert_matches_reference(rows)


def test_output_keeps_raw_columns_and_appends_the_15_features() -> None:
    tx = simulate(customers=50, terminals=100, days=10, seed=1).transactions
    out = add_baseline_features(tx)
    assert out.columns[: len(tx.columns)] == tx.columns
    assert set(BASELINE_FEATURES) <= set(out.columns)
    assert len(out.columns) == len(tx.columns) + 14  # TX_AMOUNT is already a raw column


# ---------------------------------------------------------------- bad input


def _valid() -> dict[str, np.ndarray]:
    tx = simulate(customers=30, terminals=60, days=5, seed=1).transactions
    return {name: tx[name].copy() for name in tx.columns}


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda c: c.pop("TX_AMOUNT"), "missing column(s) TX_AMOUNT"),
        (lambda c: c["TX_AMOUNT"].__setitem__(slice(0, 3), np.nan), "column TX_AMOUNT: 3 of"),
        (lambda c: c["TX_AMOUNT"].__setitem__(4, -1.0), "column TX_AMOUNT: 1 of"),
        (lambda c: c["TX_AMOUNT"].__setitem__(2, np.inf), "infinite"),
        (lambda c: c["TX_DATETIME"].__setitem__(1, np.datetime64("NaT")), "column TX_DATETIME: 1 of"),
        (lambda c: c["TX_FRAUD"].__setitem__(0, 2), "column TX_FRAUD: 1 of"),
        (lambda c: c["TRANSACTION_ID"].__setitem__(1, c["TRANSACTION_ID"][0]), "repeat an earlier id"),
    ],
)
def test_bad_input_names_the_column_and_row_count(corrupt, message: str) -> None:
    columns = _valid()
    corrupt(columns)
    with pytest.raises(InputError) as err:
        baseline_features(Table(columns), source="tx.csv")
    assert message in str(err.value)
    assert str(err.value).startswith("tx.csv: ")


RENAMED = {"TRANSACTION_ID": "tx_ref", "TX_DATETIME": "ts", "CUSTOMER_ID": "card", "TERMINAL_ID": "pos",
           "TX_AMOUNT": "amount", "TX_FRAUD": "is_fraud"}


def test_mapped_columns_are_named_in_errors() -> None:
    columns = {RENAMED.get(c, c): v for c, v in _valid().items()}
    columns["amount"][0] = -1.0
    with pytest.raises(InputError, match="column amount: 1 of"):
        baseline_features(Table(columns), source="tx.csv", columns=RENAMED)
    columns.pop("ts")
    with pytest.raises(InputError, match=r"missing column\(s\) ts;.*TX_DATETIME=ts"):
        baseline_features(Table(columns), source="tx.csv", columns=RENAMED)


# ---------------------------------------------------------------- the specification


def test_the_baseline_spec_names_the_15_model_inputs() -> None:
    assert BASELINE_SPEC.names == BASELINE_FEATURES
    assert len(BASELINE_FEATURES) == 15
    assert (BASELINE_SPEC.customer_reach_s, BASELINE_SPEC.terminal_reach_s) == (30 * DAY, 37 * DAY)


def test_spec_round_trips_through_a_manifest_dict() -> None:
    spec = FeatureSpec(customer_windows_days=(2, 14), terminal_delay_days=3)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec.from_dict(BASELINE_SPEC.to_dict()) is not BASELINE_SPEC
    assert FeatureSpec.from_dict(BASELINE_SPEC.to_dict()) == BASELINE_SPEC
    assert FeatureSpec.from_dict(SPEC_V2.to_dict()) == SPEC_V2
    # Version 1 writes no ratio field: bundles and snapshots written before version 2 keep matching.
    assert "amount_ratio_windows_days" not in BASELINE_SPEC.to_dict()
    assert SPEC_V2.names[:15] == BASELINE_SPEC.names and len(SPEC_V2.names) == 21


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 3}, "version 3 is newer than this runtime computes (1, 2); upgrade fraudscore"),
        ({"version": 3, "colour": "red"}, "version 3 is newer than this runtime computes"),
        ({"version": 0}, "version 0 is not one this runtime computes"),
        ({"version": 2}, "version 2 needs amount_ratio_windows_days or fraud_count_windows_days"),
        ({"amount_ratio_windows_days": [7]}, "amount_ratio_windows_days: these are features of version 2"),
        ({"version": 2, "amount_ratio_windows_days": [14]}, "must be among customer_windows_days"),
        ({"version": 2, "fraud_count_windows_days": [2]}, "must be among terminal_windows_days"),
        ({"tie_rule": "arrival_order"}, "tie_rule 'arrival_order' is unknown"),
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"night_last_hour": None}, "night_last_hour must be an hour 0..23"),
        ({"customer_windows_days": []}, "customer_windows_days must be a non-empty tuple"),
        ({"terminal_windows_days": [7, 7]}, "repeats a window"),
        ({"terminal_delay_days": -1}, "terminal_delay_days must be a whole number of days >= 0"),
    ],
)
def test_a_spec_this_runtime_cannot_compute_is_refused(change: dict, message: str) -> None:
    manifest = {**BASELINE_SPEC.to_dict(), **change}
    with pytest.raises(InputError) as err:
        FeatureSpec.from_dict(manifest)
    assert message in str(err.value)
    if "newer" not in message and (change.get("version") == 0 or "tie_rule" in change or "colour" in change):
        assert "re-export the bundle with this fraudscore version" in str(err.value)


def test_a_spec_missing_a_field_is_refused() -> None:
    manifest = BASELINE_SPEC.to_dict()
    del manifest["terminal_delay_days"]
    with pytest.raises(InputError, match="missing field\\(s\\) terminal_delay_days"):
        FeatureSpec.from_dict(manifest)


def test_public_names_are_exported() -> None:
    from fraudscore import features

    for name in features.__all__:
        assert hasattr(features, name), name
    assert {"BASELINE_SPEC", "FeatureSpec", "OnlineFeatures", "CustomerState", "TerminalState", "calendar_features"} <= set(features.__all__)
