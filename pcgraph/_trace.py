"""Tracing a JAX function: its jaxpr flattened into equations over integer variable ids, with
the differentiated, data and latent leaves it was called on, built into a `Graph`."""

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as adapter, _latents
from ._equations import Builder
from ._graph import Graph
from ._placement import AbstractPlacement, check_placement


class Traced(NamedTuple):
    """A graph with the flat inputs it was traced on and how to rebuild the outputs."""

    graph: Graph
    params: list[jax.Array]
    data: list[Any]
    unflatten_grads: Callable[[list[jax.Array]], Any]
    unflatten_aux: Callable[[list[jax.Array]], Any]
    #: Where each data leaf came from, e.g. "argument 1" or "keyword argument `scale`['w']".
    data_names: tuple[str, ...]
    #: Per latent leaf (in `graph.latent_positions` order): its mask of observed entries, or
    #: None where it is wholly free.
    latent_masks: list[Any]
    #: Latent leaves -> the latent arguments (a tuple when `latents=` was a tuple).
    unflatten_latents: Callable[[list[jax.Array]], Any]


def _normalise_positions(option: str, value, num_args: int) -> tuple[int, ...]:
    """`argnums=` or `latents=` (an int or a sequence of ints, negative ones counted from the
    end) as a tuple of checked positions."""
    many = isinstance(value, tuple | list)
    nums = tuple(value) if many else (value,)
    for num in nums:
        if not isinstance(num, int | np.integer) or isinstance(num, bool):
            raise TypeError(
                f"{option}={value!r}: each entry must be a Python int (or pass a tuple of ints)."
            )
    resolved = tuple(operator.index(n) + num_args if n < 0 else operator.index(n) for n in nums)
    bad = [n for n in resolved if not 0 <= n < num_args]
    if bad:
        raise ValueError(
            f"{option}={value!r} is out of range: the function was called with {num_args} "
            f"positional argument(s), so valid {option} are 0 to {num_args - 1}."
        )
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{option}={value!r} repeats an argument; list each one once.")
    return resolved


def _check_param_leaf(path, leaf, argnum: int):
    where = f"argument {argnum}, leaf `{jax.tree_util.keystr(path) or '<root>'}`"
    if isinstance(leaf, bool) or not eqx.is_array_like(leaf):
        raise TypeError(
            f"pcgraph can only differentiate arrays, but {where} is a "
            f"{type(leaf).__name__}. For an equinox Module (or any pytree holding functions or "
            "other non-array leaves) use `pcgraph.filter_grad` / `pcgraph.filter_value_and_grad`"
            ", which differentiate its floating-point arrays and hold everything else fixed, as "
            "`equinox.filter_grad` does (`pcgraph.relax`, `trace`, `check_grad` and "
            "`train_step` do so themselves); or move it out of the differentiated arguments "
            "(argnums), or close over it."
        )
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"pcgraph can only differentiate real floating-point leaves, but {where} has dtype "
            f"{dtype}. Convert it (e.g. `x.astype(jnp.float32)`) or move it out of the "
            "differentiated arguments (argnums); jax.grad refuses it too."
        )


def _hold_fixed(fn: Callable, args: list, nums: tuple[int, ...]) -> tuple[Callable, list]:
    """`equinox.filter_grad`'s rule for the differentiated arguments: their floating-point
    arrays are differentiated, every other leaf (functions, integer arrays, Python numbers and
    flags) is held fixed. The fixed parts are passed to `fn` as trailing data arguments and
    put back in place before it runs."""
    args = list(args)
    fixed = []
    for n in nums:
        args[n], rest = eqx.partition(args[n], eqx.is_inexact_array)
        fixed.append(rest)
    count = len(args)

    def with_fixed(*all_args, **kwargs):
        rebuilt = list(all_args[:count])
        for n, rest in zip(nums, all_args[count:], strict=True):
            rebuilt[n] = eqx.combine(rebuilt[n], rest)
        return fn(*rebuilt, **kwargs)

    return with_fixed, [*args, *fixed]


