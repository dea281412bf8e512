"""Error optimisation (Goemaere et al. 2025): IL's energy relaxed in the node errors."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ZOO, normal, softmax_cross_entropy, tree_allclose

import pcgraph


def _smooth_cnn(key, dtype):
    """Two 3x3 convolutions with tanh and average pooling, a dense head: a CNN whose energy
    is smooth, so that a relaxation can meet a tight tolerance."""
    k = jax.random.split(key, 4)
    params = {
        "conv1": normal(k[0], (3, 3, 1, 4), dtype, 0.4),
        "conv2": normal(k[1], (3, 3, 4, 6), dtype, 0.2),
        "head": normal(k[2], (6 * 2 * 2, 3), dtype, 0.3),
    }
    x = normal(k[3], (4, 8, 8, 1), dtype)
    y = jax.nn.one_hot(jnp.arange(4) % 3, 3, dtype=dtype)
    numbers = ("NHWC", "HWIO", "NHWC")

    def pool(h):
        return jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4

    def loss(params, x, y):
        h = jax.lax.conv_general_dilated(
            x, params["conv1"], (1, 1), "SAME", dimension_numbers=numbers
        )
        h = pool(jnp.tanh(h))
        h = jax.lax.conv_general_dilated(
            h, params["conv2"], (1, 1), "SAME", dimension_numbers=numbers
        )
        h = pool(jnp.tanh(h))
        return softmax_cross_entropy(h.reshape(h.shape[0], -1) @ params["head"], y)

    return loss, (params, x, y)


def _residual_mlp(key, dtype):
    """A tanh residual network (Innocenti et al. 2025's, muPC) of 6 hidden layers."""
    kp, kx = jax.random.split(key)
    model = pcgraph.nn.ResidualMLP(6, 8, 5, 3, activation=jnp.tanh, key=kp, dtype=dtype)
    x = normal(kx, (6, 5), dtype)
    y = jax.nn.one_hot(jnp.arange(6) % 3, 3, dtype=dtype)
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, x, y):
        out = jax.vmap(eqx.combine(params, static))(x)
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

    return loss, (params, x, y)


def _mlp(key, dtype):
    loss, args, _ = ZOO["tanh_mlp"](key, dtype)
    return loss, args


def _residual_block(key, dtype):
    loss, args, _ = ZOO["residual_block"](key, dtype)
    return loss, args


MODELS = {
    "mlp": _mlp,
    "cnn": _smooth_cnn,
    "residual_block": _residual_block,
    "residual_mlp": _residual_mlp,
}


def _relative(a, b):
    """The largest relative difference, leaf by leaf."""
    return max(
        float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "cnn" else n for n in sorted(MODELS)]
)
def test_epc_reaches_il_equilibrium_and_gradient(name, x64):
    """The map from errors to values is invertible, so converged relaxations end at the same
    values and read the same gradients (relative difference <= 1e-6 in float64)."""
    loss, args = MODELS[name](jax.random.key(0), jnp.float64)
    il = pcgraph.relax(
        loss,
        *args,
        algorithm=pcgraph.IL(stepper=pcgraph.Momentum(0.1, 0.8), max_steps=20_000, rtol=1e-10),
    )
    epc = pcgraph.relax(loss, *args, algorithm=pcgraph.EPC(max_steps=20_000, rtol=1e-10))
    assert _relative(epc.grads, il.grads) <= 1e-6
    assert _relative(epc.values, il.values) <= 1e-6
    # ePC gets there in fewer steps than IL with its default stepper.
    assert int(epc.stats.num_steps) < int(il.stats.num_steps)


def test_epc_approaches_jax_grad_as_beta_vanishes(x64):
    """Like IL's, ePC's gradient is O(beta) from backprop's: the log-log slope of the error
    against beta is about 1."""
    loss, args = _mlp(jax.random.key(1), jnp.float64)
    exact = jax.grad(loss)(*args)
    betas = np.array([1e-1, 1e-2, 1e-3])
    gaps = [
        _relative(
            pcgraph.grad(loss, algorithm=pcgraph.EPC(beta=float(b), max_steps=5000, rtol=1e-12))(
                *args
            ),
            exact,
        )
        for b in betas
    ]
    slope = np.polyfit(np.log(betas), np.log(gaps), 1)[0]
    assert 0.9 <= slope <= 1.1, (gaps, slope)


def test_epc_matches_jax_grad_at_small_beta(dtype):
    """float32: 5e-3 relative (round-off of the force on top of beta's O(1e-3)); float64:
    2e-3 (beta alone)."""
    loss, args = _mlp(jax.random.key(2), dtype)
    algorithm = pcgraph.EPC(beta=1e-3, max_steps=200)
    pc = pcgraph.grad(loss, algorithm=algorithm)(*args)
    tolerance = 5e-3 if dtype == jnp.float32 else 2e-3
    assert _relative(pc, jax.grad(loss)(*args)) <= tolerance


