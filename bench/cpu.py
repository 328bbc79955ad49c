"""CPU seconds of the processes of a Kafka bench run, from /proc: the sidecar with every process
under it (`fraudscore run --workers N` starts N workers), the broker, and the bench itself.

    meter = CpuMeter(sidecar_pid=proc.pid, broker_pid=broker_pid("127.0.0.1:9092")[0])
    ...                                   # the measured run
    used = meter.stop()                   # {"cpu_s": {"sidecar": .., "broker": .., "bench_process": ..}, "wall_s": ..}

Linux only (/proc); elsewhere the sidecar's and the broker's figures are None.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from pathlib import Path

from . import procfs

def process_tree(root: int, proc: Path = procfs.PROC) -> list[int]:
    """`root` and every process descended from it, alive now."""
    children: dict[int, list[int]] = {}
    for pid in procfs.pids(proc):
        st = procfs.stat(pid, proc)
        if st is not None:
            children.setdefault(st.ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


class TreeCpu:
    """CPU seconds a process (and, with `descendants`, every process under it) has used since
    this object was made. Processes are told apart by pid and start time, so a reused pid is
    not mistaken for an old one; one that starts later counts from zero. A process that exits
    between two `sample()` calls loses what it used since the last one (sample often)."""

    def __init__(self, root: int, descendants: bool = True) -> None:
        self.root, self.descendants = root, descendants
        self.base: dict[tuple[int, int], float] = {}
        self.last: dict[tuple[int, int], float] = {}
        self.sample(baseline=True)

    def sample(self, baseline: bool = False) -> None:
        for pid in process_tree(self.root) if self.descendants else [self.root]:
            st = procfs.stat(pid)
            if st is None:
                continue
            key = (pid, st.start_ticks)
            if baseline:
                self.base[key] = st.cpu_s
            self.last[key] = st.cpu_s

    def seconds(self) -> float:
        return sum(cpu - self.base.get(key, 0.0) for key, cpu in self.last.items())


def broker_pid(bootstrap: str) -> tuple[int | None, str]:
    """The pid of the broker behind `bootstrap`'s first address, if it runs on this host, and how
    it was found (or why not): the process holding the socket that listens on the port, else the
    only java process on this host whose command line names kafka.Kafka."""
    host, _, port_text = bootstrap.split(",")[0].strip().rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        return None, f"broker address {bootstrap!r} has no port"
    if not _local(host):
        return None, f"broker {host} is not this host: its CPU is not measured"
    inodes = procfs.listening_inodes(port)
    for pid in procfs.pids():
        if procfs.socket_inodes(pid) & inodes:
            return pid, f"the process listening on port {port}"
    kafkas = []
    for pid in procfs.pids():
        cmdline = procfs.command_line(pid)
        if b"kafka.Kafka" in cmdline and Path(cmdline[0].decode(errors="replace")).name == "java":
            kafkas.append(pid)
    if len(kafkas) == 1:
        return kafkas[0], "the only kafka.Kafka java process on this host"
    return None, (f"no process of this user listens on port {port}" if not kafkas else
                  f"nothing of this user listens on port {port} and {len(kafkas)} kafka.Kafka processes run")


def _local(host: str) -> bool:
    if host in ("", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::") or host.startswith("127."):
        return True
    try:
        mine = {socket.gethostname(), socket.getfqdn()}
        return host in mine or socket.gethostbyname(host) in {socket.gethostbyname(h) for h in mine} | {"127.0.0.1"}
    except OSError:
        return False


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: load generator, readers, librdkafka's
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of the sidecar (its process tree, sampled every `interval_s` from a thread),
    the broker and this process, from now until `stop()`."""

    def __init__(self, sidecar_pid: int | None, broker_pid: int | None, interval_s: float = 0.25) -> None:
        self.started = time.monotonic()
        self.own = _own_cpu()
        self.sidecar = TreeCpu(sidecar_pid) if sidecar_pid else None
        self.broker = TreeCpu(broker_pid, descendants=False) if broker_pid else None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self.thread.start()

    def _run(self, interval_s: float) -> None:
        while not self.done.wait(interval_s):
            if self.sidecar:
                self.sidecar.sample()

    def stop(self) -> dict:
        """{"cpu_s": {"sidecar", "broker", "bench_process"}, "wall_s"}; call it before stopping the sidecar."""
        self.done.set()
        self.thread.join()
        for tree in (self.sidecar, self.broker):
            if tree:
                tree.sample()
        return {"cpu_s": {"sidecar": self.sidecar.seconds() if self.sidecar else None,
                          "broker": self.broker.seconds() if self.broker else None,
                          "bench_process": _own_cpu() - self.own},
                "wall_s": time.monotonic() - self.started}


def per_1000(used: list[dict], messages: int) -> dict:
    """Sum `used` (CpuMeter.stop() of each repeat) into {"cpu_s", "wall_s", "cpu_ms_per_1000_tx"}
    for `messages` transactions in all (a process measured in no repeat is None)."""
    cpu: dict[str, float | None] = {}
    for role in ("sidecar", "broker", "bench_process"):
        values = [u["cpu_s"][role] for u in used]
        cpu[role] = None if not values or any(v is None for v in values) else sum(values)
    return {"cpu_s": cpu, "wall_s": sum(u["wall_s"] for u in used),
            "cpu_ms_per_1000_tx": {role: (None if v is None or not messages else v * 1e6 / messages)
                                   for role, v in cpu.items()}}
