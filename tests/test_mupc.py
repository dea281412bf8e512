"""Deep residual networks (muPC, SP, NTP) and the deep-linear-network theory.

(a) relaxing a deep linear network with IL reproduces the closed-form equilibrium;
(b) muPC keeps the hidden activities O(1) from 8 to 128 hidden layers, SP does not;
(c) the activity-Hessian condition number of SP outgrows the identity chain's; muPC's tracks it;
(d) the parameterisations use exactly the stated constants and are hashable static config;
(e) the model works with pcgraph.grad, IL and the batch-mean convention; bad input is refused.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RTOL, assert_grads_close

import pcgraph
from pcgraph.nn import AbstractParameterisation, MuPC, NeuralTangent, ResidualMLP, Standard
from pcgraph.theory import activity_hessian, linear_equilibrium


def _relative(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _linear_network(key, depth, width, skip, precisions, output_precision, batch=4):
    """A linear network with `depth + 1` layers (scalings 1/sqrt(fan_in); muPC's 1/sqrt(N L)
    on the residual branches) and its PC loss, whose energy is the one `linear_equilibrium`
    solves."""
    in_size, out_size = 5, 3
    sizes = [in_size, *[width] * depth, out_size]
    keys = jax.random.split(key, len(sizes) + 1)
    weights = [
        jax.random.normal(k, (n_out, n_in), jnp.float64)
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
    ]
    hidden = 1 / math.sqrt(width * (depth + 1)) if skip else 1 / math.sqrt(width)
    scalings = [1 / math.sqrt(in_size), *[hidden] * (depth - 1), 1 / math.sqrt(width)]
    x = jax.random.normal(keys[-2], (batch, in_size), jnp.float64)
    y = jax.random.normal(keys[-1], (batch, out_size), jnp.float64)

    def loss(weights, x, y):
        z = x
        for k in range(depth):
            branch = z @ (scalings[k] * weights[k]).T
            z = z + branch if skip and k > 0 else branch
            z = pcgraph.node(z, name=f"z{k + 1}", precision=precisions[k])
        out = z @ (scalings[-1] * weights[-1]).T
        return output_precision / 2 * jnp.sum((y - out) ** 2)

    return loss, weights, scalings, x, y


# -- (a) closed-form equilibrium of deep linear networks ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "depth, width, skip, output_precision, hidden_precisions",
    [
        (2, 3, False, 1.0, "unit"),
        (4, 6, False, 0.25, "unit"),
        (6, 4, False, 4.0, "varied"),
        (4, 5, True, 1.0, "unit"),
        (8, 4, True, 10.0, "varied"),
        (12, 3, True, 0.5, "unit"),
    ],
)
def test_relaxation_reproduces_closed_form_equilibrium(
    depth, width, skip, output_precision, hidden_precisions, x64
):
    precisions = [1.0 if hidden_precisions == "unit" else 0.5 + k / 2 for k in range(depth)]
    loss, weights, scalings, x, y = _linear_network(
        jax.random.PRNGKey(depth), depth, width, skip, precisions, output_precision
    )
    theory = linear_equilibrium(
        weights,
        x,
        y,
        scalings=scalings,
        skip=skip,
        precisions=precisions,
        output_precision=output_precision,
    )
    # The Hessian of a linear network does not depend on the data, so one example sets the
    # largest stable Euler step for the whole batch.
    largest = float(activity_hessian(loss, weights, x[:1], y[:1]).eigenvalues[-1])
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(1 / largest), max_steps=200_000, rtol=1e-12)
    solution = pcgraph.relax(loss, weights, x, y, algorithm=algorithm)

    assert solution.stats.converged
    assert abs(float(solution.stats.energy) / float(theory.energy) - 1) < 1e-6
    for k in range(depth):
        name = f"z{k + 1}"
        assert _relative(solution.errors[name], theory.errors[k]) < 1e-6, name
        assert _relative(solution.values[name], theory.values[k]) < 1e-6, name
    hidden = solution.values[f"z{depth}"]
    output_error = y - hidden @ (scalings[-1] * weights[-1]).T
    assert _relative(output_error, theory.errors[-1]) < 1e-6


def test_closed_form_energy_is_design_formula_for_plain_chain(x64):
    """The closed form of Innocenti et al. (2025): F* = 1/2 sum_i r_i^T S^-1 r_i,
    r_i = y_i - W_{L:1} x_i, S = I + sum_{l=2..L} W_{L:l} W_{L:l}^T, written out in numpy,
    independently of the implementation."""
    rng = np.random.default_rng(7)
    sizes = [4, 6, 5, 6, 3]
    weights = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes[:-1], sizes[1:])]
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 3))

    def product(ws):  # W_{last} ... W_{first}
        out = np.eye(ws[-1].shape[0])
        for w in reversed(ws):
            out = out @ w
        return out

    s = np.eye(3) + sum(product(weights[k:]) @ product(weights[k:]).T for k in range(1, 4))
    r = y - x @ product(weights).T
    per_example = 0.5 * np.einsum("ij,ij->i", r, np.linalg.solve(s, r.T).T)
    theory = linear_equilibrium([jnp.asarray(w) for w in weights], x, y)
    assert float(theory.energy) == pytest.approx(per_example.sum(), rel=1e-12)
    # One example without a batch axis gives that example's terms.
    single = linear_equilibrium([jnp.asarray(w) for w in weights], x[0], y[0])
    assert single.errors[0].shape == (6,) and single.values[-1].shape == (6,)
    assert float(single.energy) == pytest.approx(per_example[0], rel=1e-12)


# -- (b) activity norms at initialisation -------------------------------------------------------


def _unit_rms(states):
    return np.array([float(jnp.sqrt(jnp.mean(z**2))) for z in states])


@pytest.mark.slow
def test_mupc_activities_stay_order_one_and_sp_explode():
    """Bounds: under muPC every hidden layer's per-unit RMS is within [0.5, 2] for inputs of
    unit RMS, at 8, 32 and 128 hidden layers (theory: it grows from 1 to about
    exp(1/4) = 1.28). Under SP the RMS of the last hidden layer is at least 1.15^(H-1) times
    the first's (theory: sqrt(3/2)^(H-1) for ReLU), and beyond 1e9 at 128 layers."""
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 64))
    for depth in (8, 32, 128):
        key = jax.random.PRNGKey(depth)
        mupc = ResidualMLP(depth, 64, 64, 10, parameterisation=MuPC(), key=key)
        sp = ResidualMLP(depth, 64, 64, 10, parameterisation=Standard(), key=key)
        mupc_rms = _unit_rms(mupc.hidden_states(x))
        sp_rms = _unit_rms(sp.hidden_states(x))
        assert np.all((mupc_rms > 0.5) & (mupc_rms < 2.0)), (depth, mupc_rms.min(), mupc_rms.max())
        assert sp_rms[-1] / sp_rms[0] >= 1.15 ** (depth - 1), (depth, sp_rms[-1] / sp_rms[0])
    assert sp_rms[-1] > 1e9


