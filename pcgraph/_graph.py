"""Tracing a JAX function into a graph of value nodes, and evaluating that graph."""

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as adapter
from ._placement import (
    AbstractPlacement,
    Layers,
    Marks,
    Primitives,
    check_placement,
    layer_nodes,
)


class NodeInfo(NamedTuple):
    """What `Graph.summary()` shows about one value node. `iterations` is the length of the
    leading iteration axis of a node stacked over a lifted `lax.scan`, and None otherwise."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: np.dtype
    precision: float
    parents: tuple[str, ...]
    distance: int
    final_step: int
    iterations: int | None = None


@dataclasses.dataclass(frozen=True)
class _Eqn:
    primitive: adapter.Primitive
    params: dict[str, Any]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _body_deps(jaxpr: adapter.Jaxpr) -> tuple[frozenset[int], ...]:
    """For each output of `jaxpr`, the positions of the inputs it depends on through floating
    values: the paths along which a gradient can flow."""
    deps: dict[Any, frozenset[int]] = {
        var: frozenset({p})
        for p, var in enumerate(jaxpr.invars)
        if adapter.is_inexact_aval(var.aval)
    }

    def of(atom) -> frozenset[int]:
        return frozenset() if adapter.is_literal(atom) else deps.get(atom, frozenset())

    for eqn in jaxpr.eqns:
        found = (
            frozenset()
            if eqn.primitive in adapter.STOP_GRADIENT
            else frozenset().union(*(of(atom) for atom in eqn.invars))
        )
        for var in eqn.outvars:
            if not adapter.is_drop_var(var) and adapter.is_inexact_aval(var.aval):
                deps[var] = found
    return tuple(of(atom) for atom in jaxpr.outvars)


@dataclasses.dataclass(frozen=True, eq=False)
class _ScanEqn:
    """A `lax.scan` lifted into stacked value nodes.

    Inputs are the scan's `consts, init, xs`; outputs are the stacked carries (the carry after
    every iteration, along a leading axis indexed like `xs`), the stacked `ys` and the final
    carries. The feedforward pass runs the loop; the prediction pass evaluates the body for all
    iterations at once (a `vmap`), each reading the stacked carry's previous slice (the init
    for the first iteration), so the program does not grow with the length.
    """

    scan: adapter.ScanParams
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    #: Per body output (carries, then ys): the body inputs it depends on (see `_body_deps`).
    deps: tuple[frozenset[int], ...]
    #: Per y: the carry it is (`return h, h`), read off the stacked carry, or None.
    y_views: tuple[int | None, ...]
    #: Per y: whether the stacked y is a value node (when relevant).
    y_nodes: tuple[bool, ...]
    #: Per carry, then per y: the `(name, precision)` of a `pcgraph.node` mark in the body.
    marks: tuple[tuple[str | None, float], ...]

    @property
    def num_carry(self) -> int:
        return self.scan.num_carry

    @property
    def stacked(self) -> tuple[int, ...]:
        return self.outputs[: self.num_carry]

    @property
    def ys(self) -> tuple[int, ...]:
        return self.outputs[self.num_carry : len(self.outputs) - self.num_carry]

    @property
    def finals(self) -> tuple[int, ...]:
        return self.outputs[len(self.outputs) - self.num_carry :]

    def carry_position(self, j: int) -> int:
        """The body input (and eqn input) position of carry `j`."""
        return self.scan.num_consts + j

    def node_outputs(self) -> list[tuple[int, tuple[str | None, float]]]:
        """The outputs that are value nodes when relevant, with their marks."""
        carries = list(zip(self.stacked, self.marks[: self.num_carry], strict=True))
        ys = [
            (var, mark)
            for var, mark, is_node in zip(
                self.ys, self.marks[self.num_carry :], self.y_nodes, strict=True
            )
            if is_node
        ]
        return carries + ys

    def active_outputs(self, active_inputs: Sequence[bool]) -> list[bool]:
        """Which outputs depend on an active input; a carry turns active once any iteration
        makes it so (a fixed point over the loop)."""
        nc = self.num_carry
        active = list(active_inputs)
        while True:
            out = [any(active[p] for p in dep) for dep in self.deps]
            grown = [j for j in range(nc) if out[j] and not active[self.carry_position(j)]]
            if not grown:
                return [*out[:nc], *out[nc:], *out[:nc]]
            for j in grown:
                active[self.carry_position(j)] = True

    def reaching_inputs(self, reaching: Sequence[bool]) -> tuple[list[bool], list[bool]]:
        """Given which outputs reach the loss: which inputs do, and which stacked carries (a
        carry reaches the loss if a later iteration reads it on the way there)."""
        nc = self.num_carry
        carries = list(reaching[len(reaching) - nc :])
        ys = reaching[nc : len(reaching) - nc]
        while True:
            needed = frozenset().union(
                *(self.deps[j] for j in range(nc) if carries[j]),
                *(self.deps[nc + i] for i, r in enumerate(ys) if r),
            )
            grown = [j for j in range(nc) if not carries[j] and self.carry_position(j) in needed]
            if not grown:
                return [p in needed for p in range(len(self.inputs))], carries
            for j in grown:
                carries[j] = True

    def _split(self, invals):
        c, nc = self.scan.num_consts, self.num_carry
        return list(invals[:c]), list(invals[c : c + nc]), list(invals[c + nc :])

    def feedforward(self, invals: Sequence[Any]) -> list[Any]:
        consts, init, xs = self._split(invals)
        nc, body = self.num_carry, self.scan.body

        def step(carry, x):
            outs = adapter.call_closed(body, *consts, *carry, *x)
            return outs[:nc], (outs[nc:], outs[:nc])

        final, (ys, stacked) = jax.lax.scan(
            step,
            init,
            xs,
            length=self.scan.length,
            reverse=self.scan.reverse,
            unroll=self.scan.unroll,
        )
        return [*stacked, *ys, *final]

    def predict(self, invals: Sequence[Any], stacked: Sequence[Any]) -> list[Any]:
        """Predictions of the stacked carries and ys from the stacked carries' values; the ys
        that are views and the final carries are read off the values."""
        consts, init, xs = self._split(invals)
        init = [jnp.asarray(i) for i in init]  # a literal init arrives as a Python scalar
        if self.scan.reverse:
            previous = [jnp.concatenate([s[1:], i[None]]) for s, i in zip(stacked, init)]
        else:
            previous = [jnp.concatenate([i[None], s[:-1]]) for s, i in zip(stacked, init)]
        in_axes = (None,) * len(consts) + (0,) * (len(previous) + len(xs))
        outs = jax.vmap(
            functools.partial(adapter.call_closed, self.scan.body),
            in_axes=in_axes,
            axis_size=self.scan.length,
        )(*consts, *previous, *xs)
        nc = self.num_carry
        ys = [
            outs[nc + i] if view is None else stacked[view] for i, view in enumerate(self.y_views)
        ]
        last = 0 if self.scan.reverse else -1
        return [*outs[:nc], *ys, *(s[last] for s in stacked)]


def _lift_scan(eqn: _Eqn, avals: list[Any], marker_mode: bool) -> _ScanEqn:
    """Replace a scan equation by its lifted form, adding one stacked variable per carry."""
    scan = adapter.scan_params(eqn.params)
    jaxpr = adapter.jaxpr_of(scan.body)
    nc = scan.num_carry
    producers = {var: e for e in jaxpr.eqns for var in e.outvars}

    def mark(atom) -> tuple[str | None, float]:
        producer = None if adapter.is_literal(atom) else producers.get(atom)
        if producer is not None and adapter.is_node_marker(producer.primitive):
            return adapter.marker_params(producer.params)
        return None, 1.0

    def is_node(atom) -> bool:
        producer = None if adapter.is_literal(atom) else producers.get(atom)
        if producer is None:
            return False  # a literal or a body input passed through: nothing to predict
        if marker_mode:
            return adapter.is_node_marker(producer.primitive)
        return adapter.is_float_aval(atom.aval) and (
            producer.primitive not in adapter.STRUCTURAL | adapter.STOP_GRADIENT
        )

    y_atoms = jaxpr.outvars[nc:]
    views = [
        None
        if adapter.is_literal(atom)
        else next((j for j, c in enumerate(jaxpr.outvars[:nc]) if c is atom), None)
        for atom in y_atoms
    ]
    stacked = []
    for out in eqn.outputs[:nc]:
        aval = avals[out]
        avals.append(jax.ShapeDtypeStruct((scan.length, *aval.shape), aval.dtype))
        stacked.append(len(avals) - 1)
    return _ScanEqn(
        scan=scan,
        inputs=eqn.inputs,
        outputs=(*stacked, *eqn.outputs[nc:], *eqn.outputs[:nc]),
        deps=_body_deps(jaxpr),
        y_views=tuple(views),
        y_nodes=tuple(v is None and is_node(a) for v, a in zip(views, y_atoms, strict=True)),
        marks=tuple(mark(atom) for atom in jaxpr.outvars),
    )


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
                        "values instead); `jax.pure_callback` and runtime checks such as "
                        "`equinox.error_if` are allowed."
                    )
                outs = [self.new_var(var.aval) for var in eqn.outvars]
                # A runtime check is recorded as such: it runs on the feedforward pass only.
                primitive, params = adapter.recorded(eqn)
                self.eqns.append(_Eqn(primitive, params, tuple(ins), tuple(outs)))
            for var, out in zip(eqn.outvars, outs, strict=True):
                if not adapter.is_drop_var(var):
                    env[var] = out
        return [read(atom) for atom in jaxpr.outvars]


@dataclasses.dataclass(frozen=True)
class _Segment:
    """Consecutive prediction-pass equations up to and including one that outputs a node (or
    the loss), evaluated as one call.

    `structure` lists each equation as `(primitive, params, input positions, number of
    outputs)` over positions local to the segment (its inputs first, then each output in
    order), so layers built alike give equal structures. Those share one `jax.jit`-compiled
    program: JAX then linearises and transposes it once and reuses it for every such layer,
    instead of differentiating each primitive of each layer anew, and lowers it once."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    structure: tuple[tuple[Any, ...], ...]
    returned: tuple[int, ...]

    @classmethod
    def of(cls, eqns: Sequence[_Eqn], outputs: Sequence[int]) -> "_Segment":
        defined = {var for eqn in eqns for var in eqn.outputs}
        inputs = tuple(dict.fromkeys(i for eqn in eqns for i in eqn.inputs if i not in defined))
        position = {var: p for p, var in enumerate(inputs)}
        for eqn in eqns:
            position.update((var, len(position)) for var in eqn.outputs)
        structure = tuple(
            (
                eqn.primitive,
                # Marks and checks keep only what this pass reads, so marked or checked layers
                # share a program.
                adapter.relaxation_params(eqn.primitive, eqn.params),
                tuple(position[i] for i in eqn.inputs),
                len(eqn.outputs),
            )
            for eqn in eqns
        )
        return cls(inputs, tuple(outputs), structure, tuple(position[v] for v in outputs))

    def __call__(self, invals: Sequence[Any]) -> list[Any]:
        if not any(isinstance(x, jax.core.Tracer) for x in invals):
            # Concrete inputs (an eager call): compiling a program per segment would cost
            # more than it saves.
            return _run_segment(self.structure, self.returned, invals)
        try:
            program = _segment_program(self.structure, self.returned)
        except TypeError:  # parameters that cannot be hashed: evaluate eqn by eqn
            return _run_segment(self.structure, self.returned, invals)
        return program(*invals)


