"""Tracing a JAX function into a graph of value nodes, and evaluating that graph."""

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as adapter


class NodeInfo(NamedTuple):
    """What `Graph.summary()` shows about one value node."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: np.dtype
    precision: float
    parents: tuple[str, ...]
    distance: int
    final_step: int


@dataclasses.dataclass(frozen=True)
class _Eqn:
    primitive: adapter.Primitive
    params: dict[str, Any]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class Feedforward(NamedTuple):
    """The function evaluated once on its inputs: the starting point of every relaxation."""

    values: list[jax.Array]
    frozen: list[jax.Array]
    loss: jax.Array
    aux: list[jax.Array]


class _Builder:
    """Flattens a jaxpr into `_Eqn`s over integer variable ids, inlining nested calls."""

    def __init__(self):
        self.avals: list[Any] = []
        self.constants: dict[int, Any] = {}
        self.eqns: list[_Eqn] = []

    def new_var(self, aval) -> int:
        self.avals.append(aval)
        return len(self.avals) - 1

    def constant(self, value, aval) -> int:
        var = self.new_var(aval)
        self.constants[var] = value
        return var

    def inline(self, jaxpr: adapter.Jaxpr, consts: Sequence[Any], inputs: Sequence[int]):
        env: dict[Any, int] = {}
        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = self.constant(value, var.aval)
        env.update(zip(jaxpr.invars, inputs, strict=True))

        def read(atom) -> int:
            if adapter.is_literal(atom):
                return self.constant(adapter.literal_value(atom), atom.aval)
            return env[atom]

        for eqn in jaxpr.eqns:
            ins = [read(atom) for atom in eqn.invars]
            body = adapter.inline_body(eqn)
            if body is not None:
                outs = self.inline(*body, ins)
            else:
                if adapter.has_side_effects(eqn):
                    raise ValueError(
                        f"pcgraph cannot trace a function with side effects: found "
                        f"`{eqn.primitive.name}`. Predictive coding re-evaluates the function's "
                        "predictions many times during relaxation, so a callback, print or other "
                        "effect would run an unpredictable number of times. Move it out of the "
                        "function you pass to pcgraph (for example, print the returned aux "
                        "values instead)."
                    )
                outs = [self.new_var(var.aval) for var in eqn.outvars]
                self.eqns.append(_Eqn(eqn.primitive, eqn.params, tuple(ins), tuple(outs)))
            for var, out in zip(eqn.outvars, outs, strict=True):
                if not adapter.is_drop_var(var):
                    env[var] = out
        return [read(atom) for atom in jaxpr.outvars]


def _live_eqns(eqns: Sequence[_Eqn], outputs: Sequence[int]) -> list[_Eqn]:
    needed = set(outputs)
    live = []
    for eqn in reversed(eqns):
        if needed.intersection(eqn.outputs):
            live.append(eqn)
            needed.update(eqn.inputs)
    return live[::-1]


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


class Graph:
    """A traced function as a predictive-coding graph: value nodes, their local predictions and
    the loss.

    Build one with [`pcgraph.trace`][]. Each value node `i` holds a value `v_i` and a
    prediction `mu_i = f_i(values of its parents; params)`; the loss is computed from the values
    that feed it.

    **Attributes:**

    - `nodes`: a tuple of `NodeInfo` (name, op, shape, dtype, precision, parents, distance,
        final_step), in topological order. `distance` is the length of the shortest path of
        nodes to the loss (with FPA and step size 1 the node's error is first non-zero at that
        step); `final_step` the longest (the error is final after that step).
    - `depth`: the largest `final_step`, 0 without nodes: FPA with step size 1 is exact after
        `depth` steps.
    - `param_names`: the key path of each differentiated leaf.
    """

    def __init__(
        self,
        builder: _Builder,
        param_ids: tuple[int, ...],
        data_ids: tuple[int, ...],
        loss_id: int,
        aux_ids: tuple[int, ...],
        param_names: tuple[str, ...],
    ):
        self._avals = builder.avals
        self._constants = builder.constants
        self._param_ids = param_ids
        self._data_ids = data_ids
        self._loss_id = loss_id
        self._aux_ids = aux_ids
        self.param_names = param_names
        self._eqns = _live_eqns(builder.eqns, (loss_id, *aux_ids))
        self._analyse()

    # -- structure -------------------------------------------------------------------------

    def _analyse(self):
        params = set(self._param_ids)
        active = set(params)
        for eqn in self._eqns:
            if eqn.primitive in adapter.STOP_GRADIENT:
                continue
            if active.intersection(eqn.inputs):
                active.update(o for o in eqn.outputs if adapter.is_float_aval(self._avals[o]))
        reaches_loss = {self._loss_id}
        for eqn in reversed(self._eqns):
            if (
                reaches_loss.intersection(eqn.outputs)
                and eqn.primitive not in adapter.STOP_GRADIENT
            ):
                reaches_loss.update(i for i in eqn.inputs if i in active)
        relevant = active & reaches_loss
        self._pass_eqns = [e for e in self._eqns if relevant.intersection(e.outputs)]
        for eqn in self._pass_eqns:
            if eqn.primitive in adapter.NOT_REVERSE_DIFFERENTIABLE:
                raise ValueError(
                    f"The path from the differentiated arguments to the loss goes through "
                    f"`{eqn.primitive.name}` (a lax.while_loop, whose trip count may depend on "
                    "data). Reverse-mode differentiation, and so predictive coding, cannot "
                    "propagate errors through it; jax.grad fails on it too. Use lax.scan, or "
                    "lax.fori_loop with Python-int bounds, instead."
                )
        markers = [
            e
            for e in self._pass_eqns
            if adapter.is_node_marker(e.primitive) and e.outputs[0] != self._loss_id
        ]
        if markers:
            node_ids = [e.outputs[0] for e in markers]
            labels = [
                adapter.marker_params(e.params)[0] or f"node_{k}" for k, e in enumerate(markers)
            ]
            precisions = [adapter.marker_params(e.params)[1] for e in markers]
            ops = ["node"] * len(markers)
        else:
            node_ids, labels, ops = [], [], []
            for eqn in self._pass_eqns:
                if eqn.primitive in adapter.STRUCTURAL:
                    continue
                for out in eqn.outputs:
                    if out in relevant and out != self._loss_id:
                        node_ids.append(out)
                        ops.append(eqn.primitive.name)
                        labels.append(f"{eqn.primitive.name}_{len(node_ids) - 1}")
            precisions = [1.0] * len(node_ids)
        self._node_ids = tuple(node_ids)
        self._node_index = {var: k for k, var in enumerate(node_ids)}
        self._precisions = tuple(precisions)
        inputs = set(self._param_ids) | set(self._data_ids) | set(self._constants)
        # Values the pass reads but cannot change: computed once by the feedforward pass.
        read = {i for e in self._pass_eqns for i in e.inputs} | {self._loss_id}
        self._frozen_ids = tuple(sorted(read - relevant - inputs))
        self._build_node_info(_unique(labels), ops)

    def _build_node_info(self, names: list[str], ops: list[str]):
        param_name = dict(zip(self._param_ids, self.param_names, strict=True))
        # The nodes and parameters each variable is computed from, looking through non-nodes.
        sources: dict[int, frozenset[int]] = {p: frozenset({p}) for p in self._param_ids}
        node_sources: dict[int, frozenset[int]] = {}
        for eqn in self._pass_eqns:
            found = frozenset().union(*(sources.get(i, frozenset()) for i in eqn.inputs))
            for out in eqn.outputs:
                if out in self._node_index:
                    node_sources[out] = found
                    sources[out] = frozenset({out})
                else:
                    sources[out] = found
        loss_sources = sources.get(self._loss_id, frozenset())
        distance: dict[int, int] = {}
        final: dict[int, int] = {}
        for n in reversed(self._node_ids):
            children = [c for c in self._node_ids if n in node_sources[c]]
            steps = [distance[c] + 1 for c in children] + ([1] if n in loss_sources else [])
            finals = [final[c] + 1 for c in children] + ([1] if n in loss_sources else [])
            distance[n], final[n] = min(steps), max(finals)
        name_of = {n: names[k] for k, n in enumerate(self._node_ids)} | param_name
        order = {v: k for k, v in enumerate((*self._param_ids, *self._node_ids))}

        def parent_names(found):
            return tuple(name_of[v] for v in sorted(found, key=order.__getitem__))

        self.nodes = tuple(
            NodeInfo(
                name=names[k],
                op=ops[k],
                shape=tuple(self._avals[n].shape),
                dtype=np.dtype(self._avals[n].dtype),
                precision=self._precisions[k],
                parents=parent_names(node_sources[n]),
                distance=distance[n],
                final_step=final[n],
            )
            for k, n in enumerate(self._node_ids)
        )
        self._loss_parents = parent_names(loss_sources)
        self.depth = max((info.final_step for info in self.nodes), default=0)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.nodes)

    # -- evaluation --------------------------------------------------------------------------

    def _read(self, env: dict[int, Any], var: int):
        return env[var] if var in env else self._constants[var]

    def feedforward(self, params: Sequence[Any], data: Sequence[Any]) -> Feedforward:
        """Evaluate the function once; node values start at their feedforward value."""
        env = dict(zip(self._param_ids, params, strict=True))
        env.update(zip(self._data_ids, data, strict=True))
        for eqn in self._eqns:
            outs = adapter.bind(eqn.primitive, eqn.params, [self._read(env, i) for i in eqn.inputs])
            env.update(zip(eqn.outputs, outs, strict=True))
        return Feedforward(
            values=[env[n] for n in self._node_ids],
            frozen=[env[f] for f in self._frozen_ids],
            loss=self._read(env, self._loss_id),
            aux=[self._read(env, a) for a in self._aux_ids],
        )

    def predict(
        self,
        values: Sequence[Any],
        params: Sequence[Any],
        data: Sequence[Any],
        frozen: Sequence[Any],
    ) -> tuple[list[jax.Array], jax.Array]:
        """All node predictions `mu_i` and the loss, with node values substituted for the
        nodes' outputs: every node's prediction depends only on its parents' values."""
        env = dict(zip(self._param_ids, params, strict=True))
        env.update(zip(self._data_ids, data, strict=True))
        env.update(zip(self._frozen_ids, frozen, strict=True))
        env.update(zip(self._node_ids, values, strict=True))
        mus: list[Any] = [None] * len(self._node_ids)
        for eqn in self._pass_eqns:
            invals = [self._read(env, i) for i in eqn.inputs]
            outs = adapter.bind_for_relaxation(eqn.primitive, eqn.params, invals)
            for var, out in zip(eqn.outputs, outs, strict=True):
                if var in self._node_index:
                    mus[self._node_index[var]] = out
                else:
                    env[var] = out
        return mus, self._read(env, self._loss_id)

    def errors(self, values, mus) -> list[jax.Array]:
        return [v - mu for v, mu in zip(values, mus, strict=True)]

    def precisions(self) -> tuple[float, ...]:
        return self._precisions

    # -- display -----------------------------------------------------------------------------

    def summary(self) -> str:
        """A table of the value nodes: name, op, shape, precision, parents, distance to the
        loss (shortest path) and the step after which the node's error is final (longest)."""
        rows = [("#", "name", "op", "shape", "precision", "dist", "final", "parents")]
        for k, info in enumerate(self.nodes):
            rows.append(
                (
                    str(k),
                    info.name,
                    info.op,
                    f"{info.dtype.name}{list(info.shape)}",
                    f"{info.precision:g}",
                    str(info.distance),
                    str(info.final_step),
                    ", ".join(info.parents),
                )
            )
        rows.append(("", "loss", "", "", "", "0", "0", ", ".join(self._loss_parents)))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
        lines = [
            f"Graph: {len(self.nodes)} value nodes, depth {self.depth}, "
            f"{len(self._param_ids)} parameter leaves"
        ]
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def to_dot(self) -> str:
        """The graph in Graphviz DOT: parameters as boxes, value nodes as ellipses (labelled
        with name, shape and distance to the loss) and the loss as a double circle."""
        lines = ["digraph pcgraph {", "  rankdir=LR;", '  node [fontname="Helvetica"];']

        def quoted(text):
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        for name in self.param_names:
            lines.append(f"  {quoted(name)} [shape=box, style=filled, fillcolor=lightgrey];")
        for info in self.nodes:
            label = f"{info.name}\\n{list(info.shape)}\\nd={info.distance}"
            lines.append(f"  {quoted(info.name)} [shape=ellipse, label={quoted(label)}];")
        lines.append('  "loss" [shape=doublecircle];')
        for info in self.nodes:
            lines.extend(f"  {quoted(p)} -> {quoted(info.name)};" for p in info.parents)
        lines.extend(f'  {quoted(p)} -> "loss";' for p in self._loss_parents)
        lines.append("}")
        return "\n".join(lines)


