"""What every predictive-coding algorithm shares: the equilibrium it returns, where it starts,
what a solve records, the abstract algorithm, and the relaxation of node values (or errors) that
IL and ePC run."""

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._energy import GraphEnergy, State
from .._graph import Feedforward, Graph
from .._node_energy import Gaussian
from .._relax import RESULTS, RelaxationStats, SaveAt, relax


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


def check_positive(name: str, value):
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


def relax_values(
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
        settle=algorithm.settle,
        min_steps=energy.graph.depth,
    )
    return values(state), stats


def fixed_steps_stats(energies, residual, save_energy) -> RelaxationStats:
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
