"""Z-IL, the wavefront schedule (backprop's schedule over value nodes), and the training-step
API: exact backprop by predictive coding on layered networks, CNNs, RNNs, residual networks,
unequal-branch DAGs and unmarked models."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen
from helpers import RTOL, ZOO, assert_grads_close, mlp_forward, mlp_params, normal, small_cnn

import pcgraph

# -- models: marked (layered) PC networks whose paths to the loss have unequal lengths ---------


def _regression_data(key, dtype, batch=4, d_in=5, d_out=3):
    kx, ky = jax.random.split(key)
    return normal(kx, (batch, d_in), dtype), normal(ky, (batch, d_out), dtype)


def mlp(key, dtype):
    kp, kd = jax.random.split(key)
    params = mlp_params(kp, [5, 6, 6, 6, 3], dtype)
    x, y = _regression_data(kd, dtype)

    def loss(params, x, y):
        return jnp.mean((mlp_forward(params, x, jnp.tanh, mark=True) - y) ** 2)

    return loss, params, (x, y)


def cnn(key, dtype):
    loss, (params, x, y), _ = small_cnn(key, dtype, mark=True)
    return loss, params, (x, y)


def rnn(key, dtype, length=5):
    """Many-to-one: the same weights read by every step of an unrolled recurrence."""
    k = jax.random.split(key, 5)
    params = {
        "w": normal(k[0], (4, 4), dtype, 0.5),
        "u": normal(k[1], (2, 4), dtype, 0.5),
        "b": normal(k[2], (4,), dtype, 0.1),
        "out": normal(k[3], (4, 3), dtype, 0.5),
    }
    xs = normal(k[4], (length, 3, 2), dtype)
    y = normal(jax.random.fold_in(key, 9), (3, 3), dtype)

    def loss(params, xs, y):
        h = jnp.zeros((xs.shape[1], 4), xs.dtype)
        for t in range(xs.shape[0]):
            h = pcgraph.node(jnp.tanh(h @ params["w"] + xs[t] @ params["u"] + params["b"]), f"h{t}")
        return jnp.mean((h @ params["out"] - y) ** 2)

    return loss, params, (xs, y)


def residual(key, dtype, blocks=3):
    """h_{k+1} = h_k + tanh(h_k W_k): the skip is one node long, the branch two."""
    k = jax.random.split(key, blocks + 3)
    params = {
        "embed": normal(k[0], (5, 4), dtype, 0.5),
        "blocks": [normal(k[i + 1], (4, 4), dtype, 0.5) for i in range(blocks)],
        "head": normal(k[-2], (4, 3), dtype, 0.5),
    }
    x, y = _regression_data(k[-1], dtype)

    def loss(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params["embed"]), "embed")
        for i, w in enumerate(params["blocks"]):
            branch = pcgraph.node(jnp.tanh(h @ w), f"branch{i}")
            h = pcgraph.node(h + branch, f"block{i}")
        return jnp.mean((h @ params["head"] - y) ** 2)

    return loss, params, (x, y)


def branches(key, dtype, lengths=(1, 2, 3, 4, 5)):
    """A stem feeding branches of 1 to 5 layers whose ends are summed into the output."""
    k = jax.random.split(key, 3)
    params = {
        "stem": normal(k[0], (5, 4), dtype, 0.5),
        "branches": [
            [normal(jax.random.fold_in(k[1], 10 * n + i), (4, 4), dtype, 0.6) for i in range(n)]
            for n in lengths
        ],
        "head": normal(k[2], (4, 3), dtype, 0.5),
    }
    x, y = _regression_data(jax.random.fold_in(key, 7), dtype)

    def loss(params, x, y):
        stem = pcgraph.node(jnp.tanh(x @ params["stem"]), "stem")
        total = 0.0
        for b, layers in enumerate(params["branches"]):
            h = stem
            for i, w in enumerate(layers):
                h = pcgraph.node(jnp.tanh(h @ w), f"branch{b}_{i}")
            total = total + h
        return jnp.mean((total @ params["head"] - y) ** 2)

    return loss, params, (x, y)


MODELS = {"mlp": mlp, "cnn": cnn, "rnn": rnn, "residual": residual, "branches": branches}


def test_models_have_unequal_paths():
    """The residual and branching models really are the hard case: some node's shortest and
    longest paths to the loss differ."""
    for name in ("residual", "branches"):
        loss, params, data = MODELS[name](jax.random.key(0), jnp.float32)
        graph = pcgraph.trace(loss, params, *data)
        assert any(info.distance < info.final_step for info in graph.nodes), name
    graph = pcgraph.trace(*(lambda f, p, d: (f, p, *d))(*branches(jax.random.key(0), jnp.float32)))
    assert graph.depth == 6  # the stem is 6 nodes from the loss along the 5-layer branch


# -- the exact schedule --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "algorithm",
    [pcgraph.ZIL(), pcgraph.FPA(schedule=pcgraph.Wavefront())],
    ids=["zil", "fpa_wavefront"],
)
def test_wavefront_equals_jax_grad(name, algorithm, dtype):
    loss, params, data = MODELS[name](jax.random.key(1), dtype)
    expected = jax.grad(loss)(params, *data)
    grads = jax.jit(pcgraph.grad(loss, algorithm=algorithm))(params, *data)
    assert_grads_close(grads, expected, RTOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_wavefront_on_the_zoo(name, x64):
    """Unmarked graphs too: every primitive a node, custom rules, cond/scan, pytrees."""
    fn, args, kwargs = ZOO[name](jax.random.key(2), jnp.float64)
    expected = jax.grad(fn, **kwargs)(*args)
    assert_grads_close(pcgraph.grad(fn, algorithm=pcgraph.ZIL(), **kwargs)(*args), expected, 1e-10)


def test_wavefront_errors_are_fpa_equilibrium(x64):
    """The errors and the energies at both ends are FPA's after `graph.depth` steps."""
    loss, params, data = residual(jax.random.key(3), jnp.float64)
    front = pcgraph.relax(loss, params, *data, algorithm=pcgraph.FPA(schedule=pcgraph.Wavefront()))
    fpa = pcgraph.relax(loss, params, *data, algorithm=pcgraph.FPA())
    for name in fpa.errors:
        np.testing.assert_allclose(front.errors[name], fpa.errors[name], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(front.stats.initial_energy, fpa.stats.initial_energy, rtol=1e-12)
    np.testing.assert_allclose(front.stats.energy, fpa.stats.energy, rtol=1e-12)


@pytest.mark.parametrize(
    "algorithm",
    [pcgraph.ZIL(), pcgraph.FPA(schedule=pcgraph.Wavefront())],
    ids=["zil", "fpa_wavefront"],
)
def test_wavefront_stats_hold_only_what_it_computes(algorithm, x64):
    """No relaxation step, so no steps, no residual and no trajectory, even when asked; the
    energies are those of the feedforward pass and of the final errors."""
    loss, params, data = branches(jax.random.key(3), jnp.float64)
    solution = pcgraph.relax(loss, params, *data, algorithm=algorithm, save_energy=True)
    stats = solution.stats
    assert int(stats.num_steps) == 0
    assert np.isnan(float(stats.residual))
    assert stats.energy_trajectory is None
    assert bool(stats.converged)
    assert float(stats.initial_energy) == float(solution.value)
    final = solution.value + sum(jnp.sum(e**2) / 2 for e in solution.errors.values())
    np.testing.assert_allclose(stats.energy, final, rtol=1e-12)
    assert float(stats.energy) > float(stats.initial_energy)


@pytest.mark.slow
def test_zil_relaxation_errors_match_wavefront_per_level(x64):
    """Each node's error at its own step (what its parameters read) is backprop's, even where
    paths have unequal lengths, and a node holds it from then on: steps past the depth change
    nothing."""
    loss, params, data = branches(jax.random.key(4), jnp.float64)
    graph = pcgraph.trace(loss, params, *data)
    front = pcgraph.relax(loss, params, *data, algorithm=pcgraph.ZIL())
    middle = graph.depth // 2
    early, full, late = (
        pcgraph.relax(
            loss,
            params,
            *data,
            algorithm=pcgraph.ZIL(schedule=pcgraph.Relaxation(), max_steps=steps),
        )
        for steps in (middle, None, graph.depth + 2)
    )
    for info in graph.nodes:
        runs = [full, late] if info.final_step > middle else [early, full, late]
        for run in runs:
            np.testing.assert_allclose(
                run.errors[info.name], front.errors[info.name], rtol=1e-10, atol=1e-14
            )
        np.testing.assert_allclose(late.values[info.name], full.values[info.name], rtol=1e-14)
    assert_grads_close(late.grads, full.grads, 1e-14)


# -- Z-IL's relaxation on unmarked models ------------------------------------------------------
# Without marks a graph has nodes that feed reductions and normalisations, where the energy's
# curvature exceeds 2: steps of 1 diverge there once a node is read, and amplify the round-off
# of the feedforward init before. Most of all with a node per primitive.


def flax_layernorm_mlp(key, dtype, blocks=4):
    """Dense, LayerNorm, tanh; the Dense layers are small, so LayerNorm's Jacobian is large."""
    small = linen.initializers.normal(0.02)

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            for _ in range(blocks):
                x = linen.Dense(8, kernel_init=small, param_dtype=dtype)(x)
                x = jnp.tanh(linen.LayerNorm(param_dtype=dtype)(x))
            return linen.Dense(3, param_dtype=dtype)(x)

    kx, ky, kp = jax.random.split(key, 3)
    x, y = normal(kx, (4, 5), dtype), normal(ky, (4, 3), dtype)
    net = Net()

    def loss(params, x, y):
        return jnp.mean((net.apply(params, x) - y) ** 2)

    return loss, net.init(kp, x), (x, y)


def flax_embed_mlp(key, dtype, blocks=2):
    """Token embeddings summed over the sequence, then Dense, BatchNorm with fixed running
    statistics, tanh; softmax cross-entropy."""

    class Net(linen.Module):
        @linen.compact
        def __call__(self, tokens):
            h = jnp.sum(linen.Embed(11, 6, param_dtype=dtype)(tokens), axis=1)
            for _ in range(blocks):
                h = linen.Dense(6, param_dtype=dtype)(h)
                h = jnp.tanh(linen.BatchNorm(use_running_average=True, param_dtype=dtype)(h))
            return linen.Dense(5, param_dtype=dtype)(h)

    k = jax.random.split(key, 4)
    tokens = jax.random.randint(k[0], (3, 8), 0, 11)
    labels = jax.nn.one_hot(jax.random.randint(k[1], (3,), 0, 5), 5, dtype=dtype)
    net = Net()
    variables = net.init(k[2], tokens)
    # Running statistics away from BatchNorm's identity, in the model's dtype.
    means, variances = jax.random.split(k[3])
    stats = {
        name: {
            "mean": normal(jax.random.fold_in(means, i), layer["mean"].shape, dtype),
            "var": jnp.exp(normal(jax.random.fold_in(variances, i), layer["var"].shape, dtype)),
        }
        for i, (name, layer) in enumerate(variables["batch_stats"].items())
    }

    def loss(params, tokens, labels):
        logits = net.apply({"params": params, "batch_stats": stats}, tokens)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))

    return loss, variables["params"], (tokens, labels)


