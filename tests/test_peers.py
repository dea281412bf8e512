"""The peer benchmark (`benchmarks/peers/`): its tasks are the networks they claim to be, its
pcgraph run is the standard inference-learning algorithm, and its statistics are right."""

import importlib
import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from helpers import tree_allclose

import pcgraph

PEERS = pathlib.Path(__file__).parents[1] / "benchmarks" / "peers"


@pytest.fixture(scope="module")
def peers():
    """The benchmark's modules, imported from their folder (they import each other by name)."""
    names = ("common", "pcgraph_adapter", "run")
    sys.path.insert(0, str(PEERS))
    try:
        yield tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(PEERS))
        for name in names:  # generic module names: leave none behind for other tests
            sys.modules.pop(name, None)


def test_matmul_floor_is_the_products_of_an_il_train_step(peers):
    """The floor under every library's MLP step: the feedforward pass's products, a
    prediction and a pull-back per node above the first at each inference step, and one
    weight-gradient product per layer; nothing for any other task."""
    common, _, _ = peers
    task = common.make_task("mlp", (8, 8, 1))
    weights = common.init_weights(task, seed=0)
    floor = common.MatmulFloor(task, weights)
    x = np.ones((common.BATCH_SIZE, task.in_size), np.float32)
    weight_grads = floor._step(floor.weights_list, x)
    layers = range(task.hidden_layers + 1)
    assert [g.shape for g in weight_grads] == [weights[f"w{i}"].shape for i in layers]
    program = floor._step.lower(floor.weights_list, x).as_text()
    per_layer = task.hidden_layers + 1
    per_inference_step = 2 * task.hidden_layers  # the loop body appears once in the program
    assert program.count("dot_general") == 2 * per_layer + per_inference_step
    with pytest.raises(ValueError, match="defined for the MLP task"):
        common.MatmulFloor(common.make_task("cnn", (8, 8, 1)), weights)


def test_elementwise_floor_is_inference_learning_without_products(peers):
    """The second floor under every library's MLP step computes the inference steps'
    elementwise work: with weights `eye(fan_in, fan_out)`, for which each product it leaves out
    is what it computes instead, it reaches the hidden values pcgraph's IL reaches; its program
    has no product at all."""
    common, pcgraph_adapter, _ = peers
    task = common.make_task("mlp", (8, 8, 1))
    weights = common.init_weights(task, seed=0)
    rng = np.random.default_rng(1)
    for i in range(task.hidden_layers + 1):
        weights[f"w{i}"] = np.eye(*weights[f"w{i}"].shape, dtype=np.float32)
        weights[f"b{i}"] = rng.normal(0, 0.1, weights[f"b{i}"].shape).astype(np.float32)
    x = rng.uniform(0, 1, (common.BATCH_SIZE, task.in_size)).astype(np.float32)
    y = common.one_hot(rng.integers(0, common.NUM_CLASSES, common.BATCH_SIZE))
    floor = common.ElementwiseFloor(task, weights)
    hidden = floor._step(floor.biases, x, y)
    algorithm = pcgraph.IL(
        stepper=pcgraph.Euler(common.INFERENCE_STEP_SIZE), max_steps=common.INFERENCE_STEPS
    )
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    loss = pcgraph_adapter.make_loss(task)
    solution = pcgraph.relax(loss, params, x, y, algorithm=algorithm)
    relaxed = [solution.values[f"z{i}"] for i in range(1, task.hidden_layers + 1)]
    assert tree_allclose(hidden, relaxed, rtol=1e-5, atol=1e-6)  # float32
    assert "dot_general" not in floor._step.lower(floor.biases, x, y).as_text()
    with pytest.raises(ValueError, match="elementwise floor is defined for the MLP task"):
        common.ElementwiseFloor(common.make_task("cnn", (8, 8, 1)), weights)


