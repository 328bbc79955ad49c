"""Outputs that appear whole or not at all: written under a temporary name, renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fraudscore.errors import UsageError


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block succeeds,
    removed when it fails, so `path` is either the old file or the complete new one."""
    path = Path(path)
    # Missing parent directories are created when there is something to write (`--out
    # out/run1/scores.csv` in a fresh checkout); they stay if the write fails.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file in the same directory, then a rename)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def check_new_directory(out: Path) -> None:
    """Refuse, before any work, an output directory that exists with content, or whose path
    runs through a file. Missing parent directories are fine: `new_directory` creates them."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists; choose another --out or remove it")
    check_parent(out)


def check_parent(path: Path) -> None:
    """Refuse a path that runs through a file; missing directories are fine (they are created
    when the output is written)."""
    ancestor = Path(path).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{ancestor} is a file, so {path} cannot be written under it; choose another path")


@contextlib.contextmanager
def new_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block succeeds, and vanishes if it fails.

    Missing parent directories of `out` are created (`train --out runs/mlp` in a fresh checkout)."""
    out = Path(out)
    check_new_directory(out)
    # Parents are created only now, when there is something to write: a run that fails
    # before this point leaves no trace. They stay if the block fails; only `out` is atomic.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty: checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
