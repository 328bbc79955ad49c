#!/usr/bin/env bash
# A short bench as a CI performance gate: builds a small bundle with the project's own
# commands (once, in out/), measures model and pipeline, enforces deploy/bench/ci-gate.toml,
# and keeps the report, the Prometheus textfile and the plot in out/ as artefacts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fs=.venv/bin/fraudscore
out=out
mkdir -p "$out"
if [[ ! -f "$out/ci-bundle/manifest.json" ]]; then
  "$fs" simulate --customers 600 --terminals 1200 --days 32 --seed 7 --out "$out/ci-tx.parquet" --quiet
  "$fs" features --in "$out/ci-tx.parquet" --out "$out/ci-features.parquet" --quiet
  rm -rf "$out/ci-run"
  "$fs" train --data "$out/ci-features.parquet" --start 2018-04-10 --seed 0 --epochs 5 --ensemble 1 --out "$out/ci-run" --quiet
  "$fs" export --run "$out/ci-run" --out "$out/ci-bundle" --quiet
fi
"$fs" bench --bundle "$out/ci-bundle" --mode model --mode pipeline --batch-sizes 1,64,512,4096 \
  --repeats 3 --seconds 0.5 --quiet --json "$out/bench-report.json" --prom-file "$out/bench.prom" \
  --plot "$out/bench.png" --gate deploy/bench/ci-gate.toml
echo "ci-bench: report in $out/bench-report.json"
