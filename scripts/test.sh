#!/usr/bin/env bash
# The test suite as `make test` and CI run it: pytest on two pytest-xdist workers. Each worker
# starts its own Kafka broker (tests/conftest.py, deploy/kafka/local.sh on free ports) unless
# FRAUDSCORE_TEST_BOOTSTRAP names one, and its own second broker for the security and
# broker-restart tests. Most Kafka tests wait, on the broker, on session timeouts and on
# sidecars starting, so two workers finish in about 17 minutes what one does in about 29 on
# 2 cores.
#
#   scripts/test.sh [pytest arguments]
#   FRAUDSCORE_TEST_WORKERS=1       one process (pytest's own order, no xdist)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
workers="${FRAUDSCORE_TEST_WORKERS:-2}"
if [ "$workers" = 1 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" "$@"
