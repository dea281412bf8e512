"""The energy of a predictive-coding graph, defined once.

Each value node `i` contributes a term `E_i(v_i, mu_i)`: the negative log-density of its value
given its prediction (Rao & Ballard 1999; Friston 2005; Bogacz 2017). The graph's energy is

    F(values, latents; params) = sum_i E_i(v_i, mu_i) + beta * loss,

with every prediction `mu_i` computed from the values of the node's parents, and the loss
(the function's negative log joint of what it observes) from the values that feed it. Every
algorithm relaxes this `F` or a linearisation of it, and every parameter reads its gradient
off it locally: `dF/dtheta` at fixed values involves only the predictions that `theta` makes.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._graph import Graph, Predictions
from ._node_energy import Gaussian, error_energy

PyTree = Any


def node_energies(graph: Graph, values, predictions: Predictions) -> list[jax.Array]:
    """Each node's term `E_i(v_i, mu_i)`."""
    return [
        energy(v, mu, p)
        for energy, v, mu, p in zip(
            graph.energies, values, predictions.mus, predictions.precisions, strict=True
        )
    ]


def errors(graph: Graph, values, mus) -> list[jax.Array]:
    """Each node's prediction error `v_i - mean(mu_i)`."""
    return [e.error(v, mu) for e, v, mu in zip(graph.energies, values, mus, strict=True)]


def total(terms: Sequence[jax.Array]) -> jax.Array:
    """The nodes' part of the energy, `sum_i E_i`."""
    # One sum over a stack of per-node terms: a chain of scalar additions, one per node,
    # compiles far more slowly in deep graphs.
    return jnp.sum(jnp.stack(list(terms))) if terms else jnp.asarray(0.0)


def error_energies(graph: Graph, errors, precisions) -> list[jax.Array]:
    """Each Gaussian node's term from its error alone."""
    return [
        error_energy(energy, e, p)
        for energy, e, p in zip(graph.energies, errors, precisions, strict=True)
    ]


class State(NamedTuple):
    """What a value relaxation moves: the node values and the latent arguments' leaves."""

    values: list[jax.Array]
    latents: list[jax.Array]


class GraphEnergy(eqx.Module):
    """`F(state; params) = sum_i E_i(v_i, mu_i) + beta * loss` of one traced call, with the
    latent leaves of `state` standing in for their arguments."""

    graph: Graph = eqx.field(static=True)
    data: list[Any]
    frozen: list[Any]
    beta: float

    def _data(self, latents) -> list[Any]:
        data = list(self.data)
        for position, latent in zip(self.graph.latent_positions, latents, strict=True):
            data[position] = latent
        return data

    def predictions(self, state: State, params) -> Predictions:
        return self.graph.predict(state.values, params, self._data(state.latents), self.frozen)

    def forward(self, errors: State, params) -> tuple[State, Predictions]:
        """The value state whose node errors are `errors.values` (its latents those of
        `errors`), and its predictions: the reparameterisation of error optimisation
        (Goemaere et al. 2025)."""
        data = self._data(errors.latents)
        values, predictions = self.graph.forward(errors.values, params, data, self.frozen)
        return State(values, errors.latents), predictions

    def of_errors(self, errors: State, params) -> jax.Array:
        """`F` at the values that `errors` hold (see `forward`): the same energy, as a function
        of the errors."""
        state, predictions = self.forward(errors, params)
        terms = node_energies(self.graph, state.values, predictions)
        return total(terms) + self.beta * predictions.loss

    def terms(self, state: State, params) -> tuple[list[jax.Array], Predictions]:
        """Each node's energy, and the predictions they were computed from."""
        predictions = self.predictions(state, params)
        return node_energies(self.graph, state.values, predictions), predictions

    def evaluate(self, state: State, params) -> tuple[jax.Array, Predictions]:
        """`F`, and the predictions it was computed from."""
        terms, predictions = self.terms(state, params)
        return total(terms) + self.beta * predictions.loss, predictions

    def __call__(self, state: State, params) -> jax.Array:
        return self.evaluate(state, params)[0]

    def force_fn(self, params, observed: Sequence[Any], *, of_errors: bool = False):
        """`state -> (F, -dF/dstate)` at fixed `params`; the force on the observed entries of
        the latents (`observed`: a boolean mask per latent leaf, or None) is zero. With
        `of_errors` the state holds the node errors instead of their values (see
        `of_errors`)."""
        energy = self.of_errors if of_errors else self

        def force_fn(state):
            value, grad = jax.value_and_grad(energy)(state, params)
            return value, self.force(grad, observed)

        return force_fn

    @staticmethod
    def force(grad: State, observed: Sequence[Any]) -> State:
        """`-dF/dstate`, zero on the observed entries of the latents."""
        force = jax.tree.map(jnp.negative, grad)
        latents = [
            f if mask is None else jnp.where(mask, jnp.zeros_like(f), f)
            for f, mask in zip(force.latents, observed, strict=True)
        ]
        return State(force.values, latents)

    @staticmethod
    def hold_observed(observed: Sequence[Any]):
        """`(old, new) -> new` with the observed entries of the latents kept at their old
        values (for steppers that move what has no force, e.g. by noise); None when no latent
        is partly observed."""
        if all(mask is None for mask in observed):
            return None

        def hold(old: State, new: State) -> State:
            latents = [
                n if mask is None else jnp.where(mask, o, n)
                for o, n, mask in zip(old.latents, new.latents, observed, strict=True)
            ]
            return State(new.values, latents)

        return hold

    def in_support(self, state: State) -> jax.Array:
        """Whether every Bernoulli or categorical node's value lies in `[0, 1]`."""
        checks = [
            energy.in_support(v)
            for energy, v in zip(self.graph.energies, state.values, strict=True)
            if not isinstance(energy, Gaussian)
        ]
        return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)

    def record(self, state: State, params, saveat) -> dict[str, Any]:
        """What `saveat` asks to record at one step: each node's energy, and optionally its
        value and error, keyed by node name."""
        terms, predictions = self.terms(state, params)
        found = errors(self.graph, state.values, predictions.mus)
        return recorded(self.graph, saveat, terms, state.values, found)


def recorded(graph: Graph, saveat, terms, values, errors) -> dict[str, Any]:
    """One step's record for `saveat`: each node's energy term, and its value and error when
    asked for, keyed by node name."""
    names = graph.node_names
    out: dict[str, Any] = {"energies": dict(zip(names, terms, strict=True))}
    if saveat.values:
        out["values"] = dict(zip(names, values, strict=True))
    if saveat.errors:
        out["errors"] = dict(zip(names, errors, strict=True))
    return out
