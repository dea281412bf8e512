import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

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

    #: Whether the stepper samples (adds noise) rather than settles: such a relaxation has no
    #: fixed point, so it stops on no tolerance and its energy is not checked for growth.
    samples: ClassVar[bool] = False


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
        return _optax_step(self.optimizer, force, state, stepper_state)


def _optax_step(optimizer: optax.GradientTransformation, force, state, stepper_state):
    """One step of `optimizer` on the energy, whose gradient is `-force`."""
    energy_grad = jax.tree.map(jnp.negative, force)
    updates, stepper_state = optimizer.update(energy_grad, stepper_state, state)
    return optax.apply_updates(state, updates), stepper_state


class Momentum(AbstractStepper):
    """Heavy-ball momentum (Polyak 1964) on the energy: `m <- momentum * m + force`,
    `state <- state + step_size * m`; `optax.sgd(step_size, momentum)` on `dF/dstate`.

    It reaches the same equilibrium as gradient flow (and so the same IL gradient), in far
    fewer steps when the energy is ill-conditioned, as in deep or wide layered networks: the
    number of steps grows with the square root of the condition number instead of linearly.
    Stable for `step_size` below `2 (1 + momentum) / (largest curvature of the energy)`.
    """

    step_size: float = 0.1
    momentum: float = 0.8

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.sgd(self.step_size, momentum=self.momentum)

    def init(self, state: PyTree, force_fn: ForceFn) -> optax.OptState:
        return self._optimizer().init(state)

    def step(self, force_fn, force, state, stepper_state):
        return _optax_step(self._optimizer(), force, state, stepper_state)


