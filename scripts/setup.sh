#!/usr/bin/env bash
# Installs what the tests and the demo need, and skips what is already there:
#   - Debian packages: Prometheus tools (promtool, alertmanager, pushgateway), a JRE and Maven;
#   - a virtual environment .venv with fraudscore installed editable with the extras
#     in FRAUDSCORE_EXTRAS (default cpu,train,dev);
#   - the Apache Kafka jars from Maven Central (cached outside the repo by deploy/kafka/local.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
venv="${VENV:-.venv}"
extras="${FRAUDSCORE_EXTRAS:-cpu,train,dev}"

say() { echo "setup: $*"; }

# --- Debian packages (command -> package)
declare -A debs=(
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [prometheus-pushgateway]=prometheus-pushgateway
  [java]=openjdk-17-jre-headless
  [mvn]=maven
)
missing=()
for cmd in "${!debs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${debs[$cmd]}")
done
if ((${#missing[@]})); then
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present: $(printf '%s ' "${debs[@]}")"
fi

# --- Python environment
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.fraudscore-installed"
want="$extras $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  say "installing fraudscore[$extras] (editable) into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q --upgrade pip
  "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -e ".[$extras]"
  echo "$want" >"$stamp"
else
  say "fraudscore[$extras] already installed in $venv"
fi
say "versions: $("$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(numpy|confluent[-_]kafka|prometheus.client|typer|onnxruntime([-_]gpu)?|tensorflow([-_]cpu)?|keras|tf2onnx|onnx|pyarrow|pytest|hypothesis) ' \
  | awk '{printf "%s=%s ", $1, $2}')"

# --- Kafka jars
deploy/kafka/local.sh fetch >/dev/null
say "Kafka jars ready ($(deploy/kafka/local.sh fetch))"
