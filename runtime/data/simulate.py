"""The transaction simulator of the handbook, chapter 3.2, in vectorised numpy.

Le Borgne, Siblini, Lebichot, Bontempi, *Reproducible Machine Learning for Credit Card
Fraud Detection - Practical Handbook*, Universite Libre de Bruxelles, 2022.

Customers and terminals are placed uniformly on a 100 x 100 square; a customer pays
at the terminals within `radius` of it. Each day a customer makes Poisson(mean per
day) transactions at a time of day ~ Normal(12:00, 20,000 s) (draws outside the day
are dropped) for an amount ~ Normal(mean, mean / 2) (a negative draw is replaced by
Uniform(0, 2 x mean)). Three fraud scenarios are then applied in order, each
overriding the label of the one before:

1. every amount above 220 is fraud;
2. each day some terminals are compromised for the next 28 days (all their
   transactions are fraud);
3. each day some customers are compromised for the next 14 days (a third of their
   transactions in that period, chosen at random, have amount x 5 and are fraud).

Every random draw comes from a child of one `numpy.random.SeedSequence(seed)`, in a
fixed order and size that do not depend on the data, so the same seed and arguments
give the same table, and the same bytes once written. There are no per-transaction
Python loops; the one loop runs over chunks of customers to bound memory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np

from fraudscore.errors import UsageError
from fraudscore.progress import Progress
from fraudscore.data.table import Table

SECONDS_PER_DAY = 86_400

COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of one simulation; the defaults are the handbook's reference run."""

    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    start: dt.date = dt.date(2018, 4, 1)
    seed: int = 0
    radius: float = 5.0
    amount_fraud_threshold: float = 220.0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14

    def validate(self) -> None:
        for name in ("customers", "terminals", "days"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed}")
        if not self.radius > 0:
            raise UsageError(f"--radius must be positive, got {self.radius}")
        if self.compromised_terminals_per_day > self.terminals:
            raise UsageError(
                f"{self.compromised_terminals_per_day} compromised terminals a day need at least as many "
                f"terminals (got --terminals {self.terminals})"
            )
        if self.compromised_customers_per_day > self.customers:
            raise UsageError(
                f"{self.compromised_customers_per_day} compromised customers a day need at least as many "
                f"customers (got --customers {self.customers})"
            )


@dataclass(frozen=True)
class Simulation:
    """The simulator's output: transactions plus the profiles that produced them."""

    transactions: Table
    customers: Table
    terminals: Table
    config: SimulationConfig


def simulate(config: SimulationConfig | None = None, *, progress: bool | None = False, **overrides) -> Simulation:
    """Run the simulator in process. Keyword overrides replace fields of `config`.

    >>> sim = simulate(customers=50, terminals=100, days=10, seed=1)
    >>> sim.transactions.columns[:3]
    ['TRANSACTION_ID', 'TX_DATETIME', 'CUSTOMER_ID']
    """
    config = dataclasses.replace(config or SimulationConfig(), **overrides)
    config.validate()
    seeds = np.random.SeedSequence(config.seed).spawn(5)
    rng_customers, rng_terminals, rng_tx, rng_terminal_fraud, rng_customer_fraud = map(np.random.default_rng, seeds)

    with Progress("simulate", total=5, enabled=progress) as bar:
        customers = _customer_profiles(rng_customers, config.customers)
        terminals = _terminal_profiles(rng_terminals, config.terminals)
        bar.step("terminals within radius")
        indptr, indices = _terminals_within_radius(customers, terminals, config.radius)
        bar.step("transactions")
        tx = _transactions(rng_tx, customers, indptr, indices, config)
        bar.step("fraud scenarios")
        fraud = (tx["amount"] > config.amount_fraud_threshold).astype(np.int8)
        scenario = fraud.copy()
        compromised = _compromised_terminal_tx(rng_terminal_fraud, tx, config)
        fraud[compromised] = 1
        scenario[compromised] = 2
        selected_times = _compromised_customer_tx(rng_customer_fraud, tx, config)
        hit = selected_times > 0
        amount = tx["amount"] * np.power(5.0, selected_times)
        amount = np.round(amount, 2)
        fraud[hit] = 1
        scenario[hit] = 3
        bar.step("table")

    start = np.datetime64(config.start, "s")
    transactions = Table(
        {
            "TRANSACTION_ID": np.arange(len(amount), dtype=np.int64),
            "TX_DATETIME": start + tx["seconds"].astype("timedelta64[s]"),
            "CUSTOMER_ID": tx["customer"],
            "TERMINAL_ID": tx["terminal"],
            "TX_AMOUNT": amount,
            "TX_TIME_SECONDS": tx["seconds"],
            "TX_TIME_DAYS": tx["day"],
            "TX_FRAUD": fraud.astype(np.int64),
            "TX_FRAUD_SCENARIO": scenario.astype(np.int64),
        }
    )
    customer_table, terminal_table = _profile_tables(customers, terminals, indptr, config)
    return Simulation(transactions, customer_table, terminal_table, config)


