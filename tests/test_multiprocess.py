"""Data-parallel predictive coding over two processes (JAX's multi-process runtime, joined by
`jax.distributed` on a local port, CPU collectives through gloo) against one process.

`examples/multi_process.py` runs in each process: it loads its half of every global batch,
trains an MLP for 20 Adam steps with `pcgraph.train_step`, relaxes one batch with
`pcgraph.relax`, and process 0 writes the parameters (an `equinox` checkpoint) and the
relaxation's gradients and node errors (gathered from both processes). Each run starts fresh
Python processes, as JAX fixes its devices and processes when it starts.
"""

import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "multi_process.py"


def _run(out: pathlib.Path, *args: str, devices: int = 1) -> tuple[dict, str]:
    """Run the example (`devices` CPU devices per process) and read what process 0 wrote."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=EXAMPLE.parents[1],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with np.load(out / "results.npz") as results:
        return dict(results), result.stdout


def _max_difference(a: dict, b: dict, prefix: str) -> float:
    keys = sorted(k for k in a if k.startswith(prefix))
    assert keys and keys == sorted(k for k in b if k.startswith(prefix))
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


@pytest.mark.slow  # about 4 minutes on 2 shared cores: three processes start and compile
def test_two_processes_train_like_one(tmp_path):
    one, _ = _run(tmp_path / "one", "--algorithm", "fpa")
    two, output = _run(tmp_path / "two", "--algorithm", "fpa", "--num-processes", "2")
    # Each process held its own half of every batch, and the node errors stayed split.
    assert "[process 0] 1 of 2 devices (2 process(es)); rows 0-31" in output
    assert "[process 1] 1 of 2 devices (2 process(es)); rows 32-63" in output
    assert "[process 1] relax: node error hidden1 [64, 64], held by this process: [[32, 64]]" in (
        output
    )
    # 20 training steps: the parameters and the losses; then pcgraph.relax on one batch.
    # Measured: 6.0e-8 (parameters), 1.1e-8 (gradients), 2.3e-9 (node errors); the losses
    # (about 2) to 2 units in the last place.
    assert _max_difference(two, one, "params") <= 1e-6
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)
    assert _max_difference(two, one, "grads") <= 1e-6
    assert _max_difference(two, one, "errors") <= 1e-6
    assert two["losses"][-1] < two["losses"][0]

    # Process 0's checkpoint holds the trained parameters (a list of layers {"w", "b"}).
    saved = [{"w": two[f"params[{i}]['w']"], "b": two[f"params[{i}]['b']"]} for i in range(3)]
    template = jax.tree.map(np.zeros_like, saved)
    restored = eqx.tree_deserialise_leaves(tmp_path / "two" / "params.eqx", template)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # about 4 minutes on 2 shared cores
def test_il_over_two_processes_equals_the_same_mesh_in_one_process(tmp_path):
    # IL's training trajectory amplifies round-off more than FPA's: against one device, the
    # batch sums' different order gives 3e-8 after the first step and 4.6e-6 after 20 (one
    # process with two devices as much). Over the same two-device mesh, one process and two
    # compute the same numbers (measured: equal to the bit).
    two, _ = _run(tmp_path / "two", "--num-processes", "2")
    mesh, output = _run(tmp_path / "mesh", devices=2)
    assert "[process 0] 2 of 2 devices (1 process(es)); rows 0-63" in output
    for prefix in ("params", "losses", "grads", "errors"):
        assert _max_difference(two, mesh, prefix) <= 1e-6, prefix
