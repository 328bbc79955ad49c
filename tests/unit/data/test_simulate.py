"""The transaction simulator: reproducible, shaped like the handbook's generator, and fast enough to drive load."""

from __future__ import annotations


import numpy as np
import pytest

from fraudscore import SimulationConfig, simulate
from fraudscore.errors import UsageError
from fraudscore.data.simulate import COLUMNS, SECONDS_PER_DAY

# The handbook's published reference run (data.md): 1,754,155 transactions, 14,681 frauds.
HANDBOOK_ROWS = 1_754_155
HANDBOOK_SCENARIOS = {1: 973, 2: 9_077, 3: 4_631}


@pytest.fixture(scope="module")
def small():
    return simulate(customers=300, terminals=600, days=40, seed=7)


def test_columns_are_the_handbooks(small) -> None:
    tx = small.transactions
    assert tx.columns == list(COLUMNS)
    assert tx["TX_DATETIME"].dtype == np.dtype("datetime64[s]")
    assert len(tx) > 1000


def test_ids_follow_time_and_times_are_consistent(small) -> None:
    tx = small.transactions
    assert np.array_equal(tx["TRANSACTION_ID"], np.arange(len(tx)))
    assert np.all(np.diff(tx["TX_TIME_SECONDS"]) >= 0)
    start = np.datetime64("2018-04-01T00:00:00")
    assert np.array_equal(tx["TX_DATETIME"], start + tx["TX_TIME_SECONDS"].astype("timedelta64[s]"))
    assert np.array_equal(tx["TX_TIME_DAYS"], tx["TX_TIME_SECONDS"] // SECONDS_PER_DAY)
    time_of_day = tx["TX_TIME_SECONDS"] % SECONDS_PER_DAY
    assert time_of_day.min() > 0 and time_of_day.max() < SECONDS_PER_DAY
    assert tx["TX_TIME_DAYS"].max() < 40


def test_customers_pay_only_at_terminals_within_the_radius(small) -> None:
    tx, customers, terminals = small.transactions, small.customers, small.terminals
    dx = customers["x_customer_id"][tx["CUSTOMER_ID"]] - terminals["x_terminal_id"][tx["TERMINAL_ID"]]
    dy = customers["y_customer_id"][tx["CUSTOMER_ID"]] - terminals["y_terminal_id"][tx["TERMINAL_ID"]]
    assert np.sqrt(dx**2 + dy**2).max() < 5.0
    # Customers without a terminal in reach make no transactions.
    lonely = customers["CUSTOMER_ID"][customers["nb_terminals"] == 0]
    assert not np.isin(tx["CUSTOMER_ID"], lonely).any()


def test_amounts_and_labels_follow_the_scenarios(small) -> None:
    tx = small.transactions
    amount, fraud, scenario = tx["TX_AMOUNT"], tx["TX_FRAUD"], tx["TX_FRAUD_SCENARIO"]
    assert amount.min() >= 0
    assert np.array_equal(np.round(amount, 2), amount)
    assert np.array_equal(fraud, (scenario > 0).astype(fraud.dtype))
    assert np.all(amount[scenario == 0] <= 220)  # scenario 1 labels every larger amount
    assert np.all(amount[scenario == 1] > 220)
    assert set(np.unique(scenario)) <= {0, 1, 2, 3}


def test_compromised_terminals_defraud_whole_periods(small) -> None:
    # Scenario 2: a terminal compromised on day d has all its transactions on days d..d+27
    # labelled fraud (scenario 2, or 3 where scenario 3 overrode the label).
    tx = small.transactions
    hits = tx["TX_FRAUD_SCENARIO"] == 2
    for terminal in np.unique(tx["TERMINAL_ID"][hits])[:20]:
        at = tx["TERMINAL_ID"] == terminal
        first = tx["TX_TIME_DAYS"][at & hits].min()
        inside = at & (tx["TX_TIME_DAYS"] >= first) & (tx["TX_TIME_DAYS"] < first + 28)
        assert np.all(tx["TX_FRAUD"][inside] == 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_steady_state_fraud_shares_match_the_handbook(seed: int) -> None:
    # Reference population (5,000 customers, 10,000 terminals) over 70 days, measured on
    # days 28-69, after scenario 2's 28-day and scenario 3's 14-day ramp-up. The handbook's
    # 183-day shares scaled to steady state (x 28/25.93 and x 14/13.50 for the ramp-up) are
    # 0.0555 %, 0.559 % and 0.274 %, 0.888 % in all. Tolerances: +-25 %, +-15 %, +-20 %
    # relative and +-0.09 points in all; 8 seeds measured fell within half of them.
    tx = simulate(days=70, seed=seed).transactions
    steady = tx["TX_TIME_DAYS"] >= 28
    n = int(steady.sum())
    share = np.bincount(tx["TX_FRAUD_SCENARIO"][steady], minlength=4) / n * 100
    assert share[1] == pytest.approx(0.0555, rel=0.25)
    assert share[2] == pytest.approx(0.559, rel=0.15)
    assert share[3] == pytest.approx(0.274, rel=0.20)
    assert share[1:].sum() == pytest.approx(0.888, abs=0.09)


@pytest.mark.slow
def test_reference_size_lands_near_the_published_run() -> None:
    tx = simulate(seed=0).transactions
    assert len(tx) == pytest.approx(HANDBOOK_ROWS, rel=0.04)
    rate = tx["TX_FRAUD"].mean() * 100
    assert rate == pytest.approx(0.84, abs=0.06)
    per = np.bincount(tx["TX_FRAUD_SCENARIO"], minlength=4)
    for scenario, published in HANDBOOK_SCENARIOS.items():
        assert per[scenario] == pytest.approx(published, rel=0.15), scenario


def test_same_seed_same_table_different_seed_different_table() -> None:
    a = simulate(customers=200, terminals=400, days=20, seed=11).transactions
    b = simulate(customers=200, terminals=400, days=20, seed=11).transactions
    c = simulate(customers=200, terminals=400, days=20, seed=12).transactions
    assert a.equals(b)
    assert not a.equals(c)


def test_profiles_do_not_depend_on_the_number_of_days() -> None:
    # Each component draws from its own child seed: a longer run extends a shorter one's world.
    short = simulate(customers=100, terminals=200, days=5, seed=3)
    long = simulate(customers=100, terminals=200, days=50, seed=3)
    assert short.customers.equals(long.customers)
    assert short.terminals.equals(long.terminals)


def test_config_validation() -> None:
    with pytest.raises(UsageError, match="compromised terminals"):
        simulate(SimulationConfig(terminals=1, compromised_terminals_per_day=2))
    with pytest.raises(UsageError, match="radius"):
        simulate(radius=0)