# -- (c) the inference landscape ----------------------------------------------------------------


def _identity_chain_condition(depth: int) -> float:
    """Condition number of the activity Hessian of a bare identity chain z_l = z_{l-1}
    (eigenvalues 2 - 2 cos((2k - 1) pi / (2H + 1)), k = 1..H)."""
    angle = math.pi / (2 * depth + 1)
    return (math.sin((2 * depth - 1) * angle / 2) / math.sin(angle / 2)) ** 2


@pytest.mark.slow
def test_activity_hessian_condition_number_sp_vs_mupc(x64):
    """Width 8, one example, median over 3 seeds. muPC's condition number stays within a factor
    1 to 4 of the bare identity chain's, which grows only quadratically (about
    0.4 (2H + 1)^2): a residual network cannot be better conditioned than its skip connections.
    SP's grows faster than that chain, by more than 100x from 2 to 16 hidden layers, and its
    excess over muPC's grows with depth (see docs/deep-pc.md for 8 to 128 layers)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 16))
    y = jax.nn.one_hot(jnp.array([3]), 4)

    def loss(model, x, y):
        return 0.5 * jnp.sum((model(x) - y) ** 2)

    def condition(parameterisation, depth):
        return np.median(
            [
                float(
                    activity_hessian(
                        loss,
                        ResidualMLP(depth, 8, 16, 4, parameterisation=parameterisation, key=key),
                        x,
                        y,
                    ).condition_number
                )
                for key in jax.random.split(jax.random.PRNGKey(1), 3)
            ]
        )

    depths = (2, 4, 8, 16)
    sp = np.array([condition(Standard(), d) for d in depths])
    mupc = np.array([condition(MuPC(), d) for d in depths])
    chain = np.array([_identity_chain_condition(d) for d in depths])
    assert np.all((mupc >= chain) & (mupc <= 4 * chain)), mupc / chain
    assert np.all(np.diff(sp) > 0) and sp[-1] / sp[0] > 100, sp
    assert np.all(np.diff(sp / chain) > 0), sp / chain
    assert np.all(np.diff(sp / mupc) > 0) and sp[-1] / mupc[-1] > 5, sp / mupc


def test_activity_hessian_of_linear_chain_is_block_tridiagonal(x64):
    """The docstring's formula: diagonal blocks p_l I + p_{l+1} M_{l+1}^T M_{l+1}, off-diagonal
    blocks -p_{l+1} M_{l+1} (the output weight p_L = beta * output precision)."""
    precisions = [0.5, 2.0, 1.5]
    loss, weights, scalings, x, y = _linear_network(
        jax.random.PRNGKey(3), 3, 4, False, precisions, output_precision=3.0
    )
    beta = 0.5
    hessian = activity_hessian(loss, weights, x[:1], y[:1], beta=beta)
    maps = [a * w for a, w in zip(scalings, weights)]
    weights_after = [*precisions[1:], beta * 3.0]
    expected = np.zeros((12, 12))
    for k in range(3):
        block = slice(4 * k, 4 * k + 4)
        expected[block, block] = precisions[k] * np.eye(4) + weights_after[k] * np.asarray(
            maps[k + 1].T @ maps[k + 1]
        )
        if k < 2:
            below = slice(4 * k + 4, 4 * k + 8)
            expected[below, block] = -precisions[k + 1] * np.asarray(maps[k + 1])
            expected[block, below] = expected[below, block].T
    np.testing.assert_allclose(hessian.matrix, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hessian.eigenvalues, np.linalg.eigvalsh(expected), rtol=1e-10)
    eigs = np.abs(np.linalg.eigvalsh(expected))
    assert float(hessian.condition_number) == pytest.approx(eigs.max() / eigs.min(), rel=1e-10)


@pytest.mark.slow
def test_activity_hessian_at_given_values(x64):
    """`values=Solution.values` evaluates the Hessian at the equilibrium of a nonlinear network,
    where it differs from the feedforward one; both equal the Hessian of the energy written
    out by hand."""
    model = ResidualMLP(3, 4, 5, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    x, y = jnp.ones((1, 5)), jnp.array([[3.0, -3.0]])
    a, w, beta = model.scalings, model.weights, 0.5

    def loss(model, x, y):
        return 0.5 * jnp.sum((model(x) - y) ** 2)

    def energy(flat):
        z1, z2, z3 = flat[:4], flat[4:8], flat[8:]
        predictions = [a[0] * w[0] @ x[0], z1 + a[1] * w[1] @ jnp.tanh(z1)]
        predictions.append(z2 + a[2] * w[2] @ jnp.tanh(z2))
        out = a[3] * w[3] @ jnp.tanh(z3)
        nodes = sum(0.5 * jnp.sum((z - mu) ** 2) for z, mu in zip((z1, z2, z3), predictions))
        return nodes + beta * 0.5 * jnp.sum((out - y[0]) ** 2)

    solution = pcgraph.relax(loss, model, x, y, algorithm=pcgraph.IL(beta=beta, max_steps=50))
    at_start = activity_hessian(loss, model, x, y, beta=beta)
    at_end = activity_hessian(loss, model, x, y, beta=beta, values=solution.values)
    start = jnp.concatenate([z[0] for z in model.hidden_states(x)])
    end = jnp.concatenate([solution.values[f"z{k}"][0] for k in (1, 2, 3)])
    hessian = jax.jit(jax.hessian(energy))
    np.testing.assert_allclose(at_start.matrix, hessian(start), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(at_end.matrix, hessian(end), rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(at_start.matrix - at_end.matrix)) > 1e-3


# -- (d) the parameterisations ------------------------------------------------------------------


PARAMETERISATIONS = [MuPC(), Standard(), NeuralTangent()]


def _name(parameterisation) -> str:
    return type(parameterisation).__name__


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS, ids=_name)
def test_parameterisation_constants(parameterisation):
    depth, width, in_size, out_size = 6, 64, 32, 10
    model = ResidualMLP(
        depth,
        width,
        in_size,
        out_size,
        parameterisation=parameterisation,
        key=jax.random.PRNGKey(0),
    )
    num_layers = depth + 1
    expected = {
        MuPC(): [1 / math.sqrt(32), *[1 / math.sqrt(64 * 7)] * 5, 1 / 64],
        NeuralTangent(): [1 / math.sqrt(32), *[1 / 8] * 6],
        Standard(): [1.0] * 7,
    }[parameterisation]
    assert model.scalings == pytest.approx(expected, rel=1e-15)
    assert model.depth == depth
    assert [w.shape for w in model.weights] == [
        (width, in_size),
        *[(width, width)] * (depth - 1),
        (out_size, width),
    ]
    # Weights are N(0, 1) (muPC, NTP) or N(0, 1/fan_in) (SP); the hidden ones have 4096
    # entries each, so their sample std is within 5% of that.
    for w in model.weights[1:-1]:
        std = float(jnp.std(w)) * (math.sqrt(width) if parameterisation == Standard() else 1.0)
        assert abs(std - 1) < 0.05
    # The multipliers and the parameterisation are static: the weights are the only leaves.
    assert model.parameterisation == parameterisation
    assert jax.tree.leaves(model) == list(model.weights)
    assert len(model.scalings) == num_layers

    # The forward pass is exactly that of Innocenti et al. (2025), with the constants written out.
    x = jax.random.normal(jax.random.PRNGKey(1), (3, in_size))
    w = model.weights
    z = expected[0] * x @ w[0].T
    for k in range(1, depth):
        z = z + expected[k] * jax.nn.relu(z) @ w[k].T
    out = expected[-1] * jax.nn.relu(z) @ w[-1].T
    np.testing.assert_allclose(model(x), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x[0]), out[0], rtol=1e-5, atol=1e-6)


def test_sp_and_ntp_agree_at_initialisation():
    """The same draws give the same function: SP folds NTP's 1/sqrt(fan_in) into W."""
    key = jax.random.PRNGKey(2)
    sp = ResidualMLP(5, 16, 8, 3, parameterisation=Standard(), key=key)
    ntp = ResidualMLP(5, 16, 8, 3, parameterisation=NeuralTangent(), key=key)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 8))
    np.testing.assert_allclose(sp(x), ntp(x), rtol=1e-5, atol=1e-6)


