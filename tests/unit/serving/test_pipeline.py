"""The pipeline's encoding (decode -> ONNX Runtime -> encode): model versions with a percent sign,
event times as numpy writes them, results on partial state saying so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore.serving.pipeline import Emitted, Pipeline, iso_seconds


def test_a_percent_sign_in_the_model_version_is_kept_literally() -> None:
    """Results are built with one %-format a row; a version from a hand-edited manifest may hold '%'."""
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.threshold, pipeline.model_version, pipeline._version_json = 0.5, "v%d-100%", '"v%d-100%"'
    out = pipeline.encode([7, 8], np.array([0.25, 0.75], np.float32), np.array([False, True]), inference_ms=1.0)
    assert [json.loads(o)["model_version"] for o in out] == ["v%d-100%", "v%d-100%"]
    assert [json.loads(o)["decision"] for o in out] == ["pass", "alert"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9_200_000_000), min_size=1, max_size=50))
def test_event_times_are_written_as_numpy_writes_them(seconds: list[int]) -> None:
    """iso_seconds (dates through datetime64, times of day as digits) equals np.datetime_as_string."""
    stamps = np.array(seconds, np.int64)
    want = np.datetime_as_string(stamps.astype("datetime64[s]"), unit="s").astype("S19").tolist()
    assert iso_seconds(stamps) == want


@pytest.mark.parametrize("ids, emitted", [([7, 8, 9], False), (["a", "b", "c"], False), ([7, 8, 9], True)])
def test_results_on_partial_state_say_so_after_their_event_time(ids, emitted) -> None:
    """Raw mode: the rows `partial` marks carry "state":"partial"; the others no "state" at all,
    in the fast path (integer ids) and the general one (other ids, emitted features)."""

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.threshold, pipeline.model_version, pipeline._version_json = 0.5, "v1", '"v1"'
    seconds = np.array([1_523_000_000, 1_523_000_100, 1_523_000_200], np.int64)
    extra = Emitted(("F",), np.array([[1.0], [2.0], [3.0]])) if emitted else None
    out = pipeline.encode(ids, np.array([0.1, 0.9, 0.2], np.float32), np.array([False, True, False]), inference_ms=1.0,
                          emitted=extra, event_seconds=seconds, partial=np.array([True, False, True]))
    docs = [json.loads(o) for o in out]
    assert [d.get("state") for d in docs] == ["partial", None, "partial"]
    assert [d["event_time"] for d in docs] == ["2018-04-06T07:33:20Z", "2018-04-06T07:35:00Z", "2018-04-06T07:36:40Z"]
    assert [d["transaction_id"] for d in docs] == ids
    whole = pipeline.encode(ids, np.array([0.1, 0.9, 0.2], np.float32), np.array([False, True, False]), inference_ms=1.0,
                            emitted=extra, event_seconds=seconds, partial=np.zeros(3, bool))
    assert all("state" not in json.loads(o) for o in whole)
