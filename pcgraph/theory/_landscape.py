"""The inference landscape: the Hessian of the PC energy with respect to the node values."""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._energy import GraphEnergy, State
from .._jit import filter_jit
from .._trace import trace_flat


class ActivityHessian(NamedTuple):
    """The Hessian of the PC energy with respect to the node values, and its spectrum.

    **Attributes:**

    - `matrix`: the `(n, n)` Hessian, `n` being the total size of all value nodes, in the
        order of `Graph.nodes` (each node flattened in row-major order).
    - `eigenvalues`: its eigenvalues, ascending.
    - `condition_number`: `max |lambda| / min |lambda|`; `inf` when the Hessian is singular.
    """

    matrix: jax.Array
    eigenvalues: jax.Array
    condition_number: jax.Array


def activity_hessian(
    fn: Callable,
    *args,
    argnums=0,
    has_aux: bool = False,
    beta: float = 1.0,
    values: dict[str, jax.Array] | None = None,
    max_size: int = 8192,
) -> ActivityHessian:
    """The Hessian of the predictive-coding energy of `fn` with respect to its node values.

    `fn` is traced as by [`pcgraph.trace`][], and the energy is the one [`pcgraph.IL`][]
    relaxes, `F(v) = sum_i p_i/2 ||v_i - mu_i(v)||^2 + beta * loss(v)`. Gradient descent on
    `F` (IL's relaxation with `pcgraph.Euler`) converges at a rate set by this Hessian: it is
    stable for step sizes below `2 / lambda_max`, and each step shrinks the slowest direction
    by `1 - step * lambda_min`, so about `condition_number` steps are needed per e-fold. This
    is the diagnostic of Innocenti et al. (2025): the condition number of
    standard-parameterised deep networks grows quickly with depth.

    For a layered linear network the Hessian is block tridiagonal: diagonal blocks
    `p_l I + p_{l+1} M_{l+1}^T M_{l+1}` and off-diagonal blocks `-p_{l+1} M_{l+1}` (with the
    layer maps `M_l` of [`pcgraph.theory.linear_equilibrium`][] and `p_L` the output weight).

    The matrix is dense, `n x n`, so pass a single example (batch size 1): the Hessian of a
    batch is block diagonal over its examples anyway.

    **Arguments:**

    - `fn`, `*args`, `argnums`, `has_aux`: as for [`pcgraph.grad`][].
    - `beta`: the output weight of the energy.
    - `values`: node values (a dict keyed by node name, such as `Solution.values` from
        [`pcgraph.relax`][]) at which to evaluate the Hessian; the feedforward pass when None.
    - `max_size`: refuse graphs with more than this many node values.

    **Returns:**

    An [`pcgraph.theory.ActivityHessian`][].
    """
    if isinstance(beta, bool) or not (
        isinstance(beta, int | float) and math.isfinite(beta) and beta >= 0
    ):
        raise ValueError(f"activity_hessian(beta={beta!r}): must be a finite number >= 0.")
    argnums = tuple(argnums) if isinstance(argnums, list) else argnums
    return _activity_hessian(fn, args, argnums, has_aux, float(beta), values, max_size)


@filter_jit
def _activity_hessian(fn, args, argnums, has_aux, beta, values, max_size) -> ActivityHessian:
    traced = trace_flat(fn, args, argnums, has_aux)
    graph, params, data = traced.graph, traced.params, traced.data
    if not graph.nodes:
        raise ValueError(
            "activity_hessian: the traced function has no value nodes between its "
            "differentiated arguments and its loss, so there are no activities to relax."
        )
    size = sum(math.prod(info.shape) for info in graph.nodes)
    if size > max_size:
        raise ValueError(
            f"activity_hessian: the graph has {size} node values, more than max_size="
            f"{max_size}; the dense Hessian would have {size}^2 entries. Pass a single example "
            "(batch size 1), a narrower or shallower network, or raise `max_size`."
        )
    feedforward = graph.feedforward(params, data)
    if values is None:
        start = feedforward.values
    else:
        missing = set(graph.node_names) ^ set(values)
        if missing:
            raise ValueError(
                f"activity_hessian(values=...): the keys must be the graph's node names "
                f"{list(graph.node_names)}; mismatched: {sorted(missing)}."
            )
        start = [jnp.asarray(values[name]) for name in graph.node_names]
    flat, unravel = ravel_pytree(start)
    energy = GraphEnergy(graph, data, feedforward.frozen, beta)
    matrix = jax.hessian(lambda v: energy(State(unravel(v), []), params))(flat)
    matrix = (matrix + matrix.T) / 2  # symmetric up to round-off; eigvalsh reads one triangle
    eigenvalues = jnp.linalg.eigvalsh(matrix)
    magnitudes = jnp.abs(eigenvalues)
    return ActivityHessian(matrix, eigenvalues, jnp.max(magnitudes) / jnp.min(magnitudes))
