"""FPA gradients equal jax.grad on a zoo of programs; the drop-in API behaves like JAX's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RTOL, ZOO, assert_grads_close, tanh_mlp, tree_allclose

import pcgraph


@pytest.mark.parametrize("model", list(ZOO))
def test_fpa_matches_jax_grad(model, dtype):
    fn, args, kwargs = ZOO[model](jax.random.PRNGKey(0), dtype)
    pc = pcgraph.grad(fn, **kwargs)(*args)
    reference = jax.grad(fn, **kwargs)(*args)
    if kwargs.get("has_aux"):
        assert tree_allclose(pc[1], reference[1], rtol=RTOL[dtype])
        pc, reference = pc[0], reference[0]
    assert_grads_close(pc, reference, RTOL[dtype])


@pytest.mark.parametrize("model", ["tanh_mlp", "with_aux", "two_argnums"])
def test_value_and_grad_matches_jax(model, dtype):
    fn, args, kwargs = ZOO[model](jax.random.PRNGKey(1), dtype)
    (value, grads) = pcgraph.value_and_grad(fn, **kwargs)(*args)
    ref_value, ref_grads = jax.value_and_grad(fn, **kwargs)(*args)
    assert tree_allclose(value, ref_value, rtol=RTOL[dtype])
    assert_grads_close(grads, ref_grads, RTOL[dtype])


@pytest.mark.parametrize("model", ["tanh_mlp_marked", "custom_derivatives", "control_flow"])
def test_under_jit(model, dtype):
    fn, args, kwargs = ZOO[model](jax.random.PRNGKey(2), dtype)
    pc = jax.jit(pcgraph.grad(fn, **kwargs))(*args)
    assert_grads_close(pc, jax.grad(fn, **kwargs)(*args), RTOL[dtype])


@pytest.mark.parametrize(
    "algorithm", [pcgraph.FPA(), pcgraph.IL(beta=1e-3, rtol=1e-6, max_steps=2000)]
)
def test_per_example_gradients_under_vmap(algorithm, x64):
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(3), jnp.float64, mark=True)

    def example_loss(params, x, y):
        return fn(params, x[None], y[None])

    pc = jax.vmap(pcgraph.grad(example_loss, algorithm=algorithm), in_axes=(None, 0, 0))(
        params, x, y
    )
    reference = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
    # IL at beta=1e-3 is within O(beta) of backprop.
    rtol = 1e-10 if isinstance(algorithm, pcgraph.FPA) else 1e-2
    assert_grads_close(pc, reference, rtol)


def test_optax_training_loop_follows_backprop(x64):
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(4), jnp.float64, mark=True)
    optimizer = optax.adam(1e-2)

    def train(grad_fn):
        @jax.jit
        def step(params, state):
            updates, state = optimizer.update(grad_fn(params, x, y), state, params)
            return optax.apply_updates(params, updates), state

        p, state = params, optimizer.init(params)
        for _ in range(30):
            p, state = step(p, state)
        return p

    trained_pc = train(pcgraph.grad(fn))
    trained_bp = train(jax.grad(fn))
    assert fn(trained_pc, x, y) < 0.7 * fn(params, x, y)
    assert tree_allclose(trained_pc, trained_bp, rtol=1e-8, atol=1e-10)


def test_no_retrace_for_same_shapes():
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(5), jnp.float32)
    counted = chex.assert_max_traces(fn, n=1)
    grad_fn = pcgraph.grad(counted)
    first = grad_fn(params, x, y)
    second = grad_fn(jax.tree.map(lambda a: a + 1, params), x + 1, y)
    assert not tree_allclose(first, second)
    # A second `pcgraph.grad` of the same function shares the compiled solve.
    pcgraph.grad(counted)(params, x, y)
    with pytest.raises(AssertionError, match="traced > 1 times"):
        grad_fn(params, x[:2], y[:2])


def test_python_float_argument_like_jax():
    def fn(theta, x):
        return jnp.sin(theta * x) ** 2

    assert np.allclose(pcgraph.grad(fn)(0.3, 2.0), jax.grad(fn)(0.3, 2.0), rtol=1e-6)


def test_closure_arrays_are_constants(dtype):
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(6), dtype)
    scale = jnp.linspace(0.5, 1.5, x.shape[1], dtype=dtype)

    def closed(params):
        return fn(params, x * scale, y)

    assert_grads_close(pcgraph.grad(closed)(params), jax.grad(closed)(params), RTOL[dtype])


def test_integer_paths_carry_no_gradient(dtype):
    """argmax used as an index: the gradient flows through the gathered value only."""
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(7), dtype)

    def picked(params, x):
        h = jnp.tanh(x @ params[0]["w"])
        best = jnp.argmax(h, axis=-1)
        chosen = jnp.take_along_axis(h, best[:, None], axis=-1)
        return jnp.sum(chosen**2) + jnp.sum(params[1]["w"][best] ** 2)

    assert_grads_close(pcgraph.grad(picked)(params, x), jax.grad(picked)(params, x), RTOL[dtype])


def test_stop_gradient_blocks_like_jax(dtype):
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(8), dtype)

    def blocked(params, x):
        h = jnp.tanh(x @ params[0]["w"])
        return jnp.sum(jax.lax.stop_gradient(h) @ params[1]["w"]) + jnp.sum(h**2)

    assert_grads_close(pcgraph.grad(blocked)(params, x), jax.grad(blocked)(params, x), RTOL[dtype])


def test_loss_without_parameter_dependence_gives_zeros():
    def constant(w, x):
        return jnp.sum(x**2)

    grads = pcgraph.grad(constant)(jnp.ones(3), jnp.ones(2))
    assert tree_allclose(grads, jnp.zeros(3))


def test_data_only_while_loop_is_fine(dtype):
    """A while_loop that only touches data is a constant for the graph, as for jax.grad."""
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(9), dtype)

    def with_loop(params, x, y):
        x = jax.lax.while_loop(lambda v: jnp.max(jnp.abs(v)) > 1, lambda v: v / 2, x)
        return fn(params, x, y)

    assert_grads_close(
        pcgraph.grad(with_loop)(params, x, y), jax.grad(with_loop)(params, x, y), RTOL[dtype]
    )
