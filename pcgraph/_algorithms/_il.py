"""Standard inference learning (Whittington & Bogacz 2017)."""

from typing import ClassVar

from .. import _energy
from .._energy import GraphEnergy
from .._readout import local_gradients
from .._steppers import AbstractStepper, Momentum
from ._base import AbstractAlgorithm, Equilibrium, check_positive, relax_values


class IL(AbstractAlgorithm):
    """Standard inference learning (Whittington & Bogacz 2017).

    The node values start at the feedforward pass and relax by gradient flow on the energy
    `F = sum_i p_i/2 ||v_i - mu_i||^2 + beta * loss`, with every prediction and Jacobian
    re-evaluated at the current values; at equilibrium each parameter's gradient is read off
    the errors of the nodes that use it and divided by `beta`. Approximate: the error against
    `jax.grad` is O(beta) and vanishes as `beta -> 0`.

    The defaults take 100 heavy-ball momentum steps of 0.1 with momentum 0.8
    ([`pcgraph.Momentum`][]) from the feedforward pass. On the layered graphs that pcgraph
    builds for unchanged models (see [`pcgraph.Layers`][]) that reaches the equilibrium where
    plain Euler steps would need several hundred, and it stays stable as training sharpens the
    network (steps are stable while the energy's largest curvature is below
    `2 (1 + momentum) / step_size`, 36 for the defaults).

    `settle` stops the relaxation once it has settled: once three steps in a row each changed
    the energy by at most `settle` times its change since the start, after at least
    `graph.depth` steps (the number the output's error needs to reach every node). A force
    tolerance (`rtol`) cannot be met where the energy has kinks (ReLU, max-pooling: the
    activities settle into a narrow band around the kink); the settling rule is met there
    too, and missing it is no failure. It needs a well-damped stepper: with
    `IL(stepper=pcgraph.Momentum(0.3, 0.5), settle=1e-4)` the 784-128-128-128-10 MLP of
    Pinchetti et al. (2025) on MNIST settles after 15 steps with every leaf's gradient within
    2.5 % of `jax.grad`'s, but that stepper is stable only below a curvature of 10, which a
    CNN in training exceeds now and then; the underdamped default stepper can look settled at
    a turning point. Set `rtol` to relax to a force tolerance instead, raising
    [`pcgraph.RelaxationError`][] when it is missed. For the fixed-budget inference of other PC
    libraries (T Euler steps from the feedforward pass) pass
    `IL(stepper=pcgraph.Euler(0.1), max_steps=T)`. On the finer [`pcgraph.Primitives`][]
    graph the energy is stiffer (a sum over many elements has a large Jacobian) and needs
    smaller steps.

    **Arguments:**

    - `beta`: the output weight (nudging strength).
    - `stepper`: how the activities move: [`pcgraph.Momentum`][], [`pcgraph.Euler`][],
        [`pcgraph.OptaxStepper`][] or [`pcgraph.DiffraxStepper`][].
    - `max_steps`: the most relaxation steps.
    - `rtol`, `atol`: stop once the largest force `|dF/dv|` is at most
        `atol + rtol * (largest initial force)`; `rtol=None` (the default) sets no force
        tolerance.
    - `settle`: stop once the relaxation has settled, as above; None (the default) takes
        every one of `max_steps` steps (with `rtol=None`).
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
    settle: float | None = None
    max_energy_increase: float = 10.0
    throw: bool = True

    def __check_init__(self):
        check_positive("IL(beta)", self.beta)
        check_positive("IL(max_energy_increase)", self.max_energy_increase)
        if self.settle is not None:
            check_positive("IL(settle)", self.settle)

    relaxes_values: ClassVar[bool] = True

    def solve(self, graph, params, data, feedforward, start, options):
        energy = GraphEnergy(graph, data, feedforward.frozen, self.beta)
        state, stats = relax_values(self, energy, params, start, options)
        grads, predictions = local_gradients(energy, state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        return Equilibrium(grads, state.values, errors, stats, state.latents)