def eqx_rmsnorm_mlp(key, dtype, blocks=4):
    """Linear, RMSNorm, tanh in an equinox MLP; small Linear layers, so RMSNorm's Jacobian is
    large. The parameters are the model's arrays, the rest is closed over."""
    keys = jax.random.split(key, blocks + 3)
    model = []
    for i in range(blocks):
        linear = eqx.nn.Linear(5 if i == 0 else 8, 8, key=keys[i], dtype=dtype)
        model += [eqx.tree_at(lambda m: m.weight, linear, 0.03 * linear.weight), eqx.nn.RMSNorm(8)]
    model.append(eqx.nn.Linear(8, 3, key=keys[blocks], dtype=dtype))
    model = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x, y = normal(keys[-2], (4, 5), dtype), normal(keys[-1], (4, 3), dtype)

    def loss(params, x, y):
        *layers, head = eqx.combine(params, static)

        def forward(h):
            for linear, norm in zip(layers[::2], layers[1::2], strict=True):
                h = jnp.tanh(norm(linear(h)))
            return head(h)

        return jnp.mean((jax.vmap(forward)(x) - y) ** 2)

    return loss, params, (x, y)


def tanh_30_layers(key, dtype, layers=30):
    """30 unrolled tanh layers: a deep graph, with a node per primitive twice as deep."""
    k = jax.random.split(key, layers + 2)
    params = [normal(k[i], (6, 6), dtype, 1.5 / np.sqrt(6)) for i in range(layers)]
    x, y = normal(k[-2], (3, 6), dtype), normal(k[-1], (3, 6), dtype)

    def loss(params, x, y):
        h = x
        for w in params:
            h = jnp.tanh(h @ w)
        return jnp.mean((h - y) ** 2)

    return loss, params, (x, y)


