"""Progress for long commands: a bar on an interactive terminal, silence in pipes and CI;
for commands that run for minutes (training), plain lines at a bounded rate when the
output is not a terminal (`Throttle`), so CI logs and nohup files show the job is alive."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType


def progress_wanted() -> bool:
    """True when stderr is a terminal and the CI variable is unset or false."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        return False
    return sys.stderr.isatty()


class Progress:
    """Counts named stages of a job. Draws with rich only when enabled; otherwise does nothing.

    Used as a context manager: `with Progress("simulate", total=5) as p: p.step("terminals")`.
    """

    def __init__(self, label: str, total: int, enabled: bool | None = None):
        self.label = label
        self.total = total
        self.enabled = progress_wanted() if enabled is None else enabled
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def step(self, stage: str) -> None:
        """Mark one stage done and name the next one."""
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self.label}: {stage}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


class Throttle:
    """Says whether a progress line is due: always with `every_s` 0, else at most once per
    `every_s` seconds, and whenever the caller forces it (the first and last line of a stage).

        throttle = Throttle(10.0)
        if throttle.due(force=last_epoch):
            say(f"epoch {epoch} ...")
    """

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self._last: float | None = None

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or self.every_s <= 0 or self._last is None or now - self._last >= self.every_s:
            self._last = now
            return True
        return False
