"""The CI gate: bounds on a bench report, absolute, relative to a baseline report, or on same-run ratios.

A gate file is TOML (or YAML, with PyYAML installed) holding a list `bound` and nothing else:

```toml
[[bound]]                      # a case bound, absolute
mode = "model"                 # selects the result: mode, batch_size, device (default cpu), variant (default fp32)
batch_size = 1024
metric = "p99_ms"              # p50_ms, p99_ms, throughput_per_s or lost
max = 2.0                      # and/or min

[[bound]]                      # a kafka-rate row, selected by its offered rate as well
mode = "kafka-rate"
batch_size = 4096              # kafka rows carry the sidecar's --batch-size
rate_per_s = 1000              # optional selector: the row's `rate_per_s`
metric = "p99_ms"
max = 250.0

[[bound]]                      # a case bound relative to --baseline REPORT.json
mode = "pipeline"
batch_size = 1024
metric = "throughput_per_s"
max_decrease = 0.6             # may fall at most 60 % below the baseline (max_increase: rise at most)

[[bound]]                      # a same-run ratio from the report's "ratios"
ratio = "pipeline_overhead.cpu.b1024"
max = 40.0                     # and/or min
```

A case bound must select exactly one result: one that selects none, or several (a
kafka-rate bound without `rate_per_s` in a sweep of several rates), is a usage error.

The file is checked strictly before anything is measured: an unknown key (a typo such as
`maximum` or `max_increse`), a bound without a limit, a wrong type, or a gate in which no
bound would be checked is a usage error (exit 2) naming the key and the valid ones.

Without `--baseline`, relative bounds are skipped with a notice (the first CI run has no
baseline yet); so are those whose case the baseline lacks or whose baseline has another
report schema. A gate in which every bound is skipped is a usage error.

What each kind of bound can catch is in docs/bench.md ("What each bound catches"): in short,
same-run ratios catch a slowdown of the pipeline around the model and are blind to one that
slows the model and the pipeline alike; absolute and relative bounds catch both but need
headroom beyond the run-to-run noise of the machine.

Exit codes of `fraudscore bench --gate`: 0 every checked bound holds, 1 a bound failed,
2 a usage error.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from fraudscore.errors import UsageError

METRICS = ("p50_ms", "p99_ms", "throughput_per_s", "lost")
CASE_KEYS = ("mode", "batch_size", "device", "variant", "rate_per_s", "metric", "min", "max", "max_increase",
             "max_decrease")
RATIO_KEYS = ("ratio", "min", "max")
TOP_KEYS = ("bound",)


@dataclass(frozen=True)
class Bound:
    """One validated `[[bound]]`: a same-run `ratio`, or a case (mode, batch_size, device, variant, and for a
    kafka-rate row optionally rate_per_s) and `metric`."""

    ratio: str | None = None
    mode: str | None = None
    batch_size: int | None = None
    device: str = "cpu"
    variant: str = "fp32"
    rate_per_s: float | None = None
    metric: str | None = None
    min: float | None = None
    max: float | None = None
    max_increase: float | None = None
    max_decrease: float | None = None

    @property
    def label(self) -> str:
        if self.ratio is not None:
            return f"ratio {self.ratio}"
        variant = "" if self.variant == "fp32" else f" {self.variant}"
        rate = "" if self.rate_per_s is None else f" @{self.rate_per_s:g}/s"
        return f"{self.mode} b{self.batch_size} {self.device}{variant}{rate} {self.metric}"

    @property
    def is_relative(self) -> bool:
        return self.max_increase is not None or self.max_decrease is not None

    @property
    def is_absolute(self) -> bool:
        return self.min is not None or self.max is not None


@dataclass(frozen=True)
class Outcome:
    """One checked (or skipped) limit of a bound.

    `headroom` is the single "how close" figure of the table: the distance from the measured
    value to the limit as a fraction of the limit, positive inside the limit, negative beyond
    it ((max - measured) / max for an upper limit, (measured - min) / min for a lower one; for
    a relative bound the limit is the baseline's value moved by the allowed change).
    """

    bound: str
    status: str  # PASS, FAIL or SKIP
    measured: float | None = None
    limit: str = ""
    headroom: float | None = None
    spread: str = ""
    baseline: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"


def load_gate(path: Path) -> list[Bound]:
    """Read and validate a gate file; every mistake is a UsageError that says how to fix it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--gate {path}: no such file") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("--gate: YAML needs PyYAML (pip install pyyaml), or write the gate as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"--gate {path}: not valid YAML ({exc})") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"--gate {path}: not valid TOML ({exc})") from None
    return parse_gate(data, str(path))


