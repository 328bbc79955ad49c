"""`fraudscore` as an operator runs it: the installed command in a subprocess, its output captured.

    done = fraudscore("simulate", "--out", tmp_path / "x.txt")
    assert done.returncode == 2 and "*.csv" in done.stderr
    fraudscore("train", "--data", features, "--out", run, check=True)   # fails the test with stderr if it fails
    topics_create(bootstrap, topic_names("t1"), "--partitions", "3")
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("fraudscore"))  # the installed command, as operators run it


def fraudscore(*args, env: dict[str, str] | None = None, replace_env: bool = False, timeout_s: float = 600,
               check: bool = False) -> subprocess.CompletedProcess:
    """`fraudscore ARGS` (each str()-ed). `env` is added to the environment (or is the whole of it
    with `replace_env`); with `check` a non-zero exit fails the test with the end of stderr."""
    environment = None if env is None else (dict(env) if replace_env else os.environ | env)
    done = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout_s, env=environment)
    if check and done.returncode != 0:
        pytest.fail(f"fraudscore {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def topic_names(tag: str) -> dict[str, str]:
    """The five topics `topics create` makes, by role, named after `tag`."""
    return {role: f"{role}-{tag}" for role in ("in", "labels", "scores", "alerts", "dlq")}


def topics_create(bootstrap: str, topics: dict[str, str], *extra: str, env: dict | None = None,
                  labels: bool = True) -> subprocess.CompletedProcess:
    """`fraudscore topics create` for `topics` (topic_names' roles) as a user runs it."""
    return fraudscore("topics", "create", "--bootstrap-servers", bootstrap, "--input-topic", topics["in"],
                      "--output-topic", topics["scores"], "--alerts-topic", topics["alerts"], "--dlq-topic", topics["dlq"],
                      *(("--labels-topic", topics["labels"]) if labels else ()), *extra, env=env, timeout_s=120)
