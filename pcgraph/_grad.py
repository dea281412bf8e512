"""The drop-in entry points: `grad`, `value_and_grad` and `relax`."""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

from ._algorithms import FPA, AbstractAlgorithm
from ._graph import trace_flat
from ._relax import RelaxationStats


class Solution(eqx.Module):
    """Everything one predictive-coding solve produced.

    **Attributes:**

    - `value`: the loss at the feedforward pass (the function's own value).
    - `aux`: the auxiliary output with `has_aux=True`, else None.
    - `grads`: the PC gradients, structured exactly as `jax.grad`'s.
    - `values`, `errors`: each value node's value `v_i` and error `eps_i = v_i - mu_i` at the
        end of the relaxation, keyed by node name (see `Graph.summary()`).
    - `stats`: a [`pcgraph.RelaxationStats`][].
    """

    value: jax.Array
    aux: Any
    grads: Any
    values: dict[str, jax.Array]
    errors: dict[str, jax.Array]
    stats: RelaxationStats


def _check_algorithm(algorithm) -> AbstractAlgorithm:
    if algorithm is None:
        return FPA()
    if isinstance(algorithm, type) and issubclass(algorithm, AbstractAlgorithm):
        raise TypeError(
            f"algorithm={algorithm.__name__} is a class; pass an instance, e.g. "
            f"`algorithm=pcgraph.{algorithm.__name__}()`."
        )
    if not isinstance(algorithm, AbstractAlgorithm):
        raise TypeError(
            f"algorithm={algorithm!r} is not a pcgraph algorithm; pass one of pcgraph.IL(), "
            "pcgraph.FPA(), ..."
        )
    return algorithm


@eqx.filter_jit
def _solve(fn, args, argnums, has_aux, algorithm, save_energy) -> Solution:
    traced = trace_flat(fn, args, argnums, has_aux)
    graph = traced.graph
    feedforward = graph.feedforward(traced.params, traced.data)
    equilibrium = algorithm.solve(
        graph, traced.params, traced.data, feedforward, save_energy=save_energy
    )
    names = graph.node_names
    return Solution(
        value=feedforward.loss,
        aux=traced.unflatten_aux(feedforward.aux) if has_aux else None,
        grads=traced.unflatten_grads(equilibrium.grads),
        values=dict(zip(names, equilibrium.values, strict=True)),
        errors=dict(zip(names, equilibrium.errors, strict=True)),
        stats=equilibrium.stats,
    )


def _checked_solve(fn, args, argnums, has_aux, algorithm, save_energy) -> Solution:
    # Checked outside the compiled solve, so that a concrete failure can quote its numbers.
    solution = _solve(fn, args, argnums, has_aux, algorithm, save_energy)
    return solution.stats.raise_if_failed(solution) if algorithm.throw else solution


def _as_static(argnums):
    return tuple(argnums) if isinstance(argnums, list) else argnums


def relax(
    fn: Callable,
    *args,
    argnums=0,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    save_energy: bool = False,
) -> Solution:
    """Trace `fn`, relax its predictive-coding graph and return the whole
    [`Solution`][pcgraph.Solution].

    Use this when the gradient alone is not enough: it also returns node values and errors at
    equilibrium and the relaxation statistics (steps, energies, result, and the energy
    trajectory with `save_energy=True`). The computation is jit-compiled and cached per
    function, argument shapes and algorithm.

    **Arguments:**

    - `fn`, `*args`, `argnums`, `has_aux`: as for `jax.grad(fn, argnums, has_aux)(*args)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which is exact.
    - `save_energy`: record the energy at every step in `Solution.stats.energy_trajectory`.
    """
    algorithm = _check_algorithm(algorithm)
    return _checked_solve(fn, args, _as_static(argnums), has_aux, algorithm, save_energy)


def value_and_grad(
    fn: Callable,
    argnums=0,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
) -> Callable:
    """Like `jax.value_and_grad`, with the gradient computed by predictive coding.

    **Arguments:**

    - `fn`: a pure JAX function returning a scalar float loss (or `(loss, aux)`).
    - `argnums`: an int or a tuple of ints: which positional arguments to differentiate.
    - `has_aux`: whether `fn` returns `(loss, aux)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which equals
        `jax.grad` up to round-off.

    **Returns:**

    A function with `fn`'s signature returning `(value, grads)`, or `((value, aux), grads)`
    with `has_aux=True`; `grads` has the structure `jax.grad` would give. It can be called
    under `jax.jit` and `jax.vmap`, and does not retrace for repeated calls with the same
    shapes.
    """
    algorithm = _check_algorithm(algorithm)
    argnums = _as_static(argnums)

    @functools.wraps(fn)
    def value_and_grad_fn(*args):
        solution = _checked_solve(fn, args, argnums, has_aux, algorithm, False)
        value = (solution.value, solution.aux) if has_aux else solution.value
        return value, solution.grads

    return value_and_grad_fn


def grad(
    fn: Callable,
    argnums=0,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
) -> Callable:
    """A drop-in replacement for `jax.grad` that computes the gradient by predictive coding.

    The function is traced into a graph of value nodes (see [`pcgraph.trace`][]), relaxed
    with `algorithm` from its feedforward pass, and each parameter's gradient is read off the
    prediction errors of the nodes that use it, never by differentiating `fn` end to end.

    **Arguments:**

    - `fn`: a pure JAX function returning a scalar float loss (or `(loss, aux)`).
    - `argnums`: an int or a tuple of ints: which positional arguments to differentiate.
    - `has_aux`: whether `fn` returns `(loss, aux)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which equals
        `jax.grad` up to round-off. [`pcgraph.IL`][] is standard (approximate) inference
        learning.

    **Returns:**

    A function with `fn`'s signature returning the gradients (and `aux` with `has_aux=True`),
    structured as `jax.grad(fn, argnums, has_aux=has_aux)` would return them.

    !!! example

        ```python
        grads = pcgraph.grad(loss)(params, x, y)
        grads_il = pcgraph.grad(loss, algorithm=pcgraph.IL(beta=0.1))(params, x, y)
        ```
    """
    value_and_grad_fn = value_and_grad(fn, argnums, has_aux=has_aux, algorithm=algorithm)

    @functools.wraps(fn)
    def grad_fn(*args):
        value, grads = value_and_grad_fn(*args)
        return (grads, value[1]) if has_aux else grads

    return grad_fn
