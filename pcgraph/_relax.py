"""The jit-compiled relaxation loop shared by every algorithm."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ._steppers import AbstractStepper

PyTree = Any


class RESULTS(eqx.Enumeration):
    """How a relaxation ended. `RESULTS[stats.result]` is the message."""

    successful = ""
    max_steps_reached = (
        "The relaxation did not reach its tolerance within `max_steps` steps. Increase "
        "`max_steps`, take larger steps (staying below the stepper's stability limit), or "
        "loosen `rtol`/`atol` (`rtol=None` runs exactly `max_steps` steps)."
    )
    nonfinite = (
        "The relaxation produced NaN or Inf: the activities diverged, or the loss overflowed. "
        "Lower the stepper's `step_size` (Euler is stable below 2 / the largest curvature of "
        "the energy), or check the loss for overflow."
    )
    energy_increased = (
        "The energy rose above `max_energy_increase` times its initial magnitude, so the "
        "relaxation is diverging. Lower the stepper's `step_size`."
    )


class RelaxationError(RuntimeError):
    """A relaxation failed (diverged, produced NaN/Inf, or missed its tolerance) and the
    algorithm has `throw=True`."""


class RelaxationStats(eqx.Module):
    """What a relaxation did.

    **Attributes:**

    - `num_steps`: steps taken.
    - `initial_energy`, `energy`: the energy before the first and after the last step.
    - `residual`: the largest absolute force `|dF/dstate|` after the last step.
    - `result`: a [`pcgraph.RESULTS`][] item; `RESULTS.successful` unless it failed.
    - `energy_trajectory`: with `save_energy=True`, the energy before each step and after the
        last (length `max_steps + 1`, NaN past `num_steps`); otherwise None.
    """

    num_steps: jax.Array
    initial_energy: jax.Array
    energy: jax.Array
    residual: jax.Array
    result: RESULTS
    energy_trajectory: jax.Array | None = None

    @property
    def converged(self) -> jax.Array:
        return self.result == RESULTS.successful

    def raise_if_failed(self, token: PyTree) -> PyTree:
        """Raise unless the relaxation succeeded: a `RelaxationError` quoting the energies and
        step when the statistics are concrete, an `equinox.EquinoxRuntimeError` (through
        `eqx.error_if`, checked before `token` is used) when they are traced.

        **Returns:**

        `token`, unchanged.
        """
        failed = self.result != RESULTS.successful
        if isinstance(failed, jax.core.Tracer):
            return self.result.error_if(token, failed)
        if failed:
            raise RelaxationError(self._failure_message())
        return token

    def _failure_message(self) -> str:
        steps, start, end = int(self.num_steps), float(self.initial_energy), float(self.energy)
        if self.result == RESULTS.energy_increased:
            what = f"the energy increased from {start:.6g} to {end:.6g} at step {steps}"
        elif self.result == RESULTS.nonfinite:
            what = f"the energy became {end} at step {steps} (it started at {start:.6g})"
        else:
            what = (
                f"after {steps} steps the largest force is still {float(self.residual):.3g}; "
                f"the energy went from {start:.6g} to {end:.6g}"
            )
        return f"Relaxation failed: {what}. {RESULTS[self.result]}"


def _max_abs(tree: PyTree) -> jax.Array:
    leaves = [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree) if x.size]
    return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())


class _Carry(eqx.Module):
    step: jax.Array
    state: PyTree
    stepper_state: PyTree
    energy: jax.Array
    force: PyTree
    result: RESULTS
    done: jax.Array
    trajectory: jax.Array | None


def relax(
    force_fn: Callable[[PyTree], tuple[jax.Array, PyTree]],
    state: PyTree,
    *,
    stepper: AbstractStepper,
    max_steps: int,
    rtol: float | None,
    atol: float,
    max_energy_increase: float | None,
    save_energy: bool,
) -> tuple[PyTree, RelaxationStats]:
    """Step `state` along `force_fn(state) = (energy, -dF/dstate)` in one `lax.while_loop`.

    Stops after `max_steps` steps, or once the largest force is at most
    `atol + rtol * (largest initial force)` when `rtol` is not None, or on divergence.
    """
    initial_energy, force = force_fn(state)
    tolerance = None if rtol is None else atol + rtol * _max_abs(force)

    def status(step, energy, force):
        """The result and whether to stop, after `step` steps."""
        # The energy sums every node's squared error, so it is the one value to check.
        result = RESULTS.where(jnp.isfinite(energy), RESULTS.successful, RESULTS.nonfinite)
        if max_energy_increase is not None:
            rose = energy - initial_energy > max_energy_increase * jnp.abs(initial_energy)
            result = RESULTS.where(
                (result == RESULTS.successful) & rose, RESULTS.energy_increased, result
            )
        failed = result != RESULTS.successful
        converged = False if tolerance is None else _max_abs(force) <= tolerance
        out_of_steps = step >= max_steps
        if tolerance is not None:
            result = RESULTS.where(
                ~failed & out_of_steps & ~converged, RESULTS.max_steps_reached, result
            )
        return result, failed | converged | out_of_steps

    trajectory = None
    if save_energy:
        trajectory = jnp.full((max_steps + 1,), jnp.nan, initial_energy.dtype)
        trajectory = trajectory.at[0].set(initial_energy)
    step0 = jnp.zeros((), jnp.int32)
    result, done = status(step0, initial_energy, force)
    carry = _Carry(
        step0, state, stepper.init(state, force_fn), initial_energy, force, result, done, trajectory
    )

    def body(carry: _Carry) -> _Carry:
        state, stepper_state = stepper.step(force_fn, carry.force, carry.state, carry.stepper_state)
        energy, force = force_fn(state)
        step = carry.step + 1
        result, done = status(step, energy, force)
        trajectory = carry.trajectory
        if trajectory is not None:
            trajectory = trajectory.at[step].set(energy)
        return _Carry(step, state, stepper_state, energy, force, result, done, trajectory)

    carry = lax.while_loop(lambda c: ~c.done, body, carry)
    stats = RelaxationStats(
        num_steps=carry.step,
        initial_energy=initial_energy,
        energy=carry.energy,
        residual=_max_abs(carry.force),
        result=carry.result,
        energy_trajectory=carry.trajectory,
    )
    return carry.state, stats
