#!/usr/bin/env bash
# Flame graphs of the sidecar loop under load (docs/performance.md, "Where the time goes"):
# starts a throw-away Kafka broker (deploy/kafka/local.sh: a free port, its own state directory,
# stopped on exit), then `python -m fraudscore.bench.profile` with the arguments given here, e.g.
#
#   scripts/profile-sidecar.sh --bundle out/ci-bundle --rate 10000 --seconds 30 --out out/profile
#   scripts/profile-sidecar.sh --bundle out/ci-bundle --drain 600000 --seconds 15 --out out/profile-drain
#
# Needs py-spy (in the dev extra) and ptrace rights (root, or CAP_SYS_PTRACE). Installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=.venv/bin/python
[[ -x .venv/bin/py-spy ]] || { echo "profile-sidecar: .venv/bin/py-spy missing; pip install -e '.[dev]'" >&2; exit 2; }
source scripts/throwaway-broker.sh
"$py" -m fraudscore.bench.profile --bootstrap-servers "$bootstrap" "$@"
