"""The relaxation loop: steppers, tolerance, fixed steps, statistics and trajectories."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_grads_close, tanh_mlp, tree_allclose

import pcgraph


@pytest.fixture
def marked_mlp(x64):
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(0), jnp.float64, mark=True)
    return fn, args


def test_fixed_steps_and_energy_trajectory(marked_mlp, x64):
    fn, args = marked_mlp
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=40, rtol=None)
    solution = pcgraph.relax(fn, *args, algorithm=algorithm, save_energy=True)
    stats = solution.stats
    trajectory = np.asarray(stats.energy_trajectory)
    assert int(stats.num_steps) == 40 and trajectory.shape == (41,)
    assert stats.result == pcgraph.RESULTS.successful
    # Gradient flow with a small step: the energy decreases monotonically from beta * loss.
    assert np.all(np.diff(trajectory) <= 1e-15)
    assert np.isclose(trajectory[0], fn(*args)) and np.isclose(trajectory[-1], stats.energy)
    assert float(stats.initial_energy) == trajectory[0]
    # Without a tolerance nothing needs the largest force, and it is not computed.
    assert np.isnan(float(stats.residual))
    assert pcgraph.relax(fn, *args, algorithm=algorithm).stats.energy_trajectory is None


def test_tolerance_stops_early(marked_mlp, x64):
    fn, args = marked_mlp
    algorithm = pcgraph.IL(max_steps=5000, rtol=1e-6)
    solution = pcgraph.relax(fn, *args, algorithm=algorithm, save_energy=True)
    stats = solution.stats
    steps = int(stats.num_steps)
    assert 10 < steps < 5000 and bool(stats.converged)
    assert np.all(np.isnan(np.asarray(stats.energy_trajectory)[steps + 1 :]))
    # The stopping rule: the largest force is within rtol of the largest initial force.
    at_start = pcgraph.IL(max_steps=0, rtol=1.0)  # a tolerance, so the residual is computed
    initial_force = pcgraph.relax(fn, *args, algorithm=at_start).stats.residual
    assert float(stats.residual) <= 1e-6 * float(initial_force)


def test_zero_loss_gradient_converges_immediately(x64):
    def fn(w):
        h = pcgraph.node(jnp.tanh(w), name="h")
        return jnp.sum((h - jnp.tanh(0.5)) ** 2)

    solution = pcgraph.relax(fn, jnp.full(3, 0.5), algorithm=pcgraph.IL(rtol=1e-6, atol=1e-12))
    assert int(solution.stats.num_steps) == 0
    assert tree_allclose(solution.grads, jnp.zeros(3))


def test_optax_sgd_stepper_equals_euler(marked_mlp, x64):
    fn, args = marked_mlp
    euler = pcgraph.IL(stepper=pcgraph.Euler(0.05), max_steps=30)
    sgd = pcgraph.IL(stepper=pcgraph.OptaxStepper(optax.sgd(0.05)), max_steps=30)
    a = pcgraph.relax(fn, *args, algorithm=euler)
    b = pcgraph.relax(fn, *args, algorithm=sgd)
    assert tree_allclose(a.values, b.values, rtol=1e-12)
    assert_grads_close(a.grads, b.grads, 1e-10)


def test_optax_momentum_stepper_reaches_the_same_equilibrium(marked_mlp, x64):
    fn, args = marked_mlp
    tight = dict(beta=0.1, max_steps=20000, rtol=1e-9)
    euler = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(stepper=pcgraph.Euler(0.1), **tight))
    stepper = pcgraph.OptaxStepper(optax.sgd(0.05, momentum=0.8))
    momentum = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(stepper=stepper, **tight))
    assert int(momentum.stats.num_steps) < int(euler.stats.num_steps)
    assert_grads_close(momentum.grads, euler.grads, 1e-6)


def test_fpa_with_small_steps_converges_to_exact(marked_mlp, x64):
    fn, args = marked_mlp
    algorithm = pcgraph.FPA(stepper=pcgraph.Euler(0.3), max_steps=1000, rtol=1e-12)
    solution = pcgraph.relax(fn, *args, algorithm=algorithm)
    assert bool(solution.stats.converged) and int(solution.stats.num_steps) > 2
    assert_grads_close(solution.grads, jax.grad(fn)(*args), 1e-9)


def test_solution_values_and_errors(marked_mlp, x64):
    fn, args = marked_mlp
    solution = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(max_steps=50))
    assert set(solution.values) == set(solution.errors) == {"hidden0", "hidden1"}
    assert solution.values["hidden0"].shape == (6, 7)
    assert float(solution.value) == pytest.approx(float(fn(*args)))
    # FPA's values are the feedforward values plus its errors.
    fpa = pcgraph.relax(fn, *args)
    assert fpa.stats.result == pcgraph.RESULTS.successful
    assert int(fpa.stats.num_steps) == 2
    assert not tree_allclose(fpa.errors, jax.tree.map(jnp.zeros_like, fpa.errors))
