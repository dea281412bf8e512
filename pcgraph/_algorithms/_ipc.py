"""Incremental predictive coding (Salvatori et al. 2024): activities and parameters updated at
every step."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from .. import _energy
from .._energy import GraphEnergy
from .._relax import _max_abs
from .._steppers import AbstractStepper, Euler
from ._base import AbstractAlgorithm, Equilibrium, check_positive, fixed_steps_stats


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
        check_positive("IPC(beta)", self.beta)
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
        stats = fixed_steps_stats(energies, _max_abs(final_force), options.save_energy)
        predictions = energy.predictions(state, params)
        errors = _energy.errors(graph, state.values, predictions.mus)
        equilibrium = Equilibrium([], state.values, errors, stats, state.latents)
        return params, opt_state, equilibrium