UNMARKED = {
    "flax_layernorm": flax_layernorm_mlp,
    "flax_embed_batchnorm": flax_embed_mlp,
    "eqx_rmsnorm": eqx_rmsnorm_mlp,
    "tanh_30_layers": tanh_30_layers,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "placement", [None, pcgraph.Primitives()], ids=["default_placement", "primitives"]
)
@pytest.mark.parametrize("name", UNMARKED)
def test_zil_relaxation_is_finite_and_exact_without_marks(name, placement, x64):
    """Every energy of Z-IL's relaxation is finite and the gradient is `jax.grad`'s, with the
    default node placement and with a node per primitive."""
    loss, params, data = UNMARKED[name](jax.random.key(9), jnp.float64)
    solution = pcgraph.relax(
        loss,
        params,
        *data,
        algorithm=pcgraph.ZIL(schedule=pcgraph.Relaxation()),
        placement=placement,
        save_energy=True,
    )
    assert bool(jnp.all(jnp.isfinite(solution.stats.energy_trajectory)))
    assert_grads_close(solution.grads, jax.grad(loss)(params, *data), 1e-8)


@pytest.mark.parametrize(
    "dtype, tolerance", [(jnp.float16, 5e-3), (jnp.bfloat16, 2e-2)], ids=["float16", "bfloat16"]
)
def test_zil_relaxation_refuses_half_precision(dtype, tolerance):
    """The relaxation reads errors as values minus predictions, which half precision rounds
    away; the wavefront holds the errors and is as accurate as `jax.grad` in that dtype."""
    loss, params, data = mlp(jax.random.key(10), jnp.float32)
    params, data = jax.tree.map(lambda a: a.astype(dtype), (params, data))
    literal = pcgraph.grad(loss, algorithm=pcgraph.ZIL(schedule=pcgraph.Relaxation()))
    with pytest.raises(
        ValueError,
        match=rf"cannot relax {dtype.dtype.name} node values.*"
        r"Use pcgraph.ZIL\(\) \(the wavefront schedule\) or pcgraph.FPA\(\)",
    ):
        literal(params, *data)
    exact = pcgraph.grad(loss, algorithm=pcgraph.ZIL())(params, *data)
    reference = jax.grad(loss)(params, *data)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(reference), strict=True):
        assert a.dtype == b.dtype == dtype
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= tolerance * np.max(np.abs(b))


