"""What librdkafka's log lines become in the sidecar's log: a start-up line the broker always
produces ("Coordinator load in progress") is INFO with its reason, not a WARNING; after the
start-up window, and for every other line, the level stays what librdkafka said."""

from __future__ import annotations

import logging

from fraudscore.serving.sidecar.clients import ExpectedAtStartup

LOADING = ("GETPID [rdkafka#producer-1] [thrd:main]: Failed to acquire idempotence PID from broker "
           "127.0.0.1:9092/1: Broker: Coordinator load in progress: retrying")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(text: str, level: int = logging.WARNING, name: str = "fraudscore.kafka.test") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "%s", (text,), None)


def test_coordinator_loading_at_startup_is_info_with_its_reason() -> None:
    logging.getLogger("fraudscore.kafka.test").setLevel(logging.INFO)
    f = ExpectedAtStartup(window_s=60, clock=Clock())
    r = record(LOADING)
    assert f.filter(r)  # shown, since the logger shows INFO
    assert r.levelno == logging.INFO and r.levelname == "INFO"
    assert r.getMessage().startswith(LOADING) and "freshly started broker" in r.getMessage()


def test_after_the_startup_window_it_is_a_warning_again() -> None:
    clock = Clock()
    f = ExpectedAtStartup(window_s=60, clock=clock)
    clock.now += 61
    r = record(LOADING)
    assert f.filter(r)
    assert r.levelno == logging.WARNING and r.getMessage() == LOADING


def test_other_warnings_and_errors_keep_their_level() -> None:
    f = ExpectedAtStartup(window_s=60, clock=Clock())
    other = record("FAIL [thrd:127.0.0.1:9092/1]: Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    error = record(LOADING, level=logging.ERROR)
    assert f.filter(other) and f.filter(error)
    assert other.levelno == logging.WARNING and error.levelno == logging.ERROR


def test_through_a_logger_the_line_follows_the_configured_level(caplog) -> None:
    log = logging.getLogger("fraudscore.kafka.test-startup")
    log.addFilter(ExpectedAtStartup(window_s=60))
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            log.warning("%s", LOADING)
        assert caplog.records == []  # --log-level warning: not shown at all
        with caplog.at_level(logging.INFO, logger=log.name):
            log.warning("%s", LOADING)
        assert [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records] == [("INFO", LOADING.split(" (")[0])]
    finally:
        log.filters.clear()
