"""Equilibrium propagation, contrastive Hebbian learning and the energy-based interface.

Millidge, Song, Salvatori, Lukasiewicz & Bogacz (2023): PC, EqProp and CHL all approximate
backprop because the free phase sits at an equilibrium and the nudge is infinitesimal. On the
PC energy of a traced function the free phase is the feedforward pass, one-sided EqProp is IL,
and the error against `jax.grad` is O(beta) (one-sided) or O(beta^2) (symmetric); CHL is the
exact gradient of a different (contrastive) objective. On the Hopfield energy EqProp approaches
the implicit gradient of the loss at the free equilibrium.

`python tests/test_eqprop.py` redraws docs/figures/eqprop_beta_sweep.png and prints the table of
fitted slopes in docs/energy-based.md.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, small_cnn, tanh_mlp
from jax.flatten_util import ravel_pytree

import pcgraph
from pcgraph._ebm import AbstractEnergy, HopfieldEnergy, _PCEnergy
from pcgraph._eqprop import CHL, ContrastiveStats, EqProp, ebm_grad, ebm_relax
from pcgraph._trace import trace_flat

#: Relax every phase to the round-off floor of float64: the sweeps measure the estimators, not
#: the relaxation.
TIGHT = dict(rtol=1e-10, atol=1e-14, max_steps=20_000)

#: The sweeps. The CNN's max pooling switches its arg-max for nudges beyond ~0.3: its nudged
#: energy is then not smooth and Euler chatters instead of converging, so its sweep stops at 0.1.
SWEEPS = {
    "tanh_mlp": (tanh_mlp, np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0])),
    "small_cnn": (small_cnn, np.array([1e-4, 1e-3, 1e-2, 1e-1])),
}


def _random(seed: int, shape, scale=1.0) -> jax.Array:
    """Gaussian test data drawn with numpy: eager JAX ops would each compile a program."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _flat(tree) -> jax.Array:
    return ravel_pytree(tree)[0]


def _relative_errors(estimates, reference) -> np.ndarray:
    return np.asarray(jnp.linalg.norm(estimates - reference, axis=-1) / jnp.linalg.norm(reference))


def _slope(betas, errors) -> float:
    return float(np.polyfit(np.log(betas), np.log(errors), 1)[0])


