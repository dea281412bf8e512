"""Equilibrium propagation and contrastive Hebbian learning, on any energy-based model.

Both rules relax the total energy `F_beta = E + beta * C` twice or three times: a free phase at
`beta = 0`, then nudged phase(s) started from the free equilibrium, and compare the parameter
derivative `dF_beta/dparams` between the phases. On the predictive-coding energy of a traced
function the free phase is the feedforward pass, so one-sided EqProp is `IL` there.
"""

import abc
import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._algorithms import AbstractAlgorithm, Equilibrium
from ._ebm import AbstractEnergy, _PCEnergy
from ._energy import errors
from ._jit import filter_jit
from ._relax import RESULTS, RelaxationStats, _max_abs, relax
from ._steppers import AbstractStepper, Euler

PyTree = Any


class ContrastiveStats(RelaxationStats):
    """What the relaxations of a contrastive algorithm ([`pcgraph.EqProp`][],
    [`pcgraph.CHL`][]) did: one [`pcgraph.RelaxationStats`][] per phase, and a summary.

    The summary fields (`num_steps`, `energy`, `result`, ...) are those of the first phase
    that failed or, when all succeeded, of the first nudged (or clamped) phase, the one that
    carries the learning signal. `raise_if_failed` therefore raises when any phase failed,
    quoting that phase. Energy trajectories (with `save_energy=True`) are padded with NaN to
    a common length.

    **Attributes:**

    - the fields of [`pcgraph.RelaxationStats`][], as above;
    - `phases`: each phase's own statistics, in the order of `phase_names`;
    - `phase_names`: `("free", "nudged +beta")`, `("free", "nudged +beta", "nudged -beta")`
        or `("free", "clamped")`.
    """

    phases: tuple[RelaxationStats, ...] = ()
    phase_names: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def total_steps(self) -> jax.Array:
        """The relaxation steps of all phases together: the algorithm's cost in steps."""
        return sum(phase.num_steps for phase in self.phases)

    def _failure_message(self) -> str:
        name, failed = next(
            (name, phase)
            for name, phase in zip(self.phase_names, self.phases, strict=True)
            if phase.result != RESULTS.successful
        )
        message = (
            f"{super()._failure_message()} This happened in the {name} phase; "
            "`stats.phases` has every phase's statistics."
        )
        if failed.result == RESULTS.max_steps_reached:
            message += (
                " Every phase relaxes until its force is at most `atol + rtol * beta * "
                "max|dC/dstate|` (`rtol='auto'`: 1.5e-8 in float64, 3.5e-4 in float32); when "
                "that is near the round-off of the state's dtype (a small `beta` in float32), "
                "more steps do not help: raise `beta` or `rtol`, or use float64."
            )
        return message


def _pad_trajectory(stats: RelaxationStats, length: int) -> RelaxationStats:
    trajectory = stats.energy_trajectory
    if trajectory is None or trajectory.shape[0] == length:
        return stats
    padded = jnp.pad(trajectory, (0, length - trajectory.shape[0]), constant_values=jnp.nan)
    return eqx.tree_at(lambda s: s.energy_trajectory, stats, padded)


def _combine(phases: list[RelaxationStats], names: tuple[str, ...]) -> ContrastiveStats:
    failed = jnp.stack([phase.result != RESULTS.successful for phase in phases])
    chosen = jnp.where(jnp.any(failed), jnp.argmax(failed), 1)
    trajectories = [p.energy_trajectory for p in phases if p.energy_trajectory is not None]
    length = max((t.shape[0] for t in trajectories), default=0)
    padded = [_pad_trajectory(phase, length) for phase in phases]
    summary = jax.tree.map(lambda *leaves: jnp.stack(leaves)[chosen], *padded)
    return ContrastiveStats(
        num_steps=summary.num_steps,
        initial_energy=summary.initial_energy,
        energy=summary.energy,
        residual=summary.residual,
        result=summary.result,
        energy_trajectory=summary.energy_trajectory,
        phases=tuple(phases),
        phase_names=names,
    )


def _check_beta(name: str, value):
    """A positive, finite nudge; a JAX array is accepted (e.g. traced, to sweep or schedule
    `beta` without recompiling) and checked only when its value is known."""
    if isinstance(value, jax.core.Tracer):
        return
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    is_scalar_array = eqx.is_array(value) and value.shape == ()
    if not (is_number or is_scalar_array) or not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(
            f"{name}={value!r}: the nudge strength must be a positive, finite scalar, e.g. "
            f"`{name.split('(')[0]}(beta=0.01)`. The sign of the nudge is the algorithm's "
            "business (EqProp(symmetric=True) nudges with +beta and -beta)."
        )


