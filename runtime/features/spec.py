"""The feature specification: which windows, which delay, which tie rule.

One frozen `FeatureSpec` describes the 15 baseline features (handbook, chapter 3.4), and
in version 2 the customer amount ratios and terminal fraud counts besides them (`SPEC_V2`), so
that training (`baseline.baseline_features`, offline over a whole table) and serving
(`online.OnlineFeatures`, incrementally over Kafka batches) compute the same thing,
and so that a bundle's manifest can record what its model was trained on.
`from_dict` refuses a specification this runtime cannot compute, saying how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from fraudscore.errors import InputError

SECONDS_PER_DAY = 86_400
MAX_AMOUNT = 1e9
"""TX_AMOUNT must be a number from 0 to MAX_AMOUNT wherever it enters: `fraudscore features`,
raw transactions and feature messages in the sidecar, feature tables in `fraudscore score`.
Larger amounts are refused: one 1e300 would turn a partition's exact integer-cent sums into
floats and spoil other customers' means for a month."""

SUPPORTED_VERSIONS = (1, 2)
TIE_RULES = ("same_second_by_transaction_id",)


@dataclass(frozen=True)
class FeatureSpec:
    """The baseline features' parameters; `names` lists the model inputs in order.

    Example:
        >>> spec = FeatureSpec()
        >>> spec.names[:3]
        ('TX_AMOUNT', 'TX_DURING_WEEKEND', 'TX_DURING_NIGHT')
        >>> FeatureSpec.from_dict(spec.to_dict()) == spec
        True
    """

    version: int = 1
    customer_windows_days: tuple[int, ...] = (1, 7, 30)
    terminal_windows_days: tuple[int, ...] = (1, 7, 30)
    terminal_delay_days: int = 7
    night_last_hour: int = 6
    tie_rule: str = "same_second_by_transaction_id"
    terminal_resolution_s: int = 1
    """Where terminal windows end: at t - delay rounded down to a multiple of this (seconds).
    1 is the handbook's exact definition; a whole number of hours dividing a day (3600,
    7200, ..., 86400) lets the online engine keep per-terminal counts per time bucket
    instead of every transaction, so its memory is bounded by terminals x buckets."""
    amount_ratio_windows_days: tuple[int, ...] = ()
    """Version 2: for each of these customer windows, CUSTOMER_ID_LOG_AMOUNT_RATIO_<w>DAY_WINDOW,
    log(1 + amount) - log(1 + mean amount of the customer's earlier transactions in the window),
    0 when there are none (`windows.amount_log_ratios`). Each must be a customer window: the
    ratio comes from that window's count and mean, so it needs no state of its own."""
    fraud_count_windows_days: tuple[int, ...] = ()
    """Version 2: for each of these terminal windows, TERMINAL_ID_NB_FRAUD_<w>DAY_WINDOW, the
    confirmed frauds in it (`windows.fraud_counts`, from the window's risk and count). Each must
    be a terminal window."""

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise InputError("feature spec: " + "; ".join(problems))

    @property
    def names(self) -> tuple[str, ...]:
        """The model inputs, in the order the model takes them."""
        names = ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
        for w in self.customer_windows_days:
            names += [customer_count_name(w), customer_mean_name(w)]
        for w in self.terminal_windows_days:
            names += [terminal_count_name(w), terminal_risk_name(w)]
        names += [customer_amount_ratio_name(w) for w in self.amount_ratio_windows_days]
        names += [terminal_fraud_count_name(w) for w in self.fraud_count_windows_days]
        return tuple(names)

    @property
    def customer_reach_s(self) -> int:
        """How far back (seconds) a customer window reaches from its transaction."""
        return max(self.customer_windows_days) * SECONDS_PER_DAY

    @property
    def terminal_delay_s(self) -> int:
        return self.terminal_delay_days * SECONDS_PER_DAY

    @property
    def terminal_reach_s(self) -> int:
        """How far back (seconds) a terminal window reaches: the delay plus the largest window,
        plus what rounding its end down to the resolution moves it back (resolution - 1)."""
        return self.terminal_delay_s + max(self.terminal_windows_days) * SECONDS_PER_DAY + self.terminal_resolution_s - 1

    def terminal_window_ends(self, seconds: np.ndarray) -> np.ndarray:
        """Where the terminal windows of transactions at `seconds` end (int64 array): t - delay,
        rounded down to a multiple of `terminal_resolution_s`. A window of w days is then
        (end - w days, end], so at a resolution dividing a day it is made of whole buckets."""
        ends = np.asarray(seconds, dtype=np.int64) - self.terminal_delay_s
        r = self.terminal_resolution_s
        return ends if r == 1 else ends // r * r

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping, for the bundle manifest. The resolution is written only when it
        is not 1 s, so bundles and state snapshots written before it existed keep matching."""
        out = {
            "version": self.version,
            "customer_windows_days": list(self.customer_windows_days),
            "terminal_windows_days": list(self.terminal_windows_days),
            "terminal_delay_days": self.terminal_delay_days,
            "night_last_hour": self.night_last_hour,
            "tie_rule": self.tie_rule,
        }
        if self.terminal_resolution_s != 1:
            out["terminal_resolution_s"] = self.terminal_resolution_s
        for name in ("amount_ratio_windows_days", "fraud_count_windows_days"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        return out

    def state_dict(self) -> dict[str, Any]:
        """What the online state depends on, for state snapshots: `to_dict` of this specification
        without version 2's derived features (they keep no state), written as version 1. A
        snapshot made under version 1 then serves version 2 and back, and snapshots written
        before version 2 existed keep matching.

        >>> SPEC_V2.state_dict() == BASELINE_SPEC.to_dict()
        True
        """
        return replace(self, version=1, amount_ratio_windows_days=(), fraud_count_windows_days=()).to_dict()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """The spec `to_dict` wrote; InputError if this runtime cannot compute it."""
        if not isinstance(d, Mapping):
            raise InputError(f"feature spec must be a mapping, got {type(d).__name__}; re-export the bundle with this fraudscore version")
        version = d.get("version")
        if _is_int(version) and version > max(SUPPORTED_VERSIONS):
            # A newer fraudscore wrote it: its new fields would read as unknown, which is not the fix.
            raise InputError(f"feature spec: version {version} is newer than this runtime computes "
                             f"({', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade fraudscore")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        missing = sorted(known - set(d) - set(_OPTIONAL))
        problems = []
        if unknown:
            problems.append(f"unknown field(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"missing field(s) {', '.join(missing)}")
        if problems:
            raise InputError("feature spec: " + "; ".join(problems) + "; re-export the bundle with this fraudscore version")
        values = dict(d)
        for name in ("customer_windows_days", "terminal_windows_days", "amount_ratio_windows_days",
                     "fraud_count_windows_days"):
            if isinstance(values.get(name), (list, tuple)):
                values[name] = tuple(values[name])
        return cls(**values)


_OPTIONAL = {"terminal_resolution_s": 1, "amount_ratio_windows_days": (), "fraud_count_windows_days": ()}
"""Fields a manifest may leave out (written before they existed), with the value that means."""

RESOLUTIONS = {"1s": 1, "1h": 3600, "2h": 7200, "3h": 10_800, "4h": 14_400, "6h": 21_600, "8h": 28_800,
               "12h": 43_200, "1d": SECONDS_PER_DAY}
"""The terminal resolutions this runtime computes, by the names the command line takes."""


def parse_resolution(text: str) -> int:
    """Seconds of a resolution given as 1s, 1h, 6h, 1d ... or as seconds; InputError otherwise."""
    value = str(text).strip().lower()
    if value in RESOLUTIONS:
        return RESOLUTIONS[value]
    if value.isdigit() and int(value) in RESOLUTIONS.values():
        return int(value)
    raise InputError(f"terminal resolution {text!r} is not one of {', '.join(RESOLUTIONS)} (or the same in seconds)")


def resolution_name(seconds: int) -> str:
    """The command-line name of a resolution in seconds: 86400 -> '1d'."""
    return next((name for name, value in RESOLUTIONS.items() if value == seconds), f"{seconds}s")


def customer_count_name(w: int) -> str:
    return f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"


def customer_mean_name(w: int) -> str:
    return f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"


def customer_amount_ratio_name(w: int) -> str:
    return f"CUSTOMER_ID_LOG_AMOUNT_RATIO_{w}DAY_WINDOW"


def terminal_fraud_count_name(w: int) -> str:
    return f"TERMINAL_ID_NB_FRAUD_{w}DAY_WINDOW"


def terminal_count_name(w: int) -> str:
    return f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"


def terminal_risk_name(w: int) -> str:
    return f"TERMINAL_ID_RISK_{w}DAY_WINDOW"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problems(spec: FeatureSpec) -> list[str]:
    """What makes `spec` uncomputable by this runtime, each with its fix."""
    problems = []
    if spec.version not in SUPPORTED_VERSIONS:
        problems.append(
            f"version {spec.version!r} is not one this runtime computes ({', '.join(map(str, SUPPORTED_VERSIONS))}); "
            "re-export the bundle with this fraudscore version, or upgrade fraudscore"
        )
    if spec.tie_rule not in TIE_RULES:
        problems.append(
            f"tie_rule {spec.tie_rule!r} is unknown (known: {', '.join(TIE_RULES)}); "
            "re-export the bundle with this fraudscore version"
        )
    for name in ("customer_windows_days", "terminal_windows_days"):
        windows = getattr(spec, name)
        if not isinstance(windows, tuple) or not windows or not all(_is_int(w) and w > 0 for w in windows):
            problems.append(f"{name} must be a non-empty tuple of positive whole days, got {windows!r}")
        elif len(set(windows)) != len(windows):
            problems.append(f"{name} repeats a window: {windows!r}")
    derived = {"amount_ratio_windows_days": "customer_windows_days", "fraud_count_windows_days": "terminal_windows_days"}
    for name, base in derived.items():
        windows, of = getattr(spec, name), getattr(spec, base)
        if not isinstance(windows, tuple) or not all(_is_int(w) for w in windows) or len(set(windows)) != len(windows):
            problems.append(f"{name} must be a tuple of distinct whole days, got {windows!r}")
        elif windows and spec.version < 2:
            problems.append(f"{name}: these are features of version 2; version 1 has none")
        elif isinstance(of, tuple) and not set(windows) <= set(of):
            problems.append(f"{name} {windows!r} must be among {base} {of!r}: each is computed from its window")
    if spec.version >= 2 and not (spec.amount_ratio_windows_days or spec.fraud_count_windows_days):
        problems.append("version 2 needs amount_ratio_windows_days or fraud_count_windows_days")
    if not _is_int(spec.terminal_delay_days) or spec.terminal_delay_days < 0:
        problems.append(f"terminal_delay_days must be a whole number of days >= 0, got {spec.terminal_delay_days!r}")
    if not _is_int(spec.night_last_hour) or not 0 <= spec.night_last_hour <= 23:
        problems.append(f"night_last_hour must be an hour 0..23, got {spec.night_last_hour!r}")
    if not _is_int(spec.terminal_resolution_s) or spec.terminal_resolution_s not in RESOLUTIONS.values():
        problems.append(f"terminal_resolution_s must be one of {', '.join(map(str, RESOLUTIONS.values()))} seconds "
                        f"(1 s, or whole hours dividing a day), got {spec.terminal_resolution_s!r}; "
                        "re-export the bundle with this fraudscore version, or upgrade fraudscore")
    return problems


BASELINE_SPEC = FeatureSpec()
"""The handbook's specification: windows 1, 7, 30 days, a 7-day terminal delay, night until 06:59:59."""

SPEC_V2 = FeatureSpec(version=2, amount_ratio_windows_days=(1, 7, 30), fraud_count_windows_days=(1, 7, 30))
"""Version 2 (21 model inputs): the handbook's 15 features, the customer's log amount ratio over 1,
7 and 30 days (compromised cards spend five times their usual amount: data.md, scenario 3) and the
terminal's confirmed frauds over its 1, 7 and 30-day windows (a count, beside the risk share)."""

SPECS = {1: BASELINE_SPEC, 2: SPEC_V2}
"""The specification `fraudscore features --feature-version N` computes."""
