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
        check_positive("IL(beta)", self.beta)
        check_positive("IL(max_energy_increase)", self.max_energy_increase)

    relaxes_values: ClassVar[bool] = True

    def solve(self, graph, params, data, feedforward, start, options):
        energy = GraphEnergy(graph, data, feedforward.frozen, self.beta)
        state, stats = relax_values(self, energy, params, start, options)
        grads, predictions = local_gradients(energy, state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        return Equilibrium(grads, state.values, errors, stats, state.latents)
