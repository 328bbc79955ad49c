"""The consumer lag the sidecar reports (clients.WatermarkProbe): high watermarks asked on the
side, never from the consuming thread; the docstring examples run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from fraudscore.serving.sidecar.clients import ClientHooks, consumer_config
from fraudscore.serving.sidecar.config import SidecarConfig


def test_the_reported_lag_counts_the_high_watermark_asked_on_the_side() -> None:
    """No broker: librdkafka's statistics of a consumer whose fetch responses lag behind (its own
    consumer_lag 0) and a probe that saw the partition end 7,600 messages further."""

    class Probe:
        watched: list = []

        def high(self, topic: str, partition: int) -> int | None:
            return {("in", 0): 9_700}.get((topic, partition))

        def watch(self, partitions) -> None:
            self.watched = sorted(partitions)

    reported = {}
    hooks = ClientHooks(on_error=print, on_lag=lambda t, p, lag: reported.__setitem__((t, p), lag), on_delivery=print)
    config = SidecarConfig(bundle=Path("b"), bootstrap_servers="x:1", input_topic="in", output_topic="out",
                           alerts_topic="alerts", dlq_topic="dlq", group_id="g")
    probe = Probe()
    stats = consumer_config(config, hooks, lambda t, p: p in (0, 1), probe)["stats_cb"]
    partitions = {"0": {"consumer_lag": 0, "committed_offset": 2_000, "app_offset": 2_100},
                  "1": {"consumer_lag": 12, "committed_offset": 40, "app_offset": 52},  # no probe answer yet
                  "2": {"consumer_lag": 99, "committed_offset": 0, "app_offset": 0},  # not assigned here
                  "-1": {"consumer_lag": -1}}
    stats(orjson.dumps({"topics": {"in": {"partitions": partitions}}}).decode())
    assert reported == {("in", "0"): 7_600, ("in", "1"): 12}  # 9,700 less the next offset handed over, 2,100
    assert probe.watched == [("in", 0), ("in", 1)]
    reported.clear()  # exactly-once: the statistics' committed offset and their lag are stale, not used
    eos = consumer_config(dataclasses.replace(config, exactly_once=True), hooks, lambda t, p: p in (0, 1),
                          probe)["stats_cb"]
    eos(orjson.dumps({"topics": {"in": {"partitions": partitions}}}).decode())
    assert reported == {("in", "0"): 7_600}


def test_the_lag_examples_in_the_docstrings_run() -> None:
    import doctest

    from fraudscore.serving.sidecar import clients

    assert doctest.testmod(clients).failed == 0
