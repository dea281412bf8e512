"""Zero-divergence inference learning (Song et al. 2020; Salvatori et al. 2022): exact backprop
by predictive coding, on the wavefront or as a timed relaxation."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _energy, _node_energy
from .._schedule import delays, levels, predict_level
from ._base import AbstractAlgorithm, Equilibrium, check_positive, fixed_steps_stats
from ._schedules import AbstractSchedule, Wavefront, check_schedule, wavefront_equilibrium


class AbstractInit(eqx.Module):
    """Where Z-IL's relaxation starts: [`pcgraph.FeedforwardInit`][] or
    [`pcgraph.RandomInit`][]."""


class FeedforwardInit(AbstractInit):
    """Start every node at its feedforward value (Song et al. 2020's first condition)."""


class RandomInit(AbstractInit):
    """Start every node (and delay) at standard normal noise, an ablation of Song et al.
    2020's first condition.

    **Arguments:**

    - `seed`: the seed of the noise.
    """

    seed: int = 0


class ZIL(AbstractAlgorithm):
    """Zero-divergence inference learning (Song et al. 2020): predictive coding that
    reproduces backprop's update exactly.

    Song et al.'s three conditions: the values start at the feedforward pass, the relaxation
    takes Euler steps of size 1, and the parameters of a node read its error only at the step
    equal to the node's distance from the loss. On a layered network the error at distance `t`
    is then exactly backprop's at step `t`, before anything it depends on has moved.

    On a graph whose paths to the loss have unequal lengths (skip connections, branches) errors
    do not arrive in lock-step, so pcgraph equalises the paths as Salvatori et al. (2022) do:
    node `i` is timed by its *longest* path to the loss (`NodeInfo.final_step`), and a consumer
    `c` that is closer to the loss than `final_step_i - 1` reads `i` through a chain of
    `final_step_i - final_step_c - 1` identity nodes (delays, each with `i`'s precision). The
    equalised graph is layered, and Z-IL on it is exact on any DAG. Steps are preconditioned by
    the node precisions (a step of `step_size / p_i` on node `i`), which makes the result
    exact for any precisions.

    In the relaxation a node's value matters to the reads only until its own read, and to
    its consumers only until theirs. So once read a node stops moving and its consumers keep
    the value they read, and from the feedforward init a node starts moving only when the
    error wavefront reaches it (until then its force is zero but for round-off). No read
    changes, and no node relaxes on past its read, where steps of 1 diverge wherever the
    energy's curvature exceeds 2, as at a node summed into many elements, common in graphs
    without marks. The relaxation holds values and reads each error as a value minus its
    prediction, which keeps only the value's precision, so it refuses float16 and bfloat16.

    **Arguments:**

    - `schedule`: [`pcgraph.Wavefront`][]`()` (the default) is backprop's schedule over the
        value nodes: each node's local VJP evaluated once, when its error is final (as
        `pcgraph.FPA(schedule=pcgraph.Wavefront())`), which computes Z-IL's update without
        relaxing. [`pcgraph.Relaxation`][]`()` runs Z-IL itself: IL relaxation on the
        equalised graph with every prediction re-evaluated at every step, and the timed
        parameter reads.
    - `step_size`, `timed_updates`, `init`, `max_steps`: only with
        `schedule=pcgraph.Relaxation()`, to break Song et al.'s conditions for ablations:
        `step_size` other than 1; `timed_updates=False` reads every parameter at the last
        step (and no node stops before it); `init=pcgraph.RandomInit(seed)` starts the values
        (and delays) at standard normal noise; `max_steps` (default `graph.depth`) stops
        early or runs on.
    - `throw`: raise if the energy becomes NaN/Inf.

    `Solution.stats` of the relaxation hold its steps and its energies (with
    `save_energy=True`, before each step and after the last), and a NaN residual: it stops on
    no tolerance. The wavefront takes no step and reports as
    `FPA(schedule=pcgraph.Wavefront())` does: `num_steps` 0, `residual` NaN,
    `energy_trajectory` None, `initial_energy` the loss and `energy`
    `loss + sum_i p_i/2 ||eps_i||^2` at the final errors. Under Song et al.'s
    conditions both schedules end with `Solution.errors` the errors the parameters read.
    """

    schedule: AbstractSchedule = Wavefront()
    step_size: float = 1.0
    timed_updates: bool = True
    init: AbstractInit = FeedforwardInit()
    max_steps: int | None = None
    throw: bool = True

    def __check_init__(self):
        check_schedule("ZIL", self.schedule)
        check_positive("ZIL(step_size)", self.step_size)
        if not isinstance(self.init, AbstractInit):
            hint = (
                "pcgraph.RandomInit(seed=0)"
                if self.init == "random"
                else ("pcgraph.FeedforwardInit() or pcgraph.RandomInit(seed=0)")
            )
            raise TypeError(f"ZIL(init={self.init!r}): pass {hint}.")
        if self.max_steps is not None and not (
            isinstance(self.max_steps, int) and self.max_steps >= 0
        ):
            raise ValueError(f"ZIL(max_steps={self.max_steps!r}): a non-negative int or None.")
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name, default in [
                ("step_size", 1.0),
                ("timed_updates", True),
                ("init", FeedforwardInit()),
                ("max_steps", None),
            ]
            if getattr(self, name) != default
        ]
        if isinstance(self.schedule, Wavefront) and changed:
            raise ValueError(
                f"ZIL({', '.join(changed)}) changes Z-IL's relaxation, but the default "
                "schedule=pcgraph.Wavefront() does not relax step by step (it is exact by "
                "construction). Pass "
                f"ZIL(schedule=pcgraph.Relaxation(), {', '.join(changed)})."
            )

    @property
    def lifts_scans(self) -> bool:
        return False

    def solve(self, graph, params, data, feedforward, start, options):
        if isinstance(self.schedule, Wavefront):
            return wavefront_equilibrium(graph, params, data, feedforward)
        if options.saveat is not None:
            raise ValueError(
                "ZIL(schedule=pcgraph.Relaxation()) holds delayed copies of the nodes and records "
                "no per-node trajectory; drop `saveat`, or record one with pcgraph.IL() or "
                "pcgraph.FPA()."
            )
        return _zil_relaxation(self, graph, params, data, feedforward, options.save_energy)