class Traced(NamedTuple):
    """A graph with the flat inputs it was traced on and how to rebuild the outputs."""

    graph: Graph
    params: list[jax.Array]
    data: list[Any]
    unflatten_grads: Callable[[list[jax.Array]], Any]
    unflatten_aux: Callable[[list[jax.Array]], Any]


def _normalise_argnums(argnums, num_args: int) -> tuple[int, ...]:
    many = isinstance(argnums, tuple | list)
    nums = tuple(argnums) if many else (argnums,)
    for num in nums:
        if not isinstance(num, int | np.integer) or isinstance(num, bool):
            raise TypeError(
                f"argnums={argnums!r}: each entry must be a Python int (or pass a tuple of ints)."
            )
    resolved = tuple(operator.index(n) + num_args if n < 0 else operator.index(n) for n in nums)
    bad = [n for n in resolved if not 0 <= n < num_args]
    if bad:
        raise ValueError(
            f"argnums={argnums!r} is out of range: the function was called with {num_args} "
            f"positional argument(s), so valid argnums are 0 to {num_args - 1}."
        )
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"argnums={argnums!r} repeats an argument; list each one once.")
    return resolved


def _check_param_leaf(path, leaf, argnum: int):
    where = f"argument {argnum}, leaf `{jax.tree_util.keystr(path) or '<root>'}`"
    if isinstance(leaf, bool) or not eqx.is_array_like(leaf):
        raise TypeError(
            f"pcgraph can only differentiate arrays, but {where} is a "
            f"{type(leaf).__name__}. Move it out of the differentiated arguments (argnums), or "
            "close over it."
        )
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"pcgraph can only differentiate real floating-point leaves, but {where} has dtype "
            f"{dtype}. Convert it (e.g. `x.astype(jnp.float32)`) or move it out of the "
            "differentiated arguments (argnums); jax.grad refuses it too."
        )


