import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

PyTree = Any
#: `force_fn(state) -> (energy, force)`, the force being `-dF/dstate`.
ForceFn = Callable[[PyTree], tuple[jax.Array, PyTree]]


class AbstractStepper(eqx.Module):
    """One step of a relaxation: moves the relaxed state along its force `-dF/dstate`."""

    @abc.abstractmethod
    def init(self, state: PyTree, force_fn: ForceFn) -> Any:
        """The stepper's own state (momenta, step sizes, ...) for a relaxed state `state`."""

    @abc.abstractmethod
    def step(
        self, force_fn: ForceFn, force: PyTree, state: PyTree, stepper_state: Any
    ) -> tuple[PyTree, Any]:
        """Return the next relaxed state and stepper state. `force` is the force at `state`;
        steppers that need it elsewhere (multi-stage ODE solvers) call `force_fn`."""


class Euler(AbstractStepper):
    """Explicit Euler step: `state <- state + step_size * force`.

    For IL this is gradient descent on the energy; it is stable for `step_size` below
    `2 / (largest curvature of the energy in the activities)`. For FPA, `step_size=1` solves the
    linear error dynamics exactly in `graph.depth` steps.
    """

    step_size: float = 0.1

    def init(self, state: PyTree, force_fn: ForceFn) -> None:
        return None

    def step(self, force_fn, force, state, stepper_state):
        new_state = jax.tree.map(lambda s, f: s + self.step_size * f, state, force)
        return new_state, None


class OptaxStepper(AbstractStepper):
    """Relax the activities with any optax transformation, e.g. `optax.sgd(0.1, momentum=0.9)`.

    The transformation receives `dF/dstate` as its gradient, exactly as it would for a
    parameter update, so its learning rate plays the role of the relaxation step size.
    """

    optimizer: optax.GradientTransformation

    def init(self, state: PyTree, force_fn: ForceFn) -> optax.OptState:
        return self.optimizer.init(state)

    def step(self, force_fn, force, state, stepper_state):
        energy_grad = jax.tree.map(jnp.negative, force)
        updates, stepper_state = self.optimizer.update(energy_grad, stepper_state, state)
        return optax.apply_updates(state, updates), stepper_state


class _DiffraxState(eqx.Module):
    t0: jax.Array
    t1: jax.Array
    solver_state: Any
    controller_state: Any


class DiffraxStepper(AbstractStepper):
    """Integrate the relaxation ODE `dstate/dt = force(state)` with a diffrax solver.

    Each relaxation step is one diffrax step: with an adaptive `stepsize_controller` (e.g.
    `diffrax.PIDController(rtol=1e-4, atol=1e-6)`) a rejected step leaves the state unchanged
    and retries with a smaller `dt`, exactly as `diffrax.diffeqsolve` would. Requires diffrax
    (`pip install diffrax`).

    **Arguments:**

    - `solver`: a diffrax ODE solver, e.g. `diffrax.Euler()`, `diffrax.Heun()`,
        `diffrax.Tsit5()`.
    - `dt0`: the first (or, with a constant step size, every) step size in relaxation time.
    - `stepsize_controller`: `diffrax.ConstantStepSize()` (the default) or an adaptive
        controller such as `diffrax.PIDController`.
    """

    solver: Any
    dt0: float = 0.1
    stepsize_controller: Any = None

    def _controller(self):
        import diffrax

        if self.stepsize_controller is None:
            return diffrax.ConstantStepSize()
        return self.stepsize_controller

    @staticmethod
    def _terms(force_fn: ForceFn):
        import diffrax

        return diffrax.ODETerm(lambda t, y, args: force_fn(y)[1])

    def init(self, state, force_fn):
        terms = self._terms(force_fn)
        dtype = jnp.result_type(*jax.tree.leaves(state)) if jax.tree.leaves(state) else float
        t0 = jnp.zeros((), dtype)
        solver_state = self.solver.init(terms, t0, t0 + self.dt0, state, None)
        t1, controller_state = self._controller().init(
            terms, t0, jnp.asarray(jnp.inf, dtype), state, self.dt0, None,
            self.solver.func, self.solver.error_order(terms),
        )  # fmt: skip
        return _DiffraxState(t0, jnp.asarray(t1, dtype), solver_state, controller_state)

    def step(self, force_fn, force, state, stepper_state):
        terms = self._terms(force_fn)
        t0, t1 = stepper_state.t0, stepper_state.t1
        candidate, error, _, solver_state, _ = self.solver.step(
            terms, t0, t1, state, None, stepper_state.solver_state, made_jump=False
        )
        keep, next_t0, next_t1, _, controller_state, _ = self._controller().adapt_step_size(
            t0, t1, state, candidate, None, error, self.solver.error_order(terms),
            stepper_state.controller_state,
        )  # fmt: skip

        def choose(new, old):
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)

        new_state = choose(candidate, state)
        solver_state = choose(solver_state, stepper_state.solver_state)
        dtype = t0.dtype
        return new_state, _DiffraxState(
            jnp.asarray(next_t0, dtype), jnp.asarray(next_t1, dtype), solver_state, controller_state
        )
