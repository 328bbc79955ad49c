"""The CI gate: bounds on a bench report, absolute, relative to a baseline report, or on same-run ratios.

A gate file is TOML (or YAML, with PyYAML installed) holding a list `bound`:

```toml
[[bound]]                      # absolute
mode = "model"                 # selects the result: mode, batch_size, device (default cpu)
batch_size = 1024
metric = "p99_ms"              # p50_ms, p99_ms or throughput_per_s
max = 2.0                      # and/or min

[[bound]]                      # relative to --baseline REPORT.json
mode = "pipeline"
batch_size = 1024
metric = "p99_ms"
max_increase = 0.15            # may rise at most 15 % (max_decrease for throughput)

[[bound]]                      # a same-run ratio from the report's "ratios"
ratio = "pipeline_overhead.cpu.b1024"
max = 12.0
```

Ratios measured within one run (pipeline overhead over the model, speed-up over the
naive loop) are robust on shared machines; absolute and relative bounds need headroom.
Exit codes of `fraudscore bench --gate`: 0 all bounds hold, 1 a bound failed, 2 a usage
error (unreadable gate file, a bound that selects nothing, a relative bound without a
baseline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fraudscore.errors import UsageError

METRICS = ("p50_ms", "p99_ms", "throughput_per_s")


@dataclass(frozen=True)
class Outcome:
    bound: str
    measured: float
    limit: str
    ok: bool
    margin: str
    spread: str


def load_gate(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--gate {path}: no such file") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("--gate: YAML needs PyYAML (pip install pyyaml), or write the gate as TOML") from None
        data = yaml.safe_load(text)
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"--gate {path}: not valid TOML ({exc})") from None
    bounds = (data or {}).get("bound")
    if not isinstance(bounds, list) or not bounds:
        raise UsageError(f"--gate {path}: expected a list of [[bound]] tables")
    return bounds


def _select(report: dict, bound: dict, source: str) -> dict:
    matches = [r for r in report["results"] if r["mode"] == bound.get("mode")
               and r["batch_size"] == bound.get("batch_size") and r.get("device", "cpu") == bound.get("device", "cpu")]
    if not matches:
        raise UsageError(f"gate bound {bound} selects no result in the {source} report; "
                         "check mode, batch_size and device against the report")
    return matches[0]


def check(report: dict, bounds: list[dict], baseline: dict | None) -> list[Outcome]:
    outcomes = []
    for bound in bounds:
        if "ratio" in bound:
            name = bound["ratio"]
            if name not in report.get("ratios", {}):
                raise UsageError(f"gate ratio {name!r} is not in the report (has: {', '.join(report.get('ratios', {}))})")
            value = float(report["ratios"][name])
            outcomes.append(_absolute(f"ratio {name}", value, bound, ""))
            continue
        metric = bound.get("metric")
        if metric not in METRICS:
            raise UsageError(f"gate bound {bound}: metric must be one of {', '.join(METRICS)}")
        result = _select(report, bound, "current")
        value = result.get(metric)
        if value is None:
            raise UsageError(f"gate bound {bound}: the report has no {metric} for that case")
        spread = result.get("spread", {}).get(metric)
        spread_text = f"{spread[0]:.4g}-{spread[1]:.4g}" if spread else ""
        label = f"{bound['mode']} b{bound['batch_size']} {bound.get('device', 'cpu')} {metric}"
        if "min" in bound or "max" in bound:
            outcomes.append(_absolute(label, float(value), bound, spread_text))
        for key in ("max_increase", "max_decrease"):
            if key in bound:
                if baseline is None:
                    raise UsageError(f"gate bound {bound} is relative: pass --baseline REPORT.json")
                base = float(_select(baseline, bound, "baseline")[metric])
                change = (float(value) - base) / base
                ok = change <= bound[key] if key == "max_increase" else -change <= bound[key]
                limit = f"{'+' if key == 'max_increase' else '-'}{bound[key]:.0%} of {base:.4g}"
                outcomes.append(Outcome(label + " vs baseline", float(value), limit, ok, f"{change:+.1%}", spread_text))
    return outcomes


def _absolute(label: str, value: float, bound: dict, spread: str) -> Outcome:
    ok, parts, margin = True, [], ""
    if "max" in bound:
        ok &= value <= bound["max"]
        parts.append(f"<= {bound['max']:g}")
        margin = f"{(value - bound['max']) / bound['max']:+.1%}"
    if "min" in bound:
        ok &= value >= bound["min"]
        parts.append(f">= {bound['min']:g}")
        margin = margin or f"{(value - bound['min']) / bound['min']:+.1%}"
    return Outcome(label, value, " and ".join(parts), ok, margin, spread)


def format_outcomes(outcomes: list[Outcome]) -> str:
    rows = [("", "bound", "measured", "limit", "margin", "spread")] + [
        ("PASS" if o.ok else "FAIL", o.bound, f"{o.measured:.4g}", o.limit, o.margin, o.spread) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def load_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--baseline {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--baseline {path}: not a JSON report ({exc})") from None
