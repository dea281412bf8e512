"""Functions as pytrees, so that a fresh closure over new arrays reuses a compiled solve, and
every call reads the state outside its arguments as it is at that call.

`jax.jit` caches a compiled program on the function object, so
`pcgraph.grad(lambda p: loss(p, x_t, y_t))` built afresh at every training step would compile
at every step, and every compiled program would stay in the cache. Here a Python function
becomes an equinox Module whose static part is its code and the non-array values it reads
(closure cells, and the module globals its code names), and whose leaves are the arrays among
them: two functions made by the same code over arrays of the same shapes are equal up to their
leaves, and a filtered jit (pcgraph's `_jit.filter_jit`, like `equinox.filter_jit`) traces and
compiles them once, passing the arrays as arguments.

`jax.grad` runs the function's Python at every call, so it sees the outside state as it is at
that call. A compiled solve must see the same, so what the function reads enters the
compilation as follows:

- JAX and NumPy arrays (also inside dicts, lists, tuples and other pytrees) are leaves: passed
    as arguments at every call, so a global array reassigned or a NumPy array changed in place
    is read at that call, without recompiling.
    A function that needs a NumPy array's values while tracing (`np.nonzero` of it, Python
    control flow on it) fails to trace with it as a leaf; it is then traced again with its
    NumPy arrays as constants, keyed by their contents (`concrete_numpy`), so that it works
    as under `jax.grad` and an in-place change still retraces.
- Every other value (Python scalars, strings, containers of them) is part of the cache key by
    value: a snapshot of its pytree structure and leaves is taken at every call, so a dict
    entry changed or a list appended to is a new key, and the function is traced again.
- Plain Python functions it calls (its globals and closure cells that are functions defined
    outside installed libraries) are converted the same way, recursively, so the state a
    helper reads is covered too.
- Objects that are neither (instances of other classes, modules) are keyed by identity, as
    `jax.jit` keys a static argument: mutating one in place is not seen.
"""

import functools
import sys
import sysconfig
import types
import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np


class _ByIdentity:
    """An unhashable value without a snapshot (a module's globals, a set of objects): compared
    by identity, and passed on as the very same object."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.value is self.value


class _ByValue:
    """A value that holds no array (a dict of settings, a list of floats): compared by a
    snapshot of its contents taken when the function was converted, and passed on as the very
    same object (which held those contents when the function was traced with it)."""

    def __init__(self, value, snapshot):
        self.value, self.snapshot = value, snapshot
        self._hash = hash(snapshot)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _ByValue) and self.snapshot == other.snapshot


class _NumpyConstant:
    """A NumPy array read as a constant: compared by its contents, passed on as a copy."""

    def __init__(self, array: np.ndarray):
        self.value = np.array(array)
        self.value.flags.writeable = False
        self._key = (self.value.shape, self.value.dtype.str, self.value.tobytes())
        self._hash = hash(self._key)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _NumpyConstant) and self._key == other._key


class _Kept(eqx.Module):
    """A value the function reads that holds no array: part of the cache key."""

    key: Any = eqx.field(static=True)

    def get(self):
        kinds = _ByIdentity | _ByValue | _NumpyConstant
        return self.key.value if isinstance(self.key, kinds) else self.key


def _leaves(value) -> list:
    try:
        return jax.tree.leaves(value)
    except (TypeError, ValueError):  # e.g. a dict keyed by types
        return [value]


def _has_arrays(leaves) -> bool:
    return any(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves)


_LIBRARY_PATHS = tuple(
    {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
)


@functools.lru_cache(maxsize=1024)
def _is_library_module(name: str) -> bool:
    if name.split(".")[0] == "pcgraph":
        return True
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    return file is None or file.startswith(_LIBRARY_PATHS)


def _is_user_function(value) -> bool:
    """A plain Python function defined outside installed libraries (and pcgraph): its code is
    the user's, so the state it reads is followed like the differentiated function's."""
    return isinstance(value, types.FunctionType) and not _is_library_module(
        getattr(value, "__module__", None) or ""
    )


def _snapshot_leaf(leaf):
    if isinstance(leaf, set | frozenset):
        try:
            return frozenset(leaf)
        except TypeError:
            return _ByIdentity(leaf)
    try:
        hash(leaf)
    except TypeError:
        return _ByIdentity(leaf)
    return leaf


def _entry(value, seen: frozenset, concrete: bool):
    """A closure cell's or global's value: a user function converted in turn; itself when it
    holds arrays (a pytree whose arrays become leaves; NumPy arrays kept by value when
    `concrete`); else kept whole, by value."""
    if _is_user_function(value):
        if id(value) in seen:  # recursion: the outer conversion already covers its reads
            return _Kept(value)
        return _convert(value, seen, concrete)
    if isinstance(value, types.ModuleType):
        return _Kept(value)
    try:
        leaves, treedef = jax.tree.flatten(value)
    except (TypeError, ValueError):  # e.g. a dict keyed by types
        return _Kept(_snapshot_leaf(value))
    if _has_arrays(leaves) or any(map(_is_user_function, leaves)):

        def entry(leaf):
            if _is_user_function(leaf):
                return _entry(leaf, seen, concrete)
            if concrete and isinstance(leaf, np.ndarray):
                return _Kept(_NumpyConstant(leaf))
            return leaf

        return jax.tree.unflatten(treedef, list(map(entry, leaves)))
    if len(leaves) == 1 and leaves[0] is value:  # a leaf: a scalar, a string, an object
        return _Kept(_snapshot_leaf(value))
    return _Kept(_ByValue(value, (treedef, tuple(map(_snapshot_leaf, leaves)))))


def _value(entry):
    """What the function reads: the value kept, or the pytree of arrays, with each converted
    user function a plain function again."""
    if isinstance(entry, _Kept):
        return entry.get()

    def value(x):
        if isinstance(x, _Function):
            return x.function()
        return x.get() if isinstance(x, _Kept) else x

    return jax.tree.map(value, entry, is_leaf=lambda x: isinstance(x, _Function | _Kept))


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
        return self.function()(*args, **kwargs)

    def function(self) -> types.FunctionType:
        values = {k: _value(v) for k, v in self.read_globals.items()}
        function = types.FunctionType(
            self.code,
            {**self.globals.value, **values},
            self.name,
            self.defaults,
            None if self.closure is None else tuple(map(types.CellType, map(_value, self.closure))),
        )
        function.__kwdefaults__ = self.kwdefaults
        return function


def _convert(
    fn: types.FunctionType, seen: frozenset = frozenset(), concrete: bool = False
) -> _Function:
    seen = seen | {id(fn)}
    cells = tuple(cell.cell_contents for cell in fn.__closure__ or ())
    names = _global_names(fn.__code__)
    return _Function(
        fn.__code__,
        _ByIdentity(fn.__globals__),
        fn.__name__,
        fn.__defaults__,
        fn.__kwdefaults__,
        None if fn.__closure__ is None else tuple(_entry(c, seen, concrete) for c in cells),
        {n: _entry(fn.__globals__[n], seen, concrete) for n in names if n in fn.__globals__},
    )


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> frozenset[str]:
    """The names `code` (and the code nested in it) may read as globals; attribute names are
    among them, which at worst adds an unused global to the key."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return frozenset(names)


