"""Dead letters read back (`fraudscore dlq`'s logic): selection by reason, partition, offsets and
time; one line or JSON per letter; truncated letters are never replayed."""

from __future__ import annotations

import datetime as dt

import pytest

from fraudscore.errors import UsageError
from fraudscore.serving.dlq import DeadLetter, ReplayReport, Selection, parse_since, plan


def letter(offset: int, reason: str = "bad_json", **fields) -> DeadLetter:
    base = {"partition": 0, "offset": offset, "timestamp_ms": 1_700_000_000_000 + offset, "key": b"k",
            "value": b'{"a": 1}', "reason": reason, "source_topic": "tx-in", "source_partition": 1, "source_offset": 90 + offset}
    return DeadLetter(**(base | fields))


def test_replay_never_sends_truncated_letters_and_says_why() -> None:
    letters = [letter(1), letter(2, "oversized", truncated=2_000_000), letter(3, "oversized_key", key_truncated=9000),
               letter(4, value=None, reason="empty"), letter(5, source_topic="", source_partition=None), letter(6)]
    send, skipped = plan(letters, to_topic=None)
    assert [(d.offset, t, p) for d, t, p in send] == [(1, "tx-in", 1), (6, "tx-in", 1)]
    why = {d.offset: reason for d, reason in skipped}
    assert "value truncated (was 2,000,000 bytes)" in why[2] and "tx-in/1/92" in why[2]
    assert "key truncated" in why[3] and "tombstone" in why[4] and "--to TOPIC" in why[5]
    to_other, _ = plan(letters, to_topic="tx-retry")
    assert [(d.offset, t, p) for d, t, p in to_other] == [(1, "tx-retry", None), (5, "tx-retry", None), (6, "tx-retry", None)]
    report = ReplayReport(executed=False, sent={"tx-in": 2}, ranges={0: (1, 6)}, skipped=skipped)
    text = "\n".join(report.lines("tx-dlq"))
    assert "would replay 2 dead letters: 2 to tx-in" in text and "partition 0 offsets 1..6" in text
    assert text.count("skipped p0@") == 4


def test_selection_by_reason_partition_offsets_and_time() -> None:
    selection = Selection(reasons=frozenset({"late"}), from_offset=2, to_offset=4)
    assert [o for o in range(6) if selection.matches(letter(o, "late"))] == [2, 3, 4]
    assert not selection.matches(letter(3, "bad_json"))
    assert not Selection(partitions=frozenset({1})).matches(letter(0))
    assert Selection(since_ms=1_700_000_000_003).matches(letter(3)) and not Selection(since_ms=1_700_000_000_003).matches(letter(2))
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    assert parse_since("2h", now) == int(dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC).timestamp() * 1000)
    assert parse_since("2026-11-29T10:00:00", now) == parse_since("2026-11-29T11:00:00+01:00", now)
    with pytest.raises(UsageError, match="--since"):
        parse_since("soon", now)


def test_a_dead_letter_prints_on_one_line_and_as_json() -> None:
    binary = letter(7, value=b"\xff\xfe\nraw", detail="not UTF-8", truncated=70_000)
    line = binary.line(payload_chars=4)
    assert "\n" not in line and "TRUNCATED(value was 70,000 bytes)" in line and "source=tx-in/1/97" in line
    record = binary.to_json()
    assert record["value"] is None and record["value_bytes"] == 6
    assert record["value_base64"] == "//4KcmF3" and record["truncated"] == 70_000 and record["source_offset"] == 97
    text = letter(8, value=b'{"TRANSACTION_ID": 1, "pad": "' + b"y" * 300 + b'"}').to_json(payload_chars=10)
    assert text["value"] == '{"TRANSACT' and text["value_bytes"] == 332
