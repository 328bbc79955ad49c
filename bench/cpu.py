"""CPU seconds of the processes of a Kafka bench run, from /proc: the sidecar with every process
under it (`fraudscore run --workers N` starts N workers), the broker, and the bench itself.

    meter = CpuMeter(sidecar_pid=proc.pid, broker_pid=broker_pid("127.0.0.1:9092")[0])
    ...                                   # the measured run
    used = meter.stop()                   # {"cpu_s": {"sidecar": .., "broker": .., "bench_process": ..}, "wall_s": ..}

Linux only (/proc); elsewhere the sidecar's and the broker's figures are None.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, start time in ticks, user + system CPU seconds) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / TICKS


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it, alive now."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[0], []).append(pid)
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
            st = _stat(pid)
            if st is None:
                continue
            key = (pid, st[1])
            if baseline:
                self.base[key] = st[2]
            self.last[key] = st[2]

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
    inodes = _listening_inodes(port)
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid, f"the process listening on port {port}"
    kafkas = []
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
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


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


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
