#!/usr/bin/env bash
# The whole path on one machine: set up, start Kafka and Prometheus, simulate, build features,
# train, export (with the parity check) and evaluate a bundle, run the sidecar, stream
# transactions through it, print a summary. Stops what it started at the end or on Ctrl-C.
#   DEMO_SECONDS (20)  DEMO_RATE (2000/s)  KAFKA_PORT (19092)  PROMETHEUS_PORT (19090)  METRICS_PORT (19464)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="${DEMO_DIR:-${TMPDIR:-/tmp}/fraudscore-demo}"
export KAFKA_PORT="${KAFKA_PORT:-19092}" KAFKA_STATE_DIR="$work/kafka"
prom_port="${PROMETHEUS_PORT:-19090}"
metrics_port="${METRICS_PORT:-19464}"
fs=.venv/bin/fraudscore
say() { echo "demo: $*"; }
t0=$SECONDS

scripts/setup.sh
mkdir -p "$work"
prom_pid=""
cleanup() {
  say "stopping what the demo started"
  [[ -n "$prom_pid" ]] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null || true
  deploy/kafka/local.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bootstrap="$(deploy/kafka/local.sh start | tail -n1)"
say "Kafka at $bootstrap"

# Prometheus scraping the demo sidecar, with the project's rules.
sed -e "s/127.0.0.1:9464/127.0.0.1:$metrics_port/" -e "s#rules.yml#$PWD/deploy/prometheus/rules.yml#" \
  -e "/alerting:/,/targets: \[\"127.0.0.1:9093\"\]/d" -e "s/scrape_interval: 15s/scrape_interval: 2s/" \
  deploy/prometheus/prometheus.yml >"$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
say "Prometheus at http://127.0.0.1:$prom_port (log $work/prometheus.log)"

if ! grep -q "\"tie_rule\"" "$work/bundle/manifest.json" 2>/dev/null; then  # none yet, or one from before raw mode
  "$fs" simulate --customers 2000 --terminals 4000 --days 60 --seed 0 --out "$work/tx.parquet"
  "$fs" features --in "$work/tx.parquet" --out "$work/features.parquet"
  rm -rf "$work/run" "$work/bundle"
  "$fs" train --data "$work/features.parquet" --start 2018-05-08 --seed 0 --ensemble 1 --out "$work/run"
  "$fs" export --run "$work/run" --out "$work/bundle"
fi
"$fs" evaluate --bundle "$work/bundle" --data "$work/features.parquet"  # the split recorded in the bundle

# Fresh topics for each run, created as a user would create theirs (docs/sidecar.md#topics).
tag="$(date +%Y%m%d-%H%M%S)"
topics=(--input-topic "tx-in-$tag" --labels-topic "tx-labels-$tag" --output-topic "tx-scores-$tag"
        --alerts-topic "tx-alerts-$tag" --dlq-topic "tx-dlq-$tag" --state-topic "tx-state-$tag")
"$fs" topics create --bootstrap-servers "$bootstrap" "${topics[@]}" --partitions 2
.venv/bin/python -m fraudscore.bench.demo --bundle "$work/bundle" --transactions "$work/tx.parquet" \
  --bootstrap-servers "$bootstrap" "${topics[@]}" --rate "${DEMO_RATE:-2000}" --seconds "${DEMO_SECONDS:-20}" \
  --metrics-port "$metrics_port" --prometheus-url "http://127.0.0.1:$prom_port"
say "done in $((SECONDS - t0)) s; files in $work"
