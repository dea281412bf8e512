"""Data parallelism on JAX's own sharding: a batch sharded over a 4-device mesh.

JAX fixes its device count when it starts, so the checks run in a fresh Python process with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (four CPU devices); it prints its
measurements as JSON and the tests below assert on them.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import pcgraph

assert jax.device_count() == 4, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("batch",))
batch_sharding = NamedSharding(mesh, P("batch"))
replicated = NamedSharding(mesh, P())


def loss(params, x, y):
    h = x
    for i, layer in enumerate(params[:-1]):
        h = pcgraph.node(jnp.tanh(h @ layer["w"] + layer["b"]), name=f"hidden{i}")
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))


def problem():
    sizes = (6, 16, 12, 4)
    keys = jax.random.split(jax.random.key(0), len(sizes) + 1)
    params = [
        {
            "w": jax.random.normal(k, (m, n)) / np.sqrt(m),
            "b": 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (n,)),
        }
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]
    x = jax.random.normal(keys[-2], (32, sizes[0]))
    y = jax.nn.one_hot(jax.random.randint(keys[-1], (32,), 0, sizes[-1]), sizes[-1])
    return params, x, y


def max_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in pairs)


def spec_of(tree):
    # Every leaf's sharding: its PartitionSpec and whether each device holds all of it.
    return sorted(
        {(tuple(leaf.sharding.spec), leaf.sharding.is_fully_replicated,
          len(leaf.sharding.device_set)) for leaf in jax.tree.leaves(tree)}
    )


algorithms = {
    "FPA": pcgraph.FPA(),
    "IL": pcgraph.IL(beta=0.1, stepper=pcgraph.Euler(0.1), max_steps=50, rtol=None),
}
results = {}
for name, algorithm in algorithms.items():
    params, x, y = problem()
    sharded = (
        jax.device_put(params, replicated),
        jax.device_put(x, batch_sharding),
        jax.device_put(y, batch_sharding),
    )
    grad_fn = pcgraph.grad(loss, algorithm=algorithm)
    single = jax.jit(grad_fn)(params, x, y)  # one device
    compiled = jax.jit(grad_fn).lower(*sharded).compile()
    on_mesh = compiled(*sharded)
    # The relaxation's own state, with throw=False: see test_relaxation_stays_data_parallel.
    quiet = eqx.tree_at(lambda a: a.throw, algorithm, False)
    solution = jax.jit(lambda p, x, y: pcgraph.relax(loss, p, x, y, algorithm=quiet))(*sharded)
    case = results[name] = {
        "input_shards": sorted({s.data.shape for s in sharded[1].addressable_shards}),
        "mesh_vs_single": max_diff(on_mesh, single),
        "single_vs_jax_grad": max_diff(single, jax.grad(loss)(params, x, y)),
        "grad_sharding": spec_of(on_mesh),
        "error_sharding": spec_of(solution.errors),
        "num_steps": int(solution.stats.num_steps),
        "all_gathers": compiled.as_text().count(" all-gather("),
    }
    if name == "FPA":
        eager_on_mesh = grad_fn(*sharded)  # without an outer jit
        case["eager_mesh_vs_single"] = max_diff(eager_on_mesh, single)
        case["eager_grad_sharding"] = spec_of(eager_on_mesh)

# One optax training step with pcgraph.train_step on the mesh and on one device.
params, x, y = problem()
optimizer = optax.sgd(0.1)
step = jax.jit(pcgraph.train_step(loss, optimizer))
new_single, _, info_single = step(params, optimizer.init(params), x, y)
sharded_params = jax.device_put(params, replicated)
new_mesh, _, info_mesh = step(
    sharded_params, optimizer.init(sharded_params), jax.device_put(x, batch_sharding),
    jax.device_put(y, batch_sharding),
)
results["train_step"] = {
    "mesh_vs_single": max_diff(new_mesh, new_single),
    "params_sharding": spec_of(new_mesh),
    "loss_diff": abs(float(info_mesh.loss) - float(info_single.loss)),
}
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def results():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False
    )
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


CASES = ["FPA", "IL"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_sharded_gradient_equals_single_device(results, case):
    r = results[case]
    assert r["input_shards"] == [[8, 6]]  # 32 examples, 8 per device
    assert r["mesh_vs_single"] <= 1e-6
    if case == "FPA":
        # FPA is exact, so the single-device reference itself equals jax.grad.
        assert r["single_vs_jax_grad"] <= 1e-6
    else:
        assert r["num_steps"] == 50


@pytest.mark.parametrize("case", CASES)
def test_gradients_come_back_replicated(results, case):
    r = results[case]
    assert r["grad_sharding"] == [[[], True, 4]]


@pytest.mark.parametrize("case", CASES)
def test_relaxation_stays_data_parallel(results, case):
    # The node errors keep the batch split over the devices: each device relaxes its own
    # examples, and the compiled gradient gathers no activity from other devices (the only
    # communication is the sum over the batch: the energy and the gradients). `relax` runs
    # with throw=False here: with throw=True under jit, the host callback of its failure
    # check returns the whole Solution replicated, gathering every node's values and errors.
    r = results[case]
    assert r["error_sharding"] == [[["batch"], False, 4]]
    assert r["all_gathers"] == 0


def test_train_step_on_the_mesh(results):
    r = results["train_step"]
    assert r["mesh_vs_single"] <= 1e-6
    assert r["loss_diff"] <= 1e-6
    assert r["params_sharding"] == [[[], True, 4]]


def test_without_an_outer_jit(results):
    # pcgraph.grad compiles its own solve; called eagerly on sharded arrays it gives the same.
    r = results["FPA"]
    assert r["eager_mesh_vs_single"] <= 1e-6
    assert r["eager_grad_sharding"] == [[[], True, 4]]