def trace_flat(fn: Callable, args: Sequence[Any], argnums, has_aux: bool) -> Traced:
    """Trace `fn(*args)` with the leaves of `args[argnums]` as differentiated inputs."""
    nums = _normalise_argnums(argnums, len(args))
    many = isinstance(argnums, tuple | list)
    diff_args = [args[n] for n in nums]
    param_paths, param_leaves = [], []
    for n, arg in zip(nums, diff_args, strict=True):
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            _check_param_leaf(path, leaf, n)
            param_paths.append(f"[{n}]" * many + jax.tree_util.keystr(path) or f"arg{n}")
            param_leaves.append(jnp.asarray(leaf))
    diff_treedef = jax.tree.structure(diff_args)
    others = {k: a for k, a in enumerate(args) if k not in nums}
    dynamic, static = eqx.partition(others, eqx.is_array)
    data_leaves, data_treedef = jax.tree.flatten(dynamic)
    num_params = len(param_leaves)
    aux_treedef = []

    def flat_fn(*flat):
        rebuilt_diff = jax.tree.unflatten(diff_treedef, flat[:num_params])
        rebuilt = eqx.combine(jax.tree.unflatten(data_treedef, flat[num_params:]), static)
        rebuilt.update(zip(nums, rebuilt_diff, strict=True))
        out = fn(*(rebuilt[k] for k in range(len(args))))
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
    builder = _Builder()
    inputs = [builder.new_var(var.aval) for var in jaxpr.invars]
    outputs = builder.inline(jaxpr, consts, inputs)
    graph = Graph(
        builder,
        param_ids=tuple(inputs[:num_params]),
        data_ids=tuple(inputs[num_params:]),
        loss_id=outputs[0],
        aux_ids=tuple(outputs[1:]),
        param_names=tuple(param_paths),
    )

    def unflatten_grads(flat_grads):
        grads = jax.tree.unflatten(diff_treedef, flat_grads)
        return tuple(grads) if many else grads[0]

    return Traced(
        graph,
        param_leaves,
        data_leaves,
        unflatten_grads,
        lambda flat_aux: jax.tree.unflatten(aux_treedef[-1], flat_aux),
    )


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


def trace(fn: Callable, *args, argnums=0, has_aux: bool = False) -> Graph:
    """Trace `fn(*args)` into a predictive-coding [`Graph`][pcgraph.Graph].

    The leaves of the arguments at `argnums` are the parameters (differentiated inputs); every
    other array argument is data, and arrays the function closes over are constants, exactly
    as under `jax.grad`. Nested `jax.jit` calls are inlined; `custom_jvp`/`custom_vjp`
    functions, `cond` and `scan` stay whole as single nodes.

    **Arguments:**

    - `fn`: a pure JAX function returning a scalar float loss (or `(loss, aux)` with
        `has_aux=True`).
    - `*args`: example arguments; only their shapes and dtypes matter.
    - `argnums`: an int or a tuple of ints, as for `jax.grad`.
    - `has_aux`: whether `fn` returns `(loss, aux)`.

    **Returns:**

    The `Graph`; print it (or call `.summary()`) to see its nodes.
    """
    return trace_flat(fn, args, argnums, has_aux).graph
