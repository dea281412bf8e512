"""Functions as pytrees, so that a fresh closure over new arrays reuses a compiled solve.

`jax.jit` caches a compiled program on the function object, so
`pcgraph.grad(lambda p: loss(p, x_t, y_t))` built afresh at every training step would compile
at every step, and every compiled program would stay in the cache. Here a Python function
becomes an equinox Module whose static part is its code and the non-array values it reads
(closure cells, and the module globals its code names), and whose leaves are the arrays among
them: two functions made by the same code over arrays of the same shapes are equal up to their
leaves, and a filtered jit (pcgraph's `_jit.filter_jit`, like `equinox.filter_jit`) traces and
compiles them once, passing the arrays as arguments. A global array read by the function is a
leaf too, so a later value is never replaced by the one seen when compiling.
"""

import types
import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np


class _ByIdentity:
    """An unhashable value (a module's globals, a list the function appends to): compared
    by identity, and passed on as the very same object."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.value is self.value


class _Kept(eqx.Module):
    """A value the function reads that holds no JAX array: part of the cache key, by value
    when hashable, else by identity."""

    key: Any = eqx.field(static=True)

    def get(self):
        return self.key.value if isinstance(self.key, _ByIdentity) else self.key


class _NotConvertible(Exception):
    pass


def _leaves(value) -> list:
    try:
        return jax.tree.leaves(value)
    except (TypeError, ValueError):  # e.g. a dict keyed by types
        return [value]


def _entry(value):
    """A closure cell's or global's value: itself when it holds JAX arrays (a pytree whose
    arrays become leaves), else kept whole."""
    leaves = _leaves(value)
    if any(isinstance(leaf, np.ndarray) for leaf in leaves):
        raise _NotConvertible  # NumPy arrays are constants of the traced program (jax.jit's rule)
    if any(isinstance(leaf, jax.Array) for leaf in leaves):
        return value
    try:
        hash(value)
    except TypeError:
        return _Kept(_ByIdentity(value))
    return _Kept(value)


def _value(entry):
    return entry.get() if isinstance(entry, _Kept) else entry


class _Function(eqx.Module):
    code: types.CodeType = eqx.field(static=True)
    globals: _ByIdentity = eqx.field(static=True)
    name: str = eqx.field(static=True)
    defaults: Any
    kwdefaults: Any
    closure: tuple[Any, ...] | None
    #: The module globals the code names, by name.
    read_globals: dict[str, Any]

    def __call__(self, *args, **kwargs):
        function = types.FunctionType(
            self.code,
            {**self.globals.value, **{k: _value(v) for k, v in self.read_globals.items()}},
            self.name,
            self.defaults,
            None if self.closure is None else tuple(map(types.CellType, map(_value, self.closure))),
        )
        function.__kwdefaults__ = self.kwdefaults
        return function(*args, **kwargs)


def _convert(fn: types.FunctionType) -> _Function:
    cells = tuple(cell.cell_contents for cell in fn.__closure__ or ())
    names = _global_names(fn.__code__)
    return _Function(
        fn.__code__,
        _ByIdentity(fn.__globals__),
        fn.__name__,
        fn.__defaults__,
        fn.__kwdefaults__,
        None if fn.__closure__ is None else tuple(map(_entry, cells)),
        {n: _entry(fn.__globals__[n]) for n in names if n in fn.__globals__},
    )


def _global_names(code: types.CodeType) -> set[str]:
    """The names `code` (and the code nested in it) may read as globals; attribute names are
    among them, which at worst adds an unused global to the key."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _reads(fn: types.FunctionType) -> list:
    """What `fn` reads besides its arguments: its defaults, closure cells and named globals."""
    cells = [cell.cell_contents for cell in fn.__closure__ or ()]
    names = _global_names(fn.__code__)
    return [fn.__defaults__, fn.__kwdefaults__, *cells, *(fn.__globals__.get(n) for n in names)]


# The last conversion of each function, with the objects (and their pytree leaves) it was made
# from. A training loop converts the same function at every step; while every object it reads,
# and every leaf of those, is the same object as before, the conversion is the same. The entry
# holds those objects, so none can be freed and another take its `id`.
_LAST_CONVERSION: "weakref.WeakKeyDictionary[types.FunctionType, tuple]" = (
    weakref.WeakKeyDictionary()
)


def _same_objects(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def as_pytree(fn: Callable) -> Callable:
    """`fn`, as a pytree whose leaves are the JAX arrays it closes over or reads as globals
    (see the module's docstring); `fn` itself for anything but a plain Python function, or
    when what it reads cannot be made part of a cache key."""
    if not isinstance(fn, types.FunctionType):
        return fn
    try:
        reads = _reads(fn)
    except ValueError:  # an empty cell (a recursive function)
        return fn
    leaves = [_leaves(value) for value in reads]
    last = _LAST_CONVERSION.get(fn)
    if (
        last is not None
        and _same_objects(last[0], reads)
        and all(map(_same_objects, last[1], leaves))
    ):
        return last[2]
    converted = _as_pytree(fn)
    _LAST_CONVERSION[fn] = (reads, leaves, converted)
    return converted


def _as_pytree(fn: types.FunctionType) -> Callable:
    try:
        converted = _convert(fn)
    except _NotConvertible:
        return fn
    leaves, treedef = jax.tree.flatten(eqx.filter(converted, eqx.is_array, inverse=True))
    try:
        hash((tuple(leaves), treedef))
    except TypeError:  # unhashable values inside a pytree it reads
        return fn
    return converted
