#!/usr/bin/env bash
# Installs what the tests and the demo need, and skips what is already there:
#   - Debian packages: Prometheus tools (promtool, alertmanager, pushgateway), a JRE, Maven and
#     iptables (packet loss for the network fault tests);
#     with CI=true or FRAUDSCORE_CONTAINERS=1 also podman, runc and debootstrap, which the
#     container test (tests/kafka/test_container.py) needs to build and run the runtime image;
#   - a virtual environment .venv with fraudscore installed editable with the extras
#     in FRAUDSCORE_EXTRAS (default cpu,train,dev,tracking);
#   - the Apache Kafka jars from Maven Central (cached outside the repo by deploy/kafka/local.sh);
#   - Toxiproxy built from the Go module proxy (cached likewise by deploy/toxiproxy/local.sh; Go
#     from Debian's golang-go where the machine has none);
#   - with the `tracking` extra, an MLflow tracking server in a venv of its own (deploy/mlflow/local.sh).
#
# Quiet by design: each installer's own output goes to a log under $FRAUDSCORE_CACHE/setup-logs
# (default ~/.cache/fraudscore/setup-logs) and is shown only when it fails. A run with nothing
# to do prints one line.
#
# Side effects on the system, and only these: the Debian packages above. The project needs
# their binaries, not their services: while apt runs, a temporary /usr/sbin/policy-rc.d (exit
# 101, Debian's documented switch; only when none exists) stops the packages from starting
# prometheus/alertmanager/pushgateway, and any unit the install enabled is disabled again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
venv="${VENV:-.venv}"
extras="${FRAUDSCORE_EXTRAS:-cpu,train,dev,tracking}"
logs="${FRAUDSCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudscore}/setup-logs"
did=()  # what this run installed, for the summary
mkdir -p "$logs"

say() { echo "setup: $*"; }

# Runs "$@" with its output in $logs/$1.log; on failure shows the end of it (without terminal
# escape codes) and stops the set-up.
quietly() {
  local name="$1"
  shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    say "error: $* failed; the last lines of $logs/$name.log:"
    tail -n 40 "$logs/$name.log" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' >&2
    exit 1
  fi
}

# --- Debian packages (command -> package)
declare -A debs=(
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [prometheus-pushgateway]=prometheus-pushgateway
  [java]=openjdk-17-jre-headless
  [mvn]=maven
  # iptables makes the packet loss of the network fault tests (deploy/packet-loss/local.sh)
  [iptables]=iptables
)
# Go builds Toxiproxy for the network fault tests (deploy/toxiproxy/local.sh); a machine's own
# Go (e.g. /usr/local/go) is used when there is one.
if ! command -v go >/dev/null 2>&1 && [[ ! -x /usr/local/go/bin/go ]]; then
  debs+=([go]=golang-go)
fi
if [[ "${CI:-}" == true || "${FRAUDSCORE_CONTAINERS:-0}" == 1 ]]; then
  debs+=([podman]=podman [runc]=runc [debootstrap]=debootstrap)
fi
missing=()
for cmd in "${!debs[@]}"; do
  # runc and debootstrap live in /usr/sbin, which a user's PATH may lack.
  command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || missing+=("${debs[$cmd]}")
done

# Units enabled for boot (the symlinks systemctl enable makes), one per line.
enabled_units() {
  find /etc/systemd/system -path '*.wants/*' -type l -printf '%f\n' 2>/dev/null | sort -u
}

sudo=""
[[ "$(id -u)" -ne 0 ]] && sudo="sudo"
policy=/usr/sbin/policy-rc.d
own_policy=0
drop_policy() {
  if ((own_policy)); then
    $sudo rm -f "$policy"
    own_policy=0
  fi
}
trap drop_policy EXIT

install_debs() {
  local before after unit
  before="$(enabled_units)"
  [[ -z "$sudo" ]] || sudo -v  # asks for the password here, not inside a quiet command
  if [[ ! -e "$policy" ]]; then
    # Debian's switch for "install, but start no service": invoke-rc.d and deb-systemd-invoke
    # ask it before starting anything (the apt log then says "policy-rc.d denied execution
    # of start", which is the point). Removed again however this script ends.
    own_policy=1
    printf '#!/bin/sh\n# Written by fraudscore scripts/setup.sh for the length of one apt-get install.\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
  fi
  quietly apt-update $sudo apt-get update -q
  quietly apt-install $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "$@"
  drop_policy
  after="$(enabled_units)"
  # Only what this install enabled: a unit the user had enabled before stays as it was.
  local disabled=()
  for unit in $(comm -13 <(echo "$before") <(echo "$after")); do
    $sudo systemctl disable --quiet "$unit" 2>/dev/null \
      || $sudo find /etc/systemd/system -path "*.wants/$unit" -type l -delete
    if [[ -d /run/systemd/system ]]; then  # booted with systemd: make sure it is not running either
      $sudo systemctl stop "$unit" 2>/dev/null || true
    fi
    disabled+=("$unit")
  done
  if ((${#disabled[@]})); then
    say "disabled what the packages enabled (fraudscore runs the binaries, not the services): ${disabled[*]}"
  fi
}

if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]} (log in $logs)"
  install_debs "${missing[@]}"
  did+=("Debian packages ${missing[*]}")
fi

# --- Python environment
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv with $("$python" --version)"
  quietly venv "$python" -m venv "$venv"
fi
stamp="$venv/.fraudscore-installed"
want="$extras $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  say "installing fraudscore[$extras] (editable) into $venv (log in $logs/pip.log)"
  quietly pip-upgrade "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off --upgrade pip
  quietly pip "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -e ".[$extras]"
  echo "$want" >"$stamp"
  did+=("fraudscore[$extras] in $venv")
fi

# --- Kafka jars (deploy/kafka/local.sh keeps Maven's own output in a log of its own)
jars="$(deploy/kafka/local.sh fetch 2>"$logs/kafka-fetch.log" || { cat "$logs/kafka-fetch.log" >&2; exit 1; })"
grep -q resolving "$logs/kafka-fetch.log" && did+=("Kafka jars")

# --- Toxiproxy, the TCP fault proxy of the network fault tests, built once into the cache
deploy/toxiproxy/local.sh fetch >/dev/null 2>"$logs/toxiproxy-fetch.log" || { cat "$logs/toxiproxy-fetch.log" >&2; exit 1; }
grep -q building "$logs/toxiproxy-fetch.log" && did+=("Toxiproxy")

# --- The MLflow tracking server for `train --mlflow-uri` and its tests, in an environment of its own
tracking_server=""
if [[ ",$extras," == *,tracking,* ]]; then
  tracking_server=1
  PYTHON="$python" deploy/mlflow/local.sh fetch 2>"$logs/mlflow-fetch.log" || { cat "$logs/mlflow-fetch.log" >&2; exit 1; }
  grep -q installing "$logs/mlflow-fetch.log" && did+=("MLflow server")
fi

if ((${#did[@]})) || [[ "${CI:-}" == true ]]; then
  say "installed: ${did[*]:-nothing new}"
  say "versions: $("$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(numpy|confluent[-_]kafka|prometheus.client|typer|onnxruntime([-_]gpu)?|tensorflow([-_]cpu)?|keras|tf2onnx|onnx|pyarrow|pytest|hypothesis) ' \
    | awk '{printf "%s=%s ", $1, $2}')"
  say "Kafka jars in $jars"
else
  say "ready: Debian packages, $venv with fraudscore[$extras], Kafka jars${tracking_server:+, MLflow server} (nothing to do)"
fi