def _reads(fn: types.FunctionType, seen: set | None = None) -> list:
    """What `fn` reads besides its arguments: its defaults, closure cells and named globals,
    and recursively what the user functions among them read."""
    seen = set() if seen is None else seen
    seen.add(id(fn))
    cells = [cell.cell_contents for cell in fn.__closure__ or ()]
    names = _global_names(fn.__code__)
    direct = [fn.__defaults__, fn.__kwdefaults__, *cells, *(fn.__globals__.get(n) for n in names)]
    reads = list(direct)
    for value in direct:
        for leaf in _leaves(value) if not isinstance(value, types.FunctionType) else [value]:
            if _is_user_function(leaf) and id(leaf) not in seen:
                reads += _reads(leaf, seen)
    return reads


# The last conversion of each function, with the objects (and their pytree leaves) it was made
# from. A training loop converts the same function at every step; while every object it reads,
# and every leaf of those, is the same object as before, the conversion is the same (a NumPy
# array changed in place is the same object, and a leaf: it is read at the call). The entry
# holds those objects, so none can be freed and another take its `id`.
_LAST_CONVERSION: "weakref.WeakKeyDictionary[types.FunctionType, tuple]" = (
    weakref.WeakKeyDictionary()
)


def _same_objects(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def as_pytree(fn: Callable) -> Callable:
    """`fn`, as a pytree whose leaves are the arrays it closes over or reads as globals
    (see the module's docstring); `fn` itself for anything but a plain Python function, or
    when what it reads cannot be made part of a cache key."""
    convert = getattr(type(fn), "_pcgraph_as_pytree", None)
    if convert is not None:  # a wrapper of a function (`pcgraph.filter_grad`'s)
        return convert(fn)
    if not isinstance(fn, types.FunctionType):
        return fn
    if fn in _CONCRETE_NUMPY:  # NumPy arrays by value: compared at every call
        return _as_pytree(fn, concrete=True)
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


# Functions that need the values of the NumPy arrays they read while tracing.
_CONCRETE_NUMPY: "weakref.WeakSet[types.FunctionType]" = weakref.WeakSet()

#: What JAX raises when Python needs a traced value's contents.
CONCRETE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def concrete_numpy(fn: Callable) -> bool:
    """After `fn` failed to trace with a concrete-value error: read its NumPy arrays as
    constants from now on. Whether that is a change (it reads NumPy arrays, and was not yet
    marked), i.e. whether to trace it again."""
    fn = getattr(fn, "fun", fn)  # `pcgraph.filter_grad`'s wrapper
    if not isinstance(fn, types.FunctionType) or fn in _CONCRETE_NUMPY:
        return False
    try:
        reads = _reads(fn)
    except ValueError:
        return False
    if not any(isinstance(leaf, np.ndarray) for value in reads for leaf in _leaves(value)):
        return False
    _CONCRETE_NUMPY.add(fn)
    return True


def _as_pytree(fn: types.FunctionType, concrete: bool = False) -> Callable:
    try:
        converted = _convert(fn, concrete=concrete)
    except ValueError:  # an empty cell in a function it calls
        return fn
    leaves, treedef = jax.tree.flatten(eqx.filter(converted, eqx.is_array, inverse=True))
    try:
        hash((tuple(leaves), treedef))
    except TypeError:  # unhashable values inside a pytree that also holds arrays
        return fn
    return converted
