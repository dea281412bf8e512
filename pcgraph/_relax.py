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
        "layer; on such a deep per-primitive graph error optimisation (`pcgraph.EPC()`) also "
        "avoids the decay of the loss's signal with depth."
    )
    energy_increased = (
        "The energy rose above `max_energy_increase` times its initial magnitude, so the "
        "relaxation is diverging. Lower the stepper's `step_size`; a graph with a node per "
        "primitive (`placement=pcgraph.Primitives()`) needs far smaller steps than the "
        "default one node per layer, and error optimisation (`pcgraph.EPC()`) avoids the "
        "decay of the loss's signal through such a deep graph."
    )
    outside_support = (
        "A Bernoulli or categorical node's value left [0, 1], where its energy is no longer a "
        "log-density. Lower the stepper's `step_size`, start the node inside [0, 1], or give "
        "the node a Gaussian energy (`pcgraph.node(x)`) and apply the squashing function "
        "after it."
    )


class SaveAt(eqx.Module):
    """What a relaxation records per node, and at which steps, in
    `Solution.stats.nodes` (a [`pcgraph.NodeTrajectory`][]).

    Each node's energy term is always recorded; its value and its error on request. Step `k`
    is the state after `k` steps (step 0 is the start).

    **Arguments:**

    - `steps`: the steps to record, a tuple of ints; None records every step from 0 to
        `max_steps`. A step the relaxation did not reach (it stopped on its tolerance)
        records NaN; a step beyond `max_steps` is refused.
    - `values`: also record each node's value.
    - `errors`: also record each node's prediction error.
    """

    steps: tuple[int, ...] | None = None
    values: bool = False
    errors: bool = False

    def __check_init__(self):
        if self.steps is not None and not (
            isinstance(self.steps, tuple)
            and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in self.steps)
        ):
            raise ValueError(
                f"SaveAt(steps={self.steps!r}): give a tuple of non-negative ints, e.g. "
                "`steps=(0, 10, 100)`, or None for every step."
            )

    def resolve(self, max_steps: int) -> tuple[int, ...]:
        if self.steps is None:
            return tuple(range(max_steps + 1))
        beyond = [k for k in self.steps if k > max_steps]
        if beyond:
            raise ValueError(
                f"SaveAt(steps={self.steps!r}) asks for step {beyond[0]}, beyond the "
                f"relaxation's max_steps={max_steps}, which it never reaches. Drop it, or "
                f"raise the algorithm's `max_steps` to at least {max(beyond)}."
            )
        return self.steps


