import math

import jax

from ._jax_adapter import node_p


def node(x, name: str | None = None, *, precision: float = 1.0):
    """Mark `x` as a value node of the predictive-coding graph.

    In plain JAX (`jax.jit`, `jax.grad`, `jax.vmap`, ...) this is the identity. When the
    function is traced by pcgraph, the marked values become the graph's value nodes and all
    computation between two marks is folded into one local prediction. Without any mark, every
    primitive result that depends on a differentiated input is a node.

    **Arguments:**

    - `x`: an array, or a pytree of arrays (each leaf becomes its own node).
    - `name`: a label shown by `Graph.summary()` and used as the key of `Solution.errors`.
        Repeated names get a numeric suffix.
    - `precision`: the node's precision `p_i` (inverse variance) in the energy
        `sum_i p_i / 2 * ||v_i - mu_i||^2`; a positive Python number.

    **Returns:**

    `x`, unchanged.

    !!! example

        ```python
        def loss(params, x, y):
            h = pcgraph.node(jnp.tanh(x @ params["w1"]), name="hidden")
            return jnp.mean((h @ params["w2"] - y) ** 2)
        ```
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"pcgraph.node(name={name!r}): `name` must be a string or None.")
    if (
        isinstance(precision, bool)
        or not isinstance(precision, int | float)
        or not math.isfinite(precision)
        or precision <= 0
    ):
        raise ValueError(
            f"pcgraph.node(precision={precision!r}): the precision must be a positive, finite "
            "Python number, e.g. `precision=2.0`."
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(x)
    if len(leaves) == 1 and not leaves[0][0]:
        return node_p.bind(x, name=name, precision=float(precision))
    marked = [
        node_p.bind(
            leaf,
            name=None if name is None else f"{name}{jax.tree_util.keystr(path)}",
            precision=float(precision),
        )
        for path, leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, marked)
