"""The runtime image, built and run as a payment team deploys it: deploy/docker/build-runtime.sh
builds deploy/docker/Dockerfile.runtime offline (debootstrap base, wheelhouse from this host),
the container scores transactions from the session's broker over host networking, answers
/healthz, /readyz and its own HEALTHCHECK, and stops on SIGTERM with exit 0 and every input
offset committed. Image size and start-up time go to the log and to the JUnit properties.

Rootful podman (Debian's, with runc and explicit ulimits: docs/containers.md). Skipped where
podman is not installed, except in CI, which must run it (scripts/setup.sh installs podman
when CI=true or FRAUDSCORE_CONTAINERS=1).

    pytest -m container -s      # this test only, with its figures printed
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from kafka_helpers import ROOT, client, drain, free_port, http_get, produce, transaction_ids
from waiting import wait_until

pytestmark = pytest.mark.container

PODMAN = shutil.which("podman")
# The settings docs/containers.md explains, given per command so that no file in /etc changes.
ENGINE = [PODMAN or "podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
TAG = "localhost/fraudscore:test"
SIZE_GOAL_BYTES = 400_000_000


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run `podman --runtime runc ARGS`; fail the test with its output when `check` and it fails."""
    done = subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def runtime_image() -> tuple[str, float]:
    """(tag, seconds the build took) of the runtime image, built by deploy/docker/build-runtime.sh
    (its cached base image and wheelhouse make a rebuild quick)."""
    if PODMAN is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the container test, but podman is not installed; scripts/setup.sh installs it with CI=true")
        pytest.skip("podman is not installed; FRAUDSCORE_CONTAINERS=1 scripts/setup.sh installs it (with runc and debootstrap)")
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the container test, which needs rootful podman: run .ci/run as root")
        pytest.skip("the container test runs rootful podman (what docs/containers.md proves): run it as root")
    t0 = time.monotonic()
    built = subprocess.run([str(ROOT / "deploy" / "docker" / "build-runtime.sh"), TAG], capture_output=True,
                           text=True, timeout=900, cwd=ROOT)
    assert built.returncode == 0, f"build-runtime.sh failed:\n{built.stderr[-4000:]}"
    assert built.stdout.strip().splitlines()[-1] == TAG
    seconds = time.monotonic() - t0
    print(f"\nruntime image: built in {seconds:.0f} s\n{built.stderr.strip()}")
    return TAG, seconds


@pytest.mark.timeout(900)
def test_runtime_image_scores_transactions_from_kafka(runtime_image, kafka_bootstrap, small_bundle, transactions,
                                                      topics, record_property) -> None:
    image, build_s = runtime_image
    record_property("image_build_s", round(build_s))
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"runtime image: {size / 1e6:.0f} MB")
    record_property("image_size_mb", round(size / 1e6))
    assert size < SIZE_GOAL_BYTES, f"the runtime image is {size / 1e6:.0f} MB; the goal is under {SIZE_GOAL_BYTES / 1e6:.0f} MB"
    # The runtime needs none of the training stack; the image must not carry it.
    probe = podman("run", "--rm", *ULIMITS, "--no-healthcheck", "--entrypoint", "python", image, "-c",
                   "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if u.find_spec(m)])")
    assert probe.stdout.strip() == "[]", probe.stdout

    keys, values = transactions
    keys, values = keys[:2000], values[:2000]
    produce(kafka_bootstrap, topics["in"], keys, values)
    group, port, name = f"g-container-{uuid.uuid4().hex[:6]}", free_port(), f"fraudscore-test-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    # The port as an environment variable, as docs/containers.md says: HEALTHCHECK reads it too.
    podman("run", "--detach", "--name", name, "--network", "host", *ULIMITS,
           "--volume", f"{small_bundle}:/bundle:ro", "--env", f"FRAUDSCORE_METRICS_PORT={port}", image,
           "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics["in"], "--output-topic", topics["out"],
           "--alerts-topic", topics["alerts"], "--dlq-topic", topics["dlq"], "--group-id", group,
           "--batch-size", "500", "--input", "features")
    try:
        ready_s = wait_ready(name, port, since=t0, timeout_s=90)
        print(f"runtime container: /readyz 200 after {ready_s:.1f} s (podman run to ready)")
        record_property("container_ready_s", round(ready_s, 1))

        scores = drain(kafka_bootstrap, [topics["out"]], len(values))
        expected = [json.loads(v)["TRANSACTION_ID"] for v in values]
        assert sorted(transaction_ids(scores)) == sorted(expected), logs(name)
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/readyz")[0] == 200
        status, metrics = http_get(port, "/metrics")
        assert status == 200 and "fraudscore_transactions_scored_total 2000.0" in metrics
        # The image's own HEALTHCHECK command, run the way the engine runs it.
        health = podman("healthcheck", "run", name, check=False)
        assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout}{health.stderr}"

        t_stop = time.monotonic()
        podman("stop", "--time", "40", name, timeout=60)  # SIGTERM (the image's STOPSIGNAL); SIGKILL only after 40 s
        stop_s = time.monotonic() - t_stop
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
        out = logs(name)
        assert code == 0, out[-3000:]
        assert stop_s < 30, f"SIGTERM took {stop_s:.0f} s"
        assert "Traceback" not in out, out[-3000:]
    finally:
        podman("rm", "--force", name, check=False)

    reader = Consumer(client(kafka_bootstrap) | {"group.id": group})
    parts = [TopicPartition(topics["in"], p) for p in range(3)]
    committed = reader.committed(parts, timeout=10)
    ends = [reader.get_watermark_offsets(p, timeout=10)[1] for p in parts]
    reader.close()
    assert [c.offset for c in committed] == ends  # a restart would re-read nothing


def wait_ready(name: str, port: int, since: float, timeout_s: float) -> float:
    """Seconds from `since` (time.monotonic()) until the container's /readyz answers 200; fails with
    its log if it exits first or time runs out."""
    def ready() -> bool:
        try:
            if http_get(port, "/readyz")[0] == 200:
                return True
        except OSError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("created", "running"):
            pytest.fail(f"the container is {state or 'gone'} before /readyz:\n{logs(name)[-3000:]}")
        return False

    try:
        wait_until(ready, max(0.0, since + timeout_s - time.monotonic()), "/readyz 200", interval_s=0.2)
    except AssertionError:
        pytest.fail(f"/readyz not 200 within {timeout_s:g} s:\n{logs(name)[-3000:]}")
    return time.monotonic() - since


def logs(name: str) -> str:
    """What the container wrote (stdout and stderr)."""
    done = podman("logs", name, check=False)
    return done.stdout + done.stderr
