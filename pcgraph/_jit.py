"""Compilation with array leaves traced and everything else static, dispatched asynchronously.

`equinox.filter_jit` (0.13) waits for every call's result before returning, so that a runtime
error surfaces at the call. pcgraph checks its results itself where it needs them (`throw`), so
its compiled entry points return as soon as the computation is dispatched: a training loop's
Python then prepares the next step while this one runs, as with `jax.jit`. The arguments are
split with one flatten (not a `tree_map`), which keeps the per-call cost of a training step's
dispatch to tens of microseconds for the usual parameter and optimiser-state pytrees.
"""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np


def _is_array(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


class _Static:
    """The non-array leaves of a pytree and its structure, hashable: the compilation's cache
    key. Array leaves are `None` placeholders here."""

    __slots__ = ("_hash", "leaves", "treedef")

    def __init__(self, leaves: tuple, treedef):
        self.leaves, self.treedef = leaves, treedef
        self._hash = hash((leaves, treedef))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (
            isinstance(other, _Static)
            and self._hash == other._hash
            and self.treedef == other.treedef
            and self.leaves == other.leaves
        )


def _split(tree) -> tuple[list, _Static]:
    leaves, treedef = jax.tree.flatten(tree)
    arrays, static = [], []
    for leaf in leaves:
        array = _is_array(leaf)
        arrays.append(leaf if array else None)
        static.append(None if array else leaf)
    return arrays, _Static(tuple(static), treedef)


def _merge(arrays: list, static: _Static):
    leaves = [s if a is None else a for a, s in zip(arrays, static.leaves, strict=True)]
    return jax.tree.unflatten(static.treedef, leaves)


# The static part of an output, carried through `jax.jit` as the structure of a pytree without
# leaves (recorded at trace time, like `equinox.filter_jit`'s).
jax.tree_util.register_pytree_node(_Static, lambda s: ((), s), lambda s, _: s)


def _equinox_error(error: Exception) -> Exception:
    """A failed `equinox.error_if` in the user's function as the `EquinoxRuntimeError` its
    message names (as `equinox.filter_jit` raises it; a program with such a check runs
    synchronously, so it fails at the call); any other error as it is."""
    marker = "_EquinoxRuntimeError: "
    text = str(error)
    if marker not in text:
        return error
    message = text.split(marker, 1)[1].split("\n\n", 1)[0].strip()
    return eqx.EquinoxRuntimeError(message)


def filter_jit(
    fun: Callable | None = None,
    *,
    donate_argnums: tuple[int, ...] = (),
    reuse_argnums: tuple[int, ...] = (),
) -> Callable:
    """Compile `fun` as `equinox.filter_jit` does: the arrays among its arguments' leaves are
    traced, every other leaf is static (part of the compilation's cache key), and its outputs
    may hold non-array leaves. Unlike it, a call does not wait for the result. The arrays of
    the positional arguments `donate_argnums` are donated to the computation.

    An equinox Module passed at a position in `reuse_argnums` as the very same object as in the
    previous call is not split again (Modules are immutable): for the arguments a training
    loop passes unchanged (its function, its configuration), which are then kept alive until
    the next call."""
    if fun is None:
        return functools.partial(
            filter_jit, donate_argnums=donate_argnums, reuse_argnums=reuse_argnums
        )

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
    def compiled(static: tuple, donated: list, kept: list):
        arg_statics, kwargs_static = static
        donated, kept = iter(donated), iter(kept)
        args = [
            _merge(next(donated if i in donate_argnums else kept), arg_static)
            for i, arg_static in enumerate(arg_statics)
        ]
        kwargs = _merge(next(kept), kwargs_static)
        return _split(fun(*args, **kwargs))

    last_modules: dict[int, tuple] = {}

    def split_argument(position, arg):
        if position in reuse_argnums and isinstance(arg, eqx.Module):
            last = last_modules.get(position)
            if last is not None and last[0] is arg:
                return last[1]
            last_modules[position] = (arg, _split(arg))
            return last_modules[position][1]
        return _split(arg)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        parts = [split_argument(i, arg) for i, arg in enumerate(args)]
        donated = [arrays for i, (arrays, _) in enumerate(parts) if i in donate_argnums]
        kept = [arrays for i, (arrays, _) in enumerate(parts) if i not in donate_argnums]
        kwargs_arrays, kwargs_static = _split(kwargs)
        static = (tuple(arg_static for _, arg_static in parts), kwargs_static)
        try:
            out, static_out = compiled(static, donated, [*kept, kwargs_arrays])
        except jax.errors.JaxRuntimeError as error:
            raise _equinox_error(error) from None
        return _merge(out, static_out)

    return call
