# Two entry points for a newcomer; both install what they need first (scripts/setup.sh).
.PHONY: setup test demo kafka-start kafka-stop

setup:
	scripts/setup.sh

# The whole path end to end on this machine (scripts/demo.sh): Kafka, Prometheus,
# simulate -> features -> train -> export -> sidecar -> stream -> summary.
demo: setup
	scripts/demo.sh

# The test suite starts its own Kafka broker (deploy/kafka/local.sh) on free ports.
test: setup
	.venv/bin/python -m pytest

kafka-start: setup
	deploy/kafka/local.sh start

kafka-stop:
	deploy/kafka/local.sh stop
