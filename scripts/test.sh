#!/usr/bin/env bash
# The test suite as `make test` and CI run it: pytest on two pytest-xdist workers, both against
# one throw-away Kafka broker started here (deploy/kafka/local.sh, free ports, 1 GiB heap) and
# removed at exit. Most Kafka tests wait on the broker, on session timeouts and on sidecars
# starting, so two workers finish in about 17 minutes what one does in about 29 on 2 cores.
#
#   scripts/test.sh [pytest arguments]
#   FRAUDSCORE_TEST_WORKERS=1       one worker (pytest's own order, no xdist)
#   FRAUDSCORE_TEST_BOOTSTRAP=h:p   a broker you run instead of the throw-away one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=.venv/bin/python
if [ -z "${FRAUDSCORE_TEST_BOOTSTRAP:-}" ]; then
  export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
  source scripts/throwaway-broker.sh
  export FRAUDSCORE_TEST_BOOTSTRAP="$bootstrap"
fi
workers="${FRAUDSCORE_TEST_WORKERS:-2}"
if [ "$workers" = 1 ]; then
  "$py" -m pytest "$@"
else
  "$py" -m pytest -n "$workers" "$@"
fi
