"""Process-level set-up of `fraudscore run`: signals and logging.

    sidecar = Sidecar(config)
    configure_logging("INFO")
    install_signal_handlers(sidecar)
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraudscore.serving.sidecar.loop import Sidecar


def install_signal_handlers(sidecar: "Sidecar") -> None:
    """SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 dumps every thread's stack on stderr."""
    import faulthandler

    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: for a stuck process
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGTERM, sidecar.request_stop)
    signal.signal(signal.SIGINT, sidecar.request_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, sidecar.request_reload)


def configure_logging(level: str = "INFO", worker: int | None = None) -> None:
    """Log lines on stderr; a worker of `--workers N` says which one it is."""
    who = "" if worker is None else f" [worker {worker}]"
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
