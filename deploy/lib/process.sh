# Sourced by deploy/*/local.sh: process checks the local servers share.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib/process.sh"
#   ours "$pidfile" mlflow     # exit 0 if the pid file's process is alive and runs an mlflow command

# The process in PIDFILE is alive and its command line contains NAME (not a pid reused by
# another program after ours exited).
ours() {
  local pidfile="$1" name="$2" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$name"
}

# Stop our process of PIDFILE (NAME as for `ours`): SIGTERM, SIGKILL after 10 s, the pid file
# removed; SCOPE "group" signals its whole process group (a server whose workers are its
# children). Says what it did through the caller's `log`.
stop_ours() {
  local pidfile="$1" name="$2" scope="${3:-process}" pid target
  if ! ours "$pidfile" "$name"; then
    log "not running"
    rm -f "$pidfile"
    return
  fi
  pid="$(cat "$pidfile")"
  target="$pid"
  [[ "$scope" == group ]] && target="-$pid"
  kill -TERM -- "$target" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL -- "$target" 2>/dev/null || true
  rm -f "$pidfile"
  log "stopped (pid $pid)"
}