def _zil_relaxation(zil: ZIL, graph, params, data, feedforward, save_energy) -> Equilibrium:
    coarse = {info.dtype for info in graph.nodes if jnp.finfo(info.dtype).bits < 32}
    if coarse:
        dtype = max(coarse, key=lambda d: jnp.finfo(d).eps)
        raise ValueError(
            f"ZIL(schedule=pcgraph.Relaxation()) cannot relax {dtype} node values: it holds each "
            "node's value and reads the node's error as that value minus its prediction, so "
            f"an error under {float(jnp.finfo(dtype).eps):.0e} times its value is rounded "
            "away and the gradients are off by percents. Use pcgraph.ZIL() (the wavefront "
            "schedule) or pcgraph.FPA(), which hold the errors themselves, or relax in "
            "float32 or float64."
        )
    cut = levels(graph)
    final = [info.final_step for info in graph.nodes]
    precisions = [
        _node_energy.precision_value(e, p)
        for e, p in zip(graph.energies, feedforward.precisions, strict=True)
    ]
    # state[k] = [v_k, delay_1, ..., delay_K]: a consumer on level t reads delay
    # final_k - t - 1, so every path to the loss has one node per level.
    num_delays = delays(graph, cut)
    state = [[v] * (n + 1) for v, n in zip(feedforward.values, num_delays, strict=True)]
    if isinstance(zil.init, RandomInit):
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(zil.init.seed), len(leaves))
        state = jax.tree.unflatten(
            treedef, [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
        )
    num_steps = graph.depth if zil.max_steps is None else zil.max_steps
    # Entry d of node k is on level l = final_k - d; its parameters read it at step l and its
    # consumers at step l - 1 (untimed: all at the last step). Its error at step l depends on
    # values up to step l only, so an entry stops once read (`state`) and its consumers keep
    # the value they read (`seen`): no read changes, and no read entry relaxes on, which
    # with steps of 1 diverges wherever the energy's curvature exceeds 2 (a node summed into
    # many elements), or has its prediction evaluated at parents moved out of its domain (a
    # negative variance under a square root). From the feedforward init an entry's force is
    # zero in exact arithmetic until the wavefront arrives at step l - 1; before, it is
    # round-off, which steps of 1 amplify in the same places, so the entry waits.
    on_level = [list(range(f, f - n - 1, -1)) for f, n in zip(final, num_delays, strict=True)]
    first = jax.tree.map(lambda t: t - 1 if isinstance(zil.init, FeedforwardInit) else 0, on_level)

    def last(lag):
        return jax.tree.map(lambda t: t - lag if zil.timed_updates else num_steps, on_level)

    def predictions(seen, params):
        mus = [[None] + entries[:-1] for entries in seen]
        loss = None
        for level in cut:
            outs = predict_level(
                graph,
                level,
                [seen[k][final[k] - level.step - 1] for k in level.parents],
                [params[k] for k in level.params],
                params,
                data,
                feedforward.frozen,
            )
            if level.step == 0:
                (loss,) = outs
            else:
                for k, mu in zip(level.nodes, outs, strict=True):
                    mus[k][0] = mu
        return mus, loss

    def evaluate(state, seen, step):
        """Energy, force and the parameter gradients read at `step`."""
        (mus, loss), vjp_fn = jax.vjp(predictions, seen, params)
        errors = jax.tree.map(jnp.subtract, state, mus)
        weighted = [[p * e for e in entries] for p, entries in zip(precisions, errors, strict=True)]
        energy = loss + _energy.total(
            [
                _node_energy.error_energy(graph.energies[k], e, feedforward.precisions[k])
                for k, entries in enumerate(errors)
                for e in entries
            ]
        )
        neg = jax.tree.map(jnp.negative, weighted)
        pulled, _ = vjp_fn((neg, jnp.ones_like(loss)))
        force = [
            [-(w + b) / p for w, b in zip(ws, bs, strict=True)]
            for p, ws, bs in zip(precisions, weighted, pulled, strict=True)
        ]
        read = (lambda f: f == step) if zil.timed_updates else (lambda f: step == num_steps)
        masked = [
            [jnp.where(read(f), entries[0], 0), *entries[1:]]
            for f, entries in zip(final, neg, strict=True)
        ]
        _, grads = vjp_fn((masked, jnp.where(read(0), 1, 0).astype(loss.dtype)))
        return energy, force, grads, errors

    def body(step, carry):
        state, seen, grads, energies = carry
        energy, force, step_grads, _ = evaluate(state, seen, step)

        def move(values, stop):
            def entry(v, f, a, b):
                if a >= b:
                    return v
                return jnp.where((a <= step) & (step < b), v + zil.step_size * f, v)

            return jax.tree.map(entry, values, force, first, stop)

        grads = jax.tree.map(jnp.add, grads, step_grads)
        return move(state, last(0)), move(seen, last(1)), grads, energies.at[step].set(energy)

    energies = jnp.zeros((num_steps + 1,), feedforward.loss.dtype)
    grads = [jnp.zeros_like(p) for p in params]
    carry = (state, state, grads, energies)
    state, seen, grads, energies = jax.lax.fori_loop(0, num_steps, body, carry)
    energy, _, step_grads, errors = evaluate(state, seen, num_steps)
    grads = jax.tree.map(jnp.add, grads, step_grads)
    energies = energies.at[num_steps].set(energy)
    # No tolerance to stop on, so the force is not reduced to a residual.
    stats = fixed_steps_stats(energies, jnp.full((), jnp.nan, energies.dtype), save_energy)
    values = [entries[0] for entries in state]
    return Equilibrium(grads, values, [entries[0] for entries in errors], stats)
