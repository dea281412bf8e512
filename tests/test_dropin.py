"""pcgraph as a drop-in for `jax.grad`: keyword arguments, fresh closures per training step, and
inputs that are already NaN."""

import gc
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_grads_close, normal

import pcgraph


def _loss(params, x, y, *, scale=1.0):
    h = jnp.tanh(x @ params[0])
    return scale * jnp.mean((h @ params[1] - y) ** 2)


def _problem(batch=8, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(0), 4)
    params = [normal(k[0], (5, 16), dtype, 0.4), normal(k[1], (16, 3), dtype, 0.25)]
    return params, normal(k[2], (batch, 5), dtype), normal(k[3], (batch, 3), dtype)


@pytest.mark.slow
def test_keyword_arguments_pass_through_every_entry_point():
    params, x, y = _problem()
    expected = jax.grad(_loss)(params, x, y, scale=2.0)
    assert not np.allclose(expected[0], jax.grad(_loss)(params, x, y)[0])
    assert_grads_close(pcgraph.grad(_loss)(params, x, y, scale=2.0), expected, 1e-5)
    value, grads = pcgraph.value_and_grad(_loss)(params, x, y, scale=2.0)
    assert np.isclose(value, _loss(params, x, y, scale=2.0))
    assert_grads_close(grads, expected, 1e-5)
    solution = pcgraph.relax(_loss, params, x, y, scale=2.0)
    assert_grads_close(solution.grads, expected, 1e-5)

    filtered = pcgraph.filter_grad(lambda p, x, y, scale: _loss(p, x, y, scale=scale))
    assert_grads_close(filtered(params, x, y, scale=jnp.asarray(2.0)), expected, 1e-5)

    optimizer = optax.sgd(0.1)
    step = pcgraph.train_step(_loss, optimizer)
    new_params, _, info = step(params, optimizer.init(params), x, y, scale=2.0)
    assert np.isclose(info.loss, _loss(params, x, y, scale=2.0))
    assert_grads_close(new_params, jax.tree.map(lambda p, g: p - 0.1 * g, params, expected), 1e-5)


def test_train_step_with_donation_takes_the_same_step():
    """`donate=True` writes the new parameters and optimiser state into the memory of the old
    ones: the same step, and the arrays passed in are gone (JAX says so if they are used)."""
    params, x, y = _problem()
    optimizer = optax.adam(1e-2)
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=5)
    kept = pcgraph.train_step(_loss, optimizer, algorithm=algorithm)
    donating = pcgraph.train_step(_loss, optimizer, algorithm=algorithm, donate=True)
    expected, expected_state, _ = kept(params, optimizer.init(params), x, y)
    copies = jax.tree.map(jnp.copy, params)
    state = optimizer.init(copies)
    for _ in range(2):  # the second call reuses the compiled, donating step
        new_params, new_state, info = donating(copies, state, x, y)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves((copies, state)))
        if _ == 0:
            assert_grads_close(new_params, expected, 1e-6)
            assert_grads_close(new_state, expected_state, 1e-6)
        copies, state = new_params, new_state
    assert info.stats.converged and all(not p.is_deleted() for p in params)


def _fresh_closure_steps(params, xs, ys):
    for x_t, y_t in zip(xs, ys, strict=True):
        grads = pcgraph.grad(lambda p: _loss(p, x_t, y_t))(params)  # noqa: B023
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return jax.block_until_ready(params)


def _reused_steps(params, xs, ys):
    grad_fn = pcgraph.grad(_loss)
    for x_t, y_t in zip(xs, ys, strict=True):
        grads = grad_fn(params, x_t, y_t)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return jax.block_until_ready(params)


