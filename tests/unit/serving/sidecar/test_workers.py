"""`fraudscore run --workers N`'s settings: each worker has its own port and transactional id;
impossible settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudscore.errors import UsageError
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.workers import worker_configs


def config(**kw) -> SidecarConfig:
    return SidecarConfig(bundle=Path("b"), bootstrap_servers="x:1", input_topic="tx-in", output_topic="tx-scores",
                         alerts_topic="tx-alerts", dlq_topic="tx-dlq", group_id="g", **kw)


def test_each_worker_has_its_own_port_and_transactional_id() -> None:
    workers = worker_configs(config(workers=3, metrics_port=9464, exactly_once=True, transactional_id="fs-a"))
    assert [w.metrics_port for w in workers] == [9465, 9466, 9467]
    assert [w.transactional_id for w in workers] == ["fs-a-w0", "fs-a-w1", "fs-a-w2"]
    assert all(w.workers == 1 and w.group_id == "g" for w in workers)
    free = worker_configs(config(workers=2, metrics_port=0))
    assert len({w.metrics_port for w in free}) == 2 and all(w.metrics_port > 0 for w in free)
    assert [w.transactional_id for w in worker_configs(config(workers=2))] == ["", ""]  # at least once: none


@pytest.mark.parametrize("settings, words", [({"workers": 0}, "--workers must be from 1"),
                                             ({"workers": 4, "metrics_port": 65533}, "lower --metrics-port")])
def test_impossible_worker_settings_are_refused(settings, words) -> None:
    with pytest.raises(UsageError, match=words):
        config(**settings).validate()