def _run_segment(structure, returned, invals) -> list[Any]:
    env = list(invals)
    for primitive, params, inputs, _ in structure:
        args = [env[i] for i in inputs]
        if adapter.is_node_marker(primitive):
            env.extend(args)
        else:
            env.extend(adapter.bind_for_relaxation(primitive, dict(params), args))
    return [env[i] for i in returned]


@functools.lru_cache(maxsize=4096)
def _segment_program(structure, returned) -> Callable:
    return jax.jit(lambda *invals: _run_segment(structure, returned, invals))


def _segments(eqns, ends: set[int], needed: set[int]) -> list[Any]:
    """Group `eqns` (in order) into `_Segment`s cut after each eqn that outputs a var in
    `ends`; `_ScanEqn`s stay on their own. A segment returns its outputs in `ends` and those
    that later eqns read, or that are in `needed`."""
    groups: list[Any] = []
    current: list[_Eqn] = []
    for eqn in eqns:
        if isinstance(eqn, _ScanEqn):
            groups.extend([current, eqn] if current else [eqn])
            current = []
            continue
        current.append(eqn)
        if ends.intersection(eqn.outputs):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    read_after: set[int] = set(needed)
    segments: list[Any] = []
    for group in reversed(groups):
        if isinstance(group, _ScanEqn):
            segments.append(group)
            read_after.update(group.inputs)
            continue
        outputs = sorted(
            var for eqn in group for var in eqn.outputs if var in ends or var in read_after
        )
        segment = _Segment.of(group, outputs)
        segments.append(segment)
        read_after.update(segment.inputs)
    return segments[::-1]


