"""Differentiating through `pcgraph.grad`: gradient penalties, meta-learning, Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, residual_block, tanh_mlp
from jax.flatten_util import ravel_pytree

import pcgraph


def penalty(grads):
    """A gradient penalty: the squared norm of the gradient."""
    return sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))


def penalised(grad_fn, fn):
    return lambda params, *data: penalty(grad_fn(fn)(params, *data))


@pytest.mark.parametrize("model", ["marked_mlp", "residual_block"])
def test_grad_of_fpa_grad_equals_jax(model, x64):
    # FPA's errors after `graph.depth` Euler(1.0) steps are backprop's adjoints, computed by
    # the same products as a function of the parameters, so their derivatives agree too.
    key = jax.random.PRNGKey(0)
    if model == "marked_mlp":
        fn, (params, *data), _ = tanh_mlp(key, jnp.float64, mark=True)
    else:
        fn, (params, *data), _ = residual_block(key, jnp.float64)
    pc = jax.jit(jax.grad(penalised(pcgraph.grad, fn)))(params, *data)
    reference = jax.jit(jax.grad(penalised(jax.grad, fn)))(params, *data)
    assert_grads_close(pc, reference, 1e-8)


def small_mlp(key):
    """One marked tanh layer and a linear head: few parameters, so that a Hessian is cheap."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "w1": jax.random.normal(k1, (3, 4), jnp.float64),
        "w2": jax.random.normal(k2, (4, 2), jnp.float64) / 2,
    }
    x, y = jax.random.normal(k3, (5, 3), jnp.float64), jax.random.normal(k4, (5, 2), jnp.float64)

    def fn(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params["w1"]), name="hidden")
        return jnp.mean((h @ params["w2"] - y) ** 2)

    return fn, (params, x, y)


@pytest.mark.slow
def test_fpa_hessian_in_both_modes(x64):
    fn, (params, *data) = small_mlp(jax.random.PRNGKey(1))
    hessian = jax.jit(jax.hessian(fn))(params, *data)
    assert_grads_close(jax.jacrev(pcgraph.grad(fn))(params, *data), hessian, 1e-8)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, pc = jax.jvp(lambda p: pcgraph.grad(fn)(p, *data), (params,), (tangent,))
    _, reference = jax.jvp(lambda p: jax.grad(fn)(p, *data), (params,), (tangent,))
    assert_grads_close(pc, reference, 1e-8)


@pytest.mark.slow
def test_grad_of_il_grad_matches_finite_differences(x64):
    fn, (params, *data) = small_mlp(jax.random.PRNGKey(2))
    il = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=100, rtol=None)
    objective = jax.jit(penalised(lambda f: pcgraph.grad(f, algorithm=il), fn))
    grads = jax.grad(objective)(params, *data)
    flat, unflatten = ravel_pytree(params)
    flat_grads, _ = ravel_pytree(grads)
    assert np.all(np.isfinite(flat_grads))
    h = 1e-5
    for key in jax.random.split(jax.random.PRNGKey(3), 2):
        direction = jax.random.normal(key, flat.shape, flat.dtype)
        plus = objective(unflatten(flat + h * direction), *data)
        minus = objective(unflatten(flat - h * direction), *data)
        np.testing.assert_allclose(flat_grads @ direction, (plus - minus) / (2 * h), rtol=1e-7)


def test_tolerance_relaxation_is_forward_differentiable_only(x64):
    fn, (params, *data) = small_mlp(jax.random.PRNGKey(4))
    algorithm = pcgraph.FPA(rtol=1e-10, max_steps=20)
    grad_fn = pcgraph.grad(fn, algorithm=algorithm)
    with pytest.raises(RuntimeError, match=r"stops on a tolerance.*`rtol=None`"):
        jax.grad(lambda p: penalty(grad_fn(p, *data)))(params)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, pc = jax.jvp(lambda p: grad_fn(p, *data), (params,), (tangent,))
    _, reference = jax.jvp(lambda p: jax.grad(fn)(p, *data), (params,), (tangent,))
    assert_grads_close(pc, reference, 1e-8)


def test_grad_of_grad_without_jit(x64):
    fn, (params, *data) = small_mlp(jax.random.PRNGKey(5))
    pc = jax.grad(penalised(pcgraph.grad, fn))(params, *data)
    reference = jax.jit(jax.grad(penalised(jax.grad, fn)))(params, *data)
    assert_grads_close(pc, reference, 1e-8)


def test_fixed_steps_still_stop_stepping_on_divergence(x64):
    # The fixed-count loop runs all its iterations; past a failure they must change nothing.
    fn, args = small_mlp(jax.random.PRNGKey(6))
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(20.0), max_steps=50, rtol=None, throw=False)
    stats = pcgraph.relax(fn, *args, algorithm=algorithm, save_energy=True).stats
    steps = int(stats.num_steps)
    assert stats.result == pcgraph.RESULTS.energy_increased and steps < 50
    trajectory = np.asarray(stats.energy_trajectory)
    assert trajectory[steps] == stats.energy and np.all(np.isnan(trajectory[steps + 1 :]))