def _sweep(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{estimator: (betas, relative error against jax.grad)}` over the model's beta sweep.
    EqProp and CHL take beta as a traced array, so each is one compiled, vmapped program; IL
    compiles once per beta, so it runs on every other beta."""
    model, betas = SWEEPS[name]
    fn, args, _ = model(jax.random.PRNGKey(0), jnp.float64, mark=True)
    reference = _flat(jax.grad(fn)(*args))

    def sweep(make_algorithm):
        estimate = jax.vmap(lambda b: _flat(pcgraph.grad(fn, algorithm=make_algorithm(b))(*args)))
        return estimate(jnp.asarray(betas))

    def il(beta):
        # The same Euler steps as EqProp's phases, so that both stop at the same equilibrium.
        il = pcgraph.IL(beta=float(beta), stepper=pcgraph.Euler(0.1), **TIGHT)
        return _flat(pcgraph.grad(fn, algorithm=il)(*args))

    chl = sweep(lambda b: CHL(beta=b, **TIGHT))
    estimates = {
        "EqProp": (betas, sweep(lambda b: EqProp(beta=b, **TIGHT))),
        "EqProp (symmetric)": (betas, sweep(lambda b: EqProp(beta=b, symmetric=True, **TIGHT))),
        "IL": (betas[::2], jnp.stack([il(b) for b in betas[::2]])),
        "CHL": (betas, chl),
        "CHL / beta": (betas, chl / betas[:, None]),
    }
    return {key: (b, _relative_errors(e, reference)) for key, (b, e) in estimates.items()}


# -- the PC energy: the free phase is the feedforward pass ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", [tanh_mlp, small_cnn])
def test_free_phase_of_the_pc_energy_is_the_feedforward_pass(model, x64):
    fn, args, _ = model(jax.random.PRNGKey(1), jnp.float64, mark=True)
    traced = trace_flat(fn, args, 0, False)
    graph, params, data = traced.graph, traced.params, traced.data
    feedforward = jax.jit(graph.feedforward)(params, data)
    energy = _PCEnergy(graph, feedforward.frozen)
    algorithm = EqProp(beta=1e-3, rtol=1e-6, max_steps=20_000)
    # At the feedforward values (the default start) the force is exactly zero: no step.
    still = ebm_relax(energy, params, data, data, algorithm=algorithm, state=feedforward.values)
    free = still.stats.phases[0]
    assert int(free.num_steps) == 0 and float(free.residual) == 0.0
    for value, start in zip(still.state, feedforward.values, strict=True):
        np.testing.assert_array_equal(value, start)
    assert float(still.value) == float(feedforward.loss)
    # From a perturbed state the free phase returns to the feedforward values: zero errors.
    perturbed = [v + _random(k, v.shape, 0.3) for k, v in enumerate(feedforward.values)]
    back = ebm_relax(energy, params, data, data, algorithm=algorithm, state=perturbed)
    assert int(back.stats.phases[0].num_steps) > 10
    for value, start in zip(back.state, feedforward.values, strict=True):
        np.testing.assert_allclose(value, start, rtol=0, atol=1e-8)


def test_one_sided_eqprop_is_il_on_the_pc_energy(x64):
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(3), jnp.float64, mark=True)
    settings = dict(beta=0.05, stepper=pcgraph.Euler(0.2), max_steps=3000, rtol=1e-9)
    eqprop = pcgraph.relax(fn, *args, algorithm=EqProp(**settings), save_energy=True)
    il = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(**settings), save_energy=True)
    assert_grads_close(eqprop.grads, il.grads, 1e-12)
    assert int(eqprop.stats.num_steps) == int(il.stats.num_steps) > 10
    np.testing.assert_allclose(eqprop.stats.energy_trajectory, il.stats.energy_trajectory)
    for name in il.errors:
        np.testing.assert_allclose(eqprop.errors[name], il.errors[name], rtol=1e-12, atol=1e-16)
    stats = eqprop.stats
    assert isinstance(stats, ContrastiveStats)
    assert stats.phase_names == ("free", "nudged +beta")
    assert stats.phases[0].energy_trajectory.shape == (1,)
    # pcgraph.grad starts the free phase at the feedforward pass, its exact equilibrium.
    assert int(stats.phases[0].num_steps) == 0 and float(stats.phases[0].residual) == 0.0
    assert int(stats.total_steps) == int(stats.phases[1].num_steps)


# -- the beta sweeps on the PC energy --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["tanh_mlp", pytest.param("small_cnn", marks=pytest.mark.slow)],  # ~30 s
)
def test_estimator_errors_over_a_beta_sweep(name, x64):
    """One-sided EqProp and IL: O(beta). Symmetric EqProp: O(beta^2). CHL: beta times one-sided
    EqProp, so its error against the gradient does not vanish at any beta."""
    sweep = _sweep(name)
    betas, one_sided = sweep["EqProp"]
    symmetric, chl, chl_over_beta = (
        sweep[k][1] for k in ("EqProp (symmetric)", "CHL", "CHL / beta")
    )
    il_betas, il = sweep["IL"]
    np.testing.assert_allclose(il, one_sided[::2], rtol=1e-6)
    assert 0.8 < _slope(betas, one_sided) < 1.2, one_sided
    assert 0.8 < _slope(il_betas, il) < 1.2, il
    # Below beta = 1e-3 the symmetric error (< 1e-6) meets the relaxation's round-off floor.
    smooth = betas >= 1e-3
    assert 1.7 < _slope(betas[smooth], symmetric[smooth]) < 2.3, symmetric
    assert np.all((symmetric < one_sided)[betas < 1])
    assert one_sided[0] < 1e-3 and symmetric[1] < 1e-5
    np.testing.assert_allclose(chl_over_beta, one_sided, rtol=1e-6)
    assert np.all(chl > 0.25), chl


def _tanh_softplus(dtype=jnp.float64):
    """A 4-6-5-3 network, tanh then softplus, with a squared error over a batch of 8."""
    sizes = (4, 6, 5, 3)
    params = [
        {"w": _random(i, (m, n), 1 / np.sqrt(m)), "b": _random(10 + i, (n,), 0.1)}
        for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    ]
    x, y = _random(20, (8, 4)), _random(21, (8, 3))

    def loss(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params[0]["w"] + params[0]["b"]), name="h1")
        h = pcgraph.node(jax.nn.softplus(h @ params[1]["w"] + params[1]["b"]), name="h2")
        return jnp.mean((h @ params[2]["w"] + params[2]["b"] - y) ** 2)

    return loss, jax.tree.map(lambda a: a.astype(dtype), (params, x, y))


@pytest.mark.slow
def test_default_tolerance_keeps_the_estimators_order_over_a_beta_sweep(x64):
    """With the default settings (only beta varied) every phase relaxes to a tolerance that
    keeps the relaxations' error below the estimator's own, O(beta) one-sided and O(beta^2)
    symmetric, stopping well before `max_steps`."""
    fn, args = _tanh_softplus()
    reference = _flat(jax.grad(fn)(*args))
    betas = np.logspace(-4, 0, 5)

    @jax.vmap
    def estimate(beta):
        one_sided = pcgraph.relax(fn, *args, algorithm=EqProp(beta=beta))
        symmetric = pcgraph.relax(fn, *args, algorithm=EqProp(beta=beta, symmetric=True))
        steps = jnp.stack([p.num_steps for p in (*one_sided.stats.phases, *symmetric.stats.phases)])
        return _flat(one_sided.grads), _flat(symmetric.grads), steps

    one_sided, symmetric, steps = estimate(jnp.asarray(betas))
    one_sided, symmetric = (_relative_errors(e, reference) for e in (one_sided, symmetric))
    # Measured: slopes 0.98 and 2.01, errors 3e-5 and 6e-9 at beta = 1e-4. There the symmetric
    # error meets the relaxations' (about rtol / 2 = 7e-9; the slope from 1e-4 is 1.83).
    assert 0.8 < _slope(betas, one_sided) < 1.2, one_sided
    assert 1.7 < _slope(betas[1:], symmetric[1:]) < 2.3, symmetric
    assert one_sided[0] < 1e-4 and symmetric[0] < 3e-8
    # About 380 steps per nudged phase here, against the 10_000 allowed.
    assert int(jnp.max(steps)) < 1000, steps


def _deep_linear(batch=6):
    params = [_random(0, (5, 6), 0.5), _random(1, (6, 6), 0.5), _random(2, (6, 3), 0.5)]
    x, y = _random(3, (batch, 5)), _random(4, (batch, 3))

    def loss(params, x, y):
        z1 = pcgraph.node(x @ params[0], name="z1")
        z2 = pcgraph.node(z1 @ params[1], name="z2")
        return 0.5 * jnp.sum((z2 @ params[2] - y) ** 2) / x.shape[0]

    def contrastive_objective(params, beta):
        """min_z F_beta - min_z E for the linear-Gaussian network: 1/2 sum r^T C^-1 r with
        C = S + (batch / beta) I, S = sum_l A_l A_l^T over the maps A_l from node l to the
        output (the closed form of Innocenti et al. 2025 at beta = batch)."""
        w1, w2, w3 = params
        residual = y - x @ w1 @ w2 @ w3
        covariance = (w2 @ w3).T @ (w2 @ w3) + w3.T @ w3 + batch / beta * jnp.eye(3)
        return 0.5 * jnp.sum(residual * jnp.linalg.solve(covariance, residual.T).T)

    return loss, (params, x, y), contrastive_objective


@pytest.mark.slow
def test_chl_is_the_gradient_of_the_contrastive_objective(x64):
    """On a deep linear PC network the contrastive objective has a closed form: CHL(beta)
    equals its gradient and the clamped phase's energy its value, for a weak nudge, for
    beta = batch size (where it is the equilibrium energy of Innocenti et al. 2025) and for a
    strong clamp. Its direction drifts from the loss gradient as the clamp tightens, towards that of
    J_inf = 1/2 sum r^T S^-1 r, which is not parallel to it."""
    fn, args, objective = _deep_linear()
    betas = jnp.array([1.0, 6.0, 100.0])
    algorithm = lambda b: CHL(beta=b, stepper=pcgraph.Euler(0.02), **TIGHT)  # noqa: E731

    @jax.vmap
    def chl(beta):
        solution = pcgraph.relax(fn, *args, algorithm=algorithm(beta))
        return _flat(solution.grads), solution.stats.phases[1].energy

    grads, energies = chl(betas)
    for beta, grad, energy in zip(betas, grads, energies, strict=True):
        expected = _flat(jax.grad(objective)(args[0], beta))
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7 * jnp.abs(expected).max())
        np.testing.assert_allclose(energy, objective(args[0], beta), rtol=1e-9)
    gradient = _flat(jax.grad(fn)(*args))
    clamped = _flat(jax.grad(objective)(args[0], jnp.inf))

    def cosine(a, b):
        return float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b))

    cosines = [cosine(g, gradient) for g in grads]
    # Measured: 0.97, 0.72, 0.09 at beta = 1, 6, 100, and 0.05 for the hard clamp.
    assert cosines[0] > 0.9 and cosines[0] > cosines[1] > cosines[2]
    assert cosine(clamped, gradient) < 0.5
    assert cosine(grads[2], clamped) > 0.99 > cosine(grads[1], clamped)


@pytest.mark.slow
def test_chl_bias_grows_as_the_clamp_tightens_on_an_mlp(x64):
    """The tanh MLP with a squared error: as beta grows CHL converges (changes shrink like
    1/beta) to the gradient of the clamped energy, far from the loss gradient."""
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(0), jnp.float64, mark=True)
    gradient = _flat(jax.grad(fn)(*args))
    betas = jnp.array([1.0, 10.0, 100.0, 1000.0])
    # The clamp stiffens the energy by about beta / 10 here; Euler needs a step below 2 / that.
    steps = 0.1 / (1 + betas / 10)

    @jax.vmap
    def chl(beta, step):
        algorithm = CHL(beta=beta, stepper=pcgraph.Euler(step), rtol=1e-8, max_steps=50_000)
        return _flat(pcgraph.grad(fn, algorithm=algorithm)(*args))

    grads = chl(betas, steps)
    cosines = np.asarray(
        grads @ gradient / jnp.linalg.norm(grads, axis=1) / jnp.linalg.norm(gradient)
    )
    changes = np.asarray(
        jnp.linalg.norm(jnp.diff(grads, axis=0), axis=1) / jnp.linalg.norm(grads[1:], axis=1)
    )
    assert cosines[0] > 0.95 and np.all(np.diff(cosines) < 0) and cosines[-1] < 0.5, cosines
    assert changes[-1] < 0.5 * changes[-2], changes


# -- a user-defined energy -------------------------------------------------------------------


class _LinearGaussian(AbstractEnergy):
    """E = 1/2 ||s - x W||^2 and C = 1/2 ||s V - y||^2: the nudged equilibrium has the closed
    form s_beta = (x W + beta y V^T) (I + beta V V^T)^-1."""

    def energy(self, state, params, inputs):
        return 0.5 * jnp.sum((state - inputs @ params["w"]) ** 2)

    def cost(self, state, params, targets):
        return 0.5 * jnp.sum((state @ params["v"] - targets) ** 2)

    def init_state(self, params, inputs):
        return jnp.zeros((inputs.shape[0], params["w"].shape[1]), inputs.dtype)

    def equilibrium(self, params, inputs, targets, beta):
        w, v = params["w"], params["v"]
        stiffness = jnp.eye(w.shape[1]) + beta * v @ v.T
        return jnp.linalg.solve(stiffness, (inputs @ w + beta * targets @ v.T).T).T


@pytest.mark.slow
def test_a_user_energy_through_the_ebm_interface(x64):
    """A user-defined energy: the relaxed equilibria and both estimators match the closed form
    at a large nudge, and approach the loss gradient as beta -> 0 (symmetric much faster)."""
    # -beta * C must not overpower E: the -beta phase needs beta * |V|^2 < 1.
    params = {"w": _random(5, (4, 5), 0.5), "v": _random(6, (5, 2), 0.3)}
    x, y = _random(7, (3, 4)), _random(8, (3, 2))
    model = _LinearGaussian()

    def energy_grad(beta):
        state = model.equilibrium(params, x, y, beta)
        return _flat(jax.grad(model.total, argnums=1)(state, params, x, y, beta))

    gradient = _flat(jax.grad(lambda p: model.cost(x @ p["w"], p, y))(params))
    betas = jnp.array([1e-3, 0.5])

    @jax.vmap
    def solve(beta):
        one_sided = ebm_relax(model, params, x, y, algorithm=EqProp(beta=beta, **TIGHT))
        symmetric = ebm_grad(model, algorithm=EqProp(beta=beta, symmetric=True, **TIGHT))
        return one_sided, _flat(one_sided.grads), _flat(symmetric(params, x, y))

    solution, one_sided, symmetric = solve(betas)
    for beta, state in zip(betas, solution.nudged_states[0], strict=True):
        np.testing.assert_allclose(state, model.equilibrium(params, x, y, beta), atol=1e-12)
    np.testing.assert_allclose(solution.state[0], x @ params["w"], atol=1e-12)
    np.testing.assert_allclose(solution.value[0], model.cost(x @ params["w"], params, y))
    beta = betas[1]
    expected = (energy_grad(beta) - energy_grad(0.0)) / beta
    np.testing.assert_allclose(one_sided[1], expected, rtol=1e-7, atol=1e-9)
    expected = (energy_grad(beta) - energy_grad(-beta)) / (2 * beta)
    np.testing.assert_allclose(symmetric[1], expected, rtol=1e-7, atol=1e-9)
    one_sided_error, symmetric_error = _relative_errors(
        jnp.stack([one_sided[0], symmetric[0]]), gradient
    )
    assert symmetric_error < 1e-5 < one_sided_error < 1e-2


# -- the Hopfield energy --------------------------------------------------------------------


def _hopfield(seed: int):
    model = HopfieldEnergy()
    init = jax.jit(model.init_params, static_argnums=(1, 2))
    params = init(jax.random.PRNGKey(seed), (5, 10, 8, 3), jnp.float64)
    x = jnp.asarray(np.random.default_rng(seed).uniform(size=(4, 5)))
    y = jnp.asarray(np.eye(3)[np.arange(4) % 3])
    return model, params, x, y


@eqx.filter_jit
def _implicit_gradient(model, params, x, y, state):
    """dL/dparams for L = C(s*(params)) by implicit differentiation at the free equilibrium:
    saturated units (at 0 or 1) stay put; the others solve H ds = -d2E/ds dparams. Also
    returns the largest force on the unsaturated units (zero at an equilibrium)."""
    flat, unflatten = ravel_pytree(state)
    free = (flat > 1e-8) & (flat < 1 - 1e-8)

    def energy_grad(flat_state, params):
        return _flat(jax.grad(model.energy)(unflatten(flat_state), params, x))

    hessian = jax.jacfwd(energy_grad)(flat, params)
    hessian = jnp.where(free[:, None] & free[None, :], hessian, jnp.eye(flat.size))
    cost_grad = _flat(jax.grad(model.cost)(state, params, y))
    adjoint = jnp.linalg.solve(hessian, jnp.where(free, cost_grad, 0.0))
    residual = jnp.max(jnp.abs(jnp.where(free, energy_grad(flat, params), 0.0)))
    return jax.grad(lambda p: -energy_grad(flat, p) @ adjoint)(params), residual


@pytest.mark.slow
def test_hopfield_eqprop_approaches_the_implicit_gradient_under_jit(x64):
    model, params, x, y = _hopfield(1)
    stepper = pcgraph.Euler(0.5)
    free = ebm_relax(model, params, x, y, algorithm=EqProp(stepper=stepper, **TIGHT))
    states = _flat(free.state)
    assert bool(jnp.all((states >= 0) & (states <= 1)))  # the state never leaves the box
    saturated = float(jnp.mean((states < 1e-8) | (states > 1 - 1e-8)))
    assert 0.2 < saturated < 0.9, saturated  # both saturated and free units are exercised
    reference, residual = _implicit_gradient(model, params, x, y, free.state)
    assert float(residual) < 1e-10
    flat_reference = _flat(reference)

    # The implicit gradient against a central finite difference of the loss along one direction.
    direction = [{k: _random(10 + i, v.shape) for k, v in p.items()} for i, p in enumerate(params)]

    def loss(eps):
        moved = jax.tree.map(lambda p, d: np.asarray(p) + eps * np.asarray(d), params, direction)
        return ebm_relax(model, moved, x, y, algorithm=EqProp(stepper=stepper, **TIGHT)).value

    finite_difference = (loss(1e-6) - loss(-1e-6)) / 2e-6
    np.testing.assert_allclose(finite_difference, flat_reference @ _flat(direction), rtol=1e-6)

    # The estimates with the default tolerance (and a throw under jit if it is missed). It is
    # relative to the nudge at the zero state where the free phase starts (at zero energy),
    # `beta * max|y|`; the relaxations' error (a few 1e-8 here) stays below the estimators'.
    betas = jnp.array([1e-3, 1e-2, 1e-1])

    @jax.jit
    @jax.vmap
    def estimates(beta):
        one_sided = EqProp(beta=beta, stepper=stepper)
        symmetric = EqProp(beta=beta, symmetric=True, stepper=stepper)
        return (
            _flat(ebm_grad(model, algorithm=one_sided)(params, x, y)),
            _flat(ebm_grad(model, algorithm=symmetric)(params, x, y)),
        )

    one_sided, symmetric = (_relative_errors(e, flat_reference) for e in estimates(betas))
    assert 0.8 < _slope(betas, one_sided) < 1.2, one_sided
    assert 1.7 < _slope(betas, symmetric) < 2.3, symmetric
    assert np.all(symmetric < one_sided) and symmetric[0] < 2e-6


def test_hopfield_saturated_units_sit_exactly_on_the_bounds(x64):
    """With step size 1 the projected step lands on the bound, and a unit driven outwards stays
    there: the force vanishes exactly, so a tight tolerance is reachable."""
    model, params, x, y = _hopfield(0)
    algorithm = EqProp(stepper=pcgraph.Euler(1.0), rtol=1e-12, max_steps=2000)
    solution = ebm_relax(model, params, x, y, algorithm=algorithm)
    states = _flat(solution.state)
    on_bounds = (states == 0) | (states == 1)
    assert 0.2 < float(jnp.mean(on_bounds)) < 0.9
    assert float(jnp.min(jnp.where(on_bounds, 1.0, jnp.minimum(states, 1 - states)))) > 1e-6
    assert bool(solution.stats.converged)


# -- statistics, errors and the entry points ------------------------------------------------


@pytest.mark.slow
def test_stats_name_the_failing_phase(x64):
    model, params, x, y = _hopfield(0)
    algorithm = EqProp(beta=0.1, symmetric=True, rtol=1e-12, max_steps=3)
    with pytest.raises(pcgraph.RelaxationError, match="in the free phase"):
        ebm_relax(model, params, x, y, algorithm=algorithm)
    quiet = EqProp(beta=0.1, symmetric=True, rtol=1e-12, max_steps=3, throw=False)
    solution = ebm_relax(model, params, x, y, algorithm=quiet, save_energy=True)
    stats = solution.stats
    assert stats.phase_names == ("free", "nudged +beta", "nudged -beta")
    assert stats.result == pcgraph.RESULTS.max_steps_reached
    assert all(p.result == pcgraph.RESULTS.max_steps_reached for p in stats.phases)
    assert int(stats.total_steps) == 9 and stats.energy_trajectory.shape == (4,)
    # All phases succeed: the summary is the first nudged phase.
    solution = ebm_relax(model, params, x, y, algorithm=EqProp(beta=0.1))
    assert float(solution.stats.energy) == float(solution.stats.phases[1].energy)
    assert len(solution.nudged_states) == 1 and bool(solution.stats.converged)


def test_an_unreachable_default_tolerance_raises(x64):
    """The defaults never return an unconverged gradient. In float32 the force of a nudge of
    beta = 1e-4 is near round-off, and the default tolerance, a fraction of it, is out of
    reach at any number of steps; a step budget too small for the tolerance raises too."""
    fn, args = _tanh_softplus(jnp.float32)
    with pytest.raises(
        pcgraph.RelaxationError,
        match=r"not reach its tolerance within `max_steps`.*nudged \+beta phase.*round-off",
    ):
        pcgraph.grad(fn, algorithm=EqProp(beta=1e-4))(*args)
    model, params, x, y = _hopfield(0)
    with pytest.raises(pcgraph.RelaxationError, match=r"within `max_steps`.*the free phase"):
        ebm_grad(model, algorithm=CHL(max_steps=20))(params, x, y)


def test_pc_path_under_jit_and_with_check_grad(x64):
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(7), jnp.float64, mark=True)
    algorithm = EqProp(beta=1e-4, symmetric=True, rtol=1e-10, max_steps=5000)
    jitted = jax.jit(pcgraph.grad(fn, algorithm=algorithm))(*args)
    assert_grads_close(jitted, pcgraph.grad(fn, algorithm=algorithm)(*args), 1e-12)
    pcgraph.check_grad(fn, *args, algorithm=algorithm).assert_close(rtol=1e-6)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: EqProp(beta=0.0), ValueError, "positive"),
        (lambda: EqProp(beta=-0.1), ValueError, "positive"),
        (lambda: EqProp(beta=float("nan")), ValueError, "positive"),
        (lambda: CHL(beta=0), ValueError, "positive"),
        (lambda: EqProp(symmetric=1), TypeError, "True or False"),
        (lambda: EqProp(max_steps=0), ValueError, "positive int"),
        (lambda: CHL(max_energy_increase=-1.0), ValueError, "None"),
        (lambda: EqProp(rtol=-1e-6), ValueError, "rtol"),
        (lambda: CHL(rtol="tight"), ValueError, "'auto'"),
        (lambda: EqProp(atol=float("inf")), ValueError, "atol"),
    ],
)
def test_bad_settings(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_entry_point_arguments(x64):
    model, params, x, y = _hopfield(0)
    with pytest.raises(TypeError, match="EqProp"):
        ebm_relax(model, params, x, y, algorithm=pcgraph.IL())
    with pytest.raises(TypeError, match="instance"):
        ebm_relax(model, params, x, y, algorithm=EqProp)
    with pytest.raises(TypeError, match="AbstractEnergy"):
        ebm_grad(lambda s: s, algorithm=EqProp())
    with pytest.raises(TypeError, match="floating-point"):
        ebm_relax(model, [{"w": jnp.ones((5, 3), jnp.int32), "b": jnp.zeros(3)}], x, y)
    with pytest.raises(ValueError, match="sizes"):
        model.init_params(jax.random.PRNGKey(0), (5,))


def _main():
    """Redraw docs/figures/eqprop_beta_sweep.png and print the slope table."""
    import pathlib

    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SWEEPS), figsize=(10, 4), sharey=True)
    print("| model | estimator | fitted slope | fit range | error at smallest beta |")
    print("|---|---|---:|---|---:|")
    with jax.enable_x64(True):
        for axis, name in zip(axes, SWEEPS, strict=True):
            for key, (betas, errors) in _sweep(name).items():
                # IL and CHL / beta equal one-sided EqProp: drawn over its (wide) line.
                style = {
                    "EqProp": dict(marker="o", linewidth=5, alpha=0.5),
                    "IL": dict(marker="x", linestyle="none", color="k", markersize=9),
                    "CHL / beta": dict(marker=".", linestyle=":", color="k"),
                }.get(key, dict(marker="o"))
                axis.loglog(betas, errors, label=key, **style)
                fit = betas >= 1e-3 if key == "EqProp (symmetric)" else betas > 0
                slope = _slope(betas[fit], errors[fit])
                span = f"{betas[fit][0]:g} to {betas[fit][-1]:g}"
                print(f"| {name} | {key} | {slope:.3f} | {span} | {errors[0]:.2e} |")
            axis.set(title=f"{name} (marked), float64", xlabel="beta")
            axis.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative error against jax.grad")
    axes[0].legend()
    figure.tight_layout()
    path = pathlib.Path(__file__).parents[1] / "docs" / "figures" / "eqprop_beta_sweep.png"
    path.parent.mkdir(exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    _main()