def _profile_tables(customers: dict[str, np.ndarray], terminals: np.ndarray, indptr: np.ndarray,
                    config: SimulationConfig) -> tuple[Table, Table]:
    """The customer and terminal profiles as tables (the handbook's two side tables)."""
    customer_table = Table(
        {
            "CUSTOMER_ID": np.arange(config.customers, dtype=np.int64),
            "x_customer_id": customers["x"],
            "y_customer_id": customers["y"],
            "mean_amount": customers["mean_amount"],
            "std_amount": customers["std_amount"],
            "mean_nb_tx_per_day": customers["mean_nb_tx_per_day"],
            "nb_terminals": np.diff(indptr),
        }
    )
    terminal_table = Table(
        {
            "TERMINAL_ID": np.arange(config.terminals, dtype=np.int64),
            "x_terminal_id": terminals[:, 0],
            "y_terminal_id": terminals[:, 1],
        }
    )
    return customer_table, terminal_table


def _customer_profiles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    xy = rng.uniform(0, 100, size=(n, 2))
    mean_amount = rng.uniform(5, 100, size=n)
    mean_nb = rng.uniform(0, 4, size=n)
    return {
        "x": xy[:, 0],
        "y": xy[:, 1],
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_nb_tx_per_day": mean_nb,
    }


def _terminal_profiles(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 100, size=(n, 2))


