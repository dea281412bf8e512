"""Predictive-coding algorithms: how the relaxation runs and where the parameters read errors."""

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from . import _energy
from ._energy import Gaussian, GraphEnergy, State
from ._graph import Feedforward, Graph
from ._readout import gaussian_cotangents, local_gradients
from ._relax import RESULTS, RelaxationStats, SaveAt, _max_abs, relax
from ._schedule import delays, levels, predict_level, wavefront
from ._steppers import AbstractStepper, Euler, Momentum


class Equilibrium(NamedTuple):
    """Where a relaxation ended: node values, their errors, the relaxed latent leaves, and
    the parameter gradients that the local learning rule reads off them."""

    grads: list[jax.Array]
    values: list[jax.Array]
    errors: list[jax.Array]
    stats: RelaxationStats
    latents: list[jax.Array] = []


class Start(NamedTuple):
    """Where a relaxation of values starts (the feedforward pass, or a warm start) and which
    latent entries are observed (a mask per latent leaf, None where it is wholly free)."""

    state: State
    observed: list[Any]
    warm: bool


class Options(NamedTuple):
    """What a solve records besides its result."""

    save_energy: bool = False
    saveat: SaveAt | None = None


def _check_positive(name: str, value):
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: must be a positive, finite number.")


class AbstractAlgorithm(eqx.Module):
    """A predictive-coding algorithm: a frozen configuration handed to `pcgraph.grad`,
    `pcgraph.value_and_grad`, `pcgraph.relax` or `pcgraph.check_grad`."""

    throw: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def solve(
        self, graph: Graph, params, data, feedforward: Feedforward, start: Start, options: Options
    ) -> Equilibrium:
        """Relax `graph` from `start` and read off the parameter gradients."""

    #: Whether the algorithm relaxes node values and latents on the full energy, so that it
    #: takes latents, warm starts and any node energy (Bernoulli, categorical, learned
    #: precision); the others hold Gaussian errors around the feedforward pass.
    relaxes_values: ClassVar[bool] = False

    def check_supported(self, graph: Graph, start: Start, options: Options):
        """Refuse what this algorithm cannot relax, naming the algorithm that can."""
        name = type(self).__name__
        fix = "Use pcgraph.IL() (or IPC with train_step), which relaxes the values on the energy."
        if self.relaxes_values:
            return
        if start.state.latents:
            raise ValueError(
                f"pcgraph.{name} cannot infer latents: it holds the errors around the "
                f"feedforward pass, where a latent has no prediction to be held to. {fix}"
            )
        if start.warm:
            raise ValueError(
                f"pcgraph.{name} starts from the feedforward pass and takes no `init=`. {fix}"
            )
        for info in graph.nodes:
            if not isinstance(info.energy, Gaussian):
                raise ValueError(
                    f"pcgraph.{name} takes the feedforward pass for the free equilibrium (every "
                    "error zero), which holds for Gaussian nodes only, but node "
                    f"`{info.name}` has a {info.energy.describe} energy. {fix}"
                )
        if graph.learned_precisions:
            raise ValueError(
                f"pcgraph.{name} holds each precision at its feedforward value, so it cannot "
                f"learn a precision computed from the parameters. {fix}"
            )

    @property
    def lifts_scans(self) -> bool:
        """Whether the graph this algorithm relaxes lifts `lax.scan` into stacked nodes (one
        slice per iteration); algorithms that evaluate nodes level by level keep each scan
        whole, as one opaque node."""
        return True

    def train(
        self,
        graph: Graph,
        params,
        data,
        feedforward: Feedforward,
        start: Start,
        options: Options,
        optimizer: optax.GradientTransformation,
        opt_state,
        unflatten: Callable[[list[jax.Array]], Any],
    ) -> tuple[list[jax.Array], Any, Equilibrium]:
        """One training step: the parameters (flat, as `params`) after `optimizer` applied
        the gradients this algorithm reads off, the new optimiser state and the equilibrium.
        Algorithms that update parameters during the relaxation override this."""
        equilibrium = self.solve(graph, params, data, feedforward, start, options)
        tree = unflatten(params)
        updates, opt_state = optimizer.update(unflatten(equilibrium.grads), opt_state, tree)
        return jax.tree.leaves(optax.apply_updates(tree, updates)), opt_state, equilibrium


