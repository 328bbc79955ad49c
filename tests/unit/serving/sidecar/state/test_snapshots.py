"""Snapshots of raw mode's feature state: a state rebuilt from its snapshot answers every later
query as the original does; a damaged or mismatched snapshot is refused, never half-used; the
Kafka store gives back exactly what it was given, or says why not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudscore.features.online import CustomerState, TerminalState
from fraudscore.features.spec import BASELINE_SPEC, FeatureSpec
from fraudscore.serving.sidecar.state.snapshots import CHUNK_BYTES, SnapshotRefused, decode, encode

DAY = 86_400
T0 = 1_522_540_800  # 2018-04-01


def batches(seed: int, n_batches: int, size: int, customers: int = 30, terminals: int = 20):
    """Random raw batches in roughly increasing event time (some rows a little out of order)."""
    rng = np.random.default_rng(seed)
    next_id, t = 1, T0
    for _ in range(n_batches):
        seconds = t + np.sort(rng.integers(0, 3 * DAY, size)) - rng.integers(0, 3600, size) * (rng.random(size) < 0.1)
        ids = np.arange(next_id, next_id + size)
        next_id += size
        t += 3 * DAY
        yield dict(ids=ids, seconds=seconds, customers=rng.integers(0, customers, size),
                   terminals=rng.integers(0, terminals, size), amounts=np.round(rng.random(size) * 200, 2))


def customer_features(state: CustomerState, b: dict) -> dict:
    return state.features(b["ids"], b["seconds"], b["customers"], b["amounts"])


HEADER = {"kind": "customers", "spec": BASELINE_SPEC.to_dict(), "allowed_lateness_s": DAY}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 14), fold=st.sampled_from([4, 64, 16_384]))
def test_a_customer_state_restored_from_its_snapshot_answers_as_the_original(seed: int, cut: int, fold: int) -> None:
    stream = list(batches(seed, 16, 40))
    original = CustomerState(allowed_lateness_s=DAY, fold_min_rows=fold)
    for b in stream[:cut]:
        customer_features(original, b)
    blob = encode(original, HEADER)
    _, restored = decode(blob, HEADER, CustomerState(allowed_lateness_s=DAY, fold_min_rows=fold))
    assert len(restored) == len(original) and restored.watermark == original.watermark
    for b in stream[cut:]:
        want, got = customer_features(original, b), customer_features(restored, b)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert restored.nbytes == original.nbytes


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 14))
def test_a_terminal_state_restored_from_its_snapshot_keeps_labels_and_pending_confirmations(seed: int, cut: int) -> None:
    stream = list(batches(seed, 16, 40))
    rng = np.random.default_rng(seed)
    original = TerminalState(allowed_lateness_s=DAY, fold_min_rows=32)
    header = HEADER | {"kind": "terminals"}
    restored = None
    for k, b in enumerate(stream):
        # Confirmations of some rows of this batch (before it arrives: pending) and of the last one.
        chosen = rng.random(len(b["ids"])) < 0.05
        for state in [original] + ([restored] if restored is not None else []):
            state.add_labels(b["ids"][chosen], b["seconds"][chosen], b["terminals"][chosen])
        results = [s.add_and_features(b["ids"], b["seconds"], b["terminals"]) for s in [original] + ([restored] if restored else [])]
        if restored is not None:
            (new_a, fa), (new_b, fb) = results
            np.testing.assert_array_equal(new_a, new_b)
            for name in fa:
                np.testing.assert_array_equal(fb[name], fa[name], err_msg=name)
        if k + 1 == cut:
            _, restored = decode(encode(original, header), header, TerminalState(allowed_lateness_s=DAY, fold_min_rows=32))
            assert restored.pending_labels == original.pending_labels and restored.labels == original.labels
    assert restored.labels == original.labels


def test_a_damaged_or_mismatched_snapshot_is_refused_with_its_reason() -> None:
    state = CustomerState()
    for b in batches(1, 3, 50):
        customer_features(state, b)
    blob = encode(state, HEADER | {"offset": 150})
    header, _ = decode(blob, HEADER, CustomerState())
    assert header["offset"] == 150

    def reason(data: bytes, expect: dict = HEADER, fresh=None) -> str:
        with pytest.raises(SnapshotRefused) as caught:
            decode(data, expect, CustomerState() if fresh is None else fresh)
        return caught.value.reason

    assert reason(blob[: len(blob) // 2]) == "corrupt"
    assert reason(b"\x00" * 100) == "corrupt"
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF  # inside an array: the zip member's CRC catches it
    assert reason(bytes(flipped)) == "corrupt"
    other_spec = FeatureSpec(customer_windows_days=(1, 7, 14))
    assert reason(blob, HEADER | {"spec": other_spec.to_dict()}) == "mismatch"
    assert reason(blob, HEADER | {"allowed_lateness_s": 3600}) == "mismatch"
    assert reason(blob, HEADER | {"kind": "terminals"}) == "mismatch"
    # The arrays of a customer state do not make a terminal state.
    assert reason(blob, HEADER, TerminalState()) == "corrupt"


def test_an_empty_state_round_trips() -> None:
    _, restored = decode(encode(CustomerState(), HEADER), HEADER, CustomerState())
    assert len(restored) == 0 and restored.watermark is None
    f = customer_features(restored, next(batches(2, 1, 10)))
    assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].min() >= 1


def test_coverage_is_the_event_time_seen_and_survives_a_snapshot() -> None:
    """coverage_s: from the oldest row stored to the watermark, whatever was evicted since; 0 while empty."""
    state = CustomerState(allowed_lateness_s=DAY, fold_min_rows=4)
    assert state.coverage_s == 0 and state.first_event is None
    stream = list(batches(5, 20, 40))  # 60 days: the 30-day windows evict the first rows
    for b in stream:
        customer_features(state, b)
    first = min(int(b["seconds"].min()) for b in stream)
    assert state.first_event == first
    assert state.coverage_s == state.watermark - first > 55 * DAY
    _, restored = decode(encode(state, HEADER), HEADER, CustomerState(allowed_lateness_s=DAY, fold_min_rows=4))
    assert restored.coverage_s == state.coverage_s and restored.first_event == first


def test_chunks_fit_the_default_message_limit() -> None:
    assert CHUNK_BYTES + 100 < 1_000_000