def trace_flat(
    fn: Callable,
    args: Sequence[Any],
    argnums,
    has_aux: bool,
    lift_scans: bool = True,
    placement: AbstractPlacement | None = None,
    kwargs: dict[str, Any] | None = None,
    latents=None,
    filtered: bool = False,
) -> Traced:
    """Trace `fn(*args, **kwargs)` with the leaves of `args[argnums]` as differentiated
    inputs (keyword arguments are data, as under `jax.grad`) and those of `args[latents]` as
    latents; with `lift_scans=False` every scan stays one opaque node. With `filtered`, only
    the floating-point arrays of `args[argnums]` are differentiated and the rest is held
    fixed (`equinox.filter_grad`'s rule); the gradients then hold None at the fixed leaves."""
    nums = _normalise_positions("argnums", argnums, len(args))
    latent_nums = () if latents is None else _normalise_positions("latents", latents, len(args))
    _latents.check_not_differentiated(latents, latent_nums, nums)
    args = list(args)
    masks = _latents.unwrap(args, latent_nums)
    if filtered:
        fn, args = _hold_fixed(fn, args, nums)
    many = isinstance(argnums, tuple | list)
    diff_args = [args[n] for n in nums]
    param_paths, param_leaves = [], []
    for n, arg in zip(nums, diff_args, strict=True):
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            _check_param_leaf(path, leaf, n)
            param_paths.append(f"[{n}]" * many + jax.tree_util.keystr(path) or f"arg{n}")
            param_leaves.append(jnp.asarray(leaf))
    diff_treedef = jax.tree.structure(diff_args)
    others = ({k: a for k, a in enumerate(args) if k not in nums}, kwargs or {})
    dynamic, static = eqx.partition(others, eqx.is_array)
    data_paths, data_treedef = jax.tree_util.tree_flatten_with_path(dynamic)
    data_leaves = [leaf for _, leaf in data_paths]
    latent_positions = [
        p
        for n in latent_nums
        for p, (path, _) in enumerate(data_paths)
        if path[:2] == (jax.tree_util.SequenceKey(0), jax.tree_util.DictKey(n))
    ]
    latent_masks = [
        leaf
        for n in latent_nums
        for leaf in (
            jax.tree.leaves(masks[n]) if n in masks else [None] * len(jax.tree.leaves(args[n]))
        )
    ]
    num_params = len(param_leaves)
    aux_treedef = []

    def flat_fn(*flat):
        rebuilt_diff = jax.tree.unflatten(diff_treedef, flat[:num_params])
        rebuilt, rebuilt_kwargs = eqx.combine(
            jax.tree.unflatten(data_treedef, flat[num_params:]), static
        )
        rebuilt.update(zip(nums, rebuilt_diff, strict=True))
        out = fn(*(rebuilt[k] for k in range(len(args))), **rebuilt_kwargs)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "With has_aux=True the function must return a pair (loss, aux), but it "
                    f"returned {type(out).__name__}. Return `loss, aux` or set has_aux=False."
                )
            out, aux = out
        else:
            aux = None
        _check_loss(out, has_aux)
        aux_leaves, treedef = jax.tree.flatten(aux)
        aux_treedef.append(treedef)
        return [out, *aux_leaves]

    jaxpr, consts = adapter.make_jaxpr(flat_fn, [*param_leaves, *data_leaves])
    builder = Builder()
    inputs = [builder.new_var(adapter.aval_of(var)) for var in adapter.jaxpr_inputs(jaxpr)]
    outputs = builder.inline(jaxpr, consts, inputs)
    graph = Graph(
        builder,
        param_ids=tuple(inputs[:num_params]),
        data_ids=tuple(inputs[num_params:]),
        loss_id=outputs[0],
        aux_ids=tuple(outputs[1:]),
        param_names=tuple(param_paths),
        lift_scans=lift_scans,
        placement=placement,
        latent_ids=tuple(inputs[num_params + p] for p in latent_positions),
    )

    def unflatten_grads(flat_grads):
        grads = jax.tree.unflatten(diff_treedef, flat_grads)
        return tuple(grads) if many else grads[0]

    latent_treedefs = [jax.tree.structure(args[n]) for n in latent_nums]

    def unflatten_latents(flat_latents):
        rebuilt, start = [], 0
        for treedef in latent_treedefs:
            rebuilt.append(jax.tree.unflatten(treedef, flat_latents[start:][: treedef.num_leaves]))
            start += treedef.num_leaves
        return tuple(rebuilt) if isinstance(latents, tuple | list) else rebuilt[0]

    return Traced(
        graph,
        param_leaves,
        data_leaves,
        unflatten_grads,
        lambda flat_aux: jax.tree.unflatten(aux_treedef[-1], flat_aux),
        tuple(_data_name(path) for path, _ in data_paths),
        latent_masks,
        unflatten_latents,
    )


