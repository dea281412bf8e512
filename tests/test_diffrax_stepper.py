"""DiffraxStepper with implicit solvers, on stiff relaxations where explicit steps are limited by
stability rather than accuracy."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, normal

import pcgraph

# A node with precision 1e3 between two with precision 1: at the feedforward values the
# curvature of the energy in the activities spans about 0.5 to 2e3, so Euler is stable only
# below a step of about 1e-3 and needs tens of thousands of steps to relax the slowest direction.
PRECISIONS = (1.0, 1e3, 1.0)
RTOL = 1e-10  # the relaxation's tolerance on the largest force
# The controller's tolerances shape the path only: at equilibrium the force vanishes, so the
# equilibrium is a fixed point of every implicit step whatever the tolerance.
CONTROLLER = diffrax.PIDController(rtol=1e-5, atol=1e-7)
IMPLICIT = [diffrax.Kvaerno5(), diffrax.Kvaerno3(), diffrax.ImplicitEuler()]


def stiff_loss(ws, x, y):
    h = x
    for w, precision in zip(ws[:-1], PRECISIONS, strict=True):
        h = pcgraph.node(jnp.tanh(h @ w), precision=precision)
    return jnp.sum((h @ ws[-1] - y) ** 2) / 2


@pytest.fixture(scope="module")
def stiff():
    """The stiff graph's arguments, and a reference relaxation by Euler below its stability
    limit, to a tight tolerance."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(0), 6)
        ws = [normal(k, (3, 3), jnp.float64, 0.5) for k in keys[:4]]
        args = (ws, normal(keys[4], (2, 3), jnp.float64), normal(keys[5], (2, 3), jnp.float64))
        euler = pcgraph.IL(stepper=pcgraph.Euler(5e-4), max_steps=200_000, rtol=RTOL)
        return args, pcgraph.relax(stiff_loss, *args, algorithm=euler)


def test_explicit_steps_are_stability_limited_on_a_stiff_graph(stiff, x64):
    args, reference = stiff
    with pytest.raises(pcgraph.RelaxationError, match="energy increased"):
        euler = pcgraph.IL(stepper=pcgraph.Euler(0.01), max_steps=1000, rtol=RTOL)
        pcgraph.relax(stiff_loss, *args, algorithm=euler)
    assert bool(reference.stats.converged)
    assert int(reference.stats.num_steps) > 50_000
    # An adaptive explicit solver is held near its stability limit too.
    tsit5 = pcgraph.DiffraxStepper(diffrax.Tsit5(), dt0=0.1, stepsize_controller=CONTROLLER)
    algorithm = pcgraph.IL(stepper=tsit5, max_steps=2000, rtol=RTOL, throw=False)
    solution = pcgraph.relax(stiff_loss, *args, algorithm=algorithm)
    assert solution.stats.result == pcgraph.RESULTS.max_steps_reached


@pytest.mark.parametrize("solver", IMPLICIT, ids=lambda s: type(s).__name__)
def test_implicit_solvers_relax_a_stiff_graph_in_few_steps(solver, stiff, x64):
    args, reference = stiff
    stepper = pcgraph.DiffraxStepper(solver, dt0=0.1, stepsize_controller=CONTROLLER)
    algorithm = pcgraph.IL(stepper=stepper, max_steps=2000, rtol=RTOL)
    solution = pcgraph.relax(stiff_loss, *args, algorithm=algorithm)
    assert bool(solution.stats.converged)
    assert int(solution.stats.num_steps) < int(reference.stats.num_steps) / 50
    assert_grads_close(solution.grads, reference.grads, 1e-7)


@pytest.mark.slow
def test_implicit_solver_under_jit(stiff, x64):
    args, reference = stiff
    stepper = pcgraph.DiffraxStepper(diffrax.Kvaerno5(), dt0=0.1, stepsize_controller=CONTROLLER)
    algorithm = pcgraph.IL(stepper=stepper, max_steps=2000, rtol=RTOL)
    grads = jax.jit(pcgraph.grad(stiff_loss, algorithm=algorithm))(*args)
    assert_grads_close(grads, reference.grads, 1e-7)


def _stiff_linear_force(state):
    """The force of the energy `(y_0^2 + 1e3 y_1^2) / 2`."""
    curvature = jnp.array([1.0, 1e3])
    (y,) = state
    return jnp.sum(curvature * y**2) / 2, [-curvature * y]


@pytest.mark.slow
def test_steps_are_diffeqsolve_steps(x64):
    """The accepted steps are exactly those of `diffrax.diffeqsolve` with the same solver and
    controller (whose tolerances the implicit solver's root finder takes)."""
    solver, num_steps = diffrax.Kvaerno3(), 30
    stepper = pcgraph.DiffraxStepper(solver, dt0=0.1, stepsize_controller=CONTROLLER)

    def run(state):
        def body(carry, _):
            state, stepper_state = carry
            new = stepper.step(_stiff_linear_force, None, state, stepper_state)
            return new, (new[1].t0, new[0][0])

        carry = (state, stepper.init(state, _stiff_linear_force))
        return jax.lax.scan(body, carry, length=num_steps)[1]

    y0 = [jnp.ones(2)]
    ts, ys = jax.jit(run)(y0)
    accepted = np.flatnonzero(np.diff(np.concatenate([[0.0], ts])))
    assert 0 < len(accepted) < num_steps  # some steps were rejected

    @jax.jit
    def diffeqsolve(y0):
        term = diffrax.ODETerm(lambda t, y, args: _stiff_linear_force(y)[1])
        return diffrax.diffeqsolve(
            term, solver, 0.0, 1e3, 0.1, y0, stepsize_controller=CONTROLLER,
            saveat=diffrax.SaveAt(steps=True), max_steps=num_steps, throw=False,
        )  # fmt: skip

    solution = diffeqsolve(y0)
    np.testing.assert_array_equal(ts[accepted], solution.ts[: len(accepted)])
    np.testing.assert_array_equal(ys[accepted], solution.ys[0][: len(accepted)])


def test_implicit_solver_tolerances(x64):
    """An implicit solver's root finder needs tolerances: from an adaptive controller, or its
    own with a constant step size."""
    with pytest.raises(ValueError, match="PIDController"):
        pcgraph.DiffraxStepper(diffrax.Kvaerno5(), dt0=0.1)
    root_finder = diffrax.VeryChord(rtol=1e-12, atol=1e-12)
    stepper = pcgraph.DiffraxStepper(diffrax.ImplicitEuler(root_finder), dt0=0.5)
    state = [jnp.ones(2)]
    stepper_state = stepper.init(state, _stiff_linear_force)
    step = jax.jit(lambda *carry: stepper.step(_stiff_linear_force, None, *carry))
    for _ in range(3):
        state, stepper_state = step(state, stepper_state)
    # Implicit Euler on `dy/dt = -c y` multiplies by `1 / (1 + c dt)` each step.
    np.testing.assert_allclose(state[0], (1 + 0.5 * jnp.array([1.0, 1e3])) ** -3, rtol=1e-12)
