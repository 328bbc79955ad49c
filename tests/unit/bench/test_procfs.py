"""The bench's /proc readers against fixture files (tests/fixtures/proc: three processes under
pid 1, one of them a "broker" listening on port 9092, and /proc/net/tcp{,6}), and once against the
real /proc of this process. Broker-free."""

from __future__ import annotations

import os
import time
from project import FIXTURES

from fraudscore.bench import procfs
from fraudscore.bench.cpu import process_tree
from fraudscore.bench.soak import cpu_seconds, rss_mb

FIXTURE = FIXTURES / "proc"
TICKS = procfs.TICKS


def test_stat_counts_fields_from_the_last_parenthesis_of_the_command_name() -> None:
    # pid 100's command name is "python3 (fraudscore) run": spaces and parentheses inside it
    st = procfs.stat(100, FIXTURE)
    assert st == procfs.ProcStat(ppid=1, start_ticks=1000, cpu_s=300 / TICKS, children_cpu_s=50 / TICKS)
    assert procfs.stat(999, FIXTURE) is None  # gone
    assert sorted(procfs.pids(FIXTURE)) == [1, 100, 101, 200]
    assert procfs.pids(FIXTURE / "absent") == []


def test_the_process_tree_and_its_cpu_and_memory() -> None:
    assert sorted(process_tree(100, FIXTURE)) == [100, 101]
    assert sorted(process_tree(1, FIXTURE)) == [1, 100, 101, 200]
    # utime + stime + cutime + cstime: (250 + 50 + 30 + 20) + (100 + 100) ticks
    assert cpu_seconds([100, 101, 999], FIXTURE) == (350 + 200) / TICKS
    assert rss_mb([100, 101, 999], FIXTURE) == (200_000 + 100_000) * 1024 / 1e6
    assert procfs.status_kb(100, "VmHWM", FIXTURE) == 250_000
    assert procfs.status_kb(100, "VmSwap", FIXTURE) is None and procfs.status_kb(999, "VmRSS", FIXTURE) is None


def test_sockets_listening_on_a_port_and_who_holds_them() -> None:
    # 0x2384 = 9092: the LISTEN (0A) lines of tcp and tcp6, not the established connection
    assert procfs.listening_inodes(9092, FIXTURE) == {"77001", "77004"}
    assert procfs.listening_inodes(8080, FIXTURE) == {"77003"}
    assert procfs.listening_inodes(9999, FIXTURE) == set()
    assert procfs.socket_inodes(100, FIXTURE) == {"77001"}  # fd 3; fds 0 and 1 are not sockets
    assert procfs.socket_inodes(200, FIXTURE) == set()
    assert b"kafka.Kafka" in procfs.command_line(200, FIXTURE) and procfs.command_line(999, FIXTURE) == []


def test_the_real_proc_of_this_process() -> None:
    before = procfs.stat(os.getpid())
    assert before is not None and before.ppid == os.getppid()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn 0.3 s of CPU
        pass
    after = procfs.stat(os.getpid())
    assert after.start_ticks == before.start_ticks
    assert after.cpu_s - before.cpu_s >= 0.2, (before, after)
    assert os.getpid() in process_tree(os.getppid())
    assert rss_mb([os.getpid()]) > 10