def _live_eqns(eqns: Sequence[_Eqn], outputs: Sequence[int]) -> list[_Eqn]:
    needed = set(outputs)
    live = []
    for eqn in reversed(eqns):
        if needed.intersection(eqn.outputs):
            live.append(eqn)
            needed.update(eqn.inputs)
    return live[::-1]


#: Which slices of a stacked node a reader reads.
_ALL, _FIRST, _LAST = "all", "first", "last"


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
        final_step, iterations), in topological order. `distance` is the length of the
        shortest path of nodes to the loss (with FPA and step size 1 the node's error is first
        non-zero at that step); `final_step` the longest (the error is final after that step).
        A node stacked over the iterations of a lifted `lax.scan` has `iterations` set to the
        scan's length, its shape starts with that axis, and each slice is a node of its own:
        `distance` is the smallest over the slices and `final_step` the largest (an error
        needs one step per iteration to travel back along the carry).
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
        lift_scans: bool = True,
        placement: AbstractPlacement | None = None,
    ):
        self._avals = builder.avals
        self._constants = builder.constants
        self._param_ids = param_ids
        self._data_ids = data_ids
        self._loss_id = loss_id
        self._aux_ids = aux_ids
        self.param_names = param_names
        self._eqns = _live_eqns(builder.eqns, (loss_id, *aux_ids))
        self._analyse(lift_scans, placement)

    # -- structure -------------------------------------------------------------------------

    def _relevant(self) -> set[int]:
        """The variables on a path from a differentiated input to the loss, along which a
        gradient flows."""
        active = set(self._param_ids)
        for eqn in self._eqns:
            if isinstance(eqn, _ScanEqn):
                flags = eqn.active_outputs([i in active for i in eqn.inputs])
                active.update(o for o, on in zip(eqn.outputs, flags, strict=True) if on)
            elif eqn.primitive in adapter.STOP_GRADIENT:
                continue
            elif active.intersection(eqn.inputs):
                active.update(o for o in eqn.outputs if adapter.is_inexact_aval(self._avals[o]))
        reaches_loss = {self._loss_id}
        for eqn in reversed(self._eqns):
            if isinstance(eqn, _ScanEqn):
                needed, carries = eqn.reaching_inputs([o in reaches_loss for o in eqn.outputs])
                reaches_loss.update(s for s, on in zip(eqn.stacked, carries, strict=True) if on)
                reaches_loss.update(
                    i for i, on in zip(eqn.inputs, needed, strict=True) if on and i in active
                )
            elif (
                reaches_loss.intersection(eqn.outputs)
                and eqn.primitive not in adapter.STOP_GRADIENT
            ):
                reaches_loss.update(i for i in eqn.inputs if i in active)
        return active & reaches_loss

    def _is_marker(self, eqn) -> bool:
        return (
            isinstance(eqn, _Eqn)
            and adapter.is_node_marker(eqn.primitive)
            and eqn.outputs[0] != self._loss_id
        )

    def _choose_placement(self, relevant: set[int], placement) -> AbstractPlacement:
        """`placement`, or by default marks when the differentiated path holds any (in a
        scan body too), layers otherwise."""
        if placement is not None:
            return placement
        path = [e for e in self._eqns if relevant.intersection(e.outputs)]
        marked = any(self._is_marker(e) for e in path) or any(
            adapter.is_scan(e.primitive)
            and adapter.contains_primitive(
                adapter.jaxpr_of(adapter.scan_params(e.params).body), adapter.node_p
            )
            for e in path
        )
        return Marks() if marked else Layers()

    def _lift_scans(self, relevant: set[int], marker_mode: bool) -> bool:
        """Lift the scans on the differentiated path into stacked nodes. With `pcgraph.node`
        marks, only scans whose body holds a mark are lifted; the rest fold into the
        predictions of the marked nodes, as any unmarked computation does. A scan with a
        complex carry stays whole (complex values are never nodes). Returns whether any scan
        was lifted."""
        scans = [
            e
            for e in self._eqns
            if relevant.intersection(e.outputs)
            and adapter.is_scan(e.primitive)
            and adapter.scan_params(e.params).length > 0
            and all(
                adapter.is_float_aval(self._avals[o])
                for o in e.outputs[: adapter.scan_params(e.params).num_carry]
                if o in relevant
            )
        ]
        lift = {
            id(e)
            for e in scans
            if not marker_mode
            or adapter.contains_primitive(
                adapter.jaxpr_of(adapter.scan_params(e.params).body), adapter.node_p
            )
        }
        self._eqns = [
            _lift_scan(e, self._avals, marker_mode) if id(e) in lift else e for e in self._eqns
        ]
        return bool(lift)

    def _analyse(self, lift_scans: bool, placement: AbstractPlacement | None):
        relevant = self._relevant()
        self.placement = self._choose_placement(relevant, placement)
        marker_mode = isinstance(self.placement, Marks)
        if lift_scans and self._lift_scans(relevant, marker_mode):
            relevant = self._relevant()
        self._pass_eqns = [e for e in self._eqns if relevant.intersection(e.outputs)]
        for eqn in self._pass_eqns:
            if isinstance(eqn, _Eqn) and eqn.primitive in adapter.NOT_REVERSE_DIFFERENTIABLE:
                raise ValueError(
                    f"The path from the differentiated arguments to the loss goes through "
                    f"`{eqn.primitive.name}` (a lax.while_loop, whose trip count may depend on "
                    "data). Reverse-mode differentiation, and so predictive coding, cannot "
                    "propagate errors through it; jax.grad fails on it too. Use lax.scan, or "
                    "lax.fori_loop with Python-int bounds, instead."
                )
        layers = {}
        if isinstance(self.placement, Layers):
            layers = layer_nodes(
                self._pass_eqns,
                is_lifted_scan=lambda e: isinstance(e, _ScanEqn),
                param_ids=self._param_ids,
                relevant=relevant,
                scalars={v for v in self._constants if math.prod(self._avals[v].shape) == 1},
                is_real=lambda var: adapter.is_float_aval(self._avals[var]),
                loss_id=self._loss_id,
            )
        node_ids, labels, ops, precisions, iterations = [], [], [], [], []

        def add(var, op, label, precision=1.0, length=None):
            node_ids.append(var)
            ops.append(op)
            labels.append(label or f"{op}_{len(node_ids) - 1}")
            precisions.append(precision)
            iterations.append(length)

        for eqn in self._pass_eqns:
            if isinstance(eqn, _ScanEqn):
                for var, (name, precision) in eqn.node_outputs():
                    if var in relevant:
                        add(var, "scan", name, precision, eqn.scan.length)
            elif marker_mode:
                if self._is_marker(eqn):
                    name, precision = adapter.marker_params(eqn.params)
                    add(eqn.outputs[0], "node", name or f"node_{len(node_ids)}", precision)
            elif layers:
                for out in eqn.outputs:
                    if out in layers:
                        add(out, layers[out], f"layer_{len(node_ids)}")
            elif (
                isinstance(self.placement, Primitives)
                and eqn.primitive not in adapter.STRUCTURAL
                and not adapter.is_node_marker(eqn.primitive)
            ):
                for out in eqn.outputs:
                    if (
                        out in relevant
                        and out != self._loss_id
                        and adapter.is_float_aval(self._avals[out])
                    ):
                        add(out, eqn.primitive.name, None)
        self._node_ids = tuple(node_ids)
        self._node_index = {var: k for k, var in enumerate(node_ids)}
        self._precisions = tuple(precisions)
        self._iterations = tuple(iterations)
        inputs = set(self._param_ids) | set(self._data_ids) | set(self._constants)
        # Values the pass reads but cannot change: computed once by the feedforward pass. A
        # lifted scan reads every stacked carry, also those that are not nodes.
        read = {i for e in self._pass_eqns for i in e.inputs} | {self._loss_id}
        read.update(s for e in self._pass_eqns if isinstance(e, _ScanEqn) for s in e.stacked)
        self._frozen_ids = tuple(sorted(read - relevant - inputs))
        self._pass_segments = _segments(
            self._pass_eqns, set(node_ids) | {self._loss_id}, {self._loss_id}
        )
        self._build_node_info(_unique(labels), ops)

    def _build_node_info(self, names: list[str], ops: list[str]):
        param_name = dict(zip(self._param_ids, self.param_names, strict=True))
        node_set = set(self._node_ids)
        # The nodes and parameters each variable is computed from, looking through non-nodes,
        # each with the slices it reads: all of them, or (through a lifted scan's final carry)
        # only the last iteration's.
        sources: dict[int, dict[int, str]] = {p: {p: _ALL} for p in self._param_ids}
        parents: dict[int, set[int]] = {n: set() for n in self._node_ids}
        # readers[n]: (slices of n read, reader node or None for the loss, slices read of it)
        readers: dict[int, list[tuple[str, int | None, str]]] = {n: [] for n in self._node_ids}
        # recurrent[n]: the nodes of the same lifted scan reading n's previous slice.
        recurrent: dict[int, list[int]] = {}
        groups: list[tuple[int, ...]] = []

        def merged(*found: dict[int, str]) -> dict[int, str]:
            out: dict[int, str] = {}
            for part in found:
                for var, slices in part.items():
                    out[var] = slices if out.get(var, slices) == slices else _ALL
            return out

        def link(found: dict[int, str], child: int, child_slices: str):
            for var, slices in found.items():
                parents[child].add(var)
                if var in node_set:
                    readers[var].append((slices, child, child_slices))

        for eqn in self._pass_eqns:
            if isinstance(eqn, _ScanEqn):
                group = tuple(o for o in eqn.outputs if o in node_set)
                if group:
                    groups.append(group)
                self._link_scan(eqn, sources, parents, recurrent, merged, link)
                continue
            found = merged(*(sources.get(i, {}) for i in eqn.inputs))
            for out in eqn.outputs:
                if out in node_set:
                    groups.append((out,))
                    link(found, out, _ALL)
                    sources[out] = {out: _ALL}
                else:
                    sources[out] = found
        loss_sources = sources.get(self._loss_id, {})
        for var, slices in loss_sources.items():
            if var in node_set:
                readers[var].append((slices, None, _ALL))

        # Per slice (in the order the iterations run): the step its error is first non-zero,
        # and the step after which it is final.
        first: dict[int, np.ndarray] = {}
        final: dict[int, np.ndarray] = {}

        def reader_steps(reader, slices):
            if reader is None:
                return 1, 1
            if slices == _FIRST:
                return first[reader][0] + 1, final[reader][0] + 1
            return np.min(first[reader]) + 1, np.max(final[reader]) + 1

        for group in reversed(groups):
            for n in group:
                length = self._iterations[self._node_index[n]] or 1
                first[n], final[n] = np.full(length, np.inf), np.full(length, -np.inf)
                for slices, reader, reader_slices in readers[n]:
                    at = slice(None) if slices == _ALL else slice(length - 1, length)
                    d, f = reader_steps(reader, reader_slices)
                    first[n][at] = np.minimum(first[n][at], d)
                    final[n][at] = np.maximum(final[n][at], f)
            # A carry's slice k is read by iteration k + 1 of the same scan.
            for k in range(len(first[group[0]]) - 2, -1, -1):
                for n in group:
                    for reader in recurrent.get(n, ()):
                        first[n][k] = min(first[n][k], first[reader][k + 1] + 1)
                        final[n][k] = max(final[n][k], final[reader][k + 1] + 1)
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
                parents=parent_names(parents[n]),
                distance=int(np.min(first[n])),
                final_step=int(np.max(final[n])),
                iterations=self._iterations[k],
            )
            for k, n in enumerate(self._node_ids)
        )
        self._loss_parents = parent_names(loss_sources)
        self.depth = max((info.final_step for info in self.nodes), default=0)

    def _link_scan(self, eqn: _ScanEqn, sources, parents, recurrent, merged, link):
        """Sources and readers of a lifted scan's outputs. Body output `o` reads the consts and
        xs at every iteration, each init at the first iteration only, and the carries' values
        of the previous iteration."""
        node_set = set(self._node_ids)
        nc = eqn.num_carry
        carry_positions = {eqn.carry_position(j): j for j in range(nc)}

        def external(dep) -> dict[int, str]:
            return merged(*(sources.get(eqn.inputs[p], {}) for p in dep))

        def carried(dep) -> dict[int, str]:
            stacked = (eqn.stacked[carry_positions[p]] for p in dep if p in carry_positions)
            return {s: _ALL for s in stacked if s in node_set}

        outputs = [*eqn.stacked, *eqn.ys]
        for o, (var, dep) in enumerate(zip(outputs, eqn.deps, strict=True)):
            if var in node_set:
                for p in dep:
                    found = sources.get(eqn.inputs[p], {})
                    link(found, var, _FIRST if p in carry_positions else _ALL)
                for s in carried(dep):
                    parents[var].add(s)
                    recurrent.setdefault(s, []).append(var)
                sources[var] = {var: _ALL}
            elif o >= nc:
                view = eqn.y_views[o - nc]
                if view is not None:
                    sources[var] = carried([eqn.carry_position(view)])
                else:
                    sources[var] = merged(external(dep), carried(dep))
        for s, final_carry in zip(eqn.stacked, eqn.finals, strict=True):
            sources[final_carry] = {s: _LAST} if s in node_set else {}

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
            invals = [self._read(env, i) for i in eqn.inputs]
            if isinstance(eqn, _ScanEqn):
                outs = eqn.feedforward(invals)
            else:
                outs = adapter.bind(eqn.primitive, eqn.params, invals)
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
        for eqn in self._pass_segments:
            invals = [self._read(env, i) for i in eqn.inputs]
            if isinstance(eqn, _ScanEqn):
                # Stacked carries that are not nodes keep their (frozen) feedforward values.
                outs = eqn.predict(invals, [env[s] for s in eqn.stacked])
                skip = set(eqn.stacked)
            else:
                outs = eqn(invals)
                skip = ()
            for var, out in zip(eqn.outputs, outs, strict=True):
                if var in self._node_index:
                    mus[self._node_index[var]] = out
                elif var not in skip:
                    env[var] = out
        return mus, self._read(env, self._loss_id)

    def errors(self, values, mus) -> list[jax.Array]:
        return [v - mu for v, mu in zip(values, mus, strict=True)]

    def precisions(self) -> tuple[float, ...]:
        return self._precisions

    # -- display -----------------------------------------------------------------------------

    def summary(self) -> str:
        """A table of the value nodes: name, op, shape, precision, parents, distance to the
        loss (shortest path) and the step after which the node's error is final (longest).
        A node stacked over the iterations of a lifted scan shows its shape as
        `iterations x dtype[slice shape]`."""
        rows = [("#", "name", "op", "shape", "precision", "dist", "final", "parents")]
        for k, info in enumerate(self.nodes):
            shape = f"{info.dtype.name}{list(info.shape)}"
            if info.iterations is not None:
                shape = f"{info.iterations} x {info.dtype.name}{list(info.shape[1:])}"
            rows.append(
                (
                    str(k),
                    info.name,
                    info.op,
                    shape,
                    f"{info.precision:g}",
                    str(info.distance),
                    str(info.final_step),
                    ", ".join(info.parents),
                )
            )
        rows.append(("", "loss", "", "", "", "0", "0", ", ".join(self._loss_parents)))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
        stacked = sum(info.iterations is not None for info in self.nodes)
        lines = [
            f"Graph: {len(self.nodes)} value nodes"
            + (f" ({stacked} stacked over scan iterations)" if stacked else "")
            + f", depth {self.depth}, {len(self._param_ids)} parameter leaves, "
            + f"placement: {self.placement.name}"
        ]
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def to_dot(self, errors: dict[str, Any] | None = None) -> str:
        """The graph in Graphviz DOT: parameters as boxes, value nodes as ellipses (labelled
        with name, shape and distance to the loss) and the loss as a double circle.

        **Arguments:**

        - `errors`: optionally, each node's error at equilibrium, keyed by node name, e.g.
            `pcgraph.relax(fn, *args).errors`. Each node is then filled by the norm of its
            error `||eps_i||` on a log scale from pale yellow (small) to dark red (large),
            spanning at most 6 decades below the largest; the norm is added to its label and
            the scale to the graph's caption. Nodes missing from `errors` stay unfilled.

        **Returns:**

        The DOT source. Draw it with [`pcgraph.Graph.render`][] or any Graphviz tool.
        """
        from . import _render

        lines = ["digraph pcgraph {", "  rankdir=LR;", '  node [fontname="Helvetica"];']

        def quoted(text):
            # A DOT string escapes backslashes and quotes and spells a line break `\n`.
            escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            return f'"{escaped}"'

        magnitudes, colours = {}, {}
        if errors is not None:
            magnitudes = _render.error_magnitudes(errors, self.node_names)
            colours, low, high = _render.colour_scale(magnitudes)
            caption = (
                f"node colour: error norm ||eps||, log scale from {low:.2g} (pale) to "
                f"{high:.2g} (dark)"
            )
            lines.append(f"  label={quoted(caption)}; labelloc=b; fontname=Helvetica;")
        for name in self.param_names:
            lines.append(f"  {quoted(name)} [shape=box, style=filled, fillcolor=lightgrey];")
        for info in self.nodes:
            label = f"{info.name}\n{list(info.shape)}\nd={info.distance}"
            style = ""
            if info.name in colours:
                label += f"\n|eps|={magnitudes[info.name]:.2g}"
                fill = colours[info.name]
                font = _render.text_colour(fill)
                style = f', style=filled, fillcolor="{fill}", fontcolor={font}'
            lines.append(f"  {quoted(info.name)} [shape=ellipse, label={quoted(label)}{style}];")
        lines.append('  "loss" [shape=doublecircle];')
        for info in self.nodes:
            lines.extend(f"  {quoted(p)} -> {quoted(info.name)};" for p in info.parents)
        lines.extend(f'  {quoted(p)} -> "loss";' for p in self._loss_parents)
        lines.append("}")
        return "\n".join(lines)

    def render(self, path, errors: dict[str, Any] | None = None, *, format: str | None = None):
        """Draw the graph to an SVG, PNG or PDF file with Graphviz.

        Needs Graphviz's `dot` executable on PATH (Debian/Ubuntu: `apt install graphviz`);
        without it this raises `FileNotFoundError` saying so, and `to_dot()` still works.

        **Arguments:**

        - `path`: the file to write; its suffix (`.svg`, `.png`, `.pdf`) picks the format.
        - `errors`: as for [`pcgraph.Graph.to_dot`][]: colour the nodes by their error.
        - `format`: `"svg"`, `"png"` or `"pdf"`, overriding the suffix.

        **Returns:**

        The path written, as a `pathlib.Path`.
        """
        from . import _render

        return _render.render_dot(self.to_dot(errors), path, format)


