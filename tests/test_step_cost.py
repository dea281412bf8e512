"""The relaxation step-cost benchmark runs and prints its table (a smoke run: one round, too
short for meaningful times)."""

import pathlib
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_step_cost_benchmark_smoke_run():
    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "step_cost.py"
    command = [sys.executable, str(script), "--models", "mlp", "--diagnostics", "--repeats", "1"]
    command += ["--min-time", "0.001", "--steps", "1", "2"]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| mlp (marked) |")]
    labels = [row.split("|")[2].strip() for row in rows]
    assert labels == [
        "IL",
        "FPA",
        "IL written by hand",
        "FPA written by hand",
        "IL's matmuls alone",
    ]
    # Algorithms carry their goal and verdict; the references leave both cells empty.
    assert all(re.search(r"\| -?\d+\.\d\d \| <= 0\.\d+ \| (yes|no) \|$", row) for row in rows[:2])
    assert all(re.search(r"\| -?\d+\.\d\d \| \| \|$", row) for row in rows[2:]), rows
    assert run.stdout.count("successful") == 2  # both relaxations ran their steps