def _deep_tanh(depth, width, dtype=jnp.float32):
    """A plain tanh network in the standard parameterisation (LeCun normal weights) on
    digits, with a mean cross-entropy."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = jnp.asarray(images[:64] / 16.0, dtype)
    y = jax.nn.one_hot(labels[:64], 10, dtype=dtype)
    sizes = [64] + [width] * depth + [10]
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [
        (normal(k, (a, b), dtype, 1 / np.sqrt(a)), jnp.zeros(b, dtype))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]

    def loss(params, x, y):
        h = x
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        w, b = params[-1]
        return softmax_cross_entropy(h @ w + b, y)

    return loss, (params, x, y)


def _cosine(a, b):
    a, b = jnp.ravel(a), jnp.ravel(b)
    norms = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    # A gradient that is exactly zero points nowhere: no alignment.
    return float(jnp.where(norms > 0, a @ b / jnp.where(norms > 0, norms, 1), 0.0))


@pytest.mark.slow
def test_epc_beats_signal_decay_on_a_64_layer_tanh_network():
    """With T = 8 Euler steps from the feedforward pass, IL's error has reached only the top 8
    layers, so the first layer's gradient is exactly zero; ePC carries the loss's gradient to
    every layer at every step (Goemaere et al. 2025)."""
    loss, args = _deep_tanh(64, 64)
    exact = jax.grad(loss)(*args)
    budget = {"stepper": pcgraph.Euler(0.1), "max_steps": 8}
    il = pcgraph.grad(loss, algorithm=pcgraph.IL(**budget))(*args)
    epc = pcgraph.grad(loss, algorithm=pcgraph.EPC(**budget))(*args)
    assert _cosine(epc[0][0], exact[0][0]) >= 0.9
    assert float(jnp.max(jnp.abs(il[0][0]))) == 0.0
    assert _cosine(il[-1][0], exact[-1][0]) >= 0.99


def test_epc_default_trains_an_unchanged_equinox_mlp():
    """The defaults reach the equilibrium (the largest force below 1e-3 of its start within
    the 20 default steps) and train an unchanged `eqx.nn.MLP` on digits."""
    import optax
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = jnp.asarray(images[:256] / 16.0, jnp.float32)
    y = jnp.asarray(labels[:256])
    model = eqx.nn.MLP(64, 10, 32, 2, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, x, y):
        logits = jax.vmap(eqx.combine(params, static))(x)
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    converged = pcgraph.relax(loss, params, x, y, algorithm=pcgraph.EPC(rtol=1e-3))
    assert int(converged.stats.num_steps) <= 20
    optimizer = optax.adam(1e-2)
    step = pcgraph.train_step(chex.assert_max_traces(loss, n=1), optimizer, algorithm=pcgraph.EPC())
    opt_state = optimizer.init(params)
    start = float(loss(params, x, y))
    for _ in range(30):
        params, opt_state, info = step(params, opt_state, x, y)
    assert float(loss(params, x, y)) < 0.3 * start
    assert bool(info.stats.converged)


@pytest.mark.slow  # about 20 s on 2 cores: four compilations
def test_epc_under_jit_and_vmap():
    loss, (params, x, y) = _mlp(jax.random.key(3), jnp.float32)
    counted = pcgraph.grad(chex.assert_max_traces(loss, n=1), algorithm=pcgraph.EPC())
    for shift in (0.0, 1.0):  # new values of the same shapes: no new trace
        counted(params, x + shift, y)
    grad = pcgraph.grad(loss, algorithm=pcgraph.EPC())
    eager = grad(params, x, y)
    jitted = jax.jit(grad)(params, x, y)
    assert tree_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
    per_example = jax.vmap(lambda xi, yi: grad(params, xi[None], yi[None]))(x, y)
    single = grad(params, x[2:3], y[2:3])
    assert tree_allclose(jax.tree.map(lambda g: g[2], per_example), single, rtol=1e-5, atol=1e-7)


def test_epc_warm_start_continues_the_relaxation(x64):
    """Warm-started from a previous solution's values, ePC starts at their errors: 20 + 20
    Euler steps are 40."""
    loss, args = _mlp(jax.random.key(4), jnp.float64)

    def relax(steps, init=None):
        algorithm = pcgraph.EPC(stepper=pcgraph.Euler(0.2), max_steps=steps)
        return pcgraph.relax(loss, *args, algorithm=algorithm, init=init)

    assert tree_allclose(relax(20, init=relax(20)).grads, relax(40).grads, rtol=1e-10)


def test_epc_infers_latents(x64):
    """MAP inference of a latent through a Gaussian node equals the closed form."""
    a = jax.random.normal(jax.random.key(6), (3, 5), jnp.float64) / np.sqrt(5)
    q = 4.0

    def neg_log_joint(params, z, y):
        h = pcgraph.node(z @ params["a"], name="h")
        return jnp.sum(z**2) / 2 + q * jnp.sum((y - h) ** 2) / 2

    y = jax.random.normal(jax.random.key(7), (2, 5), jnp.float64)
    s = 1 + 1 / q
    z_map = jnp.linalg.solve(jnp.eye(3) + a @ a.T / s, (y @ a.T).T / s).T
    algorithm = pcgraph.EPC(stepper=pcgraph.Momentum(0.1, 0.8), max_steps=5000, rtol=1e-12)
    solution = pcgraph.relax(
        neg_log_joint, {"a": a}, jnp.zeros_like(z_map), y, latents=1, algorithm=algorithm
    )
    assert tree_allclose(solution.latents, z_map, rtol=1e-7, atol=1e-9)


def test_cost_counts_epc_next_to_il():
    """ePC's step does IL's work (a forward evaluation and a VJP per node) but sweeps the
    graph level by level."""
    loss, args = _mlp(jax.random.key(0), jnp.float32)
    graph = pcgraph.trace(loss, *args)
    n = len(graph.nodes) + 1
    il = pcgraph.cost(graph, pcgraph.IL(max_steps=20))
    epc = pcgraph.cost(graph, pcgraph.EPC(max_steps=20))
    assert (epc.steps, epc.forward, epc.vjps) == (20 * graph.depth, n + 23 * n, 22 * n)
    assert (il.steps, il.forward, il.vjps) == (20, n + 22 * n, 22 * n)
    assert "EPC" in str(epc)


def test_epc_bad_input():
    with pytest.raises(ValueError, match=r"EPC\(beta\)=0.0: must be a positive"):
        pcgraph.EPC(beta=0.0)