def test_residual_task_is_pcgraphs_mupc_network(peers):
    common, _, _ = peers
    task = common.make_task("resnet", (8, 8, 1))
    weights = common.init_weights(task, seed=3)
    model = pcgraph.nn.ResidualMLP(
        depth=task.depth - 1, width=task.width, in_size=task.in_size, out_size=10,
        parameterisation=pcgraph.nn.MuPC(), key=jax.random.key(0),
    )  # fmt: skip
    model = eqx_replace_weights(model, [weights[f"w{i}"].T for i in range(task.depth)])
    x = np.random.default_rng(0).uniform(size=(5, task.in_size)).astype(np.float32)
    expected = jax.vmap(model)(x)
    np.testing.assert_allclose(common.forward(task, weights, x), expected, rtol=1e-5, atol=1e-6)


def eqx_replace_weights(model, weights):
    import equinox as eqx

    return eqx.tree_at(lambda m: m.weights, model, tuple(jnp.asarray(w) for w in weights))


def hand_written_il_gradient(common, task, params, x, y):
    """Inference learning written out: the hidden states start at the feedforward pass, take
    `INFERENCE_STEPS` Euler steps on the batch-summed energy, and the weight gradient is the
    energy's at the relaxed states."""
    layers = common.layers(task)

    def energy(params, zs):
        inputs = [x, *zs]
        terms = [0.5 * jnp.sum((z - f(params, h)) ** 2) for z, f, h in zip(zs, layers, inputs)]
        return sum(terms) + common.output_energy(layers[-1](params, zs[-1]), y)

    zs, h = [], x
    for layer in layers[:-1]:
        h = layer(params, h)
        zs.append(h)
    for _ in range(common.INFERENCE_STEPS):
        forces = jax.grad(energy, argnums=1)(params, zs)
        zs = [z - common.INFERENCE_STEP_SIZE * g for z, g in zip(zs, forces)]
    return jax.grad(energy)(params, zs)


@pytest.mark.parametrize("task_name", ["mlp", "cnn"])
def test_pcgraph_run_is_standard_inference_learning(peers, task_name):
    common, adapter, _ = peers
    task = common.make_task(task_name, (8, 8, 1))
    weights = common.init_weights(task, seed=0)
    rng = np.random.default_rng(1)
    x = common.inputs_for(task, rng.uniform(size=(16, 8, 8, 1)).astype(np.float32))
    y = common.one_hot(rng.integers(0, 10, size=16))
    trainer = adapter.make_trainer(task, weights, optax.sgd(1.0))
    trainer.step(x, y)
    trainer.sync()
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    expected = hand_written_il_gradient(common, task, params, x, y)
    after = trainer.weights()
    for name, gradient in expected.items():
        scale = float(jnp.max(jnp.abs(gradient)))
        np.testing.assert_allclose(
            weights[name] - after[name], gradient, atol=1e-5 * scale, err_msg=name
        )


def test_initial_weights_and_minibatches_depend_only_on_the_seed(peers):
    common, _, _ = peers
    task = common.make_task("cnn", (8, 8, 1))
    first, again, other = (common.init_weights(task, s) for s in (0, 0, 1))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["conv0_w"], other["conv0_w"])
    order = common.batch_order(200, epochs=2, seed=5)
    assert order.shape == (2, 200 // common.BATCH_SIZE, common.BATCH_SIZE)
    assert np.array_equal(order, common.batch_order(200, epochs=2, seed=5))
    assert len(np.unique(order[0])) == order[0].size  # no example twice in an epoch


def test_interval_and_paired_test(peers):
    _, _, run = peers
    values = [0.91, 0.93, 0.92, 0.95, 0.90]
    mean, half = run.mean_interval(values)
    low, high = scipy.stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values)
    )
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((high - low) / 2)
    assert math.isnan(run.mean_interval([0.9])[1])  # one seed: no interval, not a made-up one
    difference, p = run.paired_test([0.9, 0.8, 0.7], [0.85, 0.8, 0.6])
    assert difference == pytest.approx(0.05)
    assert p == pytest.approx(scipy.stats.ttest_rel([0.9, 0.8, 0.7], [0.85, 0.8, 0.6]).pvalue)
    # Every seed differs by the same amount: the t statistic is undefined, so no p-value.
    assert math.isnan(run.paired_test([0.9, 0.8], [0.8, 0.7])[1])