class IL(AbstractAlgorithm):
    """Standard inference learning (Whittington & Bogacz 2017).

    The node values start at the feedforward pass and relax by gradient flow on the energy
    `F = sum_i p_i/2 ||v_i - mu_i||^2 + beta * loss`, with every prediction and Jacobian
    re-evaluated at the current values; at equilibrium each parameter's gradient is read off
    the errors of the nodes that use it and divided by `beta`. Approximate: the error against
    `jax.grad` is O(beta) and vanishes as `beta -> 0`.

    The defaults take 100 heavy-ball momentum steps of 0.1 ([`pcgraph.Momentum`][]) from
    the feedforward pass. On the layered graphs that pcgraph builds for unchanged models (see
    [`pcgraph.Layers`][]) that reaches the equilibrium (the largest force below a thousandth of
    its initial value) where plain Euler steps would need several hundred. With ReLU or
    max-pooling the energy has kinks where a force tolerance cannot be met (the activities
    settle into a narrow band around the kink), so the defaults take a fixed number of steps;
    set `rtol` to relax to a tolerance instead, raising [`pcgraph.RelaxationError`][] when it
    is missed. For the fixed-budget inference of other PC libraries (T Euler steps from the
    feedforward pass) pass `IL(stepper=pcgraph.Euler(0.1), max_steps=T)`. On the finer
    [`pcgraph.Primitives`][] graph the energy is stiffer (a sum over many elements has a
    large Jacobian) and needs smaller steps.

    **Arguments:**

    - `beta`: the output weight (nudging strength).
    - `stepper`: how the activities move: [`pcgraph.Momentum`][], [`pcgraph.Euler`][],
        [`pcgraph.OptaxStepper`][] or [`pcgraph.DiffraxStepper`][].
    - `max_steps`: the most relaxation steps.
    - `rtol`, `atol`: stop once the largest force `|dF/dv|` is at most
        `atol + rtol * (largest initial force)`; `rtol=None` always runs `max_steps` steps.
    - `max_energy_increase`: report divergence when the energy rises more than this many
        times its initial magnitude above it: checked at every step when the relaxation has a
        tolerance or records its trajectory (`save_energy`, `saveat`), which then stops at
        the failing step; with `rtol=None` and nothing recorded, once, at the end (the
        loop then computes only forces, which is faster).
    - `throw`: raise on divergence or on missing the tolerance (otherwise only reported in
        `Solution.stats.result`).
    """

    beta: float = 1.0
    stepper: AbstractStepper = Momentum(0.1, 0.8)
    max_steps: int = 100
    rtol: float | None = None
    atol: float = 0.0
    max_energy_increase: float = 10.0
    throw: bool = True

    def __check_init__(self):
        _check_positive("IL(beta)", self.beta)
        _check_positive("IL(max_energy_increase)", self.max_energy_increase)

    relaxes_values: ClassVar[bool] = True

    def solve(self, graph, params, data, feedforward, start, options):
        energy = GraphEnergy(graph, data, feedforward.frozen, self.beta)
        state, stats = _relax_values(self, energy, params, start, options)
        grads, predictions = local_gradients(energy, state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        return Equilibrium(grads, state.values, errors, stats, state.latents)


def _relax_values(
    algorithm, energy: GraphEnergy, params, start: Start, options: Options, of_errors=False
):
    """Relax node values and latents on `energy` from `start`; with `of_errors`, relax the
    node errors (`start` then holds errors) and return the values they hold."""

    def values(state: State) -> State:
        return energy.forward(state, params)[0] if of_errors else state

    state, stats = relax(
        energy.force_fn(params, start.observed, of_errors=of_errors),
        start.state,
        stepper=algorithm.stepper,
        max_steps=algorithm.max_steps,
        rtol=algorithm.rtol,
        atol=algorithm.atol,
        max_energy_increase=algorithm.max_energy_increase,
        save_energy=options.save_energy,
        in_support=(lambda s: energy.in_support(values(s)))
        if energy.graph.bounded_values
        else None,
        record=lambda s: energy.record(values(s), params, options.saveat),
        saveat=options.saveat,
        hold=energy.hold_observed(start.observed),
    )
    return values(state), stats


class EPC(AbstractAlgorithm):
    """Error optimisation (Goemaere et al. 2025): IL's energy and equilibrium, relaxed in the
    node errors instead of the node values.

    The relaxed state is each node's error `e_i` (and any latent); the values follow from
    one forward pass in which each node's value is its prediction's mean plus its error,
    `v_i = mu_i(v_parents) + e_i`. The energy is IL's, `F = sum_i p_i/2 ||e_i||^2 + beta *
    loss(v(e))`, in other coordinates: the map from errors to values is invertible, so the
    stationary points, and the gradients read off them by IL's local rule, are IL's. What
    changes is how fast the relaxation gets there. In IL the loss's error reaches a node `d`
    layers below it only after `d` steps and decays on the way (the signal decay of deep PC
    networks); in ePC every step's force `-p_i e_i - beta dloss/dv_i (through the forward
    pass)` carries the loss's gradient to every node at once, so a few steps suffice at any
    depth.

    The price: that force is not local. It backpropagates through the whole forward pass,
    one step of it after another (a sequential sweep down the graph, as backprop's), where
    IL's force needs only each node's own prediction and its children's. A step costs about
    what IL's does in arithmetic (one forward pass and one VJP), but its work runs in
    `graph.depth` sequential stages rather than all at once. The parameters still read their
    gradient locally, from the errors at equilibrium. Scans are kept whole, as the forward
    pass runs them: a scan's outputs can be nodes, but `pcgraph.node` marks inside its body
    are not (IL relaxes those, one slice per iteration).

    The defaults take 20 heavy-ball steps of 0.3 with momentum 0.5 from zero errors (the
    feedforward pass). In the errors the energy's curvature is each node's precision plus
    the loss's curvature carried back through the forward pass (`J^T H J`, with `J` the
    Jacobian from a node to the output). Where that is small (a mean loss, a network whose
    Jacobians stay bounded with depth, as muPC's) the curvature is close to the precisions
    at any depth, and the relaxation converges geometrically in a few dozen steps where IL
    needs hundreds. Steps are stable while the largest curvature is below
    `2 (1 + momentum) / step_size` (10 for the defaults); where the forward pass's Jacobians
    grow with depth (deep residual networks in the standard parameterisation) it exceeds
    that, and the relaxation diverges unless the steps shrink. For the fixed-budget
    inference of other PC libraries (T Euler steps from the feedforward pass) pass
    `EPC(stepper=pcgraph.Euler(0.1), max_steps=T)`.

    **Arguments:**

    - `beta`: the output weight (nudging strength).
    - `stepper`: how the errors move: [`pcgraph.Momentum`][], [`pcgraph.Euler`][],
        [`pcgraph.OptaxStepper`][], [`pcgraph.Langevin`][] or [`pcgraph.DiffraxStepper`][].
    - `max_steps`: the most relaxation steps.
    - `rtol`, `atol`: stop once the largest force `|dF/de|` is at most
        `atol + rtol * (largest initial force)`; `rtol=None` always runs `max_steps` steps.
    - `max_energy_increase`: report divergence when the energy rises more than this many
        times its initial magnitude above it: checked at every step when the relaxation has a
        tolerance or records its trajectory (`save_energy`, `saveat`), which then stops at
        the failing step; with `rtol=None` and nothing recorded, once, at the end (the
        loop then computes only forces, which is faster).
    - `throw`: raise on divergence or on missing the tolerance.
    """

    beta: float = 1.0
    stepper: AbstractStepper = Momentum(0.3, 0.5)
    max_steps: int = 20
    rtol: float | None = None
    atol: float = 0.0
    max_energy_increase: float = 10.0
    throw: bool = True

    def __check_init__(self):
        _check_positive("EPC(beta)", self.beta)
        _check_positive("EPC(max_energy_increase)", self.max_energy_increase)

    relaxes_values: ClassVar[bool] = True

    @property
    def lifts_scans(self) -> bool:
        return False

    def solve(self, graph, params, data, feedforward, start, options):
        energy = GraphEnergy(graph, data, feedforward.frozen, self.beta)
        if start.warm:
            predictions = energy.predictions(start.state, params)
            node_errors = _energy.errors(graph, start.state.values, predictions.mus)
        else:
            node_errors = [jnp.zeros_like(v) for v in start.state.values]
        start = start._replace(state=State(node_errors, start.state.latents))
        state, stats = _relax_values(self, energy, params, start, options, of_errors=True)
        grads, predictions = local_gradients(energy, state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        return Equilibrium(grads, state.values, errors, stats, state.latents)


class AbstractSchedule(eqx.Module):
    """When the nodes of a graph are updated: [`pcgraph.Relaxation`][] or
    [`pcgraph.Wavefront`][]."""


class Relaxation(AbstractSchedule):
    """Every node relaxes at every step, all at once: the dynamics of predictive coding."""


class Wavefront(AbstractSchedule):
    """Backprop's schedule over the value nodes: each node's local VJP is evaluated once,
    when its error is final. It sets the errors that FPA with `Euler(1.0)` reaches after
    `graph.depth` steps without taking a step (Song et al. 2020's Z-IL update)."""


def _check_schedule(owner: str, schedule):
    if isinstance(schedule, AbstractSchedule):
        return
    fix = {"relaxation": "pcgraph.Relaxation()", "wavefront": "pcgraph.Wavefront()"}
    hint = (
        f"pass schedule={fix[schedule]}"
        if isinstance(schedule, str) and schedule in fix
        else "pass pcgraph.Relaxation() (every node relaxes at every step) or "
        "pcgraph.Wavefront() (backprop's schedule over the value nodes)"
    )
    raise TypeError(f"{owner}(schedule={schedule!r}): {hint}.")


class AbstractInit(eqx.Module):
    """Where Z-IL's relaxation starts: [`pcgraph.FeedforwardInit`][] or
    [`pcgraph.RandomInit`][]."""


class FeedforwardInit(AbstractInit):
    """Start every node at its feedforward value (Song et al. 2020's first condition)."""


class RandomInit(AbstractInit):
    """Start every node (and delay) at standard normal noise, an ablation of Song et al.
    2020's first condition.

    **Arguments:**

    - `seed`: the seed of the noise.
    """

    seed: int = 0


def _wavefront_equilibrium(graph, params, data, feedforward) -> Equilibrium:
    """FPA's errors after `graph.depth` Euler steps of 1, on backprop's schedule over the value
    nodes: each node's local VJP evaluated once, when its error is final. It takes no
    relaxation step, so the statistics hold no steps, no residual (NaN) and no trajectory;
    the energies are FPA's at the feedforward pass (every error zero: the loss) and at the
    final errors."""
    front = wavefront(graph, params, data, feedforward)
    dtype = jnp.promote_types(jnp.result_type(feedforward.loss), jnp.float32)
    errors = [e.astype(dtype) for e in front.errors]
    energy = feedforward.loss.astype(dtype) + _energy.total(
        _energy.error_energies(graph, errors, feedforward.precisions)
    )
    stats = RelaxationStats(
        num_steps=jnp.zeros((), jnp.int32),
        initial_energy=feedforward.loss.astype(dtype),
        energy=energy,
        residual=jnp.full((), jnp.nan, dtype),
        result=RESULTS.where(jnp.isfinite(energy), RESULTS.successful, RESULTS.nonfinite),
    )
    values = [v + e for v, e in zip(feedforward.values, front.errors, strict=True)]
    return Equilibrium(front.grads, values, front.errors, stats)


class FPA(AbstractAlgorithm):
    """Predictive coding under the fixed-prediction assumption (Millidge et al. 2022).

    Predictions, their Jacobians and the loss gradient are frozen at the feedforward pass, so
    the error dynamics are linear: `d eps_i/dt = -(p_i eps_i - sum_j J_ji^T p_j eps_j
    + dloss/dv_i) / p_i` over the children `j` of node `i`. One linearisation is computed up
    front and its transpose reused at every step. With `Euler(1.0)` (the default) the errors are
    exactly backprop's after `graph.depth` steps, so the gradients equal `jax.grad`'s up to
    round-off.

    **Arguments:**

    - `stepper`: how the errors move; `Euler(1.0)` is exact after `graph.depth` steps.
    - `max_steps`: the most steps; None means `graph.depth`, enough for `Euler(1.0)`.
    - `rtol`, `atol`: stop once the largest force is at most
        `atol + rtol * (largest initial force)`; `rtol=None` runs `max_steps` steps.
    - `schedule`: [`pcgraph.Relaxation`][]`()` pulls every error back through every node at
        every step; [`pcgraph.Wavefront`][]`()` is backprop's schedule over the value nodes:
        each node's local VJP evaluated once, when its error is final, which sets the errors
        `Euler(1.0)` reaches after `graph.depth` steps without taking a step. The wavefront
        takes no `stepper`, `max_steps` or tolerance.
    - `throw`: raise on NaN/Inf or on missing the tolerance.

    The wavefront's `Solution.stats` hold only what it computes: `num_steps` is 0,
    `residual` is NaN and `energy_trajectory` is None (even with `save_energy=True`);
    `initial_energy` is the loss (the energy at the feedforward pass, where every error is
    zero) and `energy` is `loss + sum_i p_i/2 ||eps_i||^2` at the final errors.
    """

    stepper: AbstractStepper = Euler(1.0)
    max_steps: int | None = None
    rtol: float | None = None
    atol: float = 0.0
    schedule: AbstractSchedule = Relaxation()
    throw: bool = True

    def __check_init__(self):
        _check_schedule("FPA", self.schedule)
        if isinstance(self.schedule, Wavefront) and (
            self.stepper != Euler(1.0) or self.max_steps is not None or self.rtol is not None
        ):
            raise ValueError(
                "FPA(schedule=pcgraph.Wavefront()) is FPA with Euler(1.0) run for graph.depth "
                "steps, the one setting where each node's error is final at a known step; it "
                "takes no `stepper`, `max_steps` or `rtol`. Drop them, or use "
                "schedule=pcgraph.Relaxation()."
            )

    @property
    def lifts_scans(self) -> bool:
        return isinstance(self.schedule, Relaxation)

    def solve(self, graph, params, data, feedforward, start, options):
        if isinstance(self.schedule, Wavefront):
            return _wavefront_equilibrium(graph, params, data, feedforward)
        precisions = feedforward.precisions
        scale = [
            _energy.precision_value(e, p) for e, p in zip(graph.energies, precisions, strict=True)
        ]
        predictions, vjp_fn = jax.vjp(
            lambda v, p: graph.predict(v, p, data, feedforward.frozen),
            feedforward.values,
            params,
        )
        loss = predictions.loss

        def force_fn(errors):
            cotangents = gaussian_cotangents(graph, errors, precisions, loss, 1.0)
            pulled_back, _ = vjp_fn(cotangents)
            force = [-(e + b / p) for p, e, b in zip(scale, errors, pulled_back, strict=True)]
            energy = loss + _energy.total(_energy.error_energies(graph, errors, precisions))
            return energy, force

        def record(errors):
            terms = _energy.error_energies(graph, errors, precisions)
            values = [v + e for v, e in zip(feedforward.values, errors, strict=True)]
            return _energy.recorded(graph, options.saveat, terms, values, errors)

        errors, stats = relax(
            force_fn,
            [jnp.zeros_like(v) for v in feedforward.values],
            stepper=self.stepper,
            max_steps=graph.depth if self.max_steps is None else self.max_steps,
            rtol=self.rtol,
            atol=self.atol,
            max_energy_increase=None,
            save_energy=options.save_energy,
            record=record,
            saveat=options.saveat,
        )
        _, grads = vjp_fn(gaussian_cotangents(graph, errors, precisions, loss, 1.0))
        values = [v + e for v, e in zip(feedforward.values, errors, strict=True)]
        return Equilibrium(grads, values, errors, stats)


class ZIL(AbstractAlgorithm):
    """Zero-divergence inference learning (Song et al. 2020): predictive coding that
    reproduces backprop's update exactly.

    Song et al.'s three conditions: the values start at the feedforward pass, the relaxation
    takes Euler steps of size 1, and the parameters of a node read its error only at the step
    equal to the node's distance from the loss. On a layered network the error at distance `t`
    is then exactly backprop's at step `t`, before anything it depends on has moved.

    On a graph whose paths to the loss have unequal lengths (skip connections, branches) errors
    do not arrive in lock-step, so pcgraph equalises the paths as Salvatori et al. (2022) do:
    node `i` is timed by its *longest* path to the loss (`NodeInfo.final_step`), and a consumer
    `c` that is closer to the loss than `final_step_i - 1` reads `i` through a chain of
    `final_step_i - final_step_c - 1` identity nodes (delays, each with `i`'s precision). The
    equalised graph is layered, and Z-IL on it is exact on any DAG. Steps are preconditioned by
    the node precisions (a step of `step_size / p_i` on node `i`), which makes the result
    exact for any precisions.

    In the relaxation a node's value matters to the reads only until its own read, and to
    its consumers only until theirs. So once read a node stops moving and its consumers keep
    the value they read, and from the feedforward init a node starts moving only when the
    error wavefront reaches it (until then its force is zero but for round-off). No read
    changes, and no node relaxes on past its read, where steps of 1 diverge wherever the
    energy's curvature exceeds 2, as at a node summed into many elements, common in graphs
    without marks. The relaxation holds values and reads each error as a value minus its
    prediction, which keeps only the value's precision, so it refuses float16 and bfloat16.

    **Arguments:**

    - `schedule`: [`pcgraph.Wavefront`][]`()` (the default) is backprop's schedule over the
        value nodes: each node's local VJP evaluated once, when its error is final (as
        `pcgraph.FPA(schedule=pcgraph.Wavefront())`), which computes Z-IL's update without
        relaxing. [`pcgraph.Relaxation`][]`()` runs Z-IL itself: IL relaxation on the
        equalised graph with every prediction re-evaluated at every step, and the timed
        parameter reads.
    - `step_size`, `timed_updates`, `init`, `max_steps`: only with
        `schedule=pcgraph.Relaxation()`, to break Song et al.'s conditions for ablations:
        `step_size` other than 1; `timed_updates=False` reads every parameter at the last
        step (and no node stops before it); `init=pcgraph.RandomInit(seed)` starts the values
        (and delays) at standard normal noise; `max_steps` (default `graph.depth`) stops
        early or runs on.
    - `throw`: raise if the energy becomes NaN/Inf.

    `Solution.stats` of the relaxation hold its steps and its energies (with
    `save_energy=True`, before each step and after the last), and a NaN residual: it stops on
    no tolerance. The wavefront takes no step and reports as
    `FPA(schedule=pcgraph.Wavefront())` does: `num_steps` 0, `residual` NaN,
    `energy_trajectory` None, `initial_energy` the loss and `energy`
    `loss + sum_i p_i/2 ||eps_i||^2` at the final errors. Under Song et al.'s
    conditions both schedules end with `Solution.errors` the errors the parameters read.
    """

    schedule: AbstractSchedule = Wavefront()
    step_size: float = 1.0
    timed_updates: bool = True
    init: AbstractInit = FeedforwardInit()
    max_steps: int | None = None
    throw: bool = True

    def __check_init__(self):
        _check_schedule("ZIL", self.schedule)
        _check_positive("ZIL(step_size)", self.step_size)
        if not isinstance(self.init, AbstractInit):
            hint = (
                "pcgraph.RandomInit(seed=0)"
                if self.init == "random"
                else ("pcgraph.FeedforwardInit() or pcgraph.RandomInit(seed=0)")
            )
            raise TypeError(f"ZIL(init={self.init!r}): pass {hint}.")
        if self.max_steps is not None and not (
            isinstance(self.max_steps, int) and self.max_steps >= 0
        ):
            raise ValueError(f"ZIL(max_steps={self.max_steps!r}): a non-negative int or None.")
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name, default in [
                ("step_size", 1.0),
                ("timed_updates", True),
                ("init", FeedforwardInit()),
                ("max_steps", None),
            ]
            if getattr(self, name) != default
        ]
        if isinstance(self.schedule, Wavefront) and changed:
            raise ValueError(
                f"ZIL({', '.join(changed)}) changes Z-IL's relaxation, but the default "
                "schedule=pcgraph.Wavefront() does not relax step by step (it is exact by "
                "construction). Pass "
                f"ZIL(schedule=pcgraph.Relaxation(), {', '.join(changed)})."
            )

    @property
    def lifts_scans(self) -> bool:
        return False

    def solve(self, graph, params, data, feedforward, start, options):
        if isinstance(self.schedule, Wavefront):
            return _wavefront_equilibrium(graph, params, data, feedforward)
        if options.saveat is not None:
            raise ValueError(
                "ZIL(schedule=pcgraph.Relaxation()) holds delayed copies of the nodes and records "
                "no per-node trajectory; drop `saveat`, or record one with pcgraph.IL() or "
                "pcgraph.FPA()."
            )
        return _zil_relaxation(self, graph, params, data, feedforward, options.save_energy)


def _zil_relaxation(zil: ZIL, graph, params, data, feedforward, save_energy) -> Equilibrium:
    coarse = {info.dtype for info in graph.nodes if jnp.finfo(info.dtype).bits < 32}
    if coarse:
        dtype = max(coarse, key=lambda d: jnp.finfo(d).eps)
        raise ValueError(
            f"ZIL(schedule=pcgraph.Relaxation()) cannot relax {dtype} node values: it holds each "
            "node's value and reads the node's error as that value minus its prediction, so "
            f"an error under {float(jnp.finfo(dtype).eps):.0e} times its value is rounded "
            "away and the gradients are off by percents. Use pcgraph.ZIL() (the wavefront "
            "schedule) or pcgraph.FPA(), which hold the errors themselves, or relax in "
            "float32 or float64."
        )
    cut = levels(graph)
    final = [info.final_step for info in graph.nodes]
    precisions = [
        _energy.precision_value(e, p)
        for e, p in zip(graph.energies, feedforward.precisions, strict=True)
    ]
    # state[k] = [v_k, delay_1, ..., delay_K]: a consumer on level t reads delay
    # final_k - t - 1, so every path to the loss has one node per level.
    num_delays = delays(graph, cut)
    state = [[v] * (n + 1) for v, n in zip(feedforward.values, num_delays, strict=True)]
    if isinstance(zil.init, RandomInit):
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(zil.init.seed), len(leaves))
        state = jax.tree.unflatten(
            treedef, [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
        )
    num_steps = graph.depth if zil.max_steps is None else zil.max_steps
    # Entry d of node k is on level l = final_k - d; its parameters read it at step l and its
    # consumers at step l - 1 (untimed: all at the last step). Its error at step l depends on
    # values up to step l only, so an entry stops once read (`state`) and its consumers keep
    # the value they read (`seen`): no read changes, and no read entry relaxes on, which
    # with steps of 1 diverges wherever the energy's curvature exceeds 2 (a node summed into
    # many elements), or has its prediction evaluated at parents moved out of its domain (a
    # negative variance under a square root). From the feedforward init an entry's force is
    # zero in exact arithmetic until the wavefront arrives at step l - 1; before, it is
    # round-off, which steps of 1 amplify in the same places, so the entry waits.
    on_level = [list(range(f, f - n - 1, -1)) for f, n in zip(final, num_delays, strict=True)]
    first = jax.tree.map(lambda t: t - 1 if isinstance(zil.init, FeedforwardInit) else 0, on_level)

    def last(lag):
        return jax.tree.map(lambda t: t - lag if zil.timed_updates else num_steps, on_level)

    def predictions(seen, params):
        mus = [[None] + entries[:-1] for entries in seen]
        loss = None
        for level in cut:
            outs = predict_level(
                graph,
                level,
                [seen[k][final[k] - level.step - 1] for k in level.parents],
                [params[k] for k in level.params],
                params,
                data,
                feedforward.frozen,
            )
            if level.step == 0:
                (loss,) = outs
            else:
                for k, mu in zip(level.nodes, outs, strict=True):
                    mus[k][0] = mu
        return mus, loss

    def evaluate(state, seen, step):
        """Energy, force and the parameter gradients read at `step`."""
        (mus, loss), vjp_fn = jax.vjp(predictions, seen, params)
        errors = jax.tree.map(jnp.subtract, state, mus)
        weighted = [[p * e for e in entries] for p, entries in zip(precisions, errors, strict=True)]
        energy = loss + _energy.total(
            [
                _energy.error_energy(graph.energies[k], e, feedforward.precisions[k])
                for k, entries in enumerate(errors)
                for e in entries
            ]
        )
        neg = jax.tree.map(jnp.negative, weighted)
        pulled, _ = vjp_fn((neg, jnp.ones_like(loss)))
        force = [
            [-(w + b) / p for w, b in zip(ws, bs, strict=True)]
            for p, ws, bs in zip(precisions, weighted, pulled, strict=True)
        ]
        read = (lambda f: f == step) if zil.timed_updates else (lambda f: step == num_steps)
        masked = [
            [jnp.where(read(f), entries[0], 0), *entries[1:]]
            for f, entries in zip(final, neg, strict=True)
        ]
        _, grads = vjp_fn((masked, jnp.where(read(0), 1, 0).astype(loss.dtype)))
        return energy, force, grads, errors

    def body(step, carry):
        state, seen, grads, energies = carry
        energy, force, step_grads, _ = evaluate(state, seen, step)

        def move(values, stop):
            def entry(v, f, a, b):
                if a >= b:
                    return v
                return jnp.where((a <= step) & (step < b), v + zil.step_size * f, v)

            return jax.tree.map(entry, values, force, first, stop)

        grads = jax.tree.map(jnp.add, grads, step_grads)
        return move(state, last(0)), move(seen, last(1)), grads, energies.at[step].set(energy)

    energies = jnp.zeros((num_steps + 1,), feedforward.loss.dtype)
    grads = [jnp.zeros_like(p) for p in params]
    carry = (state, state, grads, energies)
    state, seen, grads, energies = jax.lax.fori_loop(0, num_steps, body, carry)
    energy, _, step_grads, errors = evaluate(state, seen, num_steps)
    grads = jax.tree.map(jnp.add, grads, step_grads)
    energies = energies.at[num_steps].set(energy)
    # No tolerance to stop on, so the force is not reduced to a residual.
    stats = _fixed_steps_stats(energies, jnp.full((), jnp.nan, energies.dtype), save_energy)
    values = [entries[0] for entries in state]
    return Equilibrium(grads, values, [entries[0] for entries in errors], stats)


class IPC(AbstractAlgorithm):
    """Incremental predictive coding (Salvatori et al. 2022): the activities and the
    parameters are updated together at every relaxation step.

    Each step computes the energy `F = sum_i p_i/2 ||v_i - mu_i||^2 + beta * loss` and its
    gradients at the current activities and parameters; the activities take a `stepper` step
    and the parameters an `optimizer` step on `dF/dtheta / beta`, both from the same state.
    iPC is a training scheme, not a gradient: use it with [`pcgraph.train_step`][].

    **Arguments:**

    - `beta`: the output weight.
    - `stepper`: how the activities move each step.
    - `num_steps`: steps (each one activity and one parameter update) per training step.
    - `throw`: raise if the energy becomes NaN/Inf.
    """

    beta: float = 1.0
    stepper: AbstractStepper = Euler(0.1)
    num_steps: int = 10
    throw: bool = True

    def __check_init__(self):
        _check_positive("IPC(beta)", self.beta)
        if not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            raise ValueError(f"IPC(num_steps={self.num_steps!r}): a positive int.")

    relaxes_values: ClassVar[bool] = True

    def solve(self, graph, params, data, feedforward, start, options):
        raise TypeError(
            "pcgraph.IPC updates the parameters at every relaxation step, so it has no single "
            "gradient to return. Train with it through "
            "`pcgraph.train_step(fn, optimizer, algorithm=pcgraph.IPC())`."
        )

    def train(
        self, graph, params, data, feedforward, start, options, optimizer, opt_state, unflatten
    ):
        if options.saveat is not None:
            raise ValueError(
                "pcgraph.IPC moves the parameters at every step and records no per-node "
                "trajectory; drop `saveat`."
            )
        energy = GraphEnergy(graph, data, feedforward.frozen, self.beta)

        def step(carry, _):
            state, params, opt_state, stepper_state = carry
            value, (dstate, dparams) = jax.value_and_grad(energy, argnums=(0, 1))(state, params)
            force = energy.force(dstate, start.observed)
            force_fn = energy.force_fn(params, start.observed)
            stepped, stepper_state = self.stepper.step(force_fn, force, state, stepper_state)
            state = stepped if hold is None else hold(state, stepped)
            tree = unflatten(params)
            grads = unflatten([g / self.beta for g in dparams])
            updates, opt_state = optimizer.update(grads, opt_state, tree)
            params = jax.tree.leaves(optax.apply_updates(tree, updates))
            return (state, params, opt_state, stepper_state), value

        hold = energy.hold_observed(start.observed)
        stepper_state = self.stepper.init(start.state, energy.force_fn(params, start.observed))
        (state, params, opt_state, _), energies = jax.lax.scan(
            step, (start.state, params, opt_state, stepper_state), length=self.num_steps
        )
        final_energy, final_force = energy.force_fn(params, start.observed)(state)
        energies = jnp.append(energies, final_energy)
        stats = _fixed_steps_stats(energies, _max_abs(final_force), options.save_energy)
        predictions = energy.predictions(state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        equilibrium = Equilibrium([], state.values, errors, stats, state.latents)
        return params, opt_state, equilibrium


def _fixed_steps_stats(energies, residual, save_energy) -> RelaxationStats:
    """The statistics of a relaxation that ran a fixed number of steps, from its energies
    before each step and after the last."""
    return RelaxationStats(
        num_steps=jnp.asarray(energies.shape[0] - 1, jnp.int32),
        initial_energy=energies[0],
        energy=energies[-1],
        residual=residual,
        result=RESULTS.where(
            jnp.all(jnp.isfinite(energies)), RESULTS.successful, RESULTS.nonfinite
        ),
        energy_trajectory=energies if save_energy else None,
    )
