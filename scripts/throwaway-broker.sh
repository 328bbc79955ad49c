# Sourced by scripts that need a broker of their own (ci-bench.sh, profile-sidecar.sh):
# starts a fresh single-node Kafka (deploy/kafka/local.sh) on free ports with its own state
# directory, stops and removes it when the script exits, and sets $bootstrap.
#
#   source scripts/throwaway-broker.sh      # needs $py (a Python) and the repository root as cwd
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
KAFKA_STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fraudscore-kafka.XXXXXX")"
KAFKA_PORT="$(free_port)"
KAFKA_CONTROLLER_PORT="$(free_port)"
export KAFKA_STATE_DIR KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_FRESH=1
stop_broker() { deploy/kafka/local.sh stop >/dev/null 2>&1 || true; rm -rf "$KAFKA_STATE_DIR"; }
trap stop_broker EXIT
bootstrap="$(deploy/kafka/local.sh start | tail -n 1)"
