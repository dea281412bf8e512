"""Bidirectional predictive coding (Oliviers, Tang & Bogacz 2025): the energy, its local
gradients and equilibrium, input checks, training, and transforms."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import tree_allclose

import pcgraph
from pcgraph.nn import Bidirectional

SIZES = (5, 4, 3, 2)
UP, DOWN = 1.5, 0.7


def _model(dtype=jnp.float64, sizes=SIZES, seed=0):
    """A model built from the user's own layers, as an existing network would be."""
    keys = jax.random.split(jax.random.key(seed), 2 * (len(sizes) - 1))
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    up = [eqx.nn.Linear(a, b, key=k, dtype=dtype) for (a, b), k in zip(pairs, keys[::2])]
    down = [eqx.nn.Linear(b, a, key=k, dtype=dtype) for (a, b), k in zip(pairs, keys[1::2])]
    return Bidirectional(up, down, jnp.tanh, up_precision=UP, down_precision=DOWN)


def _data(dtype=jnp.float64, batch=6):
    x = jax.random.normal(jax.random.key(1), (batch, SIZES[0]), dtype)
    y = jax.nn.one_hot(jnp.arange(batch) % SIZES[-1], SIZES[-1], dtype=dtype)
    return x, y


def _energy_by_hand(model, x, hidden, y):
    """E = sum_l UP/2 ||z_l - f_l(phi(z_{l-1}))||^2 + DOWN/2 ||z_{l-1} - g_l(phi(z_l))||^2, with
    phi = tanh on the hidden states only, written out with the weights."""
    states = [x, *hidden, y]
    last = len(states) - 1
    phi = [(lambda z: z) if k in (0, last) else jnp.tanh for k in range(len(states))]
    energy = 0.0
    for k, (f, g) in enumerate(zip(model.up_layers, model.down_layers, strict=True), start=1):
        up = phi[k - 1](states[k - 1]) @ f.weight.T + f.bias
        down = phi[k](states[k]) @ g.weight.T + g.bias
        energy += UP / 2 * jnp.sum((states[k] - up) ** 2)
        energy += DOWN / 2 * jnp.sum((states[k - 1] - down) ** 2)
    return energy


def _bottom_up_hidden(model, x):
    hidden = []
    z = x
    for k, layer in enumerate(model.up_layers[:-1]):
        z = (z if k == 0 else jnp.tanh(z)) @ layer.weight.T + layer.bias
        hidden.append(z)
    return hidden


def _energy(model, x, y):
    return model.energy(x, y)


def _converged():
    return pcgraph.IL(stepper=pcgraph.Euler(0.2), max_steps=3000, rtol=1e-9)


def test_energy_is_the_bpc_energy(x64):
    model, (x, y) = _model(), _data()
    hidden = _bottom_up_hidden(model, x)
    # Plain JAX: every hidden state at its bottom-up prediction.
    assert tree_allclose(model.energy(x, y), _energy_by_hand(model, x, hidden, y), rtol=1e-12)
    per_example = jax.vmap(
        lambda xn, hn, yn: _energy_by_hand(model, xn[None], [h[None] for h in hn], yn[None])
    )(x, hidden, y)
    assert tree_allclose(model.example_energies(x, hidden, y), per_example, rtol=1e-12)
    # pcgraph: the relaxed graph's energy F is E at the relaxed hidden states.
    solution = pcgraph.relax(_energy, model, x, y, algorithm=pcgraph.IL(max_steps=20))
    relaxed = [solution.values["hidden1"], solution.values["hidden2"]]
    assert tree_allclose(solution.stats.initial_energy, model.energy(x, y), rtol=1e-12)
    assert tree_allclose(solution.stats.energy, _energy_by_hand(model, x, relaxed, y), rtol=1e-12)
    assert tree_allclose(
        jnp.sum(model.example_energies(x, relaxed, y)), solution.stats.energy, rtol=1e-12
    )


