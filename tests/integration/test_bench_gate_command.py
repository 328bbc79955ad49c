"""`fraudscore bench --gate FILE` as a user runs it: a typo in the gate file exits 2 before
anything is measured (the gate's logic: tests/unit/bench/test_gate.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path


from commands import EXE


def test_a_typo_in_a_gate_file_exits_2_before_anything_is_measured(tmp_path: Path) -> None:
    gate = tmp_path / "gate.toml"
    gate.write_text('[[bound]]\nmode = "model"\nbatch_size = 1\nmetric = "p99_ms"\nmaximum = 1\n')
    done = subprocess.run([EXE, "bench", "--bundle", str(tmp_path / "no-bundle"), "--gate", str(gate)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown key 'maximum' (did you mean 'max'?)" in done.stderr
    # A gate of relative bounds only, without a baseline, would check nothing: refused as well.
    gate.write_text('[[bound]]\nmode = "model"\nbatch_size = 1\nmetric = "p99_ms"\nmax_increase = 0.5\n')
    done = subprocess.run([EXE, "bench", "--bundle", str(tmp_path / "no-bundle"), "--gate", str(gate)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no bound would be checked" in done.stderr, done.stderr
