#!/usr/bin/env bash
# The test suite as `make test` and CI run it: pytest on two pytest-xdist workers. Each worker
# starts its own Kafka broker (tests/conftest.py, deploy/kafka/local.sh on free ports) unless
# FRAUDSCORE_TEST_BOOTSTRAP names one, and its own second broker (with a Toxiproxy in front of
# one of its listeners) for the security, stop-bound, broker-restart and network-fault tests;
# the coordinator test starts a two-broker cluster of its own.
# Most Kafka tests wait, on the broker, on session timeouts and on sidecars starting, so two
# workers finish in about 20 minutes on 2 cores (29 minutes on one worker when the suite was
# smaller). --dist worksteal: a worker that runs out of tests takes half of the other's queue;
# with the default (load) scheduling the tests under tests/kafka/, long and in one run of the
# collection order, stayed queued on one worker while the other idled: 27 min 48 s instead.
#
#   scripts/test.sh [pytest arguments]
#   scripts/test.sh -m 'not faults'  without the long fault-injection runs (CI runs them)
#   FRAUDSCORE_TEST_WORKERS=1       one process (pytest's own order, no xdist)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
workers="${FRAUDSCORE_TEST_WORKERS:-2}"
if [ "$workers" = 1 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
