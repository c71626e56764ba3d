"""scripts/gpu_check.sh runs only where a GPU is, rarely: its --rehearse mode runs the same steps
on the CPU here, so that a broken script shows up in CI and not in the GPU time it was meant for."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def gpu_check(*args, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "OUT": str(out)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_unknown_option_is_named(tmp_path):
    proc = gpu_check("--fast", out=tmp_path)
    assert proc.returncode == 2
    assert "unknown option '--fast' (valid: --rehearse)" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_rehearsal_runs_every_step_and_prints_the_throughput_tables(tmp_path):
    proc = gpu_check("--rehearse", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "rehearsal on the CPU" in out and "torch " in out  # environment line with versions
    assert "passed" in out  # the CPU cases of the GPU tests ran
    for run in ("gpu-run", "cpu-run", "learned-run"):
        assert (tmp_path / run / "report.md").is_file()
    tables = out[out.index("== gpu-run"):]
    rows = [line for line in tables.splitlines() if line.startswith("| ae95") or line.startswith("| jpeg")]
    assert len(rows) == 6  # ae95 and jpeg both ways at the big batch, ae95 both ways at 1,024
    learned = out[out.index("== learned-run"):].splitlines()
    assert sum(line.startswith(("| factorized:epochs=1 ", "| ar:epochs=1 ")) for line in learned) == 4
    assert "skipping nvjpeg: not available on cpu" in proc.stderr
