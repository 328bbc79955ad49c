"""The Kafka bench's process accounting on real processes: the CPU meter counts every process
under the sidecar, and the broker is found as the process listening on the bootstrap port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from fraudscore.bench.cpu import CpuMeter, broker_pid, per_1000, process_tree


# A child that starts a grandchild; the grandchild burns CPU, then writes what getrusage says it
# used and waits to be killed: the meter must see it through the child it sits under.
FAMILY = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", '''
import resource, sys, time
x = 0
for i in range(8_000_000):
    x += i
u = resource.getrusage(resource.RUSAGE_SELF)
print(u.ru_utime + u.ru_stime, flush=True)
time.sleep(60)
'''], stdout=sys.stdout)
grandchild.wait()
"""


def test_the_cpu_meter_counts_the_processes_under_the_sidecar() -> None:
    child = subprocess.Popen([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True)
    try:
        meter = CpuMeter(child.pid, None, interval_s=0.05)
        own = float(child.stdout.readline())  # the grandchild's own count, once it is done burning
        used = meter.stop()
    finally:
        for pid in reversed(process_tree(child.pid)):  # the grandchild first, then the child
            os.kill(pid, signal.SIGKILL)
        child.wait(10)
    # Ticks are 10 ms; what the grandchild used after the meter's start is at most `own`,
    # and everything but its interpreter's start-up, which came before the meter could see it.
    assert used["cpu_s"]["sidecar"] >= own - 0.3 > 0
    assert used["cpu_s"]["broker"] is None and used["cpu_s"]["bench_process"] >= 0 and used["wall_s"] > 0
    figures = per_1000([used, used], 2000)
    assert figures["cpu_ms_per_1000_tx"]["sidecar"] == pytest.approx(2 * used["cpu_s"]["sidecar"] * 1e6 / 2000)
    assert figures["cpu_ms_per_1000_tx"]["broker"] is None


def test_the_broker_is_the_process_listening_on_the_bootstrap_port() -> None:
    listen = ("import socket, sys, time\n"
              "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
              "print(s.getsockname()[1], flush=True); time.sleep(60)")
    listener = subprocess.Popen([sys.executable, "-c", listen],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        assert broker_pid(f"127.0.0.1:{port}") == (listener.pid, f"the process listening on port {port}")
        assert broker_pid(f"localhost:{port},other:9092")[0] == listener.pid
    finally:
        listener.kill()
        listener.wait(10)
    pid, note = broker_pid("broker.example.invalid:9092")
    assert pid is None and "not this host" in note
