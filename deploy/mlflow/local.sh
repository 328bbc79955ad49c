#!/usr/bin/env bash
# A local MLflow tracking server (SQLite store, artefacts on disk) for `fraudscore train
# --mlflow-uri` and the tests. The server is MLflow from PyPI in a virtual environment of its
# own (full mlflow pins pyarrow below what training needs; fraudscore itself uses only the
# client, the `tracking` extra).
#
#   deploy/mlflow/local.sh start     start (or reuse) a server; last line = its tracking URI
#   deploy/mlflow/local.sh stop      stop it by PID (SIGTERM, then SIGKILL after a grace period)
#   deploy/mlflow/local.sh status    exit 0 and print the URI if it is running
#   deploy/mlflow/local.sh fetch     only install the server into its environment
#
# Environment:
#   MLFLOW_PORT            port on 127.0.0.1 (default 5000)
#   MLFLOW_STATE_DIR       store, artefacts, log, pid (default ${TMPDIR:-/tmp}/fraudscore-mlflow-$MLFLOW_PORT:
#                          /tmp goes at reboot, and run ids in bundles then lead nowhere; keep
#                          a lasting directory for runs you deploy)
#   MLFLOW_VERSION         the server's version (default 3.17.2, the client's in pyproject.toml, with
#                          every dependency pinned in requirements.txt beside this script)
#   FRAUDSCORE_CACHE       where its environment lives (default ${XDG_CACHE_HOME:-~/.cache}/fraudscore)
#   MLFLOW_BIN             another mlflow command to run instead
#   PYTHON                 the Python that makes its environment (default python3)
#   MLFLOW_START_TIMEOUT   seconds to wait for the server to answer (default 120)
set -euo pipefail

port="${MLFLOW_PORT:-5000}"
state="${MLFLOW_STATE_DIR:-${TMPDIR:-/tmp}/fraudscore-mlflow-$port}"
timeout="${MLFLOW_START_TIMEOUT:-120}"
pidfile="$state/server.pid"
version="${MLFLOW_VERSION:-3.17.2}"
cache="${FRAUDSCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudscore}"
env_dir="$cache/mlflow-$version"
# The default version installs from requirements.txt beside this script (every dependency
# pinned: a new release of one cannot change the server under CI); another version from PyPI as it resolves.
requirements="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/requirements.txt"
if [[ "$version" == 3.17.2 ]]; then
  stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
else
  stamp="mlflow==$version"
fi
uri="http://127.0.0.1:$port"

log() { echo "local-mlflow: $*" >&2; }
die() { log "error: $*"; exit 1; }

fetch() {
  if [[ -f "$env_dir/.complete" && "$(cat "$env_dir/.complete")" == "$stamp" ]]; then
    return
  fi
  log "installing MLflow $version from PyPI into $env_dir (log in $env_dir.log)"
  mkdir -p "$cache"
  rm -rf "$env_dir"
  local ok=1
  "${PYTHON:-python3}" -m venv "$env_dir" >"$env_dir.log" 2>&1 || ok=0
  if ((ok)); then
    if [[ "$stamp" == "mlflow==$version" ]]; then
      "$env_dir/bin/python" -m pip install --disable-pip-version-check --progress-bar off "mlflow==$version" \
        >>"$env_dir.log" 2>&1 || ok=0
    else
      "$env_dir/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$requirements" \
        >>"$env_dir.log" 2>&1 || ok=0
    fi
  fi
  if ((!ok)); then
    tail -n 30 "$env_dir.log" >&2
    rm -rf "$env_dir"
    die "installing MLflow $version failed (log above, whole in $env_dir.log)"
  fi
  echo "$stamp" >"$env_dir/.complete"
}

mlflow_bin() {
  if [[ -n "${MLFLOW_BIN:-}" ]]; then echo "$MLFLOW_BIN"; return; fi
  fetch
  echo "$env_dir/bin/mlflow"
}

answers() {
  "${PYTHON:-python3}" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' \
    "$uri" 2>/dev/null
}

# Our server: the pid file's process is alive and is an mlflow command (not a reused pid).
# `ours` and `stop_ours`: deploy/lib/process.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/process.sh"
running() {
  ours "$pidfile" mlflow
}

start() {
  local deadline=$((SECONDS + timeout))
  if running; then
    # Ours, answering or still starting (another `start` launched it): wait, never a second one.
    until answers; do
      running || die "the server (pid $(cat "$pidfile")) exited while starting; see $state/server.log"
      (( SECONDS < deadline )) || die "the server (pid $(cat "$pidfile")) does not answer on $uri; stop it first"
      sleep 0.5
    done
    log "already running (pid $(cat "$pidfile"))"
    echo "$uri"
    return
  fi
  if answers; then
    die "something this script did not start answers on $uri; stop it or choose another MLFLOW_PORT"
  fi
  local bin
  bin="$(mlflow_bin)"
  deadline=$((SECONDS + timeout))  # the first start may have spent minutes installing
  mkdir -p "$state/artifacts"
  chmod 700 "$state"  # run parameters and artefacts: the owner's only
  # One worker, no background job runners (MLflow 3.17 starts a pool of them with a database
  # store): a tracking server for one team's CI and laptops. --artifacts-destination makes the
  # server serve artefacts itself (clients need no access to the directory).
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
    setsid "$bin" server --host 127.0.0.1 --port "$port" --workers 1 \
    --backend-store-uri "sqlite:///$state/mlflow.db" --artifacts-destination "$state/artifacts" \
    >"$state/server.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local began=$SECONDS
  until answers; do
    if ! running; then
      tail -n 30 "$state/server.log" >&2
      rm -f "$pidfile"
      die "the server exited while starting (log above, whole in $state/server.log)"
    fi
    if (( SECONDS >= deadline )); then
      tail -n 30 "$state/server.log" >&2
      stop
      die "the server did not answer on $uri within ${timeout} s"
    fi
    sleep 0.5
  done
  log "ready after $((SECONDS - began)) s (store $state)"
  echo "$uri"
}

stop() {
  stop_ours "$pidfile" mlflow group  # the server's workers are its children: the whole group goes
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && answers; then echo "$uri"; else exit 1; fi ;;
  fetch) fetch ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
