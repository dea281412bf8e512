"""Predictive-coding algorithms: how the relaxation runs and where the parameters read errors."""

import abc
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._graph import Feedforward, Graph
from ._relax import RelaxationStats, relax
from ._steppers import AbstractStepper, Euler


class Equilibrium(NamedTuple):
    """Where a relaxation ended: node values, their errors, and the parameter gradients that
    the local learning rule reads off them."""

    grads: list[jax.Array]
    values: list[jax.Array]
    errors: list[jax.Array]
    stats: RelaxationStats


def _check_positive(name: str, value):
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: must be a positive, finite number.")


class AbstractAlgorithm(eqx.Module):
    """A predictive-coding algorithm: a frozen configuration handed to `pcgraph.grad`,
    `pcgraph.value_and_grad`, `pcgraph.relax` or `pcgraph.check_grad`."""

    throw: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def solve(
        self, graph: Graph, params, data, feedforward: Feedforward, *, save_energy: bool
    ) -> Equilibrium:
        """Relax `graph` from its feedforward pass and read off the parameter gradients."""


class IL(AbstractAlgorithm):
    """Standard inference learning (Whittington & Bogacz 2017).

    The node values start at the feedforward pass and relax by gradient flow on the energy
    `F = sum_i p_i/2 ||v_i - mu_i||^2 + beta * loss`, with every prediction and Jacobian
    re-evaluated at the current values; at equilibrium each parameter's gradient is read off
    the errors of the nodes that use it and divided by `beta`. Approximate: the error against
    `jax.grad` is O(beta) and vanishes as `beta -> 0`.

    The defaults run 100 Euler steps of 0.1, the common setting of layered PC networks (mark
    the layer outputs with [`pcgraph.node`][]). Without marks every primitive is a node, the
    graph is deeper and stiffer (a sum over many elements has a large Jacobian), and Euler
    needs a smaller step and more steps: watch `Solution.stats`, or set `rtol` to relax to a
    tolerance.

    **Arguments:**

    - `beta`: the output weight (nudging strength).
    - `stepper`: how the activities move: [`pcgraph.Euler`][] or [`pcgraph.OptaxStepper`][].
    - `max_steps`: the most relaxation steps.
    - `rtol`, `atol`: stop once the largest force `|dF/dv|` is at most
        `atol + rtol * (largest initial force)`; `rtol=None` always runs `max_steps` steps.
    - `max_energy_increase`: report divergence when the energy rises more than this many
        times its initial magnitude above it.
    - `throw`: raise on divergence or on missing the tolerance (otherwise only reported in
        `Solution.stats.result`).
    """

    beta: float = 1.0
    stepper: AbstractStepper = Euler(0.1)
    max_steps: int = 100
    rtol: float | None = None
    atol: float = 0.0
    max_energy_increase: float = 10.0
    throw: bool = True

    def __check_init__(self):
        _check_positive("IL(beta)", self.beta)
        _check_positive("IL(max_energy_increase)", self.max_energy_increase)

    def solve(self, graph, params, data, feedforward, *, save_energy):
        precisions = graph.precisions()
        frozen = feedforward.frozen

        def energy(values, params):
            mus, loss = graph.predict(values, params, data, frozen)
            errors = graph.errors(values, mus)
            node_energy = sum(
                p / 2 * jnp.sum(e**2) for p, e in zip(precisions, errors, strict=True)
            )
            return node_energy + self.beta * loss

        def force_fn(values):
            value, grad = jax.value_and_grad(energy)(values, params)
            return value, jax.tree.map(jnp.negative, grad)

        values, stats = relax(
            force_fn,
            feedforward.values,
            stepper=self.stepper,
            max_steps=self.max_steps,
            rtol=self.rtol,
            atol=self.atol,
            max_energy_increase=self.max_energy_increase,
            save_energy=save_energy,
        )
        (mus, _), vjp_fn = jax.vjp(lambda p: graph.predict(values, p, data, frozen), params)
        errors = graph.errors(values, mus)
        (grads,) = vjp_fn(_cotangents(graph, errors, self.beta, feedforward.loss))
        grads = [g / self.beta for g in grads]
        return Equilibrium(grads, values, errors, stats)


def _cotangents(graph: Graph, errors, beta, loss):
    """Cotangents of the prediction pass for the local rule: `-p_i eps_i` on each prediction
    and `beta` on the loss."""
    on_predictions = [-p * e for p, e in zip(graph.precisions(), errors, strict=True)]
    return on_predictions, jnp.asarray(beta, jnp.result_type(loss))


class FPA(AbstractAlgorithm):
    """Predictive coding under the fixed-prediction assumption (Millidge et al.).

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
    - `throw`: raise on NaN/Inf or on missing the tolerance.
    """

    stepper: AbstractStepper = Euler(1.0)
    max_steps: int | None = None
    rtol: float | None = None
    atol: float = 0.0
    throw: bool = True

    def solve(self, graph, params, data, feedforward, *, save_energy):
        precisions = graph.precisions()
        (_, loss), vjp_fn = jax.vjp(
            lambda v, p: graph.predict(v, p, data, feedforward.frozen),
            feedforward.values,
            params,
        )

        def force_fn(errors):
            pulled_back, _ = vjp_fn(_cotangents(graph, errors, 1.0, loss))
            force = [-(e + b / p) for p, e, b in zip(precisions, errors, pulled_back, strict=True)]
            energy = loss + sum(
                p / 2 * jnp.sum(e**2) for p, e in zip(precisions, errors, strict=True)
            )
            return energy, force

        errors, stats = relax(
            force_fn,
            [jnp.zeros_like(v) for v in feedforward.values],
            stepper=self.stepper,
            max_steps=graph.depth if self.max_steps is None else self.max_steps,
            rtol=self.rtol,
            atol=self.atol,
            max_energy_increase=None,
            save_energy=save_energy,
        )
        _, grads = vjp_fn(_cotangents(graph, errors, 1.0, loss))
        values = [v + e for v, e in zip(feedforward.values, errors, strict=True)]
        return Equilibrium(grads, values, errors, stats)
