"""Filtered entry points in the style of `equinox.filter_grad`: differentiate the floating
arrays of the first argument, whatever else it holds."""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx

from ._algorithms import AbstractAlgorithm
from ._closure import as_pytree
from ._grad import value_and_grad
from ._placement import AbstractPlacement

_sentinel: Any = object()


class _Recombined(eqx.Module):
    """`fun` called on the first argument put back together from its differentiated and
    other parts. A Module, so that two wrappers of the same `fun` compare equal and a
    repeated call reuses the compiled solve."""

    fun: Callable

    def __call__(self, diff, nondiff, kwargs, *args):
        return self.fun(eqx.combine(diff, nondiff), *args, **kwargs)

    def _pcgraph_as_pytree(self):
        # Converted at every call, so that the state `fun` reads is read then.
        return _Recombined(as_pytree(self.fun))


def _first_argument(args, kwargs, name: str):
    if not args:
        raise TypeError(
            f"A function wrapped with `pcgraph.{name}` differentiates its first positional "
            f"argument, but it was called with {'keyword arguments only' if kwargs else 'none'}"
            ". Pass the model (or parameters) first, by position: `f(model, x, y)`."
        )
    return args[0], args[1:]


def filter_value_and_grad(
    fun: Callable = _sentinel,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    latents=None,
) -> Callable:
    """Like `equinox.filter_value_and_grad`, with the gradient computed by predictive coding.

    The floating-point arrays of the first argument are differentiated (through
    [`pcgraph.value_and_grad`][]); every other leaf of it (integer arrays, Python numbers,
    functions, ...) is held fixed, as are all other arguments, which may be passed by
    position or keyword. Use it as a decorator, with or without arguments.

    **Arguments:**

    - `fun`: a pure function whose first argument is a pytree, e.g. an `equinox.Module`,
        returning a scalar float loss (or `(loss, aux)` with `has_aux=True`).
    - `has_aux`: whether `fun` returns `(loss, aux)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which equals
        `jax.grad` up to round-off.
    - `placement`: where the value nodes go (see [`pcgraph.trace`][]): by default at the
        `pcgraph.node` marks when there are any, one per layer otherwise, so that an unchanged
        `equinox.nn.MLP` is the standard layered predictive-coding network.
    - `latents`: positional arguments of `fun` (other than the first) inferred by the
        relaxation rather than clamped (see [`pcgraph.relax`][]).

    **Returns:**

    A function with `fun`'s signature returning `(value, grads)`, or `((value, aux), grads)`
    with `has_aux=True`. `grads` has the structure of the first argument, with the gradient at
    each floating-point array and None at every other leaf.
    """
    if fun is _sentinel:
        return functools.partial(
            filter_value_and_grad,
            has_aux=has_aux,
            algorithm=algorithm,
            placement=placement,
            latents=latents,
        )
    return _filtered(fun, has_aux, algorithm, placement, latents, "filter_value_and_grad")


def _filtered(fun: Callable, has_aux: bool, algorithm, placement, latents, name: str) -> Callable:
    many = isinstance(latents, tuple | list)
    nums = tuple(latents) if many else () if latents is None else (latents,)
    if 0 in nums:
        raise ValueError(
            f"pcgraph.{name}(latents={latents!r}) names argument 0, which is differentiated. "
            "A latent is inferred by the relaxation, the first argument (the model) is "
            "learned from it; move the latent to its own argument."
        )
    # `_Recombined` takes (diff, nondiff, kwargs, *args): argument k of `fun` is its k + 2.
    shifted = tuple(n + 2 if n >= 0 else n for n in nums)
    solve = value_and_grad(
        _Recombined(fun),
        has_aux=has_aux,
        algorithm=algorithm,
        placement=placement,
        latents=None if latents is None else shifted if many else shifted[0],
    )

    @functools.wraps(fun)
    def value_and_grad_fn(*args, **kwargs):
        x, rest = _first_argument(args, kwargs, name)
        diff, nondiff = eqx.partition(x, eqx.is_inexact_array)
        return solve(diff, nondiff, kwargs, *rest)

    return value_and_grad_fn


def filter_grad(
    fun: Callable = _sentinel,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    latents=None,
) -> Callable:
    """Like `equinox.filter_grad`, with the gradient computed by predictive coding: a drop-in
    for training equinox models.

    See [`pcgraph.filter_value_and_grad`][] for the arguments.

    **Returns:**

    A function with `fun`'s signature returning the gradients (and `aux` with
    `has_aux=True`): the structure of the first argument, with the gradient at each
    floating-point array and None at every other leaf.

    !!! example

        ```python
        @pcgraph.filter_grad
        def loss(model, x, y):
            return jnp.mean((jax.vmap(model)(x) - y) ** 2)

        grads = loss(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        model = eqx.apply_updates(model, updates)
        ```
    """
    if fun is _sentinel:
        return functools.partial(
            filter_grad, has_aux=has_aux, algorithm=algorithm, placement=placement, latents=latents
        )
    value_and_grad_fn = _filtered(fun, has_aux, algorithm, placement, latents, "filter_grad")

    @functools.wraps(fun)
    def grad_fn(*args, **kwargs):
        value, grads = value_and_grad_fn(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return grad_fn
