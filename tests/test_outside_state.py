"""State a loss reads from outside its arguments (globals, closed-over containers, NumPy
arrays) is read as it is at each call, as `jax.grad` reads it, and a call whose state is
unchanged reuses the compiled solve."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_grads_close, normal

import pcgraph


def _loss(params, x, y, scale=1.0):
    h = jnp.tanh(x @ params[0])
    return scale * jnp.mean((h @ params[1] - y) ** 2)


def _problem():
    k = jax.random.split(jax.random.key(0), 4)
    params = [normal(k[0], (5, 16), jnp.float32, 0.4), normal(k[1], (16, 3), jnp.float32, 0.25)]
    return params, normal(k[2], (8, 5), jnp.float32), normal(k[3], (8, 3), jnp.float32)


ALGORITHMS = {
    "fpa": (pcgraph.FPA(), 1e-5),
    "wavefront": (pcgraph.ZIL(), 1e-5),
    # IL is exact as beta -> 0; a small beta keeps it within 1% of jax.grad, while the stale
    # state these tests catch is off by a factor of 2 or more.
    "il": (pcgraph.IL(beta=1e-3, max_steps=200), 1e-2),
}

_SETTINGS = {"scale": 1.0}
_TARGET = None


def _reads_global_dict(params, x, y):
    return _loss(params, x, y, _SETTINGS["scale"])


def _reads_global_numpy(params, x):
    return _loss(params, x, _TARGET)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=list(ALGORITHMS))
def test_a_global_dict_entry_changed_is_seen(algorithm):
    algorithm, rtol = ALGORITHMS[algorithm]
    params, x, y = _problem()
    grad = pcgraph.grad(_reads_global_dict, algorithm=algorithm)
    _SETTINGS["scale"] = 1.0
    first = grad(params, x, y)
    _SETTINGS["scale"] = 5.0
    try:
        second = grad(params, x, y)
    finally:
        _SETTINGS["scale"] = 1.0
    assert_grads_close(second, jax.grad(_loss)(params, x, y, 5.0), rtol)
    assert_grads_close(second, jax.tree.map(lambda g: 5 * g, first), rtol)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=list(ALGORITHMS))
def test_a_closed_over_list_appended_to_is_seen(algorithm):
    algorithm, rtol = ALGORITHMS[algorithm]
    params, x, y = _problem()
    scales = [1.0]

    def loss(p, x, y):
        return _loss(p, x, y, sum(scales))

    grad = pcgraph.grad(loss, algorithm=algorithm)
    first = grad(params, x, y)
    scales.append(2.0)
    second = grad(params, x, y)
    assert_grads_close(second, jax.grad(_loss)(params, x, y, 3.0), rtol)
    assert_grads_close(second, jax.tree.map(lambda g: 3 * g, first), rtol)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=list(ALGORITHMS))
@pytest.mark.parametrize("where", ["global", "closure"])
def test_a_numpy_array_changed_in_place_is_seen(algorithm, where):
    algorithm, rtol = ALGORITHMS[algorithm]
    params, x, y = _problem()
    target = np.array(y)
    global _TARGET
    _TARGET = target

    def closure(p, x):
        return _loss(p, x, target)

    fn = _reads_global_numpy if where == "global" else closure
    grad = pcgraph.grad(fn, algorithm=algorithm)
    first = grad(params, x)
    assert_grads_close(first, jax.grad(_loss)(params, x, y), rtol)
    target += 1.0
    second = grad(params, x)
    assert_grads_close(second, jax.grad(_loss)(params, x, y + 1.0), rtol)
    _TARGET = None


def test_unchanged_outside_state_compiles_once():
    """Reading a dict, a list and a NumPy array from outside costs no recompilation while they
    are unchanged, nor when a NumPy array's values change."""
    params, x, y = _problem()
    settings = {"scale": 2.0, "name": "mse"}
    offsets = [0.5]
    target = np.array(y)

    def loss(p, x):
        return _loss(p, x, target + offsets[0], settings["scale"])

    traces = []
    original = jax.numpy.tanh

    def counting_tanh(v):
        traces.append(1)
        return original(v)

    grad = pcgraph.grad(loss)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jnp, "tanh", counting_tanh)
        grad(params, x)
        count = len(traces)
        assert count > 0
        for _ in range(3):
            target += 1.0
            pcgraph.grad(loss)(params, x)
        assert len(traces) == count
        settings["scale"] = 3.0  # a change: traced again
        pcgraph.grad(loss)(params, x)
        assert len(traces) > count


_HELPER_SETTINGS = {"scale": 1.0}
_HELPER_TARGET = np.zeros((8, 3), np.float32)


def _helper(params, x):
    return _loss(params, x, _HELPER_TARGET, _HELPER_SETTINGS["scale"])


def test_state_read_by_a_function_the_loss_calls_is_seen():
    """The loss calls a helper that reads globals: the helper's reads count as the loss's."""
    params, x, y = _problem()
    grad = pcgraph.grad(lambda p, x: 2 * _helper(p, x))
    first = grad(params, x)
    assert_grads_close(first, jax.grad(_loss)(params, x, np.zeros_like(y), 2.0), 1e-5)
    _HELPER_SETTINGS["scale"] = 3.0
    _HELPER_TARGET[:] = np.asarray(y)
    try:
        second = grad(params, x)
    finally:
        _HELPER_SETTINGS["scale"] = 1.0
        _HELPER_TARGET[:] = 0.0
    assert_grads_close(second, jax.grad(_loss)(params, x, y, 6.0), 1e-5)


def test_a_numpy_array_needed_while_tracing_is_a_constant_that_follows_changes():
    """A loss that needs a NumPy array's values in Python (an index computed with `np.nonzero`)
    works as under `jax.grad`, and an in-place change of the array is still seen."""
    params, x, y = _problem()
    mask = np.array([True, False, True, True, False, True, False, True])

    def loss(p, x, y):
        rows = np.nonzero(mask)[0]
        return _loss(p, x[rows], y[rows])

    for algorithm in (pcgraph.FPA(), pcgraph.ZIL()):
        assert_grads_close(
            pcgraph.grad(loss, algorithm=algorithm)(params, x, y),
            jax.grad(loss)(params, x, y), 1e-5,
        )  # fmt: skip
    mask[:4] = False
    assert_grads_close(pcgraph.grad(loss)(params, x, y), jax.grad(loss)(params, x, y), 1e-5)
    optimizer = optax.sgd(0.1)
    step = pcgraph.train_step(loss, optimizer)
    new, _, _ = step(params, optimizer.init(params), x, y)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params, x, y))
    assert_grads_close(new, expected, 1e-5)


def test_filter_grad_reads_the_state_at_each_call():
    params, x, y = _problem()
    settings = {"scale": 1.0}

    @pcgraph.filter_grad
    def grad(p, x, y):
        return _loss(p, x, y, settings["scale"])

    grad(params, x, y)
    settings["scale"] = 4.0
    assert_grads_close(grad(params, x, y), jax.grad(_loss)(params, x, y, 4.0), 1e-5)