def _is_nonnegative(value) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value >= 0


def _check_settings(name: str, algorithm):
    _check_beta(f"{name}(beta)", algorithm.beta)
    if not (isinstance(algorithm.max_steps, int | np.integer) and algorithm.max_steps >= 1):
        raise ValueError(
            f"{name}(max_steps={algorithm.max_steps!r}): give a positive int, e.g. 100."
        )
    rtol, atol = algorithm.rtol, algorithm.atol
    if not (rtol is None or _is_nonnegative(rtol) or (isinstance(rtol, str) and rtol == "auto")):
        raise ValueError(
            f"{name}(rtol={rtol!r}): give a non-negative, finite number (e.g. 1e-6), 'auto' "
            "(the default, set by the state's dtype), or None to run every phase for "
            "`max_steps` steps."
        )
    if not _is_nonnegative(atol):
        raise ValueError(f"{name}(atol={atol!r}): give a non-negative, finite number.")
    increase = algorithm.max_energy_increase
    if increase is not None and not (
        isinstance(increase, int | float) and math.isfinite(increase) and increase > 0
    ):
        raise ValueError(
            f"{name}(max_energy_increase={increase!r}): give a positive, finite number "
            "(e.g. 10.0), or None to check only for NaN/Inf."
        )


class EnergySolution(eqx.Module):
    """Everything one contrastive solve of an energy-based model produced.

    **Attributes:**

    - `value`: the cost at the free equilibrium, `L(params) = C(s*_0)`: the loss being learned.
    - `grads`: the estimate of `dL/dparams`, structured like `params`.
    - `state`: the free equilibrium `s*_0`, the model's prediction.
    - `nudged_states`: the equilibria of the nudged (or clamped) phases, in the order of
        `stats.phase_names[1:]`.
    - `stats`: a [`pcgraph.ContrastiveStats`][] with every phase's statistics.
    """

    value: jax.Array
    grads: PyTree
    state: PyTree
    nudged_states: tuple[PyTree, ...]
    stats: ContrastiveStats


class _AbstractContrastive(AbstractAlgorithm):
    """A free phase at `beta = 0` and nudged phases started from its equilibrium, whose
    parameter derivatives `dF_beta/dparams` are combined into the gradient estimate."""

    beta: eqx.AbstractVar[float | jax.Array]
    stepper: eqx.AbstractVar[AbstractStepper]
    max_steps: eqx.AbstractVar[int]
    rtol: eqx.AbstractVar[float | Literal["auto"] | None]
    atol: eqx.AbstractVar[float]
    max_energy_increase: eqx.AbstractVar[float | None]
    throw: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def _nudges(self) -> tuple[tuple[str, Any], ...]:
        """`(name, beta)` of each nudged phase, in order."""

    @abc.abstractmethod
    def _estimate(self, free: PyTree, nudged: list[PyTree]) -> PyTree:
        """The gradient estimate from `dF_beta/dparams` at the free and nudged equilibria."""

    def _rtol(self, state) -> float | None:
        if self.rtol != "auto":
            return self.rtol
        # Half the digits of the state's (narrowest) dtype: the force of a nudge of moderate
        # beta is resolved about that finely (float32 cannot reach 1e-6 of it at beta = 0.1).
        # An empty state has no force, and stops at once whatever the tolerance.
        eps = [float(jnp.finfo(x.dtype).eps) for x in jax.tree.leaves(state)]
        return max(eps, default=0.0) ** 0.5

    def _run(self, model, params, inputs, targets, state, *, free_max_steps, save_energy):
        rtol = self._rtol(state)
        if rtol is None:
            tolerance = self.atol
        else:
            # One absolute tolerance for every phase, relative to the force the nudge exerts:
            # the difference quotient needs each equilibrium to that accuracy (with the PC
            # energy this is exactly IL's tolerance). It is measured at the starting state, not
            # at each nudged phase's start: where the free equilibrium already minimises the
            # cost (saturated Hopfield outputs on their targets), a nudged phase starts with
            # only the free phase's residual, and `rtol` times that is round-off.
            nudge_force = jnp.abs(self.beta) * _max_abs(
                jax.grad(model.cost)(state, params, targets)
            )
            tolerance = self.atol + rtol * nudge_force

        def phase(beta, start, max_steps, max_energy_increase):
            return relax(
                lambda s: model.force(s, params, inputs, targets, beta),
                start,
                stepper=self.stepper,
                max_steps=max_steps,
                rtol=None if rtol is None else 0.0,
                atol=tolerance,
                max_energy_increase=max_energy_increase,
                save_energy=save_energy,
            )

        def energy_grad(beta, s):
            return jax.grad(model.total, argnums=1)(s, params, inputs, targets, beta)

        # The free phase may start where the energy is 0 (the Hopfield energy's zero state),
        # where a relative rise is meaningless, so only the nudged phases check it.
        free, free_stats = phase(0.0, state, free_max_steps, None)
        nudges = self._nudges()
        nudged = [phase(b, free, self.max_steps, self.max_energy_increase) for _, b in nudges]
        grads = self._estimate(
            energy_grad(0.0, free),
            [energy_grad(b, s) for (_, b), (s, _) in zip(nudges, nudged, strict=True)],
        )
        stats = _combine(
            [free_stats, *(s for _, s in nudged)], ("free", *(name for name, _ in nudges))
        )
        value = model.cost(free, params, targets)
        return EnergySolution(value, grads, free, tuple(s for s, _ in nudged), stats)

    def solve_energy(
        self,
        model: AbstractEnergy,
        params: PyTree,
        inputs: Any,
        targets: Any,
        state: PyTree,
        *,
        save_energy: bool = False,
    ) -> EnergySolution:
        """Relax `model` from `state` (free phase, then the nudged phases) and estimate the
        gradient of the loss at the free equilibrium. Neither jit-compiled nor checked (a
        failed phase is only reported in `stats`): [`pcgraph.ebm_relax`][] does both."""
        return self._run(
            model,
            params,
            inputs,
            targets,
            state,
            free_max_steps=self.max_steps,
            save_energy=save_energy,
        )

    def solve(self, graph, params, data, feedforward, start, options):
        """Run the phases on the predictive-coding energy of `graph`. The feedforward pass is
        the free phase's exact equilibrium (every error is zero, so the force vanishes), so the
        free phase takes no step; the returned values and errors are the first nudged phase's.
        """
        if options.saveat is not None:
            raise ValueError(
                f"pcgraph.{type(self).__name__} relaxes several phases and records no per-node "
                "trajectory; drop `saveat`, or record one with pcgraph.IL()."
            )
        model = _PCEnergy(graph, feedforward.frozen)
        solution = self._run(
            model,
            params,
            data,
            data,
            feedforward.values,
            free_max_steps=0,
            save_energy=options.save_energy,
        )
        values = solution.nudged_states[0]
        mus = graph.predict(values, params, data, feedforward.frozen).mus
        return Equilibrium(solution.grads, values, errors(graph, values, mus), solution.stats)


