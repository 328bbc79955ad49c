#!/usr/bin/env bash
# A local Toxiproxy server (Shopify's TCP fault proxy) for the network fault tests
# (tests/kafka/test_network_faults.py): latency, bandwidth limits, black holes and connection resets
# between the sidecar and a broker, driven through its HTTP API. Built from the Go module proxy
# with the machine's Go (`go` on PATH or /usr/local/go; scripts/setup.sh installs Debian's
# golang-go where there is none), pinned below.
#
#   deploy/toxiproxy/local.sh start     start (or reuse) a server; last line = its API URL
#   deploy/toxiproxy/local.sh stop      stop it by PID
#   deploy/toxiproxy/local.sh status    exit 0 and print the API URL if it is running
#   deploy/toxiproxy/local.sh fetch     only build the server; last line = its path
#
# Environment:
#   TOXIPROXY_PORT        API port on 127.0.0.1 (default 8474)
#   TOXIPROXY_STATE_DIR   log and pid (default ${TMPDIR:-/tmp}/fraudscore-toxiproxy-$TOXIPROXY_PORT)
#   TOXIPROXY_VERSION     module version (default v2.5.0, the newest the module proxy serves here)
#   FRAUDSCORE_CACHE      where the binary is kept (default ${XDG_CACHE_HOME:-~/.cache}/fraudscore)
#   TOXIPROXY_BIN         another toxiproxy-server to run instead
set -euo pipefail

port="${TOXIPROXY_PORT:-8474}"
state="${TOXIPROXY_STATE_DIR:-${TMPDIR:-/tmp}/fraudscore-toxiproxy-$port}"
version="${TOXIPROXY_VERSION:-v2.5.0}"
cache="${FRAUDSCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudscore}"
bin_dir="$cache/toxiproxy-$version"
pidfile="$state/server.pid"
url="http://127.0.0.1:$port"

log() { echo "local-toxiproxy: $*" >&2; }
die() { log "error: $*"; exit 1; }

go_cmd() {
  if command -v go >/dev/null 2>&1; then echo go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  die "Go is needed to build Toxiproxy $version; install it (apt-get install golang-go) or set TOXIPROXY_BIN"
}

fetch() {
  if [[ -n "${TOXIPROXY_BIN:-}" ]]; then echo "$TOXIPROXY_BIN"; return; fi
  if [[ -x "$bin_dir/toxiproxy-server" ]]; then echo "$bin_dir/toxiproxy-server"; return; fi
  local go
  go="$(go_cmd)"
  log "building Toxiproxy $version from the Go module proxy into $bin_dir (log in $bin_dir.log)"
  mkdir -p "$bin_dir"
  # A module cache of its own under the cache directory: no GOPATH of the user's is touched.
  if ! GOBIN="$bin_dir" GOPATH="$cache/go" GOFLAGS=-modcacherw "$go" install \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$version" >"$bin_dir.log" 2>&1; then
    tail -n 30 "$bin_dir.log" >&2
    die "building Toxiproxy $version failed (log above)"
  fi
  mv "$bin_dir/server" "$bin_dir/toxiproxy-server"
  echo "$bin_dir/toxiproxy-server"
}

answers() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/version", timeout=2)' "$url" 2>/dev/null
}

# `ours` and `stop_ours`: deploy/lib/process.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/process.sh"
running() {
  ours "$pidfile" toxiproxy
}

start() {
  if running; then
    log "already running (pid $(cat "$pidfile"))"
    echo "$url"
    return
  fi
  answers && die "something this script did not start answers on $url; stop it or choose another TOXIPROXY_PORT"
  local bin
  bin="$(fetch | tail -n1)"
  mkdir -p "$state"
  setsid "$bin" -host 127.0.0.1 -port "$port" >"$state/server.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if answers; then
      log "ready on $url (pid $(cat "$pidfile"))"
      echo "$url"
      return
    fi
    running || { tail -n 20 "$state/server.log" >&2; die "the server exited while starting"; }
    sleep 0.1
  done
  stop
  die "the server did not answer on $url within 10 s; log in $state/server.log"
}

stop() {
  stop_ours "$pidfile" toxiproxy
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && answers; then echo "$url"; else exit 1; fi ;;
  fetch) fetch ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
