"""Predictive coding as inference: per-node energies, learnable precisions, latent arguments,
warm starts and per-node trajectories (Rao & Ballard 1999; Friston 2005; Bogacz 2017)."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tree_allclose

import pcgraph


def _params(dtype, sizes=(3, 4, 2), seed=0):
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    return {
        f"w{k}": (jax.random.normal(key, (a, b)) / np.sqrt(a)).astype(dtype)
        for k, (key, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def _converged(max_steps=3000):
    return pcgraph.IL(stepper=pcgraph.Euler(0.2), max_steps=max_steps, rtol=1e-9)


# -- per-node energies ---------------------------------------------------------------------------


def test_node_returns_the_mean_in_plain_jax():
    x = jnp.array([[-1.0, 0.5, 2.0]])
    assert tree_allclose(pcgraph.node(x), x)
    assert tree_allclose(pcgraph.node(x, energy=pcgraph.Bernoulli()), jax.nn.sigmoid(x))
    assert tree_allclose(pcgraph.node(x, energy=pcgraph.Categorical()), jax.nn.softmax(x))
    # Differentiable, jit-able and batched like the mean itself.
    f = lambda x: jnp.sum(pcgraph.node(x, energy=pcgraph.Categorical())[..., 0])  # noqa: E731
    g = lambda x: jnp.sum(jax.nn.softmax(x)[..., 0])  # noqa: E731
    assert tree_allclose(jax.jit(jax.grad(f))(x), jax.grad(g)(x))
    assert tree_allclose(jax.vmap(jax.grad(f))(x), jax.vmap(jax.grad(g))(x))
    precision = jnp.array([1.0, 2.0, 3.0])
    marked = jax.vmap(lambda x, p: pcgraph.node(x, energy=pcgraph.Gaussian(p)))
    assert tree_allclose(marked(x, precision[None]), x)


def test_energy_terms_are_the_negative_log_densities():
    value = jnp.array([[0.2, 0.9, 0.5]])
    logits = jnp.array([[-1.0, 2.0, 0.3]])
    p = jnp.array([0.5, 2.0, 4.0])
    gaussian = pcgraph.Gaussian(p)(value, logits)
    expected = jnp.sum(p * (value - logits) ** 2) / 2 - jnp.sum(jnp.log(p)) / 2
    assert tree_allclose(gaussian, expected)
    assert tree_allclose(pcgraph.Gaussian(3.0)(value, logits), 1.5 * jnp.sum((value - logits) ** 2))
    bce = -jnp.sum(value * jax.nn.log_sigmoid(logits) + (1 - value) * jax.nn.log_sigmoid(-logits))
    assert tree_allclose(pcgraph.Bernoulli()(value, logits), bce)
    probs = jax.nn.softmax(value)
    ce = -jnp.sum(probs * jax.nn.log_softmax(logits))
    assert tree_allclose(pcgraph.Categorical()(probs, logits), ce)


def _two_layer(energy):
    def f(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params["w0"]), name="h")
        out = pcgraph.node(h @ params["w1"], name="out", energy=energy)
        return jnp.sum((out - y) ** 2) / 2

    return f


@pytest.mark.parametrize(
    "energy, target",
    # The loss pulls the value to `target + (its force)`: targets that keep the Bernoulli
    # (force: the logit) and categorical (force: the log-probability) values in [0, 1].
    [
        pytest.param(pcgraph.Gaussian(2.0), 0.5, id="gaussian", marks=pytest.mark.slow),
        pytest.param(pcgraph.Bernoulli(), 0.5, id="bernoulli"),
        pytest.param(pcgraph.Categorical(), 1.0, id="categorical", marks=pytest.mark.slow),
    ],
)
def test_local_gradients_are_the_energy_gradient_at_equilibrium(energy, target, x64):
    """IL reads `dF/dtheta` at the relaxed values: check it against `jax.grad` of the
    energy written out by hand at those values, and the equilibrium against its force."""
    # Small output weights keep the Bernoulli and categorical values inside [0, 1].
    params = _params(jnp.float64)
    params["w1"] = params["w1"] / 4
    x = jax.random.normal(jax.random.key(1), (5, 3))
    y = jnp.full((5, 2), target)
    f = _two_layer(energy)
    solution = pcgraph.relax(f, params, x, y, algorithm=_converged())
    h, out = solution.values["h"], solution.values["out"]

    def energy_by_hand(params, h, out):
        mu_h = jnp.tanh(x @ params["w0"])
        mu_out = h @ params["w1"]
        return jnp.sum((h - mu_h) ** 2) / 2 + energy(out, mu_out) + jnp.sum((out - y) ** 2) / 2

    assert tree_allclose(solution.grads, jax.grad(energy_by_hand)(params, h, out), rtol=1e-8)
    force = jax.grad(energy_by_hand, argnums=(1, 2))(params, h, out)
    assert max(float(jnp.max(jnp.abs(f))) for f in force) < 1e-7
    mean = energy.mean(h @ params["w1"])
    assert tree_allclose(solution.errors["out"], out - mean)


def test_bernoulli_node_leaving_its_support_fails_with_a_message():
    def f(params, x):
        b = pcgraph.node(x @ params["w0"], energy=pcgraph.Bernoulli())
        return -10.0 * jnp.sum(b)  # pulls the value up, past 1

    params = _params(jnp.float32)
    with pytest.raises(pcgraph.RelaxationError, match=r"left \[0, 1\]"):
        pcgraph.relax(f, params, jnp.ones((2, 3)), algorithm=pcgraph.IL())


@pytest.mark.parametrize("algorithm", [pcgraph.FPA(), pcgraph.ZIL()], ids=["FPA", "ZIL"])
def test_fixed_prediction_algorithms_refuse_other_energies(algorithm):
    f = _two_layer(pcgraph.Bernoulli())
    args = (_params(jnp.float32), jnp.ones((2, 3)), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="node `out` has a bernoulli energy.*pcgraph.IL"):
        pcgraph.grad(f, algorithm=algorithm)(*args)


def test_energies_need_marks_placement():
    f = _two_layer(pcgraph.Bernoulli())
    args = (_params(jnp.float32), jnp.ones((2, 3)), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="placement=layers ignores `pcgraph.node` marks"):
        pcgraph.trace(f, *args, placement=pcgraph.Layers())


# -- precisions ------------------------------------------------------------------------------


def test_per_unit_precision_weights_each_unit(x64):
    """An array precision is the same as the per-unit weights written out by hand, and FPA
    (which holds errors) stays exact against `jax.grad` with it."""
    p = jnp.array([0.5, 1.0, 4.0, 2.0])

    def f(params, x):
        h = pcgraph.node(jnp.tanh(x @ params["w0"]), "h", energy=pcgraph.Gaussian(p))
        return jnp.sum(jnp.sin(h @ params["w1"]))

    params = _params(jnp.float64)
    x = jax.random.normal(jax.random.key(2), (5, 3))
    fpa = pcgraph.grad(f, algorithm=pcgraph.FPA())(params, x)
    assert tree_allclose(fpa, jax.grad(f)(params, x), rtol=1e-10)
    front = pcgraph.relax(f, params, x, algorithm=pcgraph.FPA(schedule=pcgraph.Wavefront()))
    il = pcgraph.relax(f, params, x, algorithm=_converged())
    h = il.values["h"]
    by_hand = lambda params: (  # noqa: E731
        jnp.sum(p * (h - jnp.tanh(x @ params["w0"])) ** 2) / 2 + jnp.sum(jnp.sin(h @ params["w1"]))
    )
    assert tree_allclose(il.grads, jax.grad(by_hand)(params), rtol=1e-8)
    assert tree_allclose(front.errors, pcgraph.relax(f, params, x).errors, rtol=1e-10)


def test_learned_precision_gradient_includes_the_log_determinant(x64):
    def f(params, x):
        precision = jnp.exp(params["log_p"])
        h = pcgraph.node(jnp.tanh(x @ params["w0"]), energy=pcgraph.Gaussian(precision))
        return jnp.sum((h @ params["w1"] - 1.0) ** 2) / 2

    params = _params(jnp.float64) | {"log_p": jnp.array([0.0, 1.0, -1.0, 0.5])}
    x = jax.random.normal(jax.random.key(3), (6, 3))
    solution = pcgraph.relax(f, params, x, algorithm=_converged())
    e = solution.errors["node_0"]
    p = jnp.exp(params["log_p"])
    # d/dlog p of sum_batch (p e^2 - log p) / 2
    expected = jnp.sum(p * e**2 - 1.0, axis=0) / 2
    assert tree_allclose(solution.grads["log_p"], expected, rtol=1e-8)
    assert pcgraph.trace(f, params, x).nodes[0].computed_precision


@pytest.mark.slow  # about 15 s on 2 cores
def test_learned_observation_precision_matches_the_noise():
    """y = W x + noise with per-unit noise deviations spread over 0.1-1.0: a per-unit
    precision, learned with the same Gaussian energy as the loss's term, matches 1/sigma^2
    within 10%."""
    sigma = jnp.linspace(0.1, 1.0, 6)
    key_w, key_x, key_n = jax.random.split(jax.random.key(0), 3)
    true_w = jax.random.normal(key_w, (4, 6))
    x = jax.random.normal(key_x, (4096, 4))
    y = x @ true_w + sigma * jax.random.normal(key_n, (4096, 6))

    def loss(params, x, y):
        hidden = jnp.tanh(x @ params["w0"]) @ params["w1"] + x @ params["skip"]
        return pcgraph.Gaussian(jnp.exp(params["log_p"]))(y, hidden) / x.shape[0]

    params = {
        "w0": jnp.zeros((4, 8)),
        "w1": jnp.zeros((8, 6)),
        "skip": jnp.zeros((4, 6)),
        "log_p": jnp.zeros(6),
    }
    optimizer = optax.adam(0.05)
    # The loss is a mean over examples, so it barely moves the hidden layer: a few steps settle.
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.5), max_steps=5)
    step = pcgraph.train_step(loss, optimizer, algorithm=algorithm)
    opt_state = optimizer.init(params)
    for _ in range(300):
        params, opt_state, _ = step(params, opt_state, x, y)
    learned = jnp.exp(params["log_p"])
    ratio = learned * sigma**2
    assert jnp.all(jnp.abs(ratio - 1) < 0.1), ratio


def test_bad_precisions_are_refused():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="every precision must be positive and finite"):
        pcgraph.node(x, energy=pcgraph.Gaussian(jnp.array([1.0, -1.0, 1.0])))
    with pytest.raises(ValueError, match="every precision must be positive and finite"):
        pcgraph.node(x, energy=pcgraph.Gaussian(jnp.array([1.0, jnp.nan, 1.0])))
    with pytest.raises(ValueError, match=r"shape \(2,\) does not broadcast"):
        pcgraph.node(x, energy=pcgraph.Gaussian(jnp.ones(2)))

    def f(params, x):
        h = pcgraph.node(x @ params["w0"], energy=pcgraph.Gaussian(params["p"]))
        return jnp.sum(h**2)

    params = {"w0": jnp.ones((3, 2)), "p": jnp.array([1.0, -2.0])}
    with pytest.raises(pcgraph.NonFiniteError, match="precision of node `node_0` is not positive"):
        pcgraph.grad(f, algorithm=pcgraph.IL())(params, x)
    with pytest.raises(ValueError, match="cannot learn a precision computed from the parameters"):
        pcgraph.grad(f, algorithm=pcgraph.FPA())(params | {"p": jnp.ones(2)}, x)


# -- latents ---------------------------------------------------------------------------------


def _linear_gaussian(dtype):
    """z ~ N(0, I), y | z ~ N(A tanh-free linear z, I / q): MAP inference has a closed form."""
    a = (jax.random.normal(jax.random.key(6), (3, 5)) / np.sqrt(5)).astype(dtype)
    q = 4.0

    def neg_log_joint(params, z, y):
        h = pcgraph.node(z @ params["a"], name="h")
        return jnp.sum(z**2) / 2 + q * jnp.sum((y - h) ** 2) / 2

    y = jax.random.normal(jax.random.key(7), (2, 5)).astype(dtype)
    # The node is Gaussian with precision 1 around z @ a, so y | z ~ N(z a, 1 + 1/q).
    s = 1 + 1 / q
    z_map = jnp.linalg.solve(jnp.eye(3) + a @ a.T / s, (y @ a.T).T / s).T
    return neg_log_joint, {"a": a}, y, z_map


def test_latent_map_inference_matches_the_closed_form(x64):
    neg_log_joint, params, y, z_map = _linear_gaussian(jnp.float64)
    z0 = jnp.zeros_like(z_map)
    solution = pcgraph.relax(neg_log_joint, params, z0, y, latents=1, algorithm=_converged())
    assert tree_allclose(solution.latents, z_map, rtol=1e-7, atol=1e-9)
    # The default algorithm with latents relaxes values (IL).
    assert pcgraph.relax(neg_log_joint, params, z0, y, latents=1).latents.shape == z0.shape


@pytest.mark.slow
def test_observed_entries_stay_clamped(x64):
    neg_log_joint, params, y, z_map = _linear_gaussian(jnp.float64)
    start = jnp.full_like(z_map, 0.3)
    mask = jnp.array([True, False, True])
    solution = pcgraph.relax(
        neg_log_joint, params, pcgraph.Observed(start, mask), y, latents=1, algorithm=_converged()
    )
    z = solution.latents
    assert jnp.array_equal(z[:, mask], start[:, mask])
    assert not jnp.allclose(z[:, ~mask], start[:, ~mask])

    # The free entries are the conditional MAP given the clamped ones, under the marginal
    # y | z ~ N(z a, (1 + 1/q) I).
    def marginal(zf):
        full = start.at[:, ~mask].set(zf)
        return jnp.sum(full**2) / 2 + jnp.sum((y - full @ params["a"]) ** 2) / (2 * 1.25)

    assert float(jnp.max(jnp.abs(jax.grad(marginal)(z[:, ~mask])))) < 1e-6


def test_latents_in_a_pytree_under_jit_and_vmap():
    def neg_log_joint(params, latent, y):
        h = pcgraph.node(jnp.tanh(latent["z"] @ params["w0"] + latent["b"]))
        return jnp.sum(latent["z"] ** 2) / 2 + jnp.sum((h @ params["w1"] - y) ** 2) / 2

    params = _params(jnp.float32)
    latent = {"z": jnp.zeros(3), "b": jnp.zeros(4)}
    ys = jax.random.normal(jax.random.key(8), (4, 2))

    @jax.jit
    @jax.vmap
    def infer(y):
        return pcgraph.relax(neg_log_joint, params, latent, y, latents=(1,)).latents

    (batched,) = infer(ys)
    (single,) = pcgraph.relax(neg_log_joint, params, latent, ys[1], latents=(1,)).latents
    assert batched["z"].shape == (4, 3)
    assert tree_allclose(jax.tree.map(lambda b: b[1], batched), single, rtol=1e-4, atol=1e-6)


def test_train_step_with_latents_returns_them_and_does_not_retrace():
    neg_log_joint, params, y, _ = _linear_gaussian(jnp.float32)
    optimizer = optax.sgd(0.01)
    step = pcgraph.train_step(chex.assert_max_traces(neg_log_joint, n=1), optimizer, latents=1)
    opt_state = optimizer.init(params)
    for k in range(3):
        z = jnp.full((2, 3), float(k))
        new, opt_state, info = step(params, opt_state, pcgraph.Observed(z, z > 1), y)
    assert info.latents.shape == (2, 3)
    assert not jnp.allclose(info.latents, 0)
    assert not tree_allclose(new, params)


def test_filter_grad_with_latents():
    class Decoder(eqx.Module):
        linear: eqx.nn.Linear

        def __call__(self, z):
            return self.linear(z)

    decoder = Decoder(eqx.nn.Linear(3, 5, key=jax.random.key(0)))

    def neg_log_joint(model, z, y):
        h = pcgraph.node(jax.vmap(model)(z))
        return jnp.sum(z**2) / 2 + jnp.sum((y - h) ** 2) / 2

    y = jnp.ones((2, 5))
    grads = pcgraph.filter_grad(neg_log_joint, latents=1)(decoder, jnp.zeros((2, 3)), y)
    at_zero = pcgraph.filter_grad(neg_log_joint)(decoder, jnp.zeros((2, 3)), y)
    assert grads.linear.weight.shape == (5, 3)
    # Inferring z moves it off zero, so the weight gradient differs from the clamped one.
    assert not tree_allclose(grads.linear.weight, at_zero.linear.weight)
    with pytest.raises(ValueError, match="names argument 0, which is differentiated"):
        pcgraph.filter_grad(neg_log_joint, latents=0)


def test_bad_latents_are_refused():
    neg_log_joint, params, y, _ = _linear_gaussian(jnp.float32)
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"names argument 0, which is also differentiated"):
        pcgraph.relax(neg_log_joint, params, z, y, latents=0)
    with pytest.raises(ValueError, match="out of range"):
        pcgraph.relax(neg_log_joint, params, z, y, latents=5)
    with pytest.raises(ValueError, match="the mask must have the value's structure"):
        pcgraph.relax(neg_log_joint, params, pcgraph.Observed(z, [z > 0]), y, latents=1)
    with pytest.raises(TypeError, match="the mask's leaf `<root>` has dtype float32"):
        pcgraph.relax(neg_log_joint, params, pcgraph.Observed(z, z), y, latents=1)
    with pytest.raises(ValueError, match=r"shape \(4,\), which does not broadcast"):
        pcgraph.relax(neg_log_joint, params, pcgraph.Observed(z, jnp.ones(4, bool)), y, latents=1)
    with pytest.raises(TypeError, match="relaxes latents as floating arrays"):
        pcgraph.relax(neg_log_joint, params, z.astype(jnp.int32), y, latents=1)
    with pytest.raises(ValueError, match="pcgraph.FPA cannot infer latents"):
        pcgraph.relax(neg_log_joint, params, z, y, latents=1, algorithm=pcgraph.FPA())


# -- warm starts and trajectories --------------------------------------------------------------


def test_warm_start_continues_the_relaxation(x64):
    neg_log_joint, params, y, z_map = _linear_gaussian(jnp.float64)
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=20, settle=None)
    z0 = jnp.zeros_like(z_map)
    first = pcgraph.relax(neg_log_joint, params, z0, y, latents=1, algorithm=algorithm)
    second = pcgraph.relax(neg_log_joint, params, z0, y, latents=1, algorithm=algorithm, init=first)
    both = pcgraph.relax(
        neg_log_joint,
        params,
        z0,
        y,
        latents=1,
        algorithm=eqx.tree_at(lambda a: a.max_steps, algorithm, 40),
    )
    # Forty Euler steps from the start equal twenty, then twenty more from where they ended.
    assert tree_allclose(second.latents, both.latents, rtol=1e-12)
    assert tree_allclose(second.values, both.values, rtol=1e-12)
    assert float(second.stats.initial_energy) == pytest.approx(float(first.stats.energy))
    with pytest.raises(ValueError, match=r"init= names \['nope'\]"):
        pcgraph.relax(neg_log_joint, params, z0, y, latents=1, init={"nope": z0})
    with pytest.raises(ValueError, match="pcgraph.FPA starts from the feedforward pass"):
        pcgraph.relax(neg_log_joint, params, z0, y, algorithm=pcgraph.FPA(), init=first.values)


def test_saveat_records_per_node_trajectories(x64):
    f = _two_layer(pcgraph.Gaussian(2.0))
    params = _params(jnp.float64)
    x = jax.random.normal(jax.random.key(9), (5, 3))
    y = jnp.ones((5, 2))
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=30)
    saveat = pcgraph.SaveAt(steps=(0, 10, 30), values=True, errors=True)
    solution = pcgraph.relax(f, params, x, y, algorithm=algorithm, saveat=saveat)
    nodes = solution.stats.nodes
    assert nodes.steps.tolist() == [0, 10, 30]
    for name in ("h", "out"):
        energies = nodes.energies[name]
        assert float(energies[0]) == 0.0  # every error is zero at the feedforward pass
        assert tree_allclose(nodes.values[name][2], solution.values[name])
        assert tree_allclose(nodes.errors[name][2], solution.errors[name])
        precision = 2.0 if name == "out" else 1.0
        expected = precision / 2 * jnp.sum(solution.errors[name] ** 2)
        assert tree_allclose(energies[2], expected)
    graph = pcgraph.trace(f, params, x, y)
    dot = graph.to_dot(colour_by={k: e[2] for k, e in nodes.energies.items()}, label="energy")
    assert "node colour: norm of energy" in dot
    assert f"energy={float(nodes.energies['h'][2]):.2g}" in dot
    with pytest.raises(TypeError, match="pass `errors` or `colour_by`, not both"):
        graph.to_dot(solution.errors, colour_by=solution.errors)
    every = pcgraph.relax(f, params, x, y, algorithm=algorithm, saveat=pcgraph.SaveAt())
    assert every.stats.nodes.energies["h"].shape == (31,)
    assert every.stats.nodes.values is None
    fpa = pcgraph.relax(f, params, x, y, saveat=pcgraph.SaveAt(errors=True))
    assert tree_allclose({k: v[-1] for k, v in fpa.stats.nodes.errors.items()}, fpa.errors)
    with pytest.raises(ValueError, match="records no per-node trajectory"):
        pcgraph.relax(
            f, params, x, y, algorithm=pcgraph.ZIL(schedule=pcgraph.Relaxation()), saveat=saveat
        )
    with pytest.raises(ValueError, match="give a tuple of non-negative ints"):
        pcgraph.SaveAt(steps=[0, 1])
