"""Error optimisation (Goemaere et al. 2025): inference learning relaxed in the node errors."""

from typing import ClassVar

import jax.numpy as jnp

from .. import _energy
from .._energy import GraphEnergy, State
from .._readout import local_gradients
from .._steppers import AbstractStepper, Momentum
from ._base import AbstractAlgorithm, Equilibrium, check_positive, relax_values


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
    - `settle`: also stop once the relaxation has settled: three steps in a row each changed
        the energy by at most `settle` times its change since the start (see
        [`pcgraph.IL`][]); None (the default) takes every step.
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
    settle: float | None = None
    max_energy_increase: float = 10.0
    throw: bool = True

    def __check_init__(self):
        check_positive("EPC(beta)", self.beta)
        check_positive("EPC(max_energy_increase)", self.max_energy_increase)
        if self.settle is not None:
            check_positive("EPC(settle)", self.settle)

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
        state, stats = relax_values(self, energy, params, start, options, of_errors=True)
        grads, predictions = local_gradients(energy, state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        return Equilibrium(grads, state.values, errors, stats, state.latents)