def test_parameterisations_are_hashable_static_config():
    """Equal parameterisations compare and hash equal, so models built with equal ones share a
    tree structure (one jit trace); a new parameterisation is a subclass of the abstract base."""
    assert MuPC() == MuPC() and hash(MuPC()) == hash(MuPC())
    assert MuPC() != Standard() and Standard() != NeuralTangent() and MuPC() != NeuralTangent()
    assert len({*PARAMETERISATIONS, *PARAMETERISATIONS}) == 3
    assert ResidualMLP(3, 4, 2, 2, key=jax.random.PRNGKey(0)).parameterisation == MuPC()

    def structure(parameterisation, seed):
        model = ResidualMLP(
            3, 4, 2, 2, parameterisation=parameterisation, key=jax.random.PRNGKey(seed)
        )
        return jax.tree.structure(model)

    for parameterisation in PARAMETERISATIONS:
        assert structure(parameterisation, 0) == structure(type(parameterisation)(), 1)
    assert structure(MuPC(), 0) != structure(Standard(), 0)

    with pytest.raises(TypeError, match="abstract"):
        AbstractParameterisation()

    class Halved(AbstractParameterisation):
        def scalings(self, depth, width, in_size):
            return (0.5,) * (depth + 1)

        def init_std(self, fan_in):
            return 2.0

    key = jax.random.PRNGKey(4)
    halved = ResidualMLP(3, 4, 2, 2, parameterisation=Halved(), key=key)
    mupc = ResidualMLP(3, 4, 2, 2, parameterisation=MuPC(), key=key)
    assert halved.scalings == (0.5,) * 4
    for w, w_mupc in zip(halved.weights, mupc.weights):
        np.testing.assert_array_equal(w, 2.0 * w_mupc)


