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
    # Every row of the marked MLP has its ratio to the floor; IL's goal is against the floor,
    # FPA's against jax.grad; the references leave goal and verdict empty.
    ratios = r"\| -?\d+\.\d\d \| -?\d+\.\d\d \| "
    assert re.search(ratios + r"<= 1\.15x floor \| (yes|no) \|$", rows[0]), rows[0]
    assert re.search(ratios + r"<= 0\.3x jax\.grad \| (yes|no) \|$", rows[1]), rows[1]
    assert all(re.search(ratios + r"\| \|$", row) for row in rows[2:]), rows
    assert run.stdout.count("successful") == 2  # both relaxations ran their steps