@pytest.mark.slow
def test_fresh_closure_per_step_neither_recompiles_nor_leaks():
    """`pcgraph.grad(lambda p: loss(p, x_t, y_t))` built at every step: the closed-over arrays
    are arguments of one compiled solve, as they would be of `jax.grad`'s computation."""
    k = jax.random.split(jax.random.key(0), 2)
    params = [normal(k[0], (64, 512), jnp.float32, 0.1), normal(k[1], (512, 3), jnp.float32, 0.05)]
    batches = [
        (normal(jax.random.key(2 * t), (1024, 64), jnp.float32),
         normal(jax.random.key(2 * t + 1), (1024, 3), jnp.float32))
        for t in range(40)
    ]  # fmt: skip
    xs, ys = [b[0] for b in batches], [b[1] for b in batches]
    fresh = _fresh_closure_steps(params, xs[:2], ys[:2])  # compiles once
    reused = _reused_steps(params, xs[:2], ys[:2])
    assert_grads_close(fresh, reused, 1e-5)

    def timed(run):
        start = time.perf_counter()
        run(params, xs[2:], ys[2:])
        return time.perf_counter() - start

    best_fresh = min(timed(_fresh_closure_steps) for _ in range(3))
    best_reused = min(timed(_reused_steps) for _ in range(3))
    assert best_fresh < 1.5 * best_reused, (best_fresh, best_reused)

    # Memory: nothing accumulates per step (a compiled program per closure would).
    def compiled_entries():
        gc.collect()
        return len(open("/proc/self/maps").read().splitlines())

    before = compiled_entries()
    for _ in range(5):  # 200 steps
        _fresh_closure_steps(params, xs, ys)
    assert compiled_entries() - before < 20


def test_closure_over_a_global_array_sees_its_current_value():
    params, x, y = _problem()
    global _GLOBAL_TARGET
    grads = []
    for target in (y, y + 1.0):
        _GLOBAL_TARGET = target
        grads.append(pcgraph.grad(_reads_global_target)(params, x))
    assert_grads_close(grads[1], jax.grad(_loss)(params, x, y + 1.0), 1e-5)
    assert not np.allclose(grads[0][1], grads[1][1])


_GLOBAL_TARGET = None


def test_closure_over_a_list_changed_in_place_sees_the_change():
    """The conversion of a function to a pytree is reused while everything it reads is the
    same object as before; an array swapped into a list it closes over is a change."""
    params, x, y = _problem()
    targets = [y]

    def loss(p, x):
        return _loss(p, x, targets[0])

    first = pcgraph.grad(loss)(params, x)
    targets[0] = y + 1.0
    second = pcgraph.grad(loss)(params, x)
    assert_grads_close(second, jax.grad(_loss)(params, x, y + 1.0), 1e-5)
    assert not np.allclose(first[1], second[1])


def _reads_global_target(params, x):
    return _loss(params, x, _GLOBAL_TARGET)


@pytest.mark.parametrize(
    "where, corrupt, message",
    [
        ("parameter", lambda p, x, y: ([p[0].at[0, 0].set(jnp.nan), p[1]], x, y),
         r"differentiated argument's leaf `\[0\]` holds NaN or Inf"),
        ("data", lambda p, x, y: (p, x, y.at[1, 1].set(jnp.inf)),
         r"input argument 2 holds NaN or Inf"),
        ("node", lambda p, x, y: (p, x.at[0, 0].set(1e30), y),
         r"feedforward value of node `layer_0` is NaN or Inf although every input is finite"),
    ],
    ids=["parameter", "data", "node"],
)  # fmt: skip
def test_non_finite_inputs_are_named_before_any_relaxation(where, corrupt, message):
    params, x, y = _problem()
    params, x, y = corrupt(params, x, y)

    def loss(params, x, y):
        h = jnp.exp(jnp.tanh(x @ params[0]) * x.max())  # overflows when x holds 1e30
        return jnp.mean((h @ params[1] - y) ** 2)

    for algorithm in (pcgraph.FPA(), pcgraph.IL()):
        with pytest.raises(pcgraph.NonFiniteError, match=message):
            pcgraph.grad(loss, algorithm=algorithm)(params, x, y)
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        eqx.filter_jit(pcgraph.grad(loss))(params, x, y)
