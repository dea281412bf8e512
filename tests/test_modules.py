"""Models as users write them, passed as they are: the equinox documentation's MNIST CNN (a
list of Conv2d, MaxPool2d, Linear layers and plain functions, applied per image under
`jax.vmap`) and a flax nnx MLP go through `trace`, `relax`, `check_grad`, `train_step` and
`pcgraph check` with no change but `import pcgraph`."""

import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from helpers import tree_allclose

import pcgraph
from pcgraph._cli import main


class CNN(eqx.Module):
    """The equinox documentation's MNIST CNN, on 10 x 10 images to keep the test small."""

    layers: list

    def __init__(self, key):
        key1, key2, key3, key4 = jax.random.split(key, 4)
        self.layers = [
            eqx.nn.Conv2d(1, 3, kernel_size=4, key=key1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(3 * 6 * 6, 32, key=key2),
            jax.nn.sigmoid,
            eqx.nn.Linear(32, 16, key=key3),
            jax.nn.relu,
            eqx.nn.Linear(16, 10, key=key4),
            jax.nn.log_softmax,
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def cnn_loss(model, x, y):
    pred_y = jax.vmap(model)(x)
    return -jnp.mean(jnp.take_along_axis(pred_y, jnp.expand_dims(y, 1), axis=1))


def cnn_problem():
    model = CNN(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 1, 10, 10))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 10)
    return model, x, y


def nnx_mlp():
    return nnx.Sequential(
        nnx.Linear(6, 16, rngs=nnx.Rngs(0)),
        nnx.gelu,
        nnx.Linear(16, 16, rngs=nnx.Rngs(1)),
        nnx.gelu,
        nnx.Linear(16, 3, rngs=nnx.Rngs(2)),
    )


def nnx_loss(model, x, y):
    logits = model(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def nnx_problem():
    x = jax.random.normal(jax.random.key(3), (8, 6))
    y = jax.random.randint(jax.random.key(4), (8,), 0, 3)
    return nnx_mlp(), x, y


PROBLEMS = {"equinox_cnn": (cnn_loss, cnn_problem), "flax_nnx_mlp": (nnx_loss, nnx_problem)}


@pytest.fixture(params=sorted(PROBLEMS))
def problem(request):
    loss, make = PROBLEMS[request.param]
    return loss, *make()


def _filtered_reference(loss, model, x, y):
    return eqx.filter_grad(loss)(model, x, y)


def test_trace_places_one_node_per_layer(problem):
    loss, model, x, y = problem
    graph = pcgraph.trace(loss, model, x, y)
    # The CNN: conv (+ pool, relu, ravel), two hidden linears; the MLP: two hidden layers.
    assert len(graph.nodes) == 3 if loss is cnn_loss else 2
    assert graph.placement.name == "layers"
    assert all(".weight" in n or ".bias" in n or ".kernel" in n for n in graph.param_names)


@pytest.mark.parametrize("algorithm", [pcgraph.FPA(), pcgraph.IL(), pcgraph.EPC()])
def test_relax_gives_node_errors_and_filtered_grads(problem, algorithm):
    loss, model, x, y = problem
    solution = pcgraph.relax(loss, model, x, y, algorithm=algorithm)
    graph = pcgraph.trace(loss, model, x, y)
    assert set(solution.errors) == set(graph.node_names)
    assert all(bool(jnp.all(jnp.isfinite(e))) for e in solution.errors.values())
    reference = _filtered_reference(loss, model, x, y)
    # The structure of `equinox.filter_grad`'s: None at every function and flag.
    assert jax.tree.structure(solution.grads) == jax.tree.structure(reference)
    if isinstance(algorithm, pcgraph.FPA):
        assert tree_allclose(solution.grads, reference, rtol=1e-4, atol=1e-6)


def test_check_grad(problem):
    loss, model, x, y = problem
    report = pcgraph.check_grad(loss, model, x, y)
    assert len(report.leaves) == len(jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    report.assert_close(rtol=1e-4, atol=1e-6)


def test_check_grad_fails_on_a_wrong_gradient(problem):
    """The comparison is real: a loss whose PC gradient differs (IL with a large output
    weight on few steps) is not within FPA's tolerance."""
    loss, model, x, y = problem
    report = pcgraph.check_grad(
        loss, model, x, y, algorithm=pcgraph.IL(beta=1.0, stepper=pcgraph.Euler(0.1), max_steps=2)
    )
    with pytest.raises(AssertionError):
        report.assert_close(rtol=1e-4, atol=1e-6)


def test_train_step_takes_the_model_and_an_equinox_optimiser_state(problem):
    loss, model, x, y = problem
    optimizer = optax.adam(1e-2)
    step = pcgraph.train_step(loss, optimizer)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    reference, reference_state = model, opt_state
    for _ in range(3):
        model, opt_state, info = step(model, opt_state, x, y)
        grads = eqx.filter_grad(loss)(reference, x, y)
        updates, reference_state = optimizer.update(
            grads, reference_state, eqx.filter(reference, eqx.is_array)
        )
        reference = eqx.apply_updates(reference, updates)
    assert type(model) is type(reference)
    # Functions and flags come back as they were; the arrays as backprop trained them.
    assert jax.tree.structure(model) == jax.tree.structure(reference)
    assert tree_allclose(
        eqx.filter(model, eqx.is_array), eqx.filter(reference, eqx.is_array), rtol=1e-4, atol=1e-6
    )
    assert float(info.loss) < float(loss(*problem[1:]))


def test_train_step_with_il_lowers_the_loss(problem):
    loss, model, x, y = problem
    optimizer = optax.adam(3e-3)
    step = eqx.filter_jit(pcgraph.train_step(loss, optimizer, algorithm=pcgraph.IL()))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    first = float(loss(model, x, y))
    for _ in range(10):
        model, opt_state, _ = step(model, opt_state, x, y)
    assert float(loss(model, x, y)) < first


def test_grad_names_filter_grad_for_a_module():
    model, x, y = cnn_problem()
    with pytest.raises(TypeError, match=r"is a .*pcgraph\.filter_grad.*equinox\.filter_grad"):
        pcgraph.grad(cnn_loss)(model, x, y)


def test_filter_grad_equals_the_filtered_relax():
    model, x, y = cnn_problem()
    assert tree_allclose(
        pcgraph.filter_grad(cnn_loss)(model, x, y),
        pcgraph.relax(cnn_loss, model, x, y).grads,
        rtol=1e-6,
        atol=1e-8,
    )


def test_cli_check_on_a_module(tmp_path, capsys):
    """`pcgraph check` on a factory returning the CNN as it is."""
    problem_file = tmp_path / "cnn_problem.py"
    problem_file.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
            from test_modules import cnn_loss, cnn_problem


            def make_problem():
                return cnn_loss, cnn_problem()
            """
        )
    )
    assert main(["check", f"{problem_file}:make_problem"]) == 0
    out = capsys.readouterr().out
    assert ".layers[0].weight" in out and ".layers[8].bias" in out