def test_il_reads_the_exact_local_gradient_at_a_stationary_point(x64):
    """At IL's equilibrium (beta=1) each weight's gradient is dE/dtheta at the relaxed hidden
    states, and those states are a stationary point of E."""
    model, (x, y) = _model(), _data()
    solution = pcgraph.relax(_energy, model, x, y, algorithm=_converged())
    hidden = [solution.values["hidden1"], solution.values["hidden2"]]
    assert int(solution.stats.num_steps) < 3000
    expected = jax.grad(_energy_by_hand)(model, x, hidden, y)
    assert tree_allclose(solution.grads, expected, rtol=1e-8, atol=1e-10)
    force = jax.grad(_energy_by_hand, argnums=2)(model, x, hidden, y)
    assert max(float(jnp.max(jnp.abs(f))) for f in force) < 1e-7
    # Away from the bottom-up sweep: the top-down terms moved the hidden states.
    assert float(jnp.max(jnp.abs(hidden[0] - _bottom_up_hidden(model, x)[0]))) > 1e-2


@pytest.mark.slow  # about 10 s on 2 cores: two relaxations compiled
def test_sweeps_and_inference():
    model, (x, y) = _model(jnp.float32), _data(jnp.float32)
    assert model.bottom_up(x).shape == y.shape and model.top_down(y).shape == x.shape
    assert model.depth == 3
    # Generation starts at the top-down sweep and lowers the energy from there.
    generated, label, hidden = model.infer(None, y)
    assert label is y and generated.shape == x.shape
    swept = model.top_down(y)
    start_hidden = [model._top_down_states(y)[k] for k in (1, 2)]
    assert float(jnp.sum(model.example_energies(generated, hidden, y))) < float(
        jnp.sum(model.example_energies(swept, start_hidden, y))
    )
    # Completion keeps the observed entries and infers the rest (and the label).
    observed = jnp.arange(SIZES[0]) < 3
    completed, label, _ = model.infer(pcgraph.Observed(x, observed), None)
    assert tree_allclose(completed[:, :3], x[:, :3], rtol=0, atol=0)
    assert not tree_allclose(completed[:, 3:], x[:, 3:])
    assert label.shape == y.shape


def test_from_sizes_builds_linear_layers():
    model = Bidirectional.from_sizes([8, 6, 3], key=jax.random.key(0), activation=jax.nn.relu)
    assert [(f.in_features, f.out_features) for f in model.up_layers] == [(8, 6), (6, 3)]
    assert [(g.in_features, g.out_features) for g in model.down_layers] == [(6, 8), (3, 6)]
    assert model.activation is jax.nn.relu and model.up_precision == model.down_precision == 1.0


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: Bidirectional([eqx.nn.Linear(2, 3, key=jax.random.key(0))], []),
         ValueError, r"down_layers=\[\]\): give at least one layer"),
        (lambda: Bidirectional(*_layer_lists(2, 1)), ValueError,
         "2 bottom-up layers and 1 top-down layers.*as many of each"),
        (lambda: Bidirectional(*_layer_lists(1, 1), up_precision=0.0), ValueError,
         r"up_precision=0.0\): must be a positive"),
        (lambda: Bidirectional(*_layer_lists(1, 1), down_precision=jnp.ones(3)), ValueError,
         "down_precision=.*Python number"),
        (lambda: Bidirectional(*_layer_lists(1, 1), activation="tanh"), TypeError,
         "activation='tanh'.*callable"),
        (lambda: Bidirectional([3], [3]), TypeError, r"up_layers\[0\]=3\): every layer"),
        (lambda: Bidirectional(eqx.nn.Linear(2, 3, key=jax.random.key(0)), []), TypeError,
         "list or tuple of layers.*`.layers`"),
        (lambda: Bidirectional.from_sizes([8], key=jax.random.key(0)), ValueError,
         "at least two positive ints"),
    ],
)  # fmt: skip
def test_construction_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def _layer_lists(n_up, n_down):
    key = jax.random.key(0)
    return [eqx.nn.Linear(2, 2, key=key)] * n_up, [eqx.nn.Linear(2, 2, key=key)] * n_down