class Traced(NamedTuple):
    """A graph with the flat inputs it was traced on and how to rebuild the outputs."""

    graph: Graph
    params: list[jax.Array]
    data: list[Any]
    unflatten_grads: Callable[[list[jax.Array]], Any]
    unflatten_aux: Callable[[list[jax.Array]], Any]
    #: Where each data leaf came from, e.g. "argument 1" or "keyword argument `scale`['w']".
    data_names: tuple[str, ...]


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


def trace_flat(
    fn: Callable,
    args: Sequence[Any],
    argnums,
    has_aux: bool,
    lift_scans: bool = True,
    placement: AbstractPlacement | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Traced:
    """Trace `fn(*args, **kwargs)` with the leaves of `args[argnums]` as differentiated
    inputs (keyword arguments are data, as under `jax.grad`); with `lift_scans=False` every
    scan stays one opaque node."""
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
    others = ({k: a for k, a in enumerate(args) if k not in nums}, kwargs or {})
    dynamic, static = eqx.partition(others, eqx.is_array)
    data_paths, data_treedef = jax.tree_util.tree_flatten_with_path(dynamic)
    data_leaves = [leaf for _, leaf in data_paths]
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
        lift_scans=lift_scans,
        placement=placement,
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
        tuple(_data_name(path) for path, _ in data_paths),
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
    **kwargs,
) -> Graph:
    """Trace `fn(*args, **kwargs)` into a predictive-coding [`Graph`][pcgraph.Graph].

    The leaves of the arguments at `argnums` are the parameters (differentiated inputs); every
    other array argument is data, and arrays the function closes over are constants, exactly
    as under `jax.grad`. Nested `jax.jit` calls are inlined; `custom_jvp`/`custom_vjp`
    functions and `cond` stay whole as single nodes.

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
    - `**kwargs`: keyword arguments of `fn`, held fixed (data), as under `jax.grad`.

    **Returns:**

    The `Graph`; print it (or call `.summary()`) to see its nodes.
    """
    placement = check_placement(placement)
    return trace_flat(fn, args, argnums, has_aux, lift_scans, placement, kwargs).graph
