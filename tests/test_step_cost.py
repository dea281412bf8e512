"""The relaxation step-cost benchmark: its hand-written references compute what pcgraph's IL
computes, and it runs and prints its table (a smoke run: one round, too short for meaningful
times)."""

import importlib
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import tree_allclose

import pcgraph

BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def step_cost():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("step_cost")
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("step_cost", None)


def test_hand_written_il_references_are_pcgraphs_il(step_cost, x64):
    """The marked MLP's IL written by hand (through `jax.value_and_grad` of the energy, and as
    its bare arithmetic) takes the same steps as `pcgraph.relax` with IL: the diagnostics time
    the same computation."""
    model = step_cost.make_models(jnp.float64)["mlp"]
    params = model.args[0]
    algorithm = step_cost.pc_algorithm(model, "IL", num_steps=7)
    solution = pcgraph.relax(model.loss, *model.args, algorithm=algorithm)
    pcgraph_values = [solution.values[f"layer{i}"] for i in range(1, 6)]
    references = step_cost.reference_steps(*model.args)
    by_grad, _ = references["IL written by hand"](7)(params)
    arithmetic = references["IL's arithmetic alone"](7)(params)
    assert tree_allclose(by_grad, pcgraph_values, rtol=1e-10, atol=1e-12)
    assert tree_allclose(arithmetic, pcgraph_values, rtol=1e-10, atol=1e-12)


def test_elementwise_reference_is_il_arithmetic_without_products(step_cost, x64):
    """ "IL's elementwise work alone" computes IL's arithmetic with each product replaced by what
    it gives for identity weights `eye(fan_in, fan_out)`: with those weights the two agree,
    and its loop computes no product."""
    model = step_cost.make_models(jnp.float64)["mlp"]
    keys = jax.random.split(jax.random.key(1), len(model.args[0]))
    identity_weights = [
        {
            "w": jnp.eye(*p["w"].shape, dtype=p["w"].dtype),
            "b": 0.1 * jax.random.normal(k, p["b"].shape),
        }
        for p, k in zip(model.args[0], keys)
    ]
    references = step_cost.reference_steps(*model.args)
    elementwise = references["IL's elementwise work alone"](7)
    arithmetic = references["IL's arithmetic alone"](7)
    assert tree_allclose(elementwise(identity_weights), arithmetic(identity_weights), rtol=1e-12)
    products = step_cost.ops_per_loop_iteration(elementwise, (identity_weights,))
    assert products == "0 matmuls, 0 convolutions per loop iteration"


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
        "IL's arithmetic alone",
        "IL's elementwise work alone",
        "IL's matmuls alone",
    ]
    # Every row of the marked MLP has its ratio to the floor; IL's goal is against the floor,
    # FPA's against jax.grad; the references leave goal and verdict empty.
    ratios = r"\| -?\d+\.\d\d \| -?\d+\.\d\d \| "
    assert re.search(ratios + r"<= 1\.15x floor \| (yes|no) \|$", rows[0]), rows[0]
    assert re.search(ratios + r"<= 0\.3x jax\.grad \| (yes|no) \|$", rows[1]), rows[1]
    assert all(re.search(ratios + r"\| \|$", row) for row in rows[2:]), rows
    assert run.stdout.count("successful") == 2  # both relaxations ran their steps
    # Every timed loop's kernels were found in its profile: IL, FPA and the 5 references.
    assert run.stdout.count("per step, profiled: matmuls ") == 7, run.stdout
