"""How noisy and how blind the score-shift and feature-drift alerts are on simulated traffic.

Scores the days after a bundle's training window, in 1-hour windows every 15 minutes, with
the bundle as it is and with its inputs broken in a few ways, and prints the share of scores
at or above the bundle's validation p90 (FraudscoreScoreDistributionShift fires outside
3.3 %-30 %), what the previous rule (mean score over 15 minutes vs the same slot yesterday,
> 0.05) would have done, and the largest 1-hour and 1-day feature PSI (FraudscoreFeatureDrift:
> 0.2).

    fraudscore simulate --customers 5000 --terminals 10000 --days 90 --seed 0 -o tx.parquet
    fraudscore features -i tx.parquet -o feat.parquet
    fraudscore train --data feat.parquet --start 2018-05-09 --model mlp --epochs 10 --out mlp-run
    fraudscore export --run mlp-run --out mlp     # the same with --model autoencoder
    python scripts/score_shift_check.py --data feat.parquet --from 2018-05-16 --to 2018-06-29 mlp ae
"""

from __future__ import annotations

import argparse

import numpy as np

from fraudscore import read_table
from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.drift import bin_counts, drift_baselines, psi
from fraudscore.serving.scorer import Scorer

LOW, HIGH, MIN_SCORES = 0.033, 0.30, 400


def broken_inputs(matrix: np.ndarray, features: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The matrix as scored, and as a few upstream faults would make it."""
    def changed(columns: list[int], f) -> np.ndarray:
        out = matrix.copy()
        out[:, columns] = f(out[:, columns])
        return out

    amount = [features.index("TX_AMOUNT")]
    return {
        "no change": matrix,
        "amounts x3": changed(amount, lambda x: x * 3),
        "amounts /3": changed(amount, lambda x: x / 3),
        "customer averages 0": changed([i for i, f in enumerate(features) if "CUSTOMER_ID_AVG" in f], np.zeros_like),
        "terminal risk 0": changed([i for i, f in enumerate(features) if "RISK" in f], np.zeros_like),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="feature table (fraudscore features)")
    ap.add_argument("--from", dest="start", required=True, help="first day scored, YYYY-MM-DD (after training)")
    ap.add_argument("--to", dest="end", required=True, help="day after the last day scored")
    ap.add_argument("bundles", nargs="+")
    args = ap.parse_args()
    table = read_table(args.data)
    t = table["TX_DATETIME"].astype("datetime64[s]")
    rows = np.flatnonzero((t >= np.datetime64(args.start)) & (t < np.datetime64(args.end)))
    rows = rows[np.argsort(t[rows], kind="stable")]
    quarter = ((t[rows] - np.datetime64(args.start)) // np.timedelta64(900, "s")).astype(np.int64)
    for path in args.bundles:
        bundle = load_bundle(path)
        reference = bundle.manifest.score_reference
        if not reference:
            print(f"{path}: no score reference in the manifest (exported before it was recorded); re-export")
            continue
        matrix = np.column_stack([table[f][rows] for f in bundle.features]).astype(np.float32)
        scorer = Scorer(bundle)
        p90 = reference["quantiles"]["0.9"]
        per_quarter = np.bincount(quarter)
        calm_mean = None
        for name, m in broken_inputs(matrix, bundle.features).items():
            scores = scorer.score(m).astype(np.float64)
            mean = np.bincount(quarter, scores) / np.maximum(per_quarter, 1)
            if calm_mean is None:  # the old rule on unchanged traffic: slots differing from yesterday's
                calm_mean = mean
                both = (per_quarter[96:] >= 100) & (per_quarter[:-96] >= 100)
                old = f"old rule fired in {np.mean(np.abs(mean[96:] - mean[:-96])[both] > 0.05):.1%} of 15-min slots"
            else:  # a fault starting now: the old rule sees the step against the same slot yesterday
                old = f"old rule sees a mean shift of {np.mean(mean - calm_mean):+.4f} (fires above 0.05)"
            above = np.bincount(quarter, scores >= p90)
            n = np.convolve(per_quarter, np.ones(4), "valid")  # 1-hour windows every 15 minutes
            share = np.convolve(above, np.ones(4), "valid")[n >= MIN_SCORES] / n[n >= MIN_SCORES]
            outside = np.mean((share < LOW) | (share > HIGH))
            print(f"{bundle.manifest.model_kind:11} {name:20} windows {len(share):5}  p90 share "
                  f"{share.min():6.1%}..{share.max():6.1%} (median {np.median(share):5.1%})  outside bounds {outside:6.1%}; {old}")
        baselines = drift_baselines(bundle.features, bundle.manifest.fingerprint)
        for label, seconds, least in (("1h", 3600, 1000), ("1h", 3600, 500), ("1d", 86400, 1000)):
            window = ((t[rows] - np.datetime64(args.start)) // np.timedelta64(seconds, "s")).astype(np.int64)
            worst, windows = 0.0, 0
            for w in np.unique(window):
                pick = window == w
                if pick.sum() >= least:
                    windows += 1
                    worst = max(worst, *(psi(b.shares, bin_counts(matrix[pick, b.column], b.edges)) for b in baselines))
            print(f"{bundle.manifest.model_kind:11} no change: {windows} {label} windows of >= {least} rows"
                  + (f", largest feature PSI {worst:.3f}" if windows else ""))


if __name__ == "__main__":
    main()
