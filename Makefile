# Two entry points for a newcomer; both install what they need first (scripts/setup.sh).
.PHONY: setup test demo image kafka-start kafka-stop clean

setup:
	scripts/setup.sh

# The whole path end to end on this machine (scripts/demo.sh): Kafka, Prometheus,
# simulate -> features -> train -> export -> sidecar -> stream -> summary. demo.sh runs
# scripts/setup.sh itself, so the target does not depend on `setup` (it would run twice).
demo:
	scripts/demo.sh

# The test suite on two workers, each with its own Kafka broker (scripts/test.sh).
test: setup
	scripts/test.sh

# The runtime image, built offline with podman (docs/containers.md); set-up installs podman,
# runc and debootstrap for it. BASE_IMAGE=python:3.11-slim builds on a registry image instead.
image:
	FRAUDSCORE_CONTAINERS=1 scripts/setup.sh
	deploy/docker/build-runtime.sh

kafka-start: setup
	deploy/kafka/local.sh start

kafka-stop:
	deploy/kafka/local.sh stop

# What the demo and `make kafka-start` leave behind: the demo's work directory (data, bundle,
# its broker's and Prometheus' data) and the default broker's state, their brokers stopped
# first. .venv and the Kafka jars stay (set-up would fetch them again).
DEMO_DIR ?= $(or $(TMPDIR),/tmp)/fraudscore-demo
clean:
	KAFKA_PORT=19092 KAFKA_STATE_DIR="$(DEMO_DIR)/kafka" deploy/kafka/local.sh stop
	deploy/kafka/local.sh stop
	rm -rf "$(DEMO_DIR)" "$(or $(TMPDIR),/tmp)/fraudscore-kafka-$(or $(KAFKA_PORT),9092)"