def parse_gate(data: object, where: str = "gate") -> list[Bound]:
    """Validate the parsed gate document `data` (a mapping with a list `bound`)."""
    if not isinstance(data, dict):
        raise UsageError(f"--gate {where}: expected a list of [[bound]] tables")
    for key in data:
        _known(key, TOP_KEYS, f"--gate {where}: unknown top-level key", "valid top-level keys")
    bounds = data.get("bound")
    if not isinstance(bounds, list) or not bounds:
        raise UsageError(f"--gate {where}: expected a list of [[bound]] tables (none found)")
    return [_parse_bound(b, f"--gate {where}: bound {i}") for i, b in enumerate(bounds, 1)]


def _parse_bound(raw: object, where: str) -> Bound:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a table of keys, got {raw!r}")
    ratio = "ratio" in raw
    valid = RATIO_KEYS if ratio else CASE_KEYS
    kind = "a ratio bound" if ratio else "a case bound"
    for key in raw:
        _known(key, valid, f"{where}: unknown key", f"valid keys for {kind}")
    limits = {k: _number(raw[k], f"{where}: {k}") for k in ("min", "max", "max_increase", "max_decrease") if k in raw}
    if not limits:
        raise UsageError(f"{where}: no limit; give {'min and/or max' if ratio else 'min, max, max_increase or max_decrease'}")
    for key in ("max_increase", "max_decrease"):
        if key in limits and limits[key] < 0:
            raise UsageError(f"{where}: {key} = {limits[key]:g} is negative; give the allowed change as a fraction (0.5 = 50 %)")
    if "min" in limits and "max" in limits and limits["min"] > limits["max"]:
        raise UsageError(f"{where}: min {limits['min']:g} is above max {limits['max']:g}")
    if ratio:
        if not isinstance(raw["ratio"], str) or not raw["ratio"]:
            raise UsageError(f"{where}: ratio must be a ratio's name from the report, e.g. \"pipeline_overhead.cpu.b512\"")
        return Bound(ratio=raw["ratio"], **limits)
    for key in ("mode", "batch_size", "metric"):
        if key not in raw:
            raise UsageError(f"{where}: missing {key}; a case bound needs mode, batch_size and metric (or is a ratio bound)")
    if raw["metric"] not in METRICS:
        raise UsageError(f"{where}: metric {raw['metric']!r} is not one of {', '.join(METRICS)}")
    if not isinstance(raw["batch_size"], int) or isinstance(raw["batch_size"], bool):
        raise UsageError(f"{where}: batch_size must be a whole number, got {raw['batch_size']!r}")
    for key in ("mode", "device", "variant"):
        if key in raw and not isinstance(raw[key], str):
            raise UsageError(f"{where}: {key} must be a string, got {raw[key]!r}")
    rate = None
    if "rate_per_s" in raw:
        rate = _number(raw["rate_per_s"], f"{where}: rate_per_s")
        if rate <= 0:
            raise UsageError(f"{where}: rate_per_s = {rate:g} is not positive; give the offered rate of a kafka-rate "
                             "row, one of --kafka-rates (e.g. 1000)")
    return Bound(mode=raw["mode"], batch_size=raw["batch_size"], device=raw.get("device", "cpu"),
                 variant=raw.get("variant", "fp32"), rate_per_s=rate, metric=raw["metric"], **limits)


def _known(key: object, valid: tuple[str, ...], message: str, listing: str) -> None:
    if key in valid:
        return
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"{message} {key!r}{hint}; {listing}: {', '.join(valid)}")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def baseline_problem(baseline: dict | None, schema: str) -> str | None:
    """Why the baseline cannot serve relative bounds (None when it can)."""
    if baseline is None:
        return "no --baseline given"
    if baseline.get("schema") != schema:
        return f"the baseline's schema is {baseline.get('schema')!r}, this run's {schema!r}: figures not comparable"
    return None


def require_checked_bounds(bounds: list[Bound], baseline_issue: str | None, where: str) -> None:
    """A usage error when no bound of the gate would be checked (every one relative, and no usable baseline)."""
    if baseline_issue and not any(b.ratio is not None or b.is_absolute for b in bounds):
        raise UsageError(f"--gate {where}: no bound would be checked: all {len(bounds)} are relative and "
                         f"{baseline_issue}; pass --baseline REPORT.json or add an absolute or ratio bound")


