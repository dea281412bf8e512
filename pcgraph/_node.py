import jax
import jax.numpy as jnp

from ._jax_adapter import node_p
from ._node_energy import AbstractNodeEnergy, Gaussian, _is_number


def _check_precision(precision, shape, where: str):
    """Refuse a precision that cannot be a node's: a wrong shape now, a non-positive or
    non-finite value when it is known (a computed one is checked at the feedforward pass)."""
    if _is_number(precision):
        return  # checked by Gaussian itself
    try:
        array = None if isinstance(precision, bool) else jnp.asarray(precision)
    except TypeError:  # a string, an object
        array = None
    if array is None:
        raise TypeError(
            f"{where}: the precision must be a number or an array, not {type(precision).__name__}."
        )
    precision = array
    if not jnp.issubdtype(precision.dtype, jnp.floating):
        raise TypeError(
            f"{where}: the precision has dtype {precision.dtype}; give a floating array, e.g. "
            "`jnp.full(shape, 2.0)`."
        )
    try:
        broadcast = jnp.broadcast_shapes(precision.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(
            f"{where}: a precision of shape {precision.shape} does not broadcast to the node's "
            f"shape {tuple(shape)}. Give one precision per unit (e.g. shape {tuple(shape)[-1:]}) "
            "or a scalar."
        )
    if not isinstance(precision, jax.core.Tracer) and not bool(
        jnp.all(jnp.isfinite(precision) & (precision > 0))
    ):
        raise ValueError(
            f"{where}: every precision must be positive and finite, but it holds "
            f"{float(jnp.min(precision))!r} at its smallest. Keep a learnable precision "
            "positive as `jnp.exp(log_precision)` or `jax.nn.softplus(raw)`."
        )


def _mark(leaf, name, energy: AbstractNodeEnergy):
    if isinstance(energy, Gaussian) and not _is_number(energy.precision):
        _check_precision(energy.precision, jnp.shape(leaf), f"pcgraph.node(name={name!r})")
        operand = jnp.asarray(energy.precision, jnp.result_type(leaf))
        return node_p.bind(leaf, operand, name=name, energy=Gaussian())
    return node_p.bind(leaf, name=name, energy=energy)


def node(
    x,
    name: str | None = None,
    *,
    precision: float | None = None,
    energy: AbstractNodeEnergy | None = None,
):
    """Mark `x` as a value node of the predictive-coding graph.

    When the function is traced by pcgraph, the marked values become the graph's value nodes
    and all computation between two marks is folded into one local prediction; `x` is the
    node's prediction. In plain JAX (`jax.jit`, `jax.grad`, `jax.vmap`, ...) this returns the
    node's expected value given `x`: `x` itself for a Gaussian node (the default), so a mark
    changes nothing, and `sigmoid(x)` or `softmax(x)` for a Bernoulli or categorical node,
    whose prediction is logits.

    **Arguments:**

    - `x`: an array, or a pytree of arrays (each leaf becomes its own node).
    - `name`: a label shown by `Graph.summary()` and used as the key of `Solution.errors`.
        Repeated names get a numeric suffix.
    - `precision`: shorthand for `energy=pcgraph.Gaussian(precision)`: a positive number, an
        array of them (one per unit) or one computed from the differentiated arguments.
    - `energy`: the node's term in the energy: [`pcgraph.Gaussian`][] (the default, precision
        1), [`pcgraph.Bernoulli`][] or [`pcgraph.Categorical`][]. A Gaussian precision may be
        an array (one per unit) or computed from the differentiated arguments (learned).

    **Returns:**

    The node's value: `x` for a Gaussian node, its mean for the others.

    !!! example

        ```python
        def loss(params, x, y):
            h = pcgraph.node(jnp.tanh(x @ params["w1"]), name="hidden")
            return jnp.mean((h @ params["w2"] - y) ** 2)
        ```
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"pcgraph.node(name={name!r}): `name` must be a string or None.")
    if precision is not None and energy is not None:
        raise TypeError(
            "pcgraph.node(precision=..., energy=...): give one. `precision=p` is shorthand for "
            "`energy=pcgraph.Gaussian(precision=p)`."
        )
    if energy is None:
        # A number, an array (one per unit) or a computed (learned) precision, as for
        # `pcgraph.Gaussian`; refused there, or by `_check_precision`, with the value's shape.
        energy = Gaussian(1.0 if precision is None else precision)
    if not isinstance(energy, AbstractNodeEnergy):
        hint = (
            f"pass an instance, e.g. `energy=pcgraph.{energy.__name__}()`"
            if isinstance(energy, type)
            else "pass pcgraph.Gaussian(), pcgraph.Bernoulli() or pcgraph.Categorical()"
        )
        raise TypeError(f"pcgraph.node(energy={energy!r}): {hint}.")
    if isinstance(energy, Gaussian) and _is_number(energy.precision):
        energy = Gaussian(float(energy.precision))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(x)
    if len(leaves) == 1 and not leaves[0][0]:
        return _mark(x, name, energy)
    marked = [
        _mark(leaf, None if name is None else f"{name}{jax.tree_util.keystr(path)}", energy)
        for path, leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, marked)
