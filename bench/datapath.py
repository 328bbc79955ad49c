"""Times the offline data path at the handbook's reference size: simulate, features, file I/O.

    python -m fraudscore.bench.datapath [--repeats 3] [--json PATH]

Each step runs `--repeats` times in this process; the table reports the median and
the spread (min-max) in seconds. The figures in docs/performance.md come from here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fraudscore import __version__, add_baseline_features, read_table, simulate, write_table
from fraudscore.data.table import pyarrow_or_none


def _time(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def run(repeats: int, customers: int, terminals: int, days: int) -> dict:
    rows: list[dict] = []

    def record(step: str, times: list[float], n: int) -> None:
        rows.append(
            {
                "step": step,
                "rows": n,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "repeats": len(times),
            }
        )

    times, sim = _time(lambda: simulate(customers=customers, terminals=terminals, days=days, seed=0), repeats)
    tx = sim.transactions
    record("simulate (in process)", times, len(tx))
    times, feats = _time(lambda: add_baseline_features(tx), repeats)
    record("features (in process)", times, len(tx))

    formats = [".csv", ".csv.gz"] + ([".parquet"] if pyarrow_or_none() else [])
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in (("transactions", tx), ("feature table", feats)):
            for suffix in formats:
                path = Path(tmp) / f"t{suffix}"
                times, _ = _time(lambda: write_table(table, path), repeats)
                record(f"write {name} {suffix} ({path.stat().st_size / 1e6:.0f} MB)", times, len(tx))
                times, _ = _time(lambda: read_table(path), repeats)
                record(f"read {name} {suffix}", times, len(tx))
    return {
        "schema": "fraudscore.datapath/1",
        "fraudscore": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args.repeats, args.customers, args.terminals, args.days)
    print(f"{'step':<44} {'rows':>10} {'median s':>9} {'min-max s':>13}")
    for r in report["results"]:
        print(f"{r['step']:<44} {r['rows']:>10,} {r['median_s']:>9.2f} {r['min_s']:>6.2f}-{r['max_s']:<6.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