def _data_name(path) -> str:
    """`(positional dict, keyword dict)` key path -> a readable name of the argument."""
    kind, key, *rest = path
    rest = jax.tree_util.keystr(tuple(rest))
    if kind.idx == 0:
        return f"argument {key.key}{rest}"
    return f"keyword argument `{key.key}`{rest}"


def _check_loss(out, has_aux: bool):
    hint = " (the first element of the (loss, aux) pair)" if has_aux else ""
    if not eqx.is_array_like(out) or isinstance(out, bool):
        raise TypeError(
            f"pcgraph.grad needs the function to return a scalar loss{hint}, but it returned a "
            f"{type(out).__name__}. Return one float scalar, e.g. `jnp.mean(errors ** 2)`"
            + ("" if has_aux else ", or return `(loss, aux)` with has_aux=True")
            + "."
        )
    shape, dtype = jnp.shape(out), jnp.result_type(out)
    if shape != ():
        raise TypeError(
            f"pcgraph.grad needs the function to return a scalar loss{hint}, but it has shape "
            f"{shape}. Reduce it to a scalar, e.g. `loss.sum()`, `loss.mean()` or "
            "`loss.squeeze()` for shape (1,)."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"pcgraph.grad needs a real floating-point loss{hint}, but it has dtype {dtype}. "
            "Compute the loss in floating point (e.g. `loss.astype(jnp.float32)`)."
        )


def trace(
    fn: Callable,
    *args,
    argnums=0,
    has_aux: bool = False,
    lift_scans: bool = True,
    placement: AbstractPlacement | None = None,
    latents=None,
    **kwargs,
) -> Graph:
    """Trace `fn(*args, **kwargs)` into a predictive-coding [`Graph`][pcgraph.Graph].

    The floating-point arrays of the arguments at `argnums` are the parameters
    (differentiated inputs); their other leaves (the functions, integer arrays and flags of an
    equinox Module) are held fixed, as `equinox.filter_grad` does, so a model is passed as it
    is. Every other array argument is data, and arrays the function closes over are
    constants, exactly as under `jax.grad`. Nested `jax.jit` calls are inlined;
    `custom_jvp`/`custom_vjp` functions and `cond` stay whole as single nodes.

    A `lax.scan` on the path from the parameters to the loss is lifted: each carry becomes one
    node stacked over the iterations (a leading axis of the scan's length, one slice per
    iteration), and so does each `ys` output computed in the body. Their predictions are the
    body evaluated for all iterations at once, each reading the previous slice of the carry
    (the initial carry for the first), so the program does not grow with the length. With
    `pcgraph.node` marks, only scans whose body holds a mark are lifted (a marked carry or `ys`
    output keeps its mark's name and precision); other scans, and scans nested in a lifted
    body, stay whole.

    **Arguments:**

    - `fn`: a pure JAX function returning a scalar float loss (or `(loss, aux)` with
        `has_aux=True`).
    - `*args`: example arguments; only their shapes and dtypes matter.
    - `argnums`: an int or a tuple of ints, as for `jax.grad`.
    - `has_aux`: whether `fn` returns `(loss, aux)`.
    - `lift_scans`: lift scans into stacked nodes as above; `False` keeps every scan whole, as
        a single node.
    - `placement`: where the value nodes go: [`pcgraph.Layers`][]`()` (one node per layer,
        found automatically), [`pcgraph.Marks`][]`()` (at the `pcgraph.node` marks) or
        [`pcgraph.Primitives`][]`()` (every primitive). The default is marks when the function
        holds any, layers otherwise; `Graph.summary()` names the one used.
    - `latents`: positional arguments inferred by the relaxation (see [`pcgraph.relax`][]):
        the values computed from them alone are nodes too.
    - `**kwargs`: keyword arguments of `fn`, held fixed (data), as under `jax.grad`.

    **Returns:**

    The `Graph`; print it (or call `.summary()`) to see its nodes.
    """
    placement = check_placement(placement)
    traced = trace_flat(
        fn, args, argnums, has_aux, lift_scans, placement, kwargs, latents, filtered=True
    )
    return traced.graph