def check(report: dict, bounds: list[Bound], baseline: dict | None) -> list[Outcome]:
    """Every limit of every bound against `report` (and `baseline` for relative limits)."""
    outcomes: list[Outcome] = []
    base_issue = baseline_problem(baseline, report.get("schema", ""))
    for bound in bounds:
        if bound.ratio is not None:
            ratios = report.get("ratios", {})
            if bound.ratio not in ratios:
                raise UsageError(f"gate ratio {bound.ratio!r} is not in the report (it has: {', '.join(ratios) or 'none'}); "
                                 "check the name, the modes and the batch sizes measured")
            outcomes.append(_absolute(bound, float(ratios[bound.ratio]), ""))
            continue
        result = _select(report, bound)
        if result is None:
            raise UsageError(f"gate bound {bound.label!r} selects no result in the report; check mode, batch_size, "
                             "device, variant and rate_per_s against --mode, --batch-sizes, --device and --kafka-rates")
        value = result.get(bound.metric)
        if value is None:
            raise UsageError(f"gate bound {bound.label!r}: the report has no {bound.metric} for that case")
        spread = result.get("spread", {}).get(bound.metric)
        spread_text = f"{_fmt(spread[0])}-{_fmt(spread[1])}" if spread else ""
        if bound.is_absolute:
            outcomes.append(_absolute(bound, float(value), spread_text))
        if bound.is_relative:
            outcomes += _relative(bound, float(value), spread_text, baseline, base_issue)
    return outcomes


def _select(report: dict, bound: Bound) -> dict | None:
    """The one result the bound names, None if none; a UsageError if it names several."""
    rows = [r for r in report.get("results", []) if r["mode"] == bound.mode and r["batch_size"] == bound.batch_size
            and r.get("device", "cpu") == bound.device and r.get("variant", "fp32") == bound.variant
            and (bound.rate_per_s is None or r.get("rate_per_s") == bound.rate_per_s)]
    if len(rows) > 1:
        rates = sorted({r["rate_per_s"] for r in rows if r.get("rate_per_s") is not None})
        hint = f"add rate_per_s (one of {', '.join(f'{x:g}' for x in rates)})" if rates else "add device or variant"
        raise UsageError(f"gate bound {bound.label!r} selects {len(rows)} results in the report; {hint} to name one")
    return rows[0] if rows else None


def _headroom(value: float, limit: float, upper: bool) -> float:
    scale = abs(limit) or 1.0
    return (limit - value) / scale if upper else (value - limit) / scale


def _absolute(bound: Bound, value: float, spread: str) -> Outcome:
    checks = [(bound.max, True), (bound.min, False)]
    room = [_headroom(value, limit, upper) for limit, upper in checks if limit is not None]
    parts = [f"{'<=' if upper else '>='} {_fmt(limit)}" for limit, upper in checks if limit is not None]
    worst = min(room)
    return Outcome(bound.label, "PASS" if worst >= 0 else "FAIL", value, " and ".join(parts), worst, spread)


def _relative(bound: Bound, value: float, spread: str, baseline: dict | None, issue: str | None) -> list[Outcome]:
    label = f"{bound.label} vs baseline"
    if issue is None:
        base_row = _select(baseline, bound)
        if base_row is None or base_row.get(bound.metric) is None:
            issue = "the baseline has no such case"
    if issue is not None:
        return [Outcome(label, "SKIP", value, spread=spread, note=f"not checked: {issue}")]
    base = float(base_row[bound.metric])
    change = f"{_fmt(base)} ({(value - base) / base:+.1%})" if base else _fmt(base)
    out = []
    for fraction, upper in ((bound.max_increase, True), (bound.max_decrease, False)):
        if fraction is None:
            continue
        limit = base * (1 + fraction) if upper else base * (1 - fraction)
        room = _headroom(value, limit, upper)
        text = f"{'<=' if upper else '>='} {_fmt(limit)} ({'+' if upper else '-'}{fraction:.0%})"
        out.append(Outcome(label, "PASS" if room >= 0 else "FAIL", value, text, room, spread, change))
    return out


def format_outcomes(outcomes: list[Outcome]) -> str:
    """The gate's table: one row per checked or skipped limit."""
    rows = [("", "bound", "measured", "limit", "headroom", "baseline (change)", "spread", "")] + [
        (o.status, o.bound, "" if o.measured is None else _fmt(o.measured), o.limit,
         "" if o.headroom is None else f"{o.headroom:+.1%}", o.baseline, o.spread, o.note) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _fmt(value: float) -> str:
    # Four significant digits, but whole numbers with separators for large figures (tx/s).
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"


def verdict(outcomes: list[Outcome]) -> str:
    """One line: how many limits were checked, failed and skipped."""
    checked = [o for o in outcomes if o.status != "SKIP"]
    failed = [o for o in checked if o.status == "FAIL"]
    skipped = len(outcomes) - len(checked)
    tail = f"; {skipped} relative bound{'s' if skipped != 1 else ''} skipped (see the table)" if skipped else ""
    if failed:
        return f"gate: FAIL, {len(failed)} of {len(checked)} checked bounds failed{tail}"
    return f"gate: PASS, all {len(checked)} checked bounds hold{tail}"


def load_report(path: Path) -> dict:
    """Read a report written by `fraudscore bench --json` (for --baseline)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--baseline {path}: no such file (leave --baseline out to skip relative bounds)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--baseline {path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UsageError(f"--baseline {path}: not a fraudscore bench report (no \"results\" list)")
    return data