class EqProp(_AbstractContrastive):
    """Equilibrium propagation (Scellier & Bengio 2017), on any energy.

    A free phase relaxes the energy `E` (`beta = 0`) to its equilibrium `s*_0`; a nudged
    phase, started there, relaxes the total energy `F_beta = E + beta * C`. The gradient of
    the loss `L = C(s*_0)` is the difference quotient of the parameter derivative
    `dF_beta/dparams` at the equilibria:

    - one-sided: `(dF_beta/dparams(s*_beta) - dE/dparams(s*_0)) / beta`, error O(beta);
    - symmetric: `(dF_beta/dparams(s*_beta) - dF_-beta/dparams(s*_-beta)) / (2 beta)`, error
        O(beta^2) (Laborieux et al. 2021), at the cost of a third relaxation.

    With [`pcgraph.grad`][] it runs on the predictive-coding energy of the traced function,
    where the free phase is the feedforward pass (no step needed) and one-sided EqProp is
    [`pcgraph.IL`][] with the same `beta`. With [`pcgraph.ebm_relax`][] it runs on any
    [`pcgraph.AbstractEnergy`][], e.g. [`pcgraph.HopfieldEnergy`][].

    The difference quotient is only as good as the equilibria: a phase stopped early adds an
    error that does not shrink with `beta`. So every phase relaxes to a tolerance set by the
    force of the nudge, and with `throw=True` a phase that misses it raises a
    [`pcgraph.RelaxationError`][] instead of returning an unconverged gradient.

    **Arguments:**

    - `beta`: the nudge strength, positive. A JAX array is accepted (to sweep or schedule it
        under `jax.jit`/`jax.vmap` without recompiling).
    - `symmetric`: nudge with `+beta` and `-beta` (two nudged phases) instead of `+beta` only.
    - `stepper`: how the state moves: [`pcgraph.Euler`][], [`pcgraph.OptaxStepper`][] or
        [`pcgraph.DiffraxStepper`][].
    - `max_steps`: the most steps of each phase: a cap for a relaxation that stalls, since
        every phase stops at its tolerance (a few hundred steps of `Euler(0.1)` on a small
        MLP's PC energy).
    - `rtol`, `atol`: every phase stops once its largest force is at most
        `atol + rtol * beta * max|dC/dstate|` (the force of the nudge at the starting state,
        the free equilibrium on the PC energy), so the relaxations add a relative error of
        the order of `rtol` to the gradient, whatever `beta`. `"auto"` (the default) takes
        half the digits of the state's dtype, `sqrt(eps)`: 1.5e-8 in float64, below the
        estimator's own error down to `beta = 1e-4` (1e-3 symmetric) on a small MLP; 3.5e-4
        in float32, where the tolerance of a nudge force below about 1e-3 (on a state of
        order 1) is lost in round-off and the relaxation raises (raise `beta` or `rtol`, or
        use float64). `rtol=None` runs every phase for exactly `max_steps` steps and checks
        only for divergence.
    - `max_energy_increase`: report divergence when a nudged phase's energy rises more than
        this many times its initial magnitude above it; None checks only for NaN/Inf. (The
        free phase is checked for NaN/Inf only.)
    - `throw`: raise on divergence or on missing the tolerance in any phase (otherwise only
        reported in `stats.result` and `stats.phases`).
    """

    beta: float | jax.Array = 0.1
    symmetric: bool = False
    stepper: AbstractStepper = Euler(0.1)
    max_steps: int = 10_000
    rtol: float | Literal["auto"] | None = "auto"
    atol: float = 0.0
    max_energy_increase: float | None = 10.0
    throw: bool = True

    def __check_init__(self):
        _check_settings("EqProp", self)
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"EqProp(symmetric={self.symmetric!r}): give True or False.")

    def _nudges(self):
        if self.symmetric:
            return (("nudged +beta", self.beta), ("nudged -beta", -self.beta))
        return (("nudged +beta", self.beta),)

    def _estimate(self, free, nudged):
        if self.symmetric:
            plus, minus = nudged
            return jax.tree.map(lambda p, m: (p - m) / (2 * self.beta), plus, minus)
        (plus,) = nudged
        return jax.tree.map(lambda p, f: (p - f) / self.beta, plus, free)


