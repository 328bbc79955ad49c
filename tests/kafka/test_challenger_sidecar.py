"""Shadow scoring in a running sidecar (`fraudscore run --challenger BUNDLE`): every result
carries the challenger's score and the metrics count both models, a broken challenger reload
never stops the champion, and a challenger swapped under load loses and duplicates nothing.
The pipeline's side is tests/integration/test_challenger.py."""

from __future__ import annotations

import json
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bundle_helpers import squared_bundle
from fraudscore.serving.bundle import load_bundle
from kafka_helpers import Sidecar, drain, produce
from waiting import wait_until


def _samples(sidecar: Sidecar, name: str) -> dict[tuple, float]:
    status, body = sidecar.get("/metrics")
    assert status == 200
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(body)
            for s in family.samples if s.name == name}


def test_sidecar_shadow_scores_and_survives_a_broken_challenger_reload(kafka_bootstrap, small_bundle, challenger,
                                                                        transactions, topics, tmp_path) -> None:
    keys, values = transactions
    live = tmp_path / "challenger"
    squared_bundle(small_bundle, live, "challenger-squared")
    champion_version = load_bundle(small_bundle).manifest.model_version
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-challenger", "--challenger", str(live))
    sidecar.wait_ready()
    first = 600
    produce(kafka_bootstrap, topics["in"], keys[:first], values[:first])
    results = [json.loads(m.value()) for m in drain(kafka_bootstrap, [topics["out"]], first)]
    assert len(results) == first
    for doc in results:
        assert doc["model_version"] == champion_version
        assert doc["challenger"]["version"] == "challenger-squared"
        assert doc["challenger"]["score"] == pytest.approx(doc["score"] ** 2, rel=1e-6, abs=1e-12)
    scored = _samples(sidecar, "fraudscore_model_transactions_scored_total")
    assert scored[(("model_version", champion_version), ("role", "champion"))] == first
    assert scored[(("model_version", "challenger-squared"), ("role", "challenger"))] == first

    (live / "model.onnx").write_bytes(b"not a model")  # a broken challenger, then a reload
    sidecar.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _samples(sidecar, "fraudscore_challenger_failures_total"), 30, "the failed challenger load counted",
               interval_s=0.2)
    assert _samples(sidecar, "fraudscore_challenger_failures_total") == {
        (("model_version", "challenger-squared"), ("reason", "load")): 1.0}
    produce(kafka_bootstrap, topics["in"], keys[first:2 * first], values[first:2 * first])
    later = [json.loads(m.value()) for m in drain(kafka_bootstrap, [topics["out"]], 2 * first)]
    assert len(later) == 2 * first  # the champion kept scoring, and the previous challenger with it
    assert all(doc["challenger"]["version"] == "challenger-squared" for doc in later)
    assert sidecar.get("/readyz")[0] == 200
    code, out = sidecar.stop()
    assert code == 0
    assert "challenger reload failed" in out and "bundle hash mismatch" in out


def test_a_challenger_swapped_under_load_loses_and_duplicates_nothing(kafka_bootstrap, small_bundle, transactions,
                                                                      topics, tmp_path) -> None:
    """The runbook's promotion step under load: the --challenger path is a link moved to another
    bundle (docs/operations.md, "Shadow scoring"), then SIGHUP, while transactions stream in."""
    import os
    import threading

    keys, values = transactions
    first = squared_bundle(small_bundle, tmp_path / "challenger-v1", "challenger-v1")
    second = squared_bundle(small_bundle, tmp_path / "challenger-v2", "challenger-v2")
    link = tmp_path / "challenger"
    link.symlink_to(first)
    sidecar = Sidecar(kafka_bootstrap, small_bundle, topics, "g-challenger-swap", "--challenger", str(link))
    sidecar.wait_ready()
    chunks = [(keys[i:i + 250], values[i:i + 250]) for i in range(0, len(values), 250)]

    def stream() -> None:
        for k, v in chunks:
            produce(kafka_bootstrap, topics["in"], k, v)
            time.sleep(0.1)

    sender = threading.Thread(target=stream)
    sender.start()
    time.sleep(len(chunks) * 0.1 / 3)
    (tmp_path / "next").symlink_to(second)
    os.replace(tmp_path / "next", link)
    sidecar.proc.send_signal(signal.SIGHUP)
    sender.join(120)
    results = [json.loads(m.value()) for m in drain(kafka_bootstrap, [topics["out"]], len(values))]
    ids = [doc["transaction_id"] for doc in results]
    assert len(ids) == len(set(ids)) == len(values)  # nothing lost, nothing twice
    versions = [doc["challenger"]["version"] for doc in results]
    assert set(versions) == {"challenger-v1", "challenger-v2"}  # the swap fell inside the stream
    assert _samples(sidecar, "fraudscore_model_reloads_total")[(("result", "success"),)] == 1
    assert _samples(sidecar, "fraudscore_challenger_info") == {(("model_version", "challenger-v2"),): 1.0}
    code, out = sidecar.stop()
    assert code == 0, out[-3000:]