def test_call_errors():
    model, (x, y) = _model(jnp.float32), _data(jnp.float32)
    with pytest.raises(ValueError, match=r"has shape \(5,\).*For one example pass `x\[None\]`"):
        model.energy(x[0], y)
    with pytest.raises(ValueError, match="`x` holds 6 examples but `y` holds 5"):
        model.energy(x, y[:5])
    with pytest.raises(ValueError, match=r"target of shape \(2,\), but `y` has shape \(3,\)"):
        model.energy(x, jnp.ones((6, 3)))
    with pytest.raises(ValueError, match=r"bottom-up layer 1 \(from the input\) cannot take"):
        model.energy(jnp.ones((6, 4)), y)
    with pytest.raises(TypeError, match="`y` must be a floating JAX array.*int32"):
        model.energy(x, jnp.ones((6, 2), jnp.int32))
    bad = eqx.tree_at(lambda m: m.down_layers[1], model, eqx.nn.Linear(3, 5, key=jax.random.key(0)))
    message = (
        r"top-down layer 2 maps hidden state 2 \(shape \(3,\)\) to shape \(5,\), but it "
        r"predicts hidden state 1, of shape \(4,\)"
    )
    with pytest.raises(ValueError, match=message):
        bad.energy(x, y)
    with pytest.raises(ValueError, match=r"infer\(None, None\)"):
        model.infer(None, None)
    with pytest.raises(ValueError, match="both are clamped arrays"):
        model.infer(x, y)
    with pytest.raises(ValueError, match=r"`hidden` holds states of shapes \[\(6, 4\)\]"):
        model.example_energies(x, [jnp.ones((6, 4))], y)


@pytest.mark.slow  # about 20 s on 2 cores: relaxations compiled under jit and vmap
def test_jit_and_vmap():
    model, (x, y) = _model(jnp.float32), _data(jnp.float32)
    assert tree_allclose(jax.jit(_energy)(model, x, y), model.energy(x, y))
    # The energy of a batch sums the energies of its examples.
    single = jax.vmap(lambda xn, yn: model.energy(xn[None], yn[None]))(x, y)
    assert tree_allclose(single, model.example_energies(x, _bottom_up_hidden(model, x), y))
    assert tree_allclose(jnp.sum(single), model.energy(x, y))
    infer = jax.jit(lambda m, y: m.infer(None, y)[0])
    assert tree_allclose(infer(model, y), model.infer(None, y)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # about 25 s on 2 cores: a relaxation compiled under vmap
def test_a_relaxation_per_example_under_vmap_is_the_batched_one():
    """The examples are independent terms of the energy, so relaxing each on its own (under
    `jax.vmap`) and summing the gradients gives the batched relaxation's."""
    model, (x, y) = _model(jnp.float32), _data(jnp.float32)
    grads = jax.vmap(lambda xn, yn: pcgraph.grad(_energy, algorithm=pcgraph.IL())(
        model, xn[None], yn[None]))(x, y)  # fmt: skip
    summed = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
    batched = pcgraph.grad(_energy, algorithm=pcgraph.IL())(model, x, y)
    assert tree_allclose(summed, batched, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # about 18 s on 2 cores
def test_training_on_digits_improves_classification_and_generation():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = jnp.asarray(digits.data[:400] / 16.0, jnp.float32)
    labels = jax.nn.one_hot(digits.target[:400], 10)
    train_x, test_x, train_y, test_y = images[:300], images[300:], labels[:300], labels[300:]
    model = Bidirectional.from_sizes([64, 64, 10], key=jax.random.key(0))
    optimizer = optax.adam(3e-3)
    step = pcgraph.train_step(_energy, optimizer, algorithm=pcgraph.IL(max_steps=30))
    opt_state = optimizer.init(model)

    def scores(model):
        accuracy = jnp.mean(jnp.argmax(model.bottom_up(test_x), -1) == jnp.argmax(test_y, -1))
        reconstruction = jnp.mean((model.top_down(test_y) - test_x) ** 2)
        return float(accuracy), float(reconstruction)

    accuracy, reconstruction = scores(model)
    for _ in range(4):
        for b in range(0, 300, 30):
            model, opt_state, _ = step(model, opt_state, train_x[b : b + 30], train_y[b : b + 30])
    trained_accuracy, trained_reconstruction = scores(model)
    assert trained_accuracy > max(0.7, accuracy + 0.3)
    assert trained_reconstruction < reconstruction / 2
    assert trained_reconstruction < float(jnp.mean((train_x.mean(0) - test_x) ** 2))
