"""Packaging as it is installed and started: importing the runtime or asking for --help loads no
training stack, both entry points work, every extra resolves on the package index, and the
wheel holds every package of the tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import project
from project import EXTRA_SETS, ROOT




TRAINING_STACK = ("tensorflow", "keras", "tf2onnx", "onnx", "lightgbm", "sklearn")


# Never loaded by importing any runtime module: the training stack, and MLflow's client, which
# only runtime/tracking.py imports, inside its functions (train/evaluate --mlflow-uri).
FORBIDDEN = TRAINING_STACK + ("mlflow",)


def _forbidden_loaded(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return the forbidden top-level modules it loaded."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _runtime_modules() -> list[str]:
    """Every importable module under runtime/, as fraudscore.x.y."""
    names = []
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        parts = path.relative_to(ROOT / "runtime").with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("fraudscore",) + parts))
    return names


def test_importing_the_runtime_loads_no_training_stack() -> None:
    code = "\n".join(f"import {name}" for name in _runtime_modules())
    assert _forbidden_loaded(code) == []


def _commands() -> list[str]:
    from fraudscore.cli import app

    return sorted(c.name or c.callback.__name__ for c in app.registered_commands)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in _commands()], ids=lambda a: " ".join(a))
def test_help_loads_no_training_stack(argv: list[str]) -> None:
    code = (
        "from fraudscore.cli import app\n"
        "try:\n"
        f"    app({argv!r}, prog_name='fraudscore')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
    )
    assert _forbidden_loaded(code) == []


def test_console_script_and_module_entry_points() -> None:
    exe = Path(sys.executable).with_name("fraudscore")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("fraudscore ")
    out = subprocess.run([sys.executable, "-m", "fraudscore", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in _commands():
        assert command in out.stdout


@pytest.mark.parametrize("extras", EXTRA_SETS)
def test_every_extra_resolves_on_the_package_index(extras: str, tmp_path: Path) -> None:
    # `pip install 'fraudscore[gpu]'` once named an onnxruntime-gpu that was never published:
    # resolve each extra against the real index (pip's resolver, nothing installed) so a pin
    # to a version that does not exist fails here instead of on a user's machine.
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--report", str(report), f"{ROOT}[{extras}]"],
        capture_output=True, text=True, timeout=600,
    )
    unreachable = ("Failed to establish a new connection", "Temporary failure in name resolution",
                   "Network is unreachable", "Could not fetch URL")
    if done.returncode != 0 and any(u in done.stderr for u in unreachable) and os.environ.get("CI") != "true":
        pytest.skip(f"the package index is not reachable from here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, f"fraudscore[{extras}] does not resolve:\n{done.stderr[-3000:]}"
    installed = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    wanted = set(extras.split(","))
    if "gpu" in wanted:
        assert "onnxruntime-gpu" in installed and "onnxruntime" not in installed, installed
        assert any(name.startswith("nvidia-cudnn") for name in installed), "the CUDA libraries come with the extra"
    if "cpu" in wanted:
        assert "onnxruntime" in installed and "onnxruntime-gpu" not in installed, installed
    if {"cpu", "gpu"} <= set(project.extras()) and wanted & {"cpu", "gpu"}:
        runtime = installed.get("onnxruntime") or installed["onnxruntime-gpu"]
        assert runtime.startswith("1.31."), f"cpu and gpu extras pin the same ONNX Runtime release, got {runtime}"
    if "train" in wanted:
        assert "tensorflow-cpu" in installed or "tensorflow" in installed, installed


def test_the_wheel_holds_every_package_of_the_tree(tmp_path: Path) -> None:
    # A wheel once lacked fraudscore.serving, .features and .data (only the editable install
    # worked): every directory with an __init__.py must be in the built wheel.
    import zipfile

    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("fraudscore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    roots = {"runtime": "fraudscore", "train": "fraudscore/train", "export": "fraudscore/export", "bench": "fraudscore/bench"}
    for top, package in roots.items():
        for init in (ROOT / top).rglob("__init__.py"):
            inside = init.parent.relative_to(ROOT / top).as_posix()
            expected = f"{package}/{inside}/__init__.py" if inside != "." else f"{package}/__init__.py"
            if top == "runtime" and inside.split("/")[0] in ("train", "export", "bench"):
                continue
            assert expected in names, f"{expected} missing from {wheel.name}"
