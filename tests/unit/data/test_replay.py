"""`fraudscore replay`'s pure parts, without a broker: a stream split at an instant sends every
message once and in order, instants parse as UTC, and paced sending follows event time.
The Kafka side (`--until` then `--from` into a running sidecar) is in tests/kafka/test_raw_mode.py."""

from __future__ import annotations

import numpy as np
import pytest

from fraudscore import simulate
from fraudscore.console import parse_instant
from fraudscore.data import replay as replay_module
from fraudscore.data.replay import raw_stream
from fraudscore.errors import UsageError


@pytest.fixture(scope="module")
def events():
    return raw_stream(simulate(customers=60, terminals=100, days=20, seed=4).transactions, seed=2)


def test_until_then_from_the_same_instant_sends_every_message_once_in_order(events) -> None:
    cut = parse_instant("2018-04-11T06:30:00", "--until")
    before, after = events.between(None, cut), events.between(cut, None)
    assert len(before) + len(after) == len(events) and len(before) and len(after)
    assert before.values + after.values == events.values and before.keys + after.keys == events.keys
    assert before.seconds.max() < cut <= after.seconds.min()
    # A confirmation goes by when it is confirmed: some frauds before the cut are confirmed after it.
    assert after.is_label.any() and before.is_label.sum() + after.is_label.sum() == events.is_label.sum()


@pytest.mark.parametrize("text, expected", [
    ("2018-04-11", "2018-04-11T00:00:00"), ("2018-04-11 06:30:00", "2018-04-11T06:30:00"),
    ("2018-04-11T06:30:00+02:00", "2018-04-11T04:30:00")])
def test_instants_are_utc_dates_or_date_times(text: str, expected: str) -> None:
    assert parse_instant(text, "--from") == int(np.datetime64(expected, "s").astype(np.int64))


def test_a_bad_instant_says_what_is_expected() -> None:
    with pytest.raises(UsageError, match="--from must be a date or a date and time like 2018-05-16"):
        parse_instant("11/04/2018", "--from")


class _Producer:
    """Records when each message was handed over (wall seconds from the first)."""

    def __init__(self, config: dict) -> None:
        self.sent: list[tuple[float, str]] = []

    def produce(self, topic, value, key) -> None:
        import time

        self.sent.append((time.monotonic(), topic))

    def poll(self, timeout) -> int:
        return 0

    def flush(self, timeout) -> int:
        return 0


def test_paced_sending_follows_event_time_not_bursts(events, monkeypatch) -> None:
    """At a speed-up each message leaves when its event time comes (to within a few ms), so a
    day at 86,400x takes as long as its event times span, spread over it."""
    import confluent_kafka

    made = []
    monkeypatch.setattr(confluent_kafka, "Producer", lambda config: made.append(_Producer(config)) or made[-1])
    import time

    day = events.between(int(events.seconds[0]), int(events.seconds[0]) + 86_400)
    progress = []
    t0 = time.monotonic()
    wall = replay_module.replay(day, {}, "in", "labels", speedup=86_400, progress=lambda n, s: progress.append(n))
    sent = np.array([t for t, _ in made[0].sent])
    due = (day.seconds - day.seconds[0]) / 86_400
    late = (sent - t0) - due  # from before the call: a slow first send cannot make the rest look early
    assert due[-1] <= wall < due[-1] + 1.0
    assert (late >= 0).all()  # never before its time (a burst sends most messages early)
    assert np.percentile(late, 95) < 0.1, np.percentile(late, 95)  # and on time, not held back
    assert progress and progress[-1] == len(day)
