"""A graph cut into levels by the step at which each node's error becomes final.

Node `i`'s error is final after `final_step_i` steps (its longest path of nodes to the loss);
the loss is level 0. Every parent of a level-`t` node is on a level above `t`, so the levels
can be processed from the loss outwards, each node's local VJP evaluated once, when its error
is final: backprop's schedule over the value nodes (the wavefront schedule). Z-IL's relaxation
uses the same cut to read each parent at the delay that makes every path to the loss equally
long.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _jax_adapter as adapter
from ._graph import Graph
from ._node_energy import precision_value


class Level(NamedTuple):
    """The nodes whose errors are final after `step` steps (the loss alone for step 0), and
    the part of the prediction pass that computes their predictions from their inputs."""

    step: int
    nodes: tuple[int, ...]
    parents: tuple[int, ...]
    params: tuple[int, ...]
    eqns: tuple[Any, ...]


def levels(graph: Graph) -> list[Level]:
    """`levels(graph)[t]` is the level of step `t`, for `t = 0 .. graph.depth`."""
    if any(info.iterations is not None for info in graph.nodes):
        raise ValueError(
            "This graph lifts a lax.scan into stacked nodes, whose slices sit on different "
            "levels; the level-by-level schedules (pcgraph.ZIL, FPA(schedule=pcgraph.Wavefront())) "
            "need each scan as one node. Trace it with "
            "`pcgraph.trace(fn, *args, lift_scans=False)`."
        )
    node_ids = set(graph._node_ids)
    param_index = {var: k for k, var in enumerate(graph._param_ids)}
    out = []
    for step in range(graph.depth + 1):
        if step == 0:
            nodes, targets = (), {graph._loss_id}
        else:
            nodes = tuple(k for k, info in enumerate(graph.nodes) if info.final_step == step)
            targets = {graph._node_ids[k] for k in nodes}
        needed, eqns = set(targets), []
        for eqn in reversed(graph._pass_eqns):
            if needed.intersection(eqn.outputs):
                eqns.append(eqn)
                # Node values are cut points: a level reads its parents, never recomputes them.
                needed.update(i for i in eqn.inputs if i not in node_ids)
        produced = {o for eqn in eqns for o in eqn.outputs}
        inputs = {i for eqn in eqns for i in eqn.inputs} | (targets - produced)
        parents = tuple(sorted(graph._node_index[i] for i in inputs & node_ids))
        params = tuple(sorted(param_index[i] for i in inputs if i in param_index))
        out.append(Level(step, nodes, parents, params, tuple(eqns[::-1])))
    return out


def delays(graph: Graph, cut: list[Level] | None = None) -> list[int]:
    """How many identity nodes Z-IL inserts after each node to equalise its paths: node `i`
    is read by a consumer on level `t` through `final_step_i - t - 1` delays, so it needs as
    many as its closest consumer."""
    cut = levels(graph) if cut is None else cut
    closest = [info.final_step - 1 for info in graph.nodes]
    for level in cut:
        for k in level.parents:
            closest[k] = min(closest[k], level.step)
    return [info.final_step - 1 - c for info, c in zip(graph.nodes, closest, strict=True)]


def predict_level(
    graph: Graph,
    level: Level,
    parent_values: Sequence[jax.Array],
    level_params: Sequence[jax.Array],
    params: Sequence[jax.Array],
    data: Sequence[Any],
    frozen: Sequence[Any],
) -> list[jax.Array]:
    """The predictions of `level`'s nodes (or `[loss]` for level 0) from the values of its
    parents and its parameters (`params` supplies the rest, unused by the level)."""
    env = dict(zip(graph._param_ids, params, strict=True))
    env.update(zip(graph._data_ids, data, strict=True))
    env.update(zip(graph._frozen_ids, frozen, strict=True))
    env.update((graph._param_ids[k], p) for k, p in zip(level.params, level_params, strict=True))
    env.update((graph._node_ids[k], v) for k, v in zip(level.parents, parent_values, strict=True))
    targets = {graph._node_ids[k] for k in level.nodes}
    for eqn in level.eqns:
        invals = [graph._read(env, i) for i in eqn.inputs]
        outs = adapter.bind_for_relaxation(eqn.primitive, eqn.params, invals)
        # A node output is a prediction, never an input: the level reads node values.
        env.update(
            (var, value)
            for var, value in zip(eqn.outputs, outs, strict=True)
            if var not in graph._node_index or var in targets
        )
    if level.step == 0:
        return [graph._read(env, graph._loss_id)]
    return [env[graph._node_ids[k]] for k in level.nodes]


class Front(NamedTuple):
    grads: list[jax.Array]
    errors: list[jax.Array]


def wavefront(graph: Graph, params, data, feedforward) -> Front:
    """Backprop's schedule over the value nodes: from the loss outwards, each level's local
    VJP is evaluated once at the feedforward values with its nodes' final `-p_i eps_i`, and
    the result is added to its parents' pulled-back errors and to its parameters' gradients.
    The errors are FPA's equilibrium (`eps_i = -b_i / p_i`, `b_i` the pulled-back sum),
    reached after `graph.depth` levels, with no relaxation step."""
    precisions = [
        precision_value(e, p) for e, p in zip(graph.energies, feedforward.precisions, strict=True)
    ]
    values = feedforward.values
    pulled: list[Any] = [None] * len(values)
    grads: list[Any] = [None] * len(params)
    for level in levels(graph):
        if level.step == 0:
            cotangents = [jnp.ones_like(feedforward.loss)]
        else:
            cotangents = [_zeros_if_none(pulled[k], values[k]) for k in level.nodes]

        def local(parent_values, level_params, level=level):
            return predict_level(
                graph, level, parent_values, level_params, params, data, feedforward.frozen
            )

        _, vjp_fn = jax.vjp(
            local, [values[k] for k in level.parents], [params[k] for k in level.params]
        )
        to_parents, to_params = vjp_fn(cotangents)
        for k, b in zip(level.parents, to_parents, strict=True):
            pulled[k] = b if pulled[k] is None else pulled[k] + b
        for k, g in zip(level.params, to_params, strict=True):
            grads[k] = g if grads[k] is None else grads[k] + g
    errors = [-_zeros_if_none(b, v) / p for b, v, p in zip(pulled, values, precisions, strict=True)]
    grads = [_zeros_if_none(g, p) for g, p in zip(grads, params, strict=True)]
    return Front(grads, errors)


def _zeros_if_none(x, like):
    return jnp.zeros_like(like) if x is None else x
