"""The stop's bound itself (process.StopBound), on a process blocked where no signal handler
runs: from the first SIGTERM/SIGINT it ends the process with exit 4 and says where it was;
no other signal starts it. The bound with a real broker going away:
tests/kafka/test_stop_bound_broker.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


BLOCKED = """
import signal, sys, time
from fraudscore.serving.sidecar.process import StopBound
seen = []
signal.signal(signal.SIGTERM, lambda *_: seen.append(1))
StopBound(1.0, lambda: "the report says what was left").start()
print("ready", flush=True)
def blocked_in_a_client_call():
    while True:  # a handler that sets a flag nobody reads again: the main thread never gets out
        time.sleep(0.05)
blocked_in_a_client_call()
"""


def test_a_stop_that_cannot_finish_ends_with_exit_4_and_says_where_it_was() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # a second signal neither restarts nor shortens the bound
        code = proc.wait(10)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert code == 4, err
    assert 0.9 <= took < 5, took
    assert "the stop took longer than its bound" in err and "the report says what was left" in err, err
    assert "in blocked_in_a_client_call" in err, err  # the main thread's stack


def test_no_signal_no_exit() -> None:
    """The bound starts at the first SIGTERM/SIGINT, not before; other signals do not start it."""
    script = BLOCKED.replace("StopBound(", "signal.signal(signal.SIGHUP, lambda *_: None)\nStopBound(").replace(
        "    while True:", "    end = time.monotonic() + 2.5\n    while time.monotonic() < end:")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(10) == 0, proc.stderr.read()


