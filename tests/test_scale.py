"""Scale: the relaxation's memory does not grow with its number of steps, and its loop runs
on the device without host round-trips. Memory is read from the compiled program's
`memory_analysis()` (argument, output and temp bytes of XLA's buffer assignment)."""

import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcgraph


def loss(params, x, y):
    h = x
    for i, layer in enumerate(params[:-1]):
        h = pcgraph.node(jnp.tanh(h @ layer["w"] + layer["b"]), name=f"layer{i}")
    return jnp.mean((h @ params[-1]["w"] + params[-1]["b"] - y) ** 2)


@pytest.fixture(scope="module")
def problem():
    sizes = (8, 16, 16, 16, 4)
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) + 1)
    params = [
        {"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]
    return params, jax.random.normal(keys[-2], (8, 8)), jax.random.normal(keys[-1], (8, 4))


def memory(fn, args) -> dict[str, int]:
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    return {
        "argument": analysis.argument_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
    }


@pytest.mark.parametrize("algorithm", ["IL", "FPA"])
def test_gradient_memory_is_independent_of_the_number_of_steps(problem, algorithm):
    make = {"IL": pcgraph.IL, "FPA": pcgraph.FPA}[algorithm]
    few, many = (
        memory(pcgraph.grad(loss, algorithm=make(max_steps=steps, rtol=None)), problem)
        for steps in (10, 1000)
    )
    # Every byte the same: the loop carries one state per node, whatever the step count.
    assert few == many


def test_saved_energy_trajectory_costs_one_scalar_per_step(problem):
    def stats(steps, save_energy):
        algorithm = pcgraph.IL(max_steps=steps, rtol=None)
        return memory(
            lambda *a: pcgraph.relax(loss, *a, algorithm=algorithm, save_energy=save_energy).stats,
            problem,
        )

    assert stats(10, False) == stats(1000, False)
    few, many = stats(10, True), stats(1000, True)
    extra_steps_bytes = (1000 - 10) * 4  # float32 energies
    # The returned trajectory grows by exactly one float32 per extra step ...
    assert many["output"] - few["output"] == extra_steps_bytes
    # ... and the loop's copy of it by at most two more (the carried array and its update).
    assert 0 <= many["temp"] - few["temp"] <= 2 * extra_steps_bytes + 256
    assert many["argument"] == few["argument"]


def _computations(hlo: str) -> dict[str, str]:
    """The computations of an HLO module, by name."""
    blocks = re.split(r"\n(?=\S)", hlo)
    named = {}
    for block in blocks:
        match = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", block)
        if match:
            named[match[1]] = block
    return named


def _reachable(name: str, computations: dict[str, str]) -> set[str]:
    """`name` and every computation it calls, transitively."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in computations:
            continue
        seen.add(current)
        todo += re.findall(
            r"(?:calls|to_apply|body|condition|branch_computations|true_computation|"
            r"false_computation)=\{?%?([\w.\-]+)",
            computations[current],
        )
        for group in re.findall(r"branch_computations=\{([^}]*)\}", computations[current]):
            todo += [c.strip().lstrip("%") for c in group.split(",")]
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [pcgraph.IL(), pcgraph.FPA()])
def test_layers_built_alike_are_traced_once(monkeypatch, algorithm):
    """The prediction pass evaluates alike layers through one shared program, so JAX traces,
    linearises and transposes each kind of layer once, whatever the depth."""
    from pcgraph import _segments

    def deep(depth):
        keys = jax.random.split(jax.random.PRNGKey(1), depth + 1)
        layers = [{"w": jax.random.normal(k, (8, 8)), "b": jnp.zeros(8)} for k in keys]
        return layers, jnp.ones((4, 8)), jnp.ones((4, 8))

    def segment_traces(depth) -> int:
        calls = []

        def counted(*args):
            calls.append(None)
            return run(*args)

        jax.clear_caches()
        _segments._segment_program.cache_clear()
        monkeypatch.setattr(_segments, "_run_segment", counted)
        jax.make_jaxpr(pcgraph.grad(loss, algorithm=algorithm))(*deep(depth))
        monkeypatch.setattr(_segments, "_run_segment", run)
        return len(calls)

    run = _segments._run_segment
    shallow, deeper = segment_traces(3), segment_traces(12)
    assert 0 < shallow == deeper


@pytest.mark.parametrize("algorithm", [pcgraph.IL(rtol=1e-3), pcgraph.FPA()])
def test_no_host_round_trip_inside_the_relaxation_loop(problem, algorithm):
    hlo = jax.jit(pcgraph.grad(loss, algorithm=algorithm)).lower(*problem).compile().as_text()
    computations = _computations(hlo)
    loops = re.findall(r" while\(.*?condition=%?([\w.\-]+), body=%?([\w.\-]+)", hlo)
    assert len(loops) == 1
    inside = set().union(*(_reachable(name, computations) for name in loops[0]))
    assert len(inside) >= 2
    callbacks = {
        name
        for name, text in computations.items()
        if re.search(r'custom_call_target="[^"]*python[^"]*"', text)
    }
    # The failure check (throw=True) calls back to Python once, after the loop; never inside.
    assert callbacks, "expected the failure check after the loop"
    assert not inside & callbacks


@pytest.mark.slow
def test_scale_benchmark_quick_run():
    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "scale.py"
    run = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [
        line
        for line in run.stdout.splitlines()
        if line.startswith("| mlp") or line.startswith("| cnn")
    ]
    # Memory: 10 gradients for each of 2 models and FPA by hand for the MLP; donation: 2
    # steps, donated or not; compile time: 5 gradients for each of 2 networks.
    assert len(rows) == 2 * 10 + 1 + 2 * 2 + 2 * 5
    assert all(re.search(r"\| \d+\.\d\d \|", row) for row in rows)
