"""Where a traced function's value nodes go: node placement as a configuration object.

Without `pcgraph.node` marks the graph is whatever pcgraph builds on its own, so that models a
user cannot edit (an `equinox.nn.MLP`, a flax module, a model zoo's code) still become the
standard layered predictive-coding network of Whittington & Bogacz (2017).
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx

from . import _jax_adapter as adapter


class AbstractPlacement(eqx.Module):
    """Where the value nodes of a traced function go. Hand one to [`pcgraph.trace`][],
    [`pcgraph.grad`][] and the other entry points as `placement=`; the default (None) is
    [`pcgraph.Marks`][] when the function holds a [`pcgraph.node`][] mark and
    [`pcgraph.Layers`][] otherwise."""

    #: The name `Graph.summary()` shows.
    name: eqx.AbstractClassVar[str]


class Marks(AbstractPlacement):
    """A node at each [`pcgraph.node`][] mark, and nowhere else: all computation between two
    marks folds into one local prediction. Scans lift into stacked nodes only where their body
    holds a mark."""

    name = "marks"


class Layers(AbstractPlacement):
    """One node per layer, found automatically; `pcgraph.node` marks are ignored.

    A layer starts at an operation that reads a differentiated parameter (a matmul, a
    convolution, an embedding lookup: any operation with an operand computed from the
    parameters alone, e.g. `W`, `W.T` or `a * W`) and extends through the elementwise
    operations that follow it (a bias add, an activation, a residual sum, the scale and shift
    of a normalisation), moves (reshape, transpose) and pooling, as long as each intermediate
    has no other reader. Pooling belongs to the layer before it, so that no prediction takes a
    maximum over free node values (the energy would have a kink wherever two of them tie, and
    the relaxation would chatter there instead of converging). The layer's last value is a
    node when another layer reads it; the last layer, read only by the loss, folds into the
    loss. An MLP or CNN written in plain JAX, equinox or flax thus becomes the standard
    layered network: energy `sum_l 1/2 ||z_l - f_l(z_{l-1})||^2 + beta * loss(f_L(z_{L-1}), y)`,
    the same graph as marking each hidden activation by hand.

    Limits: an activation that reads its input more than once (`jax.nn.gelu`, `jax.nn.silu`)
    ends the layer before it (the node is the pre-activation); a reduction ends a layer, so a
    normalisation that computes statistics (LayerNorm, RMSNorm) adds the node before it;
    attention's queries, keys and values are nodes, while the attention itself folds into the
    output projection's prediction; a residual sum joins the branch's layer, so a residual
    block is one node. Complex-valued intermediates are never nodes (they fold into the next
    real node's prediction).
    """

    name = "layers"


class Primitives(AbstractPlacement):
    """A node at every primitive result on the path from the parameters to the loss; moves
    and relabellings (reshape, transpose, broadcast, dtype conversion) fold into their reader,
    and `pcgraph.node` marks are ignored. The finest graph, and the stiffest to relax: IL
    needs small steps on it."""

    name = "primitives"


def check_placement(placement) -> AbstractPlacement | None:
    if placement is None or isinstance(placement, AbstractPlacement):
        return placement
    if isinstance(placement, type) and issubclass(placement, AbstractPlacement):
        raise TypeError(
            f"placement={placement.__name__} is a class; pass an instance, e.g. "
            f"`placement=pcgraph.{placement.__name__}()`."
        )
    raise TypeError(
        f"placement={placement!r} is not a node placement; pass pcgraph.Layers(), "
        "pcgraph.Marks() or pcgraph.Primitives() (or None for marks when there are any, "
        "layers otherwise)."
    )


def layer_nodes(
    eqns: Sequence[Any],
    *,
    is_lifted_scan: Callable[[Any], bool],
    param_ids: Sequence[int],
    relevant: set[int],
    scalars: set[int],
    is_real: Callable[[int], bool],
    loss_id: int,
) -> dict[int, str]:
    """The variables that [`Layers`][pcgraph.Layers] makes nodes, each with its label
    (`first primitive..last primitive` of its layer).

    `eqns` is the prediction pass in order; `scalars` the constants and literals of size one,
    which a parameter may be combined with and still count as a parameter (`a * W`)."""
    weights = set(param_ids)
    readers: dict[int, int] = {}
    for eqn in eqns:
        for var in eqn.inputs:
            readers[var] = readers.get(var, 0) + 1
    # open_layers[var]: the first primitive of the layer whose running value is `var`.
    open_layers: dict[int, str] = {}
    ends: dict[int, str] = {}
    layer_eqns: set[int] = set()
    for position, eqn in enumerate(eqns):
        if is_lifted_scan(eqn):
            # A lifted scan's outputs are nodes of their own; it ends the layers it reads.
            for var in eqn.inputs:
                if var in open_layers:
                    ends[var] = open_layers.pop(var)
            layer_eqns.add(position)
            continue
        operands = list(dict.fromkeys(eqn.inputs))  # `v + v` reads `v` once
        from_weights = all(i in weights or i in scalars for i in operands)
        if from_weights and any(i in relevant for i in operands):
            weights.update(eqn.outputs)  # computed from the parameters alone: still a weight
            continue
        name = adapter.primitive_name(eqn.primitive)
        reads_weight = any(i in weights for i in operands)
        extended = [i for i in operands if i in open_layers and readers[i] == 1]
        closes = [i for i in operands if i in open_layers and i not in extended]
        # A move or relabelling (the transpose `vmap` puts after a matmul) and pooling continue
        # a layer.
        elementwise = adapter.is_elementwise(eqn.primitive, eqn.params) or (
            eqn.primitive in adapter.STRUCTURAL | adapter.POOLING
        )
        if elementwise and extended and len(eqn.outputs) == 1:
            first = open_layers.pop(extended[0])
            for var in extended[1:]:
                open_layers.pop(var)
            open_layers[eqn.outputs[0]] = first
            layer_eqns.add(position)
        else:
            closes += extended
            if reads_weight:
                # Each output of an operation reading a weight starts a layer (an opaque
                # `lax.scan` or `cond` has several).
                open_layers.update((out, name) for out in eqn.outputs)
                layer_eqns.add(position)
        for var in closes:
            ends[var] = open_layers.pop(var)
    ends.update(open_layers)

    # A layer's last value is a node when some later layer reads it (through any operations);
    # the layers that only the loss reads fold into it.
    reaches_layer: set[int] = set()
    for position in range(len(eqns) - 1, -1, -1):
        eqn = eqns[position]
        if position in layer_eqns or reaches_layer.intersection(eqn.outputs):
            reaches_layer.update(eqn.inputs)
    producers = {var: eqn for eqn in eqns for var in eqn.outputs}
    return {
        var: first
        if first == adapter.primitive_name(producers[var].primitive)
        else f"{first}..{adapter.primitive_name(producers[var].primitive)}"
        for var, first in ends.items()
        if var in reaches_layer and var in relevant and var != loss_id and is_real(var)
    }
