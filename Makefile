# Two entry points for a newcomer; both install what they need first (scripts/setup.sh).
.PHONY: setup test demo image kafka-start kafka-stop

setup:
	scripts/setup.sh

# The whole path end to end on this machine (scripts/demo.sh): Kafka, Prometheus,
# simulate -> features -> train -> export -> sidecar -> stream -> summary. demo.sh runs
# scripts/setup.sh itself, so the target does not depend on `setup` (it would run twice).
demo:
	scripts/demo.sh

# The test suite starts its own Kafka broker (deploy/kafka/local.sh) on free ports.
test: setup
	.venv/bin/python -m pytest

# The runtime image, built offline with podman (docs/containers.md); set-up installs podman,
# runc and debootstrap for it. BASE_IMAGE=python:3.11-slim builds on a registry image instead.
image:
	FRAUDSCORE_CONTAINERS=1 scripts/setup.sh
	deploy/docker/build-runtime.sh

kafka-start: setup
	deploy/kafka/local.sh start

kafka-stop:
	deploy/kafka/local.sh stop