class CHL(_AbstractContrastive):
    """Contrastive Hebbian learning (Movellan 1990), on any energy.

    A free phase relaxes the energy `E` to `s*_0`; a clamped phase, started there, relaxes
    `F_beta = E + beta * C` with a strong nudge `beta` that drives the outputs towards the
    cost's minimiser (for a squared error, towards the target: `beta -> inf` is the classical
    hard clamp). The estimate is the contrastive difference, not divided by `beta`:

    `dF_beta/dparams(s*_beta) - dE/dparams(s*_0)`,

    which is exactly the gradient of the contrastive objective
    `J_beta(params) = min_s F_beta - min_s E`, and `beta` times one-sided
    [`pcgraph.EqProp`][]`(beta)`. It is *not* the gradient of the loss: `J_beta / beta -> L`
    only as `beta -> 0`, and the bias does not vanish as the clamp tightens. On the
    predictive-coding energy `J_beta` is the equilibrium energy of PC with the output nudged
    (for a deep linear network `1/2 sum_b r_b^T (S + I / (beta k))^-1 r_b`, with `r_b` the
    residual, `S` the covariance the hidden nodes propagate to the output and `k` the loss's
    weight per example, 1 / batch for a batch mean), and `beta -> inf` is the classical PC
    network with its output clamped.

    **Arguments:**

    - `beta`: the clamping strength, positive; larger is closer to a hard clamp (and stiffer
        to relax: Euler needs `step_size < 2 / (curvature of E + beta * C)`).
    - `stepper`, `max_steps`, `rtol`, `atol`, `max_energy_increase`, `throw`: as for
        [`pcgraph.EqProp`][]: relaxed to a tolerance by default, raising when it is missed.
    """

    beta: float | jax.Array = 1.0
    stepper: AbstractStepper = Euler(0.1)
    max_steps: int = 10_000
    rtol: float | Literal["auto"] | None = "auto"
    atol: float = 0.0
    max_energy_increase: float | None = 10.0
    throw: bool = True

    def __check_init__(self):
        _check_settings("CHL", self)

    def _nudges(self):
        return (("clamped", self.beta),)

    def _estimate(self, free, nudged):
        (clamped,) = nudged
        return jax.tree.map(jnp.subtract, clamped, free)


