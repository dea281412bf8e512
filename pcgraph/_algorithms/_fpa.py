"""Predictive coding under the fixed-prediction assumption (Millidge, Tschantz & Buckley 2022)."""

import jax
import jax.numpy as jnp

from .. import _energy, _node_energy
from .._readout import gaussian_cotangents
from .._relax import relax
from .._steppers import AbstractStepper, Euler
from ._base import AbstractAlgorithm, Equilibrium
from ._schedules import (
    AbstractSchedule,
    Relaxation,
    Wavefront,
    check_schedule,
    wavefront_equilibrium,
)


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
        check_schedule("FPA", self.schedule)
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
            return wavefront_equilibrium(graph, params, data, feedforward)
        precisions = feedforward.precisions
        scale = [
            _node_energy.precision_value(e, p)
            for e, p in zip(graph.energies, precisions, strict=True)
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
