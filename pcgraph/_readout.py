"""The local read-out: each parameter's gradient read off the energy where the relaxation
ended, from the prediction errors of the predictions that the parameter makes."""

import jax
import jax.numpy as jnp

from . import _energy
from ._energy import GraphEnergy, State
from ._graph import Graph, Predictions


def local_gradients(
    energy: GraphEnergy, state: State, params
) -> tuple[list[jax.Array], Predictions]:
    """The local learning rule: `dF/dtheta / beta` at fixed values, and the predictions.
    `F` depends on a parameter only through the predictions that read it (and the loss),
    so this is each parameter's own prediction errors pulled back through its own
    operation."""
    grads, predictions = jax.grad(lambda p: energy.evaluate(state, p), has_aux=True)(params)
    return [g / energy.beta for g in grads], predictions


def gaussian_cotangents(graph: Graph, errors, precisions, loss, beta) -> Predictions:
    """Cotangents of the prediction pass for the local rule, from Gaussian errors held
    directly: `dE_i/dmu_i = -dE_i/deps_i` on each prediction, `beta` on the loss, and none on
    the precisions, held at their feedforward values."""
    dE = jax.grad(lambda e: _energy.total(_energy.error_energies(graph, e, precisions)))(errors)
    return Predictions(
        [-d for d in dE],
        jnp.asarray(beta, jnp.result_type(loss)),
        [None if p is None else jnp.zeros_like(p) for p in precisions],
    )