# -- Z-IL training equals backprop training -------------------------------------------------


def _train(loss, params, data, algorithm, steps=100, learning_rate=0.1):
    optimizer = optax.sgd(learning_rate)
    if algorithm is None:
        update = jax.jit(jax.grad(loss))

        def step(params, opt_state, *data):
            updates, opt_state = optimizer.update(update(params, *data), opt_state)
            return optax.apply_updates(params, updates), opt_state, None
    else:
        step = pcgraph.train_step(loss, optimizer, algorithm=algorithm)
    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, *data)
    return params


def _relative_difference(a, b):
    """Largest relative difference over leaves; a diverged (NaN/Inf) run counts as infinite."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    diff = max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))) for x, y in zip(a, b))
    return diff if np.isfinite(diff) else np.inf


# Each breaks one of Song et al.'s three conditions. throw=False: a broken run may diverge.
ABLATIONS = {
    "step_size_0.9": pcgraph.ZIL(schedule=pcgraph.Relaxation(), step_size=0.9, throw=False),
    "all_read_at_last_step": pcgraph.ZIL(
        schedule=pcgraph.Relaxation(), timed_updates=False, throw=False
    ),
    "random_init": pcgraph.ZIL(
        schedule=pcgraph.Relaxation(), init=pcgraph.RandomInit(), throw=False
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_zil_training_equals_backprop_and_ablations_drift(name, x64):
    """Song et al.'s claim, on every model: 100 SGD updates by Z-IL and by backprop give the
    same weights to 1e-10 (float64); breaking any one of the three conditions does not."""
    loss, params, data = MODELS[name](jax.random.key(5), jnp.float64)
    backprop = _train(loss, params, data, None)
    assert _relative_difference(params, backprop) > 1e-2  # training moved the weights
    zil = _train(loss, params, data, pcgraph.ZIL(schedule=pcgraph.Relaxation()))
    assert _relative_difference(zil, backprop) < 1e-10
    for ablation, algorithm in ABLATIONS.items():
        drift = _relative_difference(_train(loss, params, data, algorithm), backprop)
        assert drift > 1e-6, (ablation, drift)


@pytest.mark.slow
def test_zil_train_step_is_wavefront_train_step(x64):
    loss, params, data = rnn(jax.random.key(6), jnp.float64)
    literal = _train(loss, params, data, pcgraph.ZIL(schedule=pcgraph.Relaxation()), steps=5)
    exact = _train(loss, params, data, pcgraph.ZIL(), steps=5)
    assert _relative_difference(literal, exact) < 1e-12


# -- iPC and the training-step API -----------------------------------------------------------


def _digits(n=256):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = jnp.asarray(images[:n] / 16.0, jnp.float32)
    return x, jax.nn.one_hot(labels[:n], 10)


@pytest.mark.slow
def test_ipc_lowers_digits_loss_and_records_energy():
    x, y = _digits()
    params = mlp_params(jax.random.key(7), [64, 32, 10], jnp.float32)

    def loss(params, x, y):
        logits = mlp_forward(params, x, jnp.tanh, mark=True)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))

    optimizer = optax.adam(3e-3)
    step = pcgraph.train_step(
        loss,
        optimizer,
        algorithm=pcgraph.IPC(num_steps=8, stepper=pcgraph.Euler(0.2)),
        save_energy=True,
    )
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, info = step(params, opt_state, x, y)
        losses.append(float(info.loss))
    assert losses[-1] < 0.5 * losses[0]
    trajectory = info.stats.energy_trajectory
    assert trajectory.shape == (9,) and bool(jnp.all(jnp.isfinite(trajectory)))
    assert float(trajectory[-1]) < float(trajectory[0])  # energy falls within one step
    np.testing.assert_allclose(trajectory[0], info.stats.initial_energy)


def test_ipc_has_no_gradient():
    loss, params, data = mlp(jax.random.key(0), jnp.float32)
    with pytest.raises(TypeError, match="IPC updates the parameters at every relaxation step"):
        pcgraph.grad(loss, algorithm=pcgraph.IPC())(params, *data)


@pytest.mark.slow
def test_train_step_with_fpa_equals_optax_with_jax_grad_and_does_not_retrace():
    loss, params, data = mlp(jax.random.key(8), jnp.float32)
    optimizer = optax.adam(1e-2)
    step = pcgraph.train_step(chex.assert_max_traces(loss, n=1), optimizer)
    opt_state = optimizer.init(params)
    ref_params, ref_state = params, opt_state
    for _ in range(3):
        params, opt_state, info = step(params, opt_state, *data)
        np.testing.assert_allclose(info.loss, loss(ref_params, *data), rtol=1e-6)
        updates, ref_state = optimizer.update(jax.grad(loss)(ref_params, *data), ref_state)
        ref_params = optax.apply_updates(ref_params, updates)
    assert_grads_close(params, ref_params, 1e-5)


def test_train_step_raises_on_divergence():
    loss, params, data = mlp(jax.random.key(0), jnp.float32)
    optimizer = optax.sgd(0.1)
    step = pcgraph.train_step(
        loss, optimizer, algorithm=pcgraph.IPC(stepper=pcgraph.Euler(50.0), num_steps=50)
    )
    with pytest.raises(pcgraph.RelaxationError, match="NaN or Inf"):
        step(params, optimizer.init(params), *data)


# -- bad configurations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: pcgraph.ZIL(step_size=0.9),
            r"Pass ZIL\(schedule=pcgraph.Relaxation\(\), step_size=0.9\)",
        ),
        (lambda: pcgraph.ZIL(schedule=pcgraph.Relaxation(), max_steps=-1), "non-negative int"),
        (
            lambda: pcgraph.FPA(schedule=pcgraph.Wavefront(), stepper=pcgraph.Euler(0.5)),
            "takes no `stepper`",
        ),
        (lambda: pcgraph.IPC(num_steps=0), "a positive int"),
    ],
)
def test_bad_configurations(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: pcgraph.ZIL(schedule="fast"), r"pass pcgraph.Relaxation\(\) \(every node"),
        (lambda: pcgraph.ZIL(schedule="relaxation"), r"pass schedule=pcgraph.Relaxation\(\)"),
        (lambda: pcgraph.FPA(schedule="wavefront"), r"pass schedule=pcgraph.Wavefront\(\)"),
        (lambda: pcgraph.FPA(schedule=pcgraph.Wavefront), r"pass pcgraph.Relaxation\(\)"),
        (
            lambda: pcgraph.ZIL(schedule=pcgraph.Relaxation(), init="random"),
            r"pass pcgraph.RandomInit\(seed=0\)",
        ),
        (
            lambda: pcgraph.ZIL(schedule=pcgraph.Relaxation(), init="zeros"),
            r"pass pcgraph.FeedforwardInit\(\) or pcgraph.RandomInit",
        ),
    ],
)
def test_string_options_are_refused_with_the_config_object_to_pass(make, match):
    with pytest.raises(TypeError, match=match):
        make()


# -- the cost report ---------------------------------------------------------------------------


def test_cost_counts_local_evaluations():
    loss, params, data = branches(jax.random.key(0), jnp.float32)
    graph = pcgraph.trace(loss, params, *data)
    n = len(graph.nodes) + 1  # 16 nodes and the loss
    exact = pcgraph.cost(graph, pcgraph.ZIL())
    assert (exact.backprop_steps, exact.backprop_forward, exact.backprop_vjps) == (6, n, n)
    # The wavefront evaluates each VJP once, as backprop does; the lower bound on steps holds.
    assert (exact.steps, exact.forward, exact.vjps) == (6, 2 * n, n)
    il = pcgraph.cost(graph, pcgraph.IL(max_steps=20))
    assert (il.steps, il.forward, il.vjps) == (20, n + 22 * n, 22 * n)
    fpa = pcgraph.cost(graph, pcgraph.FPA())
    assert (fpa.steps, fpa.forward, fpa.vjps) == (6, 2 * n, 8 * n)
    # Z-IL's relaxation also relaxes the 4 identity delays between the stem and the branches.
    literal = pcgraph.cost(graph, pcgraph.ZIL(schedule=pcgraph.Relaxation()))
    assert (literal.forward, literal.vjps) == (n + 7 * (n + 4), 2 * 7 * (n + 4))
    assert exact.relative_work < fpa.relative_work < il.relative_work
    assert "ZIL (wavefront)" in str(exact) and "backprop" in str(exact)


def test_cost_reads_steps_from_stats():
    loss, params, data = mlp(jax.random.key(0), jnp.float32)
    algorithm = pcgraph.IL(beta=0.1, max_steps=500, rtol=1e-3)
    stats = pcgraph.relax(loss, params, *data, algorithm=algorithm).stats
    assert 0 < int(stats.num_steps) < 500
    graph = pcgraph.trace(loss, params, *data)
    assert pcgraph.cost(graph, algorithm, stats).steps == int(stats.num_steps)


def test_cost_bad_algorithms():
    loss, params, data = mlp(jax.random.key(0), jnp.float32)
    graph = pcgraph.trace(loss, params, *data)
    with pytest.raises(TypeError, match="counts pcgraph.IL, EPC, FPA, ZIL and IPC; got EqProp"):
        pcgraph.cost(graph, pcgraph.EqProp())
    stepper = pcgraph.DiffraxStepper(__import__("diffrax").Tsit5())
    with pytest.raises(ValueError, match="solver-dependent number of times"):
        pcgraph.cost(graph, pcgraph.IL(stepper=stepper))


def test_level_schedules_need_opaque_scans():
    def loss(w, xs):
        h, _ = jax.lax.scan(lambda h, x: (jnp.tanh(h @ w + x), None), jnp.zeros(2), xs)
        return jnp.sum(h**2)

    args = (jnp.eye(2) * 0.5, jnp.ones((3, 2)))
    literal = pcgraph.ZIL(schedule=pcgraph.Relaxation())
    with pytest.raises(ValueError, match="lift_scans=False"):
        pcgraph.cost(pcgraph.trace(loss, *args), literal)
    # A node per primitive: the scan, then the square (the default placement folds both into
    # the loss).
    opaque = pcgraph.trace(loss, *args, lift_scans=False, placement=pcgraph.Primitives())
    assert opaque.depth == 2
    assert pcgraph.cost(opaque, literal).steps == 2