def _check_model(model, algorithm) -> _AbstractContrastive:
    if not isinstance(model, AbstractEnergy):
        raise TypeError(
            f"model={model!r} is not an energy-based model; pass a pcgraph.AbstractEnergy "
            "subclass instance, e.g. `pcgraph.HopfieldEnergy()`."
        )
    if algorithm is None:
        return EqProp()
    if isinstance(algorithm, type):
        raise TypeError(
            f"algorithm={algorithm.__name__} is a class; pass an instance, e.g. "
            "`algorithm=pcgraph.EqProp(beta=0.1)`."
        )
    if not isinstance(algorithm, _AbstractContrastive):
        raise TypeError(
            f"algorithm={algorithm!r} cannot train an energy-based model: IL and FPA read the "
            "graph of a traced function (use them with pcgraph.grad). Pass "
            "pcgraph.EqProp(...) or pcgraph.CHL(...)."
        )
    return algorithm


def _check_params(params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not (eqx.is_array_like(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)):
            raise TypeError(
                f"params leaf `{jax.tree_util.keystr(path) or '<root>'}` is "
                f"{type(leaf).__name__} of dtype {jnp.result_type(leaf)}: only floating-point "
                "arrays can be learned. Convert it, or move it into `inputs`."
            )


@filter_jit
def _solve(model, params, inputs, targets, state, algorithm, save_energy) -> EnergySolution:
    if state is None:
        state = model.init_state(params, inputs)
    return algorithm.solve_energy(model, params, inputs, targets, state, save_energy=save_energy)


def ebm_relax(
    model: AbstractEnergy,
    params: PyTree,
    inputs: Any,
    targets: Any,
    *,
    algorithm: EqProp | CHL | None = None,
    state: PyTree | None = None,
    save_energy: bool = False,
) -> EnergySolution:
    """Relax an energy-based model's free and nudged phases and estimate the gradient of its
    loss at the free equilibrium: the core of an EqProp or CHL training step.

    The computation is jit-compiled (cached per model, shapes and algorithm) and runs inside
    `jax.jit` and `jax.vmap`. By default every phase relaxes to a tolerance relative to the
    force of the nudge (see [`pcgraph.EqProp`][]). With `algorithm.throw` a failed phase
    (diverged, or short of its tolerance after `max_steps` steps) raises a
    [`pcgraph.RelaxationError`][] naming the phase (under an outer `jax.jit`, `equinox.error_if`
    raises with the static message of [`pcgraph.RESULTS`][]).

    **Arguments:**

    - `model`: a [`pcgraph.AbstractEnergy`][], e.g. [`pcgraph.HopfieldEnergy`][]`()`.
    - `params`: the parameters, a pytree of floating arrays.
    - `inputs`, `targets`: what `model.energy` and `model.cost` read.
    - `algorithm`: [`pcgraph.EqProp`][] (the default, `EqProp()`) or [`pcgraph.CHL`][].
    - `state`: where the free phase starts; defaults to `model.init_state(params, inputs)`.
        Passing the previous free equilibrium (persistent state) shortens the free phase.
    - `save_energy`: record every phase's energy trajectory in `stats.phases`.

    **Returns:**

    An [`pcgraph.EnergySolution`][]: the loss, the gradients, the free equilibrium (the
    prediction), the nudged equilibria and every phase's statistics.

    !!! example

        ```python
        model = pcgraph.HopfieldEnergy()
        params = model.init_params(jax.random.PRNGKey(0), (64, 256, 10))
        eqprop = pcgraph.EqProp(beta=0.5, symmetric=True)
        solution = pcgraph.ebm_relax(model, params, x, y_onehot, algorithm=eqprop)
        predictions = solution.state[-1].argmax(-1)
        ```
    """
    algorithm = _check_model(model, algorithm)
    _check_params(params)
    solution = _solve(model, params, inputs, targets, state, algorithm, save_energy)
    return solution.stats.raise_if_failed(solution) if algorithm.throw else solution


def ebm_grad(model: AbstractEnergy, *, algorithm: EqProp | CHL | None = None) -> Callable:
    """The gradient estimate of an energy-based model's loss, as a function of its parameters.

    **Arguments:**

    - `model`: a [`pcgraph.AbstractEnergy`][].
    - `algorithm`: [`pcgraph.EqProp`][] (the default, `EqProp()`) or [`pcgraph.CHL`][].

    **Returns:**

    A function `(params, inputs, targets, state=None) -> grads`, `grads` structured like
    `params`; see [`pcgraph.ebm_relax`][] for the arguments.
    """
    algorithm = _check_model(model, algorithm)

    def grad_fn(params, inputs, targets, state=None):
        """`ebm_relax(model, params, inputs, targets, state=state).grads`."""
        return ebm_relax(model, params, inputs, targets, algorithm=algorithm, state=state).grads

    return grad_fn
