"""Which run and which commit a bench report (and its Prometheus series) belongs to.

CI systems name their runs and commits in their environment; the bench reads the common
ones so that a pushed figure leads back to the run that measured it:

| variable | source |
|---|---|
| `--run-id`, `--commit`, then `FRAUDSCORE_BENCH_RUN_ID`, `FRAUDSCORE_BENCH_COMMIT` | set by hand; win over the rest |
| `GITHUB_RUN_ID` (+ `GITHUB_RUN_ATTEMPT`), `GITHUB_SHA` | GitHub Actions |
| `CI_PIPELINE_ID` / `CI_JOB_ID`, `CI_COMMIT_SHA` | GitLab CI |
| `BUILD_ID`/`BUILD_NUMBER`, `GIT_COMMIT` | Jenkins |

Without a CI the run id is `local-HOST-UTCTIME` and the commit is `git rev-parse HEAD` of
the working directory (`-dirty` appended when tracked files changed), else `unknown`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess

_RUN_VARS = ("FRAUDSCORE_BENCH_RUN_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID", "CI_JOB_ID", "BUILD_ID", "BUILD_NUMBER")
_COMMIT_VARS = ("FRAUDSCORE_BENCH_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT")


def run_identity(run_id: str | None = None, commit: str | None = None, environ: dict[str, str] | None = None,
                 now: dt.datetime | None = None) -> dict[str, str]:
    """`{"id", "commit", "source"}` of this run; `source` names where the id came from.

    `run_id` and `commit` (from `--run-id`, `--commit`) win over the environment.
    """
    env = os.environ if environ is None else environ
    source = "--run-id" if run_id else "local"
    run_id = run_id or ""
    for name in _RUN_VARS if not run_id else ():
        if env.get(name):
            run_id, source = env[name], name
            break
    if source == "GITHUB_RUN_ID" and env.get("GITHUB_RUN_ATTEMPT"):
        run_id = f"{run_id}.{env['GITHUB_RUN_ATTEMPT']}"  # a re-run is another measurement
    if not run_id:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"local-{socket.gethostname()}-{stamp}"
    commit = commit or next((env[name] for name in _COMMIT_VARS if env.get(name)), "") or _git_commit() or "unknown"
    return {"id": _label_safe(run_id), "commit": _label_safe(commit), "source": source}


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _label_safe(value: str) -> str:
    # Values travel in a Pushgateway URL path as well as in labels: keep them to one path segment.
    return re.sub(r"[^A-Za-z0-9._-]", "_", value.strip())[:128] or "unknown"