def _terminals_within_radius(
    customers: dict[str, np.ndarray], terminals: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of the terminals at Euclidean distance < radius of each customer.

    The lists hold customers x terminals x pi r^2 / 100^2 entries (150,000 x 300,000 x 0.785 %
    = 353 M at 30x the reference size): kept as int32 where the ids fit, 4 bytes an entry,
    and gathered chunk by chunk without a second copy."""
    cxy = np.stack([customers["x"], customers["y"]], axis=1)
    n = len(cxy)
    chunk = max(1, 4_000_000 // max(1, len(terminals)))
    counts = np.empty(n, dtype=np.int64)
    kind = np.int32 if len(terminals) < 2**31 else np.int64
    found: list[np.ndarray] = []
    r2 = radius * radius
    for lo in range(0, n, chunk):
        block = cxy[lo : lo + chunk]
        d2 = (block[:, 0:1] - terminals[:, 0]) ** 2 + (block[:, 1:2] - terminals[:, 1]) ** 2
        within = d2 < r2
        counts[lo : lo + len(block)] = within.sum(axis=1)
        found.append(np.nonzero(within)[1].astype(kind))  # row-major: grouped by customer, ascending terminal id
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(found) if found else np.empty(0, kind)
    del found
    return indptr, indices


def _transactions(
    rng: np.random.Generator,
    customers: dict[str, np.ndarray],
    indptr: np.ndarray,
    indices: np.ndarray,
    config: SimulationConfig,
) -> dict[str, np.ndarray]:
    """All draws first (sizes independent of the data), then filtering, then time order."""
    n, days = config.customers, config.days
    per_day = rng.poisson(np.repeat(customers["mean_nb_tx_per_day"], days).reshape(n, days))
    per_day = per_day.ravel()
    customer = np.repeat(np.repeat(np.arange(n, dtype=np.int64), days), per_day)
    day = np.repeat(np.tile(np.arange(days, dtype=np.int64), n), per_day)
    total = len(customer)

    time_of_day = np.trunc(rng.normal(SECONDS_PER_DAY / 2, 20_000, size=total)).astype(np.int64)
    mean = customers["mean_amount"][customer]
    amount = rng.normal(mean, customers["std_amount"][customer])
    replacement = rng.uniform(0, 2 * mean)
    amount = np.round(np.where(amount < 0, replacement, amount), 2)
    n_terminals = np.diff(indptr)[customer]
    pick = np.floor(rng.random(total) * n_terminals).astype(np.int64)

    keep = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY) & (n_terminals > 0)
    customer, day, time_of_day, amount, pick = (a[keep] for a in (customer, day, time_of_day, amount, pick))
    terminal = indices[indptr[customer] + pick].astype(np.int64)
    seconds = day * SECONDS_PER_DAY + time_of_day
    order = np.lexsort((customer, seconds))  # stable: ties keep generation order
    return {
        "customer": customer[order],
        "terminal": terminal[order],
        "day": day[order],
        "seconds": seconds[order],
        "amount": amount[order],
    }


def _daily_sample(rng: np.random.Generator, days: int, population: int, k: int) -> np.ndarray:
    """For each day, k distinct members of range(population), uniformly: shape (days, k)."""
    if k == 0:
        return np.empty((days, 0), dtype=np.int64)
    out = np.empty((days, k), dtype=np.int64)
    step = max(1, 8_000_000 // population)
    for lo in range(0, days, step):
        keys = rng.random((min(step, days - lo), population))
        out[lo : lo + len(keys)] = np.argpartition(keys, k - 1, axis=1)[:, :k]
    return out


def _compromised_terminal_tx(rng: np.random.Generator, tx: dict[str, np.ndarray], config: SimulationConfig) -> np.ndarray:
    """Mask of transactions at a terminal within its compromise period (scenario 2)."""
    days, span = config.days, config.terminal_compromise_days
    chosen = _daily_sample(rng, days, config.terminals, config.compromised_terminals_per_day)
    start = np.repeat(np.arange(days, dtype=np.int64), chosen.shape[1])
    covered_day = (start[:, None] + np.arange(span)).ravel()
    covered_terminal = np.repeat(chosen.ravel(), span)
    valid = covered_day < days
    covered = covered_terminal[valid] * days + covered_day[valid]
    return np.isin(tx["terminal"] * days + tx["day"], covered)


def _compromised_customer_tx(rng: np.random.Generator, tx: dict[str, np.ndarray], config: SimulationConfig) -> np.ndarray:
    """How many times each transaction is picked by scenario 3 (0 for most).

    Day d's compromised customers form one group: their transactions on days
    [d, d + span). A third (rounded down) of the group, chosen uniformly, is fraud.
    A transaction in several groups can be picked more than once, as in the handbook,
    and its amount is then multiplied by 5 each time.
    """
    days, span = config.days, config.customer_compromise_days
    chosen = _daily_sample(rng, days, config.customers, config.compromised_customers_per_day)
    group_day = np.repeat(np.arange(days, dtype=np.int64), chosen.shape[1])
    group_customer = chosen.ravel()

    by_customer_day = np.lexsort((tx["day"], tx["customer"]))
    keys = tx["customer"][by_customer_day] * days + tx["day"][by_customer_day]
    lo = np.searchsorted(keys, group_customer * days + group_day, side="left")
    hi = np.searchsorted(keys, group_customer * days + np.minimum(group_day + span, days), side="left")
    lengths = hi - lo
    member_group = np.repeat(group_day, lengths)
    offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    member_pos = offsets + np.arange(lengths.sum())

    # Random order within each group; keep the first third of each.
    order = np.lexsort((rng.random(len(member_group)), member_group))
    sizes = np.bincount(member_group, minlength=days)
    group_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_group = member_group[order]
    rank = np.arange(len(order)) - group_start[sorted_group]
    picked = order[rank < (sizes // 3)[sorted_group]]
    picked_tx = by_customer_day[member_pos[picked]]
    return np.bincount(picked_tx, minlength=len(tx["customer"]))