def test_graph_is_the_layered_network():
    model = ResidualMLP(5, 8, 4, 3, key=jax.random.PRNGKey(0))
    graph = pcgraph.trace(lambda m, x: jnp.sum(m(x) ** 2), model, jnp.ones((2, 4)), argnums=0)
    assert graph.node_names == ("z1", "z2", "z3", "z4", "z5")
    assert graph.depth == 5
    assert [info.parents for info in graph.nodes] == [
        (".weights[0]",),
        (".weights[1]", "z1"),
        (".weights[2]", "z2"),
        (".weights[3]", "z3"),
        (".weights[4]", "z4"),
    ]
    unmarked = ResidualMLP(5, 8, 4, 3, key=jax.random.PRNGKey(0), mark_nodes=False)
    assert (
        "z1"
        not in pcgraph.trace(lambda m, x: jnp.sum(m(x) ** 2), unmarked, jnp.ones((2, 4))).node_names
    )


# -- (e) gradients, IL, the batch-mean convention, bad input -------------------------------------


def _mse(model, x, y):
    return 0.5 * jnp.mean(jnp.sum((model(x) - y) ** 2, axis=-1))


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS, ids=_name)
def test_fpa_gradient_equals_jax_grad(parameterisation, dtype):
    model = ResidualMLP(
        6, 8, 5, 3, parameterisation=parameterisation, key=jax.random.PRNGKey(0), dtype=dtype
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5), dtype)
    y = jax.random.normal(jax.random.PRNGKey(2), (4, 3), dtype)
    assert_grads_close(pcgraph.grad(_mse)(model, x, y), jax.grad(_mse)(model, x, y), RTOL[dtype])


