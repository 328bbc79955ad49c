"""The terminal table read from a feed with a gap and damaged records holds exactly what the
input gives (the feed's records: tests/unit/serving/sidecar/state/test_feed.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from kafka_helpers import client

from fraudscore import simulate
from fraudscore.data.replay import raw_stream, replay
from fraudscore.features.online import terminal_state
from fraudscore.features.spec import BASELINE_SPEC
from fraudscore.serving.metrics import SidecarMetrics
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.state.feed import FeedWriter, feed_topic
from fraudscore.serving.sidecar.state import terminal_table
from fraudscore.serving.sidecar.state.terminal_table import TerminalTable
from fraudscore.serving.transactions import decode_transactions


def test_a_table_read_from_a_feed_with_a_gap_and_damage_holds_what_the_input_gives(kafka_bootstrap, make_topic, monkeypatch) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    table = simulate(customers=200, terminals=300, days=50, seed=4).transactions
    input_topic, labels_topic = make_topic(partitions=2, prefix="feed-in"), make_topic(prefix="feed-labels")
    replay(raw_stream(table, seed=1), {"bootstrap.servers": kafka_bootstrap}, input_topic, labels_topic, speedup=0.0)
    state, late = f"feed-state-{uuid.uuid4().hex[:8]}", f"feed-late-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client(kafka_bootstrap))
    for future in admin.create_topics([NewTopic(feed_topic(name), num_partitions=2, replication_factor=1)
                                       for name in (state, late)]).values():
        future.result(30)
    try:
        common = dict(bundle=Path("b"), bootstrap_servers=kafka_bootstrap, input_topic=input_topic, output_topic="out",
                      alerts_topic="alerts", dlq_topic="dlq", group_id=f"feed-{uuid.uuid4().hex[:6]}", labels_topic=labels_topic)
        with_feed, with_late_feed = SidecarConfig(**common, state_topic=state), SidecarConfig(**common, state_topic=late)

        # What owners write: partition 0 whole in batches of 500, one batch fed twice (a new owner
        # starting from an older committed offset), an unreadable record in the middle; partition 1
        # with its third batch's record lost (a gap).
        writer = FeedWriter(with_feed, SidecarMetrics(), partitions=2)
        # And a feed that holds only the second half of each partition (the first, as if gone by retention).
        late_writer = FeedWriter(with_late_feed, SidecarMetrics(), partitions=2)
        reader = Consumer(client(kafka_bootstrap) | {"group.id": "feed-test", "enable.partition.eof": True,
                                                     "auto.offset.reset": "earliest"})
        for p in (0, 1):
            reader.assign([TopicPartition(input_topic, p, 0)])
            high = reader.get_watermark_offsets(TopicPartition(input_topic, p), timeout=10)[1]
            done, batch_no = 0, 0
            while done < high:
                messages = [m for m in reader.consume(500, timeout=2) if m.error() is None]
                if not messages:
                    continue
                done = messages[-1].offset() + 1
                raw = decode_transactions([m.value() for m in messages],
                                          timestamps_ms=np.array([m.timestamp()[1] for m in messages], np.int64))
                offsets = np.array([m.offset() for m in messages], np.int64)
                parts = np.full(len(messages), p, np.int64)
                if offsets[0] >= high // 2:
                    late_writer.publish(parts, offsets, parts[raw.index], offsets[raw.index], raw.ids, raw.seconds, raw.terminals)
                if p == 1 and batch_no == 2:
                    writer.published[1] = int(offsets[-1]) + 1  # as if written: the record never arrives
                else:
                    writer.publish(parts, offsets, parts[raw.index], offsets[raw.index], raw.ids, raw.seconds, raw.terminals)
                if p == 0 and batch_no == 3:
                    writer.forget([0])
                    writer.publish(parts, offsets, parts[raw.index], offsets[raw.index], raw.ids, raw.seconds, raw.terminals)
                    writer.producer.produce(feed_topic(state), value=b"FSF1 damaged", partition=0)
                batch_no += 1
        reader.close()
        writer.close(10)
        late_writer.close(10)

        tables = {}
        for name, config in (("input", SidecarConfig(**common)), ("feed", with_feed)):
            metrics = SidecarMetrics()
            t = TerminalTable(config, terminal_state(BASELINE_SPEC), metrics)
            # No eviction (as while a sidecar's slowest partition needs everything): the two
            # sources bring the partitions at different paces, and each table must hold every row.
            t.before_apply = lambda t=t: setattr(t.terminals, "horizon_cap", np.iinfo(np.int64).min // 4)
            t.start()
            assert t.feed == (feed_topic(state) if name == "feed" else None)
            assert t.catch_up(None, timeout_s=60)
            t.close()
            tables[name] = (t, metrics)

        # A fresh table on the late feed, asked for a batch a quarter into the stream: it reads the
        # input only about that far (not the whole topic, as a gap once made it); asked for
        # everything, it reads the input up to where the feed starts, and the feed from there.
        # (Reads of 500 messages, not 10,000: this stream's partitions hold ~8,000 each.)
        monkeypatch.setattr(terminal_table, "READ_BATCH", 500)
        late_metrics = SidecarMetrics()
        on_late = TerminalTable(with_late_feed, terminal_state(BASELINE_SPEC), late_metrics)
        on_late.before_apply = lambda: setattr(on_late.terminals, "horizon_cap", np.iinfo(np.int64).min // 4)
        on_late.start()
        quarter = int(np.quantile(table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64), 0.25))
        assert on_late.catch_up(quarter, timeout_s=60)
        rows_at_quarter = {s: late_metrics.registry.get_sample_value("fraudscore_terminal_table_rows_total", {"source": s}) or 0
                           for s in ("input", "feed")}
        assert on_late.catch_up(None, timeout_s=60)
        on_late.close()
    finally:
        admin.delete_topics([feed_topic(state), feed_topic(late)])

    seconds = table["TX_DATETIME"].astype("datetime64[s]").astype(np.int64) + 8 * 86_400
    terminals = table["TERMINAL_ID"].astype(np.int64)
    (by_input, _), (by_feed, metrics) = tables["input"], tables["feed"]
    assert len(by_feed.terminals) == len(by_input.terminals) == len(table)
    want, got = by_input.terminals.features(seconds, terminals), by_feed.terminals.features(seconds, terminals)
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    assert by_feed.positions[(input_topic, 0)] == by_input.positions[(input_topic, 0)]

    def value(name: str, **labels) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    from_feed = value("fraudscore_terminal_table_rows_total", source="feed")
    from_input = value("fraudscore_terminal_table_rows_total", source="input")
    assert from_feed + from_input == len(table) and 0 < from_input < from_feed, (from_feed, from_input)
    assert value("fraudscore_terminal_feed_records_total", outcome="gap") >= 1
    assert value("fraudscore_terminal_feed_records_total", outcome="unreadable") == 1
    assert by_feed.fallback == set() and by_feed.gaps == set()

    # (About a quarter of the rows, more by what one read brings past the bound: well short of all.)
    assert rows_at_quarter["feed"] == 0 and 0.2 * len(table) < rows_at_quarter["input"] < 0.6 * len(table), rows_at_quarter
    late_rows = {s: late_metrics.registry.get_sample_value("fraudscore_terminal_table_rows_total", {"source": s}) or 0
                 for s in ("input", "feed")}
    assert sum(late_rows.values()) == len(on_late.terminals) == len(table)
    assert late_rows["feed"] > 0.3 * len(table), late_rows  # the second half, less what the input read before the seek
    got = on_late.terminals.features(seconds, terminals)
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    assert on_late.fallback == set() and on_late.gaps == set() and on_late.rejoin == {}
