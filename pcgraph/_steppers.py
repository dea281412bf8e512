import abc
from typing import Any

import equinox as eqx
import jax
import optax

PyTree = Any


class AbstractStepper(eqx.Module):
    """One step of a relaxation: moves the relaxed state along its force `-dF/dstate`."""

    @abc.abstractmethod
    def init(self, state: PyTree) -> Any:
        """The stepper's own state (momenta, step counters) for a relaxed state `state`."""

    @abc.abstractmethod
    def step(self, force: PyTree, state: PyTree, stepper_state: Any) -> tuple[PyTree, Any]:
        """Return the next relaxed state and stepper state, given the force at `state`."""


class Euler(AbstractStepper):
    """Explicit Euler step: `state <- state + step_size * force`.

    For IL this is gradient descent on the energy; it is stable for `step_size` below
    `2 / (largest curvature of the energy in the activities)`. For FPA, `step_size=1` solves the
    linear error dynamics exactly in `graph.depth` steps.
    """

    step_size: float = 0.1

    def init(self, state: PyTree) -> None:
        return None

    def step(self, force: PyTree, state: PyTree, stepper_state: None) -> tuple[PyTree, None]:
        new_state = jax.tree.map(lambda s, f: s + self.step_size * f, state, force)
        return new_state, None


class OptaxStepper(AbstractStepper):
    """Relax the activities with any optax transformation, e.g. `optax.sgd(0.1, momentum=0.9)`.

    The transformation receives `dF/dstate` as its gradient, exactly as it would for a
    parameter update, so its learning rate plays the role of the relaxation step size.
    """

    optimizer: optax.GradientTransformation

    def init(self, state: PyTree) -> optax.OptState:
        return self.optimizer.init(state)

    def step(
        self, force: PyTree, state: PyTree, stepper_state: optax.OptState
    ) -> tuple[PyTree, optax.OptState]:
        energy_grad = jax.tree.map(lambda f: -f, force)
        updates, stepper_state = self.optimizer.update(energy_grad, stepper_state, state)
        return optax.apply_updates(state, updates), stepper_state
