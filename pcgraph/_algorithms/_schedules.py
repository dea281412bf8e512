"""When the nodes of a graph are updated: every step (the relaxation) or once each, when its
error is final (backprop's wavefront over the value nodes, Song et al. 2020)."""

import equinox as eqx
import jax.numpy as jnp

from .. import _energy
from .._relax import RESULTS, RelaxationStats
from .._schedule import wavefront
from ._base import Equilibrium


class AbstractSchedule(eqx.Module):
    """When the nodes of a graph are updated: [`pcgraph.Relaxation`][] or
    [`pcgraph.Wavefront`][]."""


class Relaxation(AbstractSchedule):
    """Every node relaxes at every step, all at once: the dynamics of predictive coding."""


class Wavefront(AbstractSchedule):
    """Backprop's schedule over the value nodes: each node's local VJP is evaluated once,
    when its error is final. It sets the errors that FPA with `Euler(1.0)` reaches after
    `graph.depth` steps without taking a step (Song et al. 2020's Z-IL update)."""


def check_schedule(owner: str, schedule):
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


def wavefront_equilibrium(graph, params, data, feedforward) -> Equilibrium:
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