class Langevin(AbstractStepper):
    """Unadjusted Langevin dynamics on the energy: `state <- state + step_size * force +
    sqrt(2 step_size temperature) * noise`, with fresh standard normal noise each step.

    The relaxation then samples instead of settling: after a burn-in its states are
    (approximately, to `O(step_size)`) distributed as `exp(-F / temperature)`, which at
    `temperature=1` is the posterior of the free values and latents given what is observed,
    the energy being a negative log joint. This is Monte Carlo predictive coding (Oliviers et
    al. 2024): inference by sampling, and with [`pcgraph.train_step`][] learning from the
    samples. Works with every algorithm that takes a stepper; with [`pcgraph.EPC`][] it
    samples the same distribution, the map from errors to values having unit Jacobian
    determinant. Observed entries of latents stay clamped.

    A sampling relaxation has no fixed point: it takes exactly `max_steps` steps (the
    algorithm's `rtol` must be None) and its energy is not checked for growth (only for
    NaN/Inf). The key is an array, so the stepper can be built inside `jax.jit` or
    `jax.vmap` (e.g. one chain per key); the same key gives the same samples.

    **Arguments:**

    - `step_size`: the step, below `2 / (largest curvature of the energy)` for stability;
        the samples' bias grows with it.
    - `temperature`: the noise's temperature; 1 samples the posterior.
    - `key`: a JAX random key, e.g. `jax.random.key(0)`.
    """

    step_size: float
    temperature: float
    key: jax.Array

    samples: ClassVar[bool] = True

    def __check_init__(self):
        for name in ("step_size", "temperature"):
            value = getattr(self, name)
            if isinstance(value, int | float) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"Langevin({name}={value!r}): must be a positive, finite number.")
        key = self.key
        typed = hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        raw = hasattr(key, "dtype") and key.dtype == jnp.uint32 and key.shape == (2,)
        if not (typed or raw):
            raise TypeError(
                f"Langevin(key={key!r}): pass a JAX random key, e.g. "
                "`key=jax.random.key(0)`, not a seed."
            )

    def init(self, state: PyTree, force_fn: ForceFn) -> jax.Array:
        return self.key

    def step(self, force_fn, force, state, stepper_state):
        key, subkey = jax.random.split(stepper_state)
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(subkey, len(leaves))
        noise = jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
        )
        scale = jnp.sqrt(2 * self.step_size * self.temperature)
        moved, _ = Euler(self.step_size).step(force_fn, force, state, None)
        return jax.tree.map(lambda s, n: s + (scale * n).astype(s.dtype), moved, noise), key


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

    Explicit solvers, adaptive or not, are stable only for `dt` below a few times
    `1 / (largest curvature of the energy in the activities)`, so a stiff relaxation (curvatures
    spanning orders of magnitude, e.g. a node with a large precision next to ones with precision
    1) costs them a number of steps proportional to the ratio of the largest to the smallest
    curvature. The implicit solvers `diffrax.ImplicitEuler()`, `diffrax.Kvaerno3()` and
    `diffrax.Kvaerno5()` are A-stable (Hairer & Wanner 1996), so with an adaptive controller
    their steps grow as far as the slow directions allow. Their root finder takes the
    controller's `rtol`, `atol` and `norm`, as in `diffeqsolve` (with a constant step size, give
    it its own); the controller's tolerances shape the path but not the end point, which the
    relaxation's `rtol`/`atol` decide. Each implicit step forms and factorises the dense
    Jacobian of the force (the energy's Hessian in the activities), so they suit graphs with at
    most a few thousand activities.

    **Arguments:**

    - `solver`: a diffrax ODE solver, e.g. `diffrax.Euler()`, `diffrax.Heun()`,
        `diffrax.Tsit5()`, or an implicit one such as `diffrax.Kvaerno5()`.
    - `dt0`: the first (or, with a constant step size, every) step size in relaxation time.
    - `stepsize_controller`: `diffrax.ConstantStepSize()` (the default) or an adaptive
        controller such as `diffrax.PIDController`.
    """

    solver: Any
    dt0: float = 0.1
    stepsize_controller: Any = None

    def __check_init__(self):
        self._solver_and_controller()  # fail at construction on an unusable combination

    def _solver_and_controller(self):
        import diffrax
        from diffrax._root_finder import use_stepsize_tol

        controller = self.stepsize_controller
        if controller is None:
            controller = diffrax.ConstantStepSize()
        solver = self.solver
        if not isinstance(solver, diffrax.AbstractImplicitSolver):
            return solver, controller
        # An implicit solver's root finder leaves its tolerances (and norm) as placeholders for
        # `diffrax.diffeqsolve` to fill in from the adaptive controller; driving the solver
        # step by step, so must we.
        unset = [
            name
            for name in ("rtol", "atol", "norm")
            if getattr(solver.root_finder, name) is use_stepsize_tol
        ]
        if not unset:
            return solver, controller
        if not isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
            raise ValueError(
                f"DiffraxStepper: the implicit solver {type(solver).__name__} takes its root "
                "finder's tolerances from an adaptive step size controller: pass e.g. "
                "`stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8)`, or give "
                "the solver a root finder with its own tolerances, e.g. `root_finder="
                "diffrax.VeryChord(rtol=1e-8, atol=1e-8)`."
            )
        solver = eqx.tree_at(
            lambda s: tuple(getattr(s.root_finder, name) for name in unset),
            solver,
            tuple(getattr(controller, name) for name in unset),
        )
        return solver, controller

    @staticmethod
    def _terms(force_fn: ForceFn):
        import diffrax

        return diffrax.ODETerm(lambda t, y, args: force_fn(y)[1])

    def init(self, state, force_fn):
        solver, controller = self._solver_and_controller()
        terms = self._terms(force_fn)
        dtype = jnp.result_type(*jax.tree.leaves(state)) if jax.tree.leaves(state) else float
        t0 = jnp.zeros((), dtype)
        solver_state = solver.init(terms, t0, t0 + self.dt0, state, None)
        t1, controller_state = controller.init(
            terms, t0, jnp.asarray(jnp.inf, dtype), state, self.dt0, None,
            solver.func, solver.error_order(terms),
        )  # fmt: skip
        return _DiffraxState(t0, jnp.asarray(t1, dtype), solver_state, controller_state)

    def step(self, force_fn, force, state, stepper_state):
        solver, controller = self._solver_and_controller()
        terms = self._terms(force_fn)
        t0, t1 = stepper_state.t0, stepper_state.t1
        candidate, error, _, solver_state, _ = solver.step(
            terms, t0, t1, state, None, stepper_state.solver_state, made_jump=False
        )
        keep, next_t0, next_t1, _, controller_state, _ = controller.adapt_step_size(
            t0, t1, state, candidate, None, error, solver.error_order(terms),
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