@pytest.mark.slow
def test_il_trains_a_deep_mupc_network(x64):
    """IL relaxes a 12-layer muPC network to a tolerance; its gradient points along backprop's
    (small beta), and a few optax steps with it lower the loss. (The residual chain's activity
    Hessian has eigenvalues up to about 4, so Euler is stable below 0.5.)"""
    model = ResidualMLP(12, 16, 5, 3, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
    y = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
    algorithm = pcgraph.IL(beta=0.01, stepper=pcgraph.Euler(0.4), max_steps=5000, rtol=1e-4)
    solution = pcgraph.relax(_mse, model, x, y, algorithm=algorithm)
    assert solution.stats.converged
    pc, reference = jax.tree.leaves(solution.grads), jax.tree.leaves(jax.grad(_mse)(model, x, y))
    for a, b in zip(pc, reference):
        cosine = jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
        assert cosine > 0.99

    optimizer = optax.adam(1e-2)
    state = optimizer.init(model)
    step = pcgraph.grad(_mse, algorithm=algorithm)
    start = float(_mse(model, x, y))
    for _ in range(5):
        updates, state = optimizer.update(step(model, x, y), state, model)
        model = eqx.apply_updates(model, updates)
    assert float(_mse(model, x, y)) < 0.9 * start


def test_batch_mean_convention_matches_layered_pc(x64):
    """Other PC libraries take Euler steps of size h on the batch-mean energy
    (1/B) sum_i [sum_l 1/2 ||eps_il||^2 + 1/2 ||y_i - out_i||^2]. pcgraph sums over the batch,
    so the same dynamics are IL(beta=B, stepper=Euler(h / B)) on the batch-mean loss, and IL's
    gradient (divided by beta) is the gradient of that batch-mean energy."""
    depth, batch, h, steps = 4, 5, 0.5, 4
    model = ResidualMLP(depth, 8, 5, 3, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 5))
    y = jax.random.normal(jax.random.PRNGKey(2), (batch, 3))
    a, relu = model.scalings, jax.nn.relu

    def batch_mean_energy(zs, weights):
        energy = 0.5 * jnp.sum((zs[0] - a[0] * x @ weights[0].T) ** 2)
        for k in range(1, depth):
            prediction = zs[k - 1] + a[k] * relu(zs[k - 1]) @ weights[k].T
            energy += 0.5 * jnp.sum((zs[k] - prediction) ** 2)
        energy += 0.5 * jnp.sum((y - a[-1] * relu(zs[-1]) @ weights[-1].T) ** 2)
        return energy / batch

    zs = model.hidden_states(x)
    for _ in range(steps):
        zs = [z - h * g for z, g in zip(zs, jax.grad(batch_mean_energy)(zs, model.weights))]
    reference = jax.grad(batch_mean_energy, argnums=1)(zs, model.weights)

    algorithm = pcgraph.IL(beta=float(batch), stepper=pcgraph.Euler(h / batch), max_steps=steps)
    solution = pcgraph.relax(_mse, model, x, y, algorithm=algorithm)
    for k, expected in enumerate(zs):
        np.testing.assert_allclose(solution.values[f"z{k + 1}"], expected, rtol=1e-12, atol=1e-14)
    assert float(solution.stats.energy) == pytest.approx(
        batch * float(batch_mean_energy(zs, model.weights)), rel=1e-12
    )
    assert_grads_close(solution.grads.weights, tuple(reference), 1e-10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(parameterisation="mup"), TypeError, r"'mup'\): must be an instance of pcgraph\.nn\."),
        (dict(parameterisation=None), TypeError, r"None\): must be an instance of pcgraph\.nn\."),
        (dict(depth=0), ValueError, r"depth=0\): must be a positive int"),
        (dict(depth=2.5), ValueError, r"depth=2.5\): must be a positive int"),
        (dict(width=-1), ValueError, r"width=-1\): must be a positive int"),
        (dict(activation="relu"), TypeError, r"activation='relu'\): must be a callable"),
    ],
)
def test_bad_model_arguments(kwargs, error, match):
    arguments = dict(depth=3, width=4, in_size=2, out_size=2) | kwargs
    with pytest.raises(error, match=match):
        ResidualMLP(**arguments, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "old, new", [("mupc", "MuPC"), ("sp", "Standard"), ("ntp", "NeuralTangent")]
)
def test_string_parameterisation_names_its_replacement(old, new):
    match = rf"parameterisation='{old}'\): .*not a string; pass pcgraph\.nn\.{new}\(\) instead"
    with pytest.raises(TypeError, match=match):
        ResidualMLP(3, 4, 2, 2, parameterisation=old, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("cls", [MuPC, Standard, NeuralTangent], ids=lambda cls: cls.__name__)
def test_parameterisation_class_must_be_instantiated(cls):
    name = rf"pcgraph\.nn\.{cls.__name__}"
    match = rf"parameterisation={name}\): that is the class, not an instance; instantiate it: "
    with pytest.raises(TypeError, match=match + rf"`parameterisation={name}\(\)`"):
        ResidualMLP(3, 4, 2, 2, parameterisation=cls, key=jax.random.PRNGKey(0))


def test_abstract_parameterisation_class_is_refused():
    match = r"abstract class; pass an instance of one of its subclasses, e\.g\. .*MuPC\(\)"
    with pytest.raises(TypeError, match=match):
        ResidualMLP(
            3, 4, 2, 2, parameterisation=AbstractParameterisation, key=jax.random.PRNGKey(0)
        )


def test_bad_theory_arguments(x64):
    w = [jnp.ones((3, 2)), jnp.ones((2, 3))]
    x, y = jnp.ones(2), jnp.ones(2)
    with pytest.raises(ValueError, match="at least two 2-D weight matrices"):
        linear_equilibrium(w[:1], x, y)
    with pytest.raises(ValueError, match="2 weight matrices need 2 scalings and 1 hidden"):
        linear_equilibrium(w, x, y, scalings=[1.0])
    with pytest.raises(ValueError, match=r"precisions=\.\.\.\): every entry must be a positive"):
        linear_equilibrium(w, x, y, output_precision=0.0)
    with pytest.raises(ValueError, match="W_2 has shape"):
        linear_equilibrium([jnp.ones((3, 2)), jnp.ones((2, 4))], x, y)
    with pytest.raises(ValueError, match="skip=True.*must be square"):
        linear_equilibrium([jnp.ones((3, 2)), jnp.ones((4, 3)), jnp.ones((2, 4))], x, y, skip=True)

    model = ResidualMLP(4, 8, 2, 2, key=jax.random.PRNGKey(0))

    def loss(model, x):
        return jnp.sum(model(x) ** 2)

    with pytest.raises(ValueError, match=r"128 node values, more than max_size=100.*batch size 1"):
        activity_hessian(loss, model, jnp.ones((4, 2)), max_size=100)
    with pytest.raises(ValueError, match=r"keys must be the graph's node names.*'z9'"):
        activity_hessian(loss, model, jnp.ones((1, 2)), values={"z9": jnp.ones((1, 8))})
    with pytest.raises(ValueError, match=r"beta=-1.0\): must be a finite number >= 0"):
        activity_hessian(loss, model, jnp.ones((1, 2)), beta=-1.0)
    with pytest.raises(ValueError, match="no value nodes"):
        activity_hessian(lambda w, x: jnp.vdot(w, x), jnp.ones(2), jnp.ones(2))
