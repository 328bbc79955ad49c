"""Process-level set-up of `fraudscore run`: signals, the bound on stopping, and logging.

    sidecar = Sidecar(config)
    configure_logging("INFO")
    install_signal_handlers(sidecar)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from fraudscore.serving.sidecar.loop import Sidecar


OVERDUE_EXIT = 4  # the stop did not finish: past its bound (StopBound), or outputs left unacknowledged (Sidecar.run)
GRACE_S = 2.0  # past --drain-timeout, for the log lines and the consumer's goodbye


class Stop:
    """A stop of the sidecar: whether it was asked, by when it must be done (--drain-timeout
    from the first signal's arrival), what it is doing (`stage`, for StopBound's report) and
    what it left undone (`unfinished`: the process then exits OVERDUE_EXIT).

    >>> stop = Stop(30.0, clock=lambda: 100.0)
    >>> stop.budget()                # not asked: the whole --drain-timeout
    30.0
    >>> stop.signalled(at=95.0)      # StopBound's thread: the signal arrived 5 s ago
    >>> stop.ask(), stop.ask()       # the handler; only the first ask counts
    (True, False)
    >>> stop.budget()
    25.0
    """

    def __init__(self, drain_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.asked = False
        self.deadline: float | None = None  # clock() by which the stop must be done
        self.stage = "starting"
        self.unfinished: list[str] = []

    def ask(self) -> bool:
        """The stop is asked (SIGTERM/SIGINT, or an error); True the first time."""
        if self.asked:
            return False
        self.asked = True
        self.bound()
        return True

    def bound(self) -> None:
        """The deadline from now, unless a signal set it already."""
        if self.deadline is None:
            self.deadline = self.clock() + self.drain_timeout_s

    def signalled(self, at: float) -> None:
        """StopBound's thread: the first stop signal arrived at `at`; the budget counts from
        then, even while the main thread has not run the handler yet."""
        deadline = at + self.drain_timeout_s
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline

    def budget(self) -> float:
        """Seconds left of --drain-timeout since the stop was asked (all of it before)."""
        if self.deadline is None:
            return self.drain_timeout_s
        return max(0.0, self.deadline - self.clock())


def install_signal_handlers(sidecar: "Sidecar") -> None:
    """SIGTERM/SIGINT stop (within --drain-timeout + GRACE_S: StopBound), SIGHUP reloads,
    SIGUSR1 dumps every thread's stack on stderr."""
    import faulthandler

    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: for a stuck process
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    # The bound first: a signal that arrives as the handlers go in is bounded too.
    StopBound(sidecar.config.drain_timeout_s + GRACE_S, sidecar.stop_report, sidecar.stop_signalled).start()
    signal.signal(signal.SIGTERM, sidecar.request_stop)
    signal.signal(signal.SIGINT, sidecar.request_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, sidecar.request_reload)


class StopBound:
    """From the first SIGTERM/SIGINT, the process ends within `bound_s`, whatever its main thread
    is blocked in: a synchronous commit waiting for a coordinator that is gone, a consumer close
    queued behind a JoinGroup, a flush to a broker that stopped.

    Python runs signal handlers only between the main thread's bytecodes, so a handler cannot
    notice a signal while the main thread is inside librdkafka. The C-level handler does write
    the signal's number to the wake-up fd at once (signal.set_wakeup_fd); a daemon thread reads
    it and, if the process is still alive `bound_s` later, logs the main thread's stack and
    `report()` (what the stop had not finished) and exits OVERDUE_EXIT. Nothing is lost that
    way: offsets are only ever committed for acknowledged outputs, so whatever was left is
    read again by the partitions' next owner (duplicates, at least once; an open Kafka
    transaction is aborted by the broker).

        StopBound(32.0, sidecar.stop_report).start()   # after the signal handlers are set
    """

    STOPS = {int(signal.SIGTERM), int(signal.SIGINT)}

    def __init__(self, bound_s: float, report: Callable[[], str], signalled: Callable[[float], None] = lambda _: None):
        self.bound_s = bound_s
        self.report = report
        self.signalled = signalled  # told the monotonic time of the first stop signal, as it arrives

    def start(self) -> None:
        read, write = os.pipe()
        os.set_blocking(write, False)  # the C handler must never block on it
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), name="stop-bound", daemon=True).start()

    def _watch(self, fd: int) -> None:
        import faulthandler

        while True:
            data = os.read(fd, 64)
            if not data:
                return  # the pipe closed: no signal can come any more
            if any(b in self.STOPS for b in data):
                break
        at = time.monotonic()
        self.signalled(at)  # the stop's budget counts from here, not from when Python runs the handler
        # A backstop that needs neither the GIL nor a lock: if even this thread cannot finish
        # its report (a log handler's lock held by a blocked writer), faulthandler's own C
        # thread dumps every stack and ends the process (exit 1) a little later.
        faulthandler.dump_traceback_later(self.bound_s + 3.0, exit=True)
        time.sleep(max(0.0, at + self.bound_s - time.monotonic()))
        self.overdue()

    def overdue(self) -> None:
        """Log why the stop is late and end the process (exit OVERDUE_EXIT)."""
        main = sys._current_frames().get(threading.main_thread().ident)
        where = "".join(traceback.format_stack(main)[-6:]) if main is not None else "(main thread gone)\n"
        try:
            left = self.report()
        except Exception as exc:  # the state it reads may be mid-change: the exit matters more
            left = f"(not known: {exc})"
        message = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {__name__}: the stop took longer than its "
                   f"bound ({self.bound_s:g} s: --drain-timeout + {GRACE_S:g} s); exiting {OVERDUE_EXIT}. Left: {left}. "
                   f"Nothing unacknowledged was committed: the partitions' next owner reads it again. "
                   f"The main thread was in:\n{where}")
        for handler in logging.getLogger().handlers:
            # Not handler.flush(): it takes the handler's lock, which a thread blocked writing may hold.
            stream = getattr(handler, "stream", None)
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        os.write(2, message.encode("utf-8", "replace"))
        os._exit(OVERDUE_EXIT)


def configure_logging(level: str = "INFO", worker: int | None = None) -> None:
    """Log lines on stderr; a worker of `--workers N` says which one it is."""
    who = "" if worker is None else f" [worker {worker}]"
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