class NodeTrajectory(eqx.Module):
    """Per-node quantities recorded during a relaxation (see [`pcgraph.SaveAt`][]).

    **Attributes:**

    - `steps`: the recorded steps, shape `(S,)`.
    - `energies`: each node's energy term at those steps, `{name: array of shape (S,)}`.
    - `values`, `errors`: with `SaveAt(values=True)` / `SaveAt(errors=True)`, each node's
        value / error at those steps, `{name: array of shape (S, *node shape)}`; else None.
    """

    steps: jax.Array
    energies: dict[str, jax.Array]
    values: dict[str, jax.Array] | None = None
    errors: dict[str, jax.Array] | None = None


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
    - `nodes`: with `saveat=pcgraph.SaveAt(...)`, the per-node trajectories
        ([`pcgraph.NodeTrajectory`][]); otherwise None.
    - `num_nodes`: how many value nodes the graph has (0: nothing was relaxed, and the
        gradient is backprop's); None where no graph was traced.

    Only what was measured is reported: the wavefront schedule (`pcgraph.ZIL()`,
    `FPA(schedule=pcgraph.Wavefront())`) takes no relaxation steps, so it reports `num_steps`
    0, a NaN residual and no trajectory.
    """

    num_steps: jax.Array
    initial_energy: jax.Array
    energy: jax.Array
    residual: jax.Array
    result: RESULTS
    energy_trajectory: jax.Array | None = None
    nodes: NodeTrajectory | None = None
    num_nodes: int | None = eqx.field(default=None, static=True)

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
        elif self.result == RESULTS.outside_support:
            what = f"a node's value left its support at step {steps}"
        elif self.result == RESULTS.nonfinite and not abs(start) < float("inf"):
            return (
                f"Relaxation failed: the energy is {start} before the first step, although the "
                "loss is finite: a node holds NaN or Inf entries that the loss never reads (a "
                "buffer a loop fills with inf as 'not written yet', masked entries), and its "
                "energy term cannot. No step size helps. Put the nodes elsewhere "
                "(placement=pcgraph.Marks() with `pcgraph.node` marks), or use pcgraph.FPA() / "
                "pcgraph.ZIL(), which never evaluate that energy."
            )
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
    recorded: PyTree
    #: How many steps in a row have changed the energy by at most `settle` of its change so far.
    calm: jax.Array


#: How many steps in a row must each change the energy by at most `settle` of its change so
#: far: one calm step can be a heavy-ball relaxation turning round.
_CALM_STEPS = 3

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
    in_support: Callable[[PyTree], jax.Array] | None = None,
    record: Callable[[PyTree], PyTree] | None = None,
    saveat: SaveAt | None = None,
    hold: Callable[[PyTree, PyTree], PyTree] | None = None,
    settle: float | None = None,
    min_steps: int = 0,
) -> tuple[PyTree, RelaxationStats]:
    """Step `state` along `force_fn(state) = (energy, -dF/dstate)` in one compiled loop.

    Stops after `max_steps` steps, or once the largest force is at most
    `atol + rtol * (largest initial force)` when `rtol` is not None, or on divergence, or
    when `in_support(state)` turns False. A fixed number of steps (`rtol=None`) with nothing
    recorded and no support to check runs a loop of force evaluations and steps only, and
    checks the energy before and after it (`_relax_fixed`). With `rtol=None` the loop has a
    fixed trip count, so the result can be differentiated in reverse mode (`jax.grad` of a
    function that calls `pcgraph.grad`); forward mode works either way. With `saveat`,
    `record(state)` is stored at its steps. `hold(old, new)` restores what a step must not
    move (observed entries).

    With `settle` (and no `rtol`), the relaxation also stops once it has settled: once each of
    `_CALM_STEPS` steps in a row changed the energy by at most `settle` times its change since
    the start, and at least `min_steps` steps were taken (the number an error needs to reach
    every node). Unlike a force tolerance this is met where the energy has kinks (ReLU,
    max-pooling), around which the values keep moving in a narrow band; missing it is no
    failure (the relaxation then takes `max_steps` steps). The loop keeps its fixed trip count
    and skips the steps after it settles, so reverse mode still differentiates it.

    A stepper that samples ([`pcgraph.Langevin`][]) takes exactly `max_steps` steps, and its
    energy is checked for NaN/Inf only.
    """
    if stepper.samples:
        if rtol is not None:
            raise ValueError(
                f"{type(stepper).__name__} samples: its relaxation has no fixed point to stop "
                f"at, but the algorithm has rtol={rtol!r}. Set `rtol=None`; it then takes "
                "exactly `max_steps` steps."
            )
        max_energy_increase = None
    if stepper.samples or rtol is not None:
        # A sampler has no fixed point to settle at; a force tolerance says when to stop.
        settle = None
    steps = None if saveat is None else saveat.resolve(max_steps)

    def status(step, energy, residual, initial_energy, tolerance, state, settled=False):
        """The result and whether to stop, after `step` steps."""
        # The energy sums every node's squared error, so it is the one value to check.
        result = RESULTS.where(jnp.isfinite(energy), RESULTS.successful, RESULTS.nonfinite)
        if in_support is not None:
            result = RESULTS.where(
                (result == RESULTS.successful) & ~in_support(state),
                RESULTS.outside_support,
                result,
            )
        if max_energy_increase is not None:
            rose = energy - initial_energy > max_energy_increase * jnp.abs(initial_energy)
            result = RESULTS.where(
                (result == RESULTS.successful) & rose, RESULTS.energy_increased, result
            )
        failed = result != RESULTS.successful
        converged = settled if rtol is None else residual <= tolerance
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
        calm, settled = carry.calm, False
        if settle is not None:
            change = jnp.abs(energy - carry.energy)
            calm = jnp.where(
                ~first & (change <= settle * jnp.abs(initial_energy - energy)), calm + 1, 0
            )
            settled = (calm >= _CALM_STEPS) & (carry.step >= min_steps)
        result, done = status(
            carry.step, energy, residual, initial_energy, tolerance, carry.state, settled
        )
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
        recorded = carry.recorded
        if steps is not None:
            recorded = _record(recorded, steps, carry.step, lambda: record(carry.state))
        # The step is taken and then discarded once `done`: selecting with `where` (rather than
        # a `cond`) lets XLA update each node's state in place, which saves a copy of every
        # node per step in deep graphs.
        stepped = stepper.step(force_fn, force, carry.state, carry.stepper_state)
        if hold is not None:
            stepped = (hold(carry.state, stepped[0]), stepped[1])
        state, stepper_state = jax.tree.map(
            lambda old, new: jnp.where(done, old, new), (carry.state, carry.stepper_state), stepped
        )
        step = carry.step + jnp.where(done, 0, 1).astype(carry.step.dtype)
        return _Carry(
            step, state, stepper_state, initial_energy, tolerance, energy, residual, result,
            done, trajectory, recorded, calm,
        )  # fmt: skip

    # Energies and residuals are carried in the state's floating dtype, at least float32
    # (so that a bfloat16 relaxation still reports its energy precisely).
    leaves = jax.tree.leaves(state)
    dtype = jnp.promote_types(jnp.result_type(*leaves) if leaves else jnp.float32, jnp.float32)
    zero = jnp.zeros((), dtype)
    nan = jnp.full((), jnp.nan, dtype)
    trajectory = jnp.full((max_steps + 1,), jnp.nan, dtype) if save_energy else None
    if rtol is None and not save_energy and steps is None and in_support is None:
        if settle is None:
            return _relax_fixed(force_fn, state, stepper, max_steps, hold, status, dtype)
        return _relax_settling(
            force_fn, state, stepper, max_steps, hold, status, dtype, settle, min_steps
        )
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
        recorded=None
        if steps is None
        else jax.tree.map(
            lambda x: jnp.full((len(steps), *x.shape), jnp.nan, x.dtype),
            jax.eval_shape(record, state),
        ),
        calm=jnp.zeros((), jnp.int32),
    )
    if rtol is None:
        # `max_steps` steps and a last evaluation. A static trip count lowers to a scan, which
        # reverse-mode autodiff can differentiate.
        if settle is None:
            carry = lax.fori_loop(0, max_steps + 1, lambda _, c: body(c), carry)
        else:
            # Once settled, the remaining iterations skip the step's work.
            carry = lax.fori_loop(
                0, max_steps + 1, lambda _, c: lax.cond(c.done, lambda c: c, body, c), carry
            )
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
        nodes=None
        if steps is None
        else NodeTrajectory(jnp.asarray(steps, jnp.int32), **carry.recorded),
    )
    return carry.state, stats


def _relax_fixed(force_fn, state, stepper, max_steps, hold, status, dtype):
    """Exactly `max_steps` steps with nothing recorded: the loop only evaluates the force and
    steps, and the energy is checked at the start and the end.

    Without the per-step energy, its reductions and the stopping logic, XLA drops the energy
    from the loop's force evaluations (`jax.value_and_grad`'s value goes unused), which saves
    a few small operations per node and step: much of a small network's step on a CPU. A
    failure is then found at the end (a diverging relaxation ends with a non-finite or grown
    energy), and the steps are all taken.
    """
    initial_energy, _ = force_fn(state)  # only the energy is used: XLA drops the force
    state, _ = _steps(force_fn, stepper, hold, max_steps, state, stepper.init(state, force_fn))
    energy, _ = force_fn(state)
    initial_energy, energy = initial_energy.astype(dtype), energy.astype(dtype)
    num_steps = jnp.asarray(max_steps, jnp.int32)
    nan = jnp.full((), jnp.nan, dtype)
    result, _ = status(num_steps, energy, nan, initial_energy, nan, state)
    return state, _unrecorded_stats(num_steps, initial_energy, energy, result)


def _unrecorded_stats(num_steps, initial_energy, energy, result) -> RelaxationStats:
    """The statistics of a relaxation that recorded nothing and computed no residual."""
    return RelaxationStats(
        num_steps=num_steps,
        initial_energy=initial_energy,
        energy=energy,
        residual=jnp.full((), jnp.nan, energy.dtype),
        result=result,
        energy_trajectory=None,
        nodes=None,
    )


def _steps(force_fn, stepper, hold, count: int, state, stepper_state):
    """`count` steps that only evaluate the force and step."""

    def body(_, carry):
        state, stepper_state = carry
        _, force = force_fn(state)
        stepped, stepper_state = stepper.step(force_fn, force, state, stepper_state)
        if hold is not None:
            stepped = hold(state, stepped)
        return stepped, stepper_state

    return lax.fori_loop(0, count, body, (state, stepper_state))


def _relax_settling(force_fn, state, stepper, max_steps, hold, status, dtype, settle, min_steps):
    """At most `max_steps` steps with nothing recorded, stopping once settled: the steps run in
    chunks of `_CALM_STEPS` that only evaluate the force and step (as `_relax_fixed`'s), and
    the energy is evaluated after each chunk. The relaxation has settled once a chunk changed
    the energy by at most `settle` times its change since the start per step, after at least
    `min_steps` steps. The chunks after that are skipped; their number is fixed, so reverse
    mode differentiates the loop."""
    initial_energy = force_fn(state)[0].astype(dtype)
    nan = jnp.full((), jnp.nan, dtype)

    def chunk(count):
        def run(carry):
            step, state, stepper_state, energy, result, done = carry
            state, stepper_state = _steps(force_fn, stepper, hold, count, state, stepper_state)
            new_energy = force_fn(state)[0].astype(dtype)
            step = step + count
            change = jnp.abs(new_energy - energy)
            settled = (change <= count * settle * jnp.abs(initial_energy - new_energy)) & (
                step >= min_steps
            )
            result, done = status(step, new_energy, nan, initial_energy, nan, state, settled)
            return step, state, stepper_state, new_energy, result, done

        return lambda carry: lax.cond(carry[-1], lambda c: c, run, carry)

    carry = (
        jnp.zeros((), jnp.int32),
        state,
        stepper.init(state, force_fn),
        initial_energy,
        RESULTS.successful,
        jnp.zeros((), bool),
    )
    carry = lax.fori_loop(0, max_steps // _CALM_STEPS, lambda _, c: chunk(_CALM_STEPS)(c), carry)
    if max_steps % _CALM_STEPS:
        carry = chunk(max_steps % _CALM_STEPS)(carry)
    num_steps, state, _, energy, result, _ = carry
    return state, _unrecorded_stats(num_steps, initial_energy, energy, result)


def _record(recorded: PyTree, steps: tuple[int, ...], step: jax.Array, record) -> PyTree:
    """`recorded` with `record()` stored at `step`'s row when `step` is one of `steps`;
    `record` is evaluated only then."""
    hits = jnp.asarray(steps) == step
    row = jnp.argmax(hits)
    return jax.lax.cond(
        jnp.any(hits),
        lambda: jax.tree.map(lambda r, x: r.at[row].set(x.astype(r.dtype)), recorded, record()),
        lambda: recorded,
    )
