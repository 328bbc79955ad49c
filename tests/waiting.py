"""`wait_until`: poll a condition up to a deadline instead of sleeping a fixed time and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """The first truthy value of `condition()`, polled every `interval_s`; AssertionError naming
    `what` (and the last value seen) once `timeout_s` has passed without one.

    >>> wait_until(lambda: 3, 1, "a number")
    3
    >>> wait_until(lambda: 0, 0.1, "the impossible")
    Traceback (most recent call last):
    AssertionError: not within 0.1 s: the impossible (last value 0)
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what} (last value {value!r})")
        time.sleep(interval_s)


def wait_http(url: str, timeout_s: float = 60) -> None:
    """Until GET `url` answers 200 (a server started by the test is up); AssertionError after
    `timeout_s`."""
    import urllib.request

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(answers, timeout_s, f"{url} answering 200", interval_s=0.3)
