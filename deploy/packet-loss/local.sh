#!/usr/bin/env bash
# Packet loss on local TCP ports, for the network fault tests (tests/kafka/test_network_faults.py):
# iptables' `statistic` match drops a random share of the packets to and from a port, in both
# directions, below TCP, so the kernel's retransmissions (200 ms and more on Linux) are what the
# client sees, as on a lossy network. `tc qdisc ... netem loss` does the same with a queueing
# discipline, but needs the sch_netem module, which kernels built without modules (this VM's
# among them: "Specified qdisc kind is unknown") lack; the statistic match is part of netfilter.
#
#   deploy/packet-loss/local.sh add PORT PERCENT   drop PERCENT % of the packets to and from PORT
#   deploy/packet-loss/local.sh clear              remove every rule this script added
#   deploy/packet-loss/local.sh status             list the rules; exit 1 when it cannot work here
#
# Needs iptables (Debian package iptables; scripts/setup.sh installs it in CI) and root or
# CAP_NET_ADMIN. The rules live in a chain of their own, FRAUDSCORE-LOSS, jumped to from INPUT
# (on loopback every packet, either way, passes INPUT once): `clear` deletes the chain and the
# jump and touches no other rule.
set -euo pipefail

chain=FRAUDSCORE-LOSS

log() { echo "packet-loss: $*" >&2; }
die() { log "error: $*"; exit 1; }

iptables_bin() {
  local bin
  bin="$(command -v iptables || echo /usr/sbin/iptables)"
  [[ -x "$bin" ]] || die "iptables is missing: apt-get install iptables (scripts/setup.sh does in CI)"
  echo "$bin"
}

ipt() {
  "$(iptables_bin)" -w 5 "$@"
}

ensure_chain() {
  ipt -n -L "$chain" >/dev/null 2>&1 || ipt -N "$chain"
  ipt -C INPUT -j "$chain" 2>/dev/null || ipt -I INPUT 1 -j "$chain"
}

clear_rules() {
  if ipt -n -L "$chain" >/dev/null 2>&1; then
    while ipt -D INPUT -j "$chain" 2>/dev/null; do :; done
    ipt -F "$chain"
    ipt -X "$chain"
  fi
}

case "${1:-}" in
  add)
    port="${2:?usage: add PORT PERCENT}"
    percent="${3:?usage: add PORT PERCENT}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    probability="$(python3 -c 'import sys; p = float(sys.argv[1]); assert 0 < p < 100; print(p / 100)' "$percent" 2>/dev/null)" \
      || die "PERCENT must be a number between 0 and 100 (exclusive), got '$percent'"
    ensure_chain
    for way in --dport --sport; do
      ipt -A "$chain" -p tcp "$way" "$port" -m statistic --mode random --probability "$probability" -j DROP
    done
    log "dropping $percent % of the packets to and from port $port"
    ;;
  clear)
    clear_rules
    ;;
  status)
    iptables_bin >/dev/null  # says so when iptables is missing
    # Works here only if a rule with the statistic match can be added: try one in a scratch chain.
    probe="$chain-PROBE"
    if ! out="$(ipt -N "$probe" 2>&1)" && ! ipt -F "$probe" 2>/dev/null; then
      die "cannot make an iptables chain here (root or CAP_NET_ADMIN is needed): $out"
    fi
    if ! out="$(ipt -A "$probe" -p tcp --dport 9 -m statistic --mode random --probability 0.5 -j DROP 2>&1)"; then
      ipt -X "$probe" 2>/dev/null || true
      die "cannot add an iptables rule here (root or CAP_NET_ADMIN, and netfilter's statistic match, are needed): $out"
    fi
    ipt -F "$probe"
    ipt -X "$probe"
    ipt -n -L "$chain" 2>/dev/null || echo "no packet loss set"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac
