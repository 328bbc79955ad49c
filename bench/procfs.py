"""Readers of Linux's /proc for the bench's CPU and memory figures, each taking the proc root as a
parameter (as prometheus_client's ProcessCollector does) so that tests read fixture files.

Every reader treats a process that has gone, or a file it may not read, as absent (None, 0 or
empty), never as an error: the processes measured start and stop under the bench's feet.

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "42").mkdir()
    >>> _ = (root / "42" / "stat").write_text("42 (a (b) c) S 7 " + "0 " * 9 + "300 200 50 25 " + "0 " * 4 + "9000 rest")
    >>> stat(42, root)
    ProcStat(ppid=7, start_ticks=9000, cpu_s=5.0, children_cpu_s=0.75)
    >>> stat(43, root) is None
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks a second, the unit of /proc/PID/stat's CPU fields (100 on Linux)."""


class ProcStat(NamedTuple):
    """What the bench reads from /proc/PID/stat."""

    ppid: int
    start_ticks: int
    """Start time after boot, in ticks: with the pid, tells a process from a later one given its pid."""
    cpu_s: float
    """utime + stime, seconds: the CPU this process has used."""
    children_cpu_s: float
    """cutime + cstime, seconds: the CPU of its children it has waited for."""


def stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """/proc/PID/stat of a live process, or None. The command name (field 2) may hold spaces
    and parentheses: the fields are counted from the last ")"."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return ProcStat(int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / TICKS,
                    (int(fields[13]) + int(fields[14])) / TICKS)


def pids(proc: Path = PROC) -> list[int]:
    """Every process id under `proc` (empty where there is no /proc)."""
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def status_kb(pid: int, field: str, proc: Path = PROC) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...), or None when the process or field is absent."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def socket_inodes(pid: int, proc: Path = PROC) -> set[str]:
    """Inodes of the sockets a process holds open (its /proc/PID/fd links "socket:[INODE]")."""
    found = set()
    try:
        fds = os.listdir(proc / str(pid) / "fd")
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(proc / str(pid) / "fd" / fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(link[8:-1])
    return found


def listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def command_line(pid: int, proc: Path = PROC) -> list[bytes]:
    """A process's arguments (/proc/PID/cmdline), empty when it has gone."""
    try:
        return (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
