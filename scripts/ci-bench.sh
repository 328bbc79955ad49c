#!/usr/bin/env bash
# A short bench as a CI performance gate: builds a small bundle with the project's own
# commands (once, in out/), measures model and pipeline, enforces deploy/bench/ci-gate.toml,
# then starts a throw-away Kafka broker (deploy/kafka/local.sh, a free port, its own state
# directory, stopped on exit), measures a short drain and the latency at 1,000 tx/s through it
# and enforces deploy/bench/ci-gate-kafka.toml. The reports, the Prometheus textfile and the
# plot stay in out/ as artefacts.
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

# The Kafka latency point. Its own broker, so the figures do not depend on what ran before
# (a broker warmed by the test suite, leftover topics); about a minute and a half on 2 cores.
py=.venv/bin/python
source scripts/throwaway-broker.sh
"$fs" bench --bundle "$out/ci-bundle" --mode kafka --bootstrap-servers "$bootstrap" \
  --kafka-messages 20000 --kafka-rates 1000 --kafka-rate-seconds 10 --kafka-repeats 1 --naive-messages 300 \
  --quiet --json "$out/bench-kafka-report.json" --gate deploy/bench/ci-gate-kafka.toml
echo "ci-bench: kafka report in $out/bench-kafka-report.json"