def test_step_table_sets_pcgraph_and_the_floors_against_the_fastest_peer(peers):
    _, _, run = peers
    milliseconds = {
        "pcgraph": 2.0,
        "pcgraph (defaults)": 3.0,
        "fabricpc": 2.5,
        "pcx": 4.0,
        "backprop (current)": 0.4,
        "matmuls alone (current)": 1.6,
        "elementwise alone (current)": 0.5,
        "matmuls alone (jax04)": 1.2,  # another environment's floor is not the reference
    }
    steps = {name: ms / 1e3 for name, ms in milliseconds.items()}
    table = run.markdown([], steps, {}, {}, "header")
    assert "| fabricpc | 2.50 | 1.25 | 0.80 |" in table
    assert (
        "pcgraph / fastest peer: 0.80; pcgraph / matmuls alone: 1.25; fastest peer / matmuls "
        "alone: 1.56; matmuls + elementwise alone: 2.10 ms, 0.84x the fastest peer"
    ) in table


def test_update_agreement_is_a_relative_error_per_leaf(peers):
    """Per leaf and by relative error: a 0.25x update (a cosine of 1) and a deep layer's tiny
    update gone wrong (invisible in one global cosine) both show."""
    _, _, run = peers
    initial = {"w": np.zeros(3), "b": np.zeros(2)}
    ours = {"w": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1e-6])}
    assert run.update_agreement(ours, ours, initial) == {"w": 0.0, "b": 0.0}
    scaled = {k: 0.25 * v for k, v in ours.items()}  # a library that averages the batch
    assert run.update_agreement(ours, scaled, initial) == pytest.approx({"w": 0.75, "b": 0.75})
    deep = {"w": ours["w"], "b": np.array([0.0, -1e-6])}  # a global cosine is still ~1
    flat = lambda d: np.concatenate([d["w"], d["b"]])  # noqa: E731
    assert flat(ours) @ flat(deep) / np.linalg.norm(flat(ours)) ** 2 == pytest.approx(1.0)
    assert run.update_agreement(ours, deep, initial) == pytest.approx({"w": 0.0, "b": 2.0})
    assert run.worst_leaf(run.update_agreement(ours, deep, initial)) == pytest.approx(2.0)


def test_a_dataset_without_its_files_is_refused(tmp_path):
    """`--dataset mnist` without `--data-dir` would fall back to digits under an "(mnist)"
    title: refused."""
    command = [sys.executable, str(PEERS / "run.py"), "--dataset", "mnist", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "--dataset mnist needs --data-dir" in done.stderr


def test_table_records_seeds_and_failed_runs(peers):
    _, _, run = peers
    good = {"accuracy": 0.9, "epoch_time": 0.1, "compile_time": 1.0, "peak_memory": 2**20,
            "memory_source": "rss", "finite": True}  # fmt: skip
    runs = [
        {**good, "task": "mlp", "seed": 0, "method": "pc", "library": "pcgraph"},
        {"error": "boom", "task": "mlp", "seed": 1, "method": "pc", "library": "pcgraph"},
        {**good, "task": "mlp", "seed": 0, "method": "bp", "library": "current"},
    ]
    rows = run.summarise(runs, {})
    pc = next(r for r in rows if r["library"] == "pcgraph")
    assert pc["seeds"] == 1 and pc["failed"] == 1
    table = run.markdown(rows, {}, {}, {}, "header")
    assert "| mlp | pcgraph | 1 (1) |" in table


@pytest.mark.slow
def test_benchmark_runs_and_writes_its_table(tmp_path):
    command = [sys.executable, str(PEERS / "run.py"), "--libraries", "pcgraph", "--tasks", "mlp"]
    command += ["--seeds", "2", "--epochs", "2", "--step-rounds", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "| mlp | pcgraph |" in table and "| mlp | backprop (current) |" in table
    assert "| pcgraph | " in table  # the train-step timing table, with its floor
    assert "| matmuls alone (current) | " in table and "| elementwise alone (current) | " in table
    results = json.loads((tmp_path / "results.json").read_text())
    pc = [r for r in results["runs"] if r["method"] == "pc"]
    assert len(pc) == 2 and all(0.5 < r["accuracy"] <= 1 for r in pc)
    assert max(results["checks"]["mlp"]["pcgraph"].values()) == 0.0
    assert (tmp_path / "peers.png").stat().st_size > 0
