"""The jit-compiled relaxation loop shared by every algorithm."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
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
        "the energy), or check the loss for overflow. A graph with a node per primitive "
        "(`placement=pcgraph.Primitives()`) is much stiffer than the default one node per "
        "layer."
    )
    energy_increased = (
        "The energy rose above `max_energy_increase` times its initial magnitude, so the "
        "relaxation is diverging. Lower the stepper's `step_size`; a graph with a node per "
        "primitive (`placement=pcgraph.Primitives()`) needs far smaller steps than the "
        "default one node per layer."
    )


class RelaxationError(RuntimeError):
    """A relaxation failed (diverged, produced NaN/Inf, or missed its tolerance) and the
    algorithm has `throw=True`."""


class RelaxationStats(eqx.Module):
    """What a relaxation did.

    **Attributes:**

    - `num_steps`: steps taken.
    - `initial_energy`, `energy`: the energy before the first and after the last step.
    - `residual`: the largest absolute force `|dF/dstate|` after the last step; computed only
        when the relaxation stops on a tolerance (`rtol` set), and NaN with `rtol=None`.
    - `result`: a [`pcgraph.RESULTS`][] item; `RESULTS.successful` unless it failed.
    - `energy_trajectory`: with `save_energy=True`, the energy before each step and after the
        last (length `max_steps + 1`, NaN past `num_steps`); otherwise None.

    Only what was measured is reported: the wavefront schedule (`pcgraph.ZIL()`,
    `FPA(schedule="wavefront")`) takes no relaxation steps, so it reports `num_steps` 0, a NaN
    residual and no trajectory.
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
    initial_energy: jax.Array
    tolerance: jax.Array
    energy: jax.Array
    residual: jax.Array
    result: RESULTS
    done: jax.Array
    trajectory: jax.Array | None


_TOLERANCE_NOT_REVERSE_DIFFERENTIABLE = (
    "pcgraph cannot differentiate in reverse mode (`jax.grad`, `jax.vjp`, `jax.jacrev`) "
    "through a relaxation that stops on a tolerance (`rtol` set), whose number of steps "
    "depends on the values. Set the algorithm's `rtol=None` to run exactly `max_steps` steps, "
    "which reverse mode differentiates, or use forward mode (`jax.jvp`, `jax.jacfwd`), which "
    "works with `rtol` too."
)


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
    """Step `state` along `force_fn(state) = (energy, -dF/dstate)` in one compiled loop.

    Stops after `max_steps` steps, or once the largest force is at most
    `atol + rtol * (largest initial force)` when `rtol` is not None, or on divergence. With
    `rtol=None` the loop has a fixed trip count, so the result can be differentiated in
    reverse mode (`jax.grad` of a function that calls `pcgraph.grad`); forward mode works
    either way.
    """

    def status(step, energy, residual, initial_energy, tolerance):
        """The result and whether to stop, after `step` steps."""
        # The energy sums every node's squared error, so it is the one value to check.
        result = RESULTS.where(jnp.isfinite(energy), RESULTS.successful, RESULTS.nonfinite)
        if max_energy_increase is not None:
            rose = energy - initial_energy > max_energy_increase * jnp.abs(initial_energy)
            result = RESULTS.where(
                (result == RESULTS.successful) & rose, RESULTS.energy_increased, result
            )
        failed = result != RESULTS.successful
        converged = False if rtol is None else residual <= tolerance
        out_of_steps = step >= max_steps
        if rtol is not None:
            result = RESULTS.where(
                ~failed & out_of_steps & ~converged, RESULTS.max_steps_reached, result
            )
        return result, failed | converged | out_of_steps

    # Each iteration evaluates the force at the current state, then steps unless that state
    # ends the relaxation (the last iteration only evaluates): the force is never carried from
    # one iteration to the next, and `force_fn` is traced once, in the loop.
    def body(carry: _Carry) -> _Carry:
        energy, force = force_fn(carry.state)
        energy = energy.astype(dtype)
        # The residual takes one reduction per node in the compiled loop; only a tolerance
        # needs it.
        residual = carry.residual if rtol is None else _max_abs(force).astype(dtype)
        first = carry.step == 0
        initial_energy = jnp.where(first, energy, carry.initial_energy)
        tolerance = carry.tolerance
        if rtol is not None:
            tolerance = jnp.where(first, atol + rtol * residual, tolerance)
        result, done = status(carry.step, energy, residual, initial_energy, tolerance)
        # With a fixed trip count the loop runs on once done: freeze everything then, as
        # re-evaluating the force at the same state need not reproduce its status bit for bit.
        initial_energy, tolerance, energy, residual, result = jax.tree.map(
            lambda old, new: jnp.where(carry.done, old, new),
            (carry.initial_energy, carry.tolerance, carry.energy, carry.residual, carry.result),
            (initial_energy, tolerance, energy, residual, result),
        )
        done = carry.done | done
        trajectory = carry.trajectory
        if trajectory is not None:
            trajectory = trajectory.at[carry.step].set(energy)
        # The step is taken and then discarded once `done`: selecting with `where` (rather than
        # a `cond`) lets XLA update each node's state in place, which saves a copy of every
        # node per step in deep graphs.
        stepped = stepper.step(force_fn, force, carry.state, carry.stepper_state)
        state, stepper_state = jax.tree.map(
            lambda old, new: jnp.where(done, old, new), (carry.state, carry.stepper_state), stepped
        )
        step = carry.step + jnp.where(done, 0, 1).astype(carry.step.dtype)
        return _Carry(
            step, state, stepper_state, initial_energy, tolerance, energy, residual, result,
            done, trajectory,
        )  # fmt: skip

    # Energies and residuals are carried in the state's floating dtype, at least float32
    # (so that a bfloat16 relaxation still reports its energy precisely).
    leaves = jax.tree.leaves(state)
    dtype = jnp.promote_types(jnp.result_type(*leaves) if leaves else jnp.float32, jnp.float32)
    zero = jnp.zeros((), dtype)
    nan = jnp.full((), jnp.nan, dtype)
    trajectory = jnp.full((max_steps + 1,), jnp.nan, dtype) if save_energy else None
    carry = _Carry(
        step=jnp.zeros((), jnp.int32),
        state=state,
        stepper_state=stepper.init(state, force_fn),
        initial_energy=zero,
        tolerance=zero,
        energy=zero,
        residual=zero if rtol is not None else nan,
        result=RESULTS.successful,
        done=jnp.zeros((), bool),
        trajectory=trajectory,
    )
    if rtol is None:
        # `max_steps` steps and a last evaluation. A static trip count lowers to a scan, which
        # reverse-mode autodiff can differentiate.
        carry = lax.fori_loop(0, max_steps + 1, lambda _, c: body(c), carry)
    else:
        # The number of steps depends on the values. A checkpointed loop would differentiate
        # in reverse mode but not in forward mode, so reverse mode gets an error that says
        # what to do instead of JAX's.
        carry = lax.while_loop(lambda c: ~c.done, body, carry)
        carry = eqxi.nondifferentiable_backward(carry, msg=_TOLERANCE_NOT_REVERSE_DIFFERENTIABLE)
    stats = RelaxationStats(
        num_steps=carry.step,
        initial_energy=carry.initial_energy,
        energy=carry.energy,
        residual=carry.residual,
        result=carry.result,
        energy_trajectory=carry.trajectory,
    )
    return carry.state, stats
