"""The graph of a traced function: its value nodes with their parents, energies and distances
to the loss, and the two passes over it: the feedforward pass and the prediction pass."""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from . import _jax_adapter as adapter, _render
from ._equations import Builder, Eqn
from ._node_energy import AbstractNodeEnergy, Gaussian
from ._placement import AbstractPlacement, Layers, Marks, Primitives, layer_nodes
from ._render import NodeInfo
from ._scan import _DEFAULT_ENERGY, _lift_scan, _ScanEqn
from ._segments import _live_eqns, _segments


class Feedforward(NamedTuple):
    """The function evaluated once on its inputs: the starting point of every relaxation."""

    values: list[jax.Array]
    frozen: list[jax.Array]
    loss: jax.Array
    aux: list[jax.Array]
    #: Per node: None for a constant precision, else the precision computed for it.
    precisions: list[jax.Array | None]


class Predictions(NamedTuple):
    """One prediction pass: each node's prediction `mu_i`, the loss, and each node's precision
    (None for a constant one, which its energy holds)."""

    mus: list[jax.Array]
    loss: jax.Array
    precisions: list[jax.Array | None]


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
        builder: Builder,
        param_ids: tuple[int, ...],
        data_ids: tuple[int, ...],
        loss_id: int,
        aux_ids: tuple[int, ...],
        param_names: tuple[str, ...],
        lift_scans: bool = True,
        placement: AbstractPlacement | None = None,
        latent_ids: tuple[int, ...] = (),
    ):
        self._avals = builder.avals
        self._constants = builder.constants
        self._param_ids = param_ids
        self._data_ids = data_ids
        self._latent_ids = latent_ids
        #: Where each latent leaf sits among the data leaves.
        self.latent_positions = tuple(data_ids.index(i) for i in latent_ids)
        self._loss_id = loss_id
        self._aux_ids = aux_ids
        self.param_names = param_names
        self._eqns = _live_eqns(builder.eqns, (loss_id, *aux_ids))
        self._analyse(lift_scans, placement)

    # -- structure -------------------------------------------------------------------------

    def _relevant(self) -> set[int]:
        """The variables on a path from a differentiated input or a latent to the loss, along
        which a gradient flows."""
        active = set(self._param_ids) | set(self._latent_ids)
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
                # Only the inputs the reaching outputs depend on: not an operand overwritten
                # entirely (a buffer a loop fills with inf as "not written yet"), nor what a
                # runtime check passes through to an output the loss does not read.
                live = adapter.reaching_inputs(
                    eqn.primitive,
                    eqn.params,
                    [self._avals[i].shape for i in eqn.inputs],
                    [self._constants.get(i) for i in eqn.inputs],
                    [o in reaches_loss for o in eqn.outputs],
                )
                reaches_loss.update(
                    i
                    for k, i in enumerate(eqn.inputs)
                    if i in active and (live is None or k in live)
                )
        return active & reaches_loss

    def _is_marker(self, eqn) -> bool:
        return (
            isinstance(eqn, Eqn)
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
            if isinstance(eqn, Eqn) and eqn.primitive in adapter.NOT_REVERSE_DIFFERENTIABLE:
                raise ValueError(
                    f"The path from the differentiated arguments to the loss goes through "
                    f"`{adapter.primitive_name(eqn.primitive)}` (a lax.while_loop, whose trip "
                    "count may depend on data). Reverse-mode differentiation, and so predictive "
                    "coding, cannot propagate errors through it; jax.grad fails on it too. Use "
                    "lax.scan, or lax.fori_loop with Python-int bounds, instead."
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
        if not marker_mode:
            self._check_marks_ignored()
        node_ids, labels, ops, energies, precision_ids, iterations = [], [], [], [], [], []

        def add(var, op, label, energy=_DEFAULT_ENERGY, precision_id=None, length=None):
            node_ids.append(var)
            ops.append(op)
            labels.append(label or f"{op}_{len(node_ids) - 1}")
            energies.append(energy)
            precision_ids.append(precision_id)
            iterations.append(length)

        for eqn in self._pass_eqns:
            if isinstance(eqn, _ScanEqn):
                for var, (name, energy) in eqn.node_outputs():
                    if var in relevant:
                        add(var, "scan", name, energy, length=eqn.scan.length)
            elif marker_mode:
                if self._is_marker(eqn):
                    name, energy = adapter.marker_params(eqn.params)
                    precision_id = eqn.inputs[1] if len(eqn.inputs) > 1 else None
                    label = name or f"node_{len(node_ids)}"
                    add(eqn.outputs[0], "node", label, energy, precision_id)
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
                        add(out, adapter.primitive_name(eqn.primitive), None)
        self._node_ids = tuple(node_ids)
        self._node_index = {var: k for k, var in enumerate(node_ids)}
        #: Each node's term in the energy.
        self.energies: tuple[AbstractNodeEnergy, ...] = tuple(energies)
        self._precision_ids = tuple(precision_ids)
        self._iterations = tuple(iterations)
        inputs = set(self._param_ids) | set(self._data_ids) | set(self._constants)
        # Values the pass reads but cannot change: computed once by the feedforward pass. A
        # lifted scan reads every stacked carry, also those that are not nodes.
        read = {i for e in self._pass_eqns for i in e.inputs} | {self._loss_id}
        read.update(s for e in self._pass_eqns if isinstance(e, _ScanEqn) for s in e.stacked)
        self._frozen_ids = tuple(sorted(read - relevant - inputs))
        computed = {i for i in precision_ids if i is not None}
        self._pass_segments = _segments(
            self._pass_eqns, set(node_ids) | {self._loss_id}, {self._loss_id} | computed
        )
        self._build_node_info(_unique(labels), ops)

    def _check_marks_ignored(self):
        """Outside `Marks()` placement a mark is not a node; refuse the marks whose energy
        would then be lost."""
        for eqn in self._pass_eqns:
            if self._is_marker(eqn):
                name, energy = adapter.marker_params(eqn.params)
                if len(eqn.inputs) > 1 or not isinstance(energy, Gaussian):
                    what = "a computed precision" if len(eqn.inputs) > 1 else energy.describe
                    raise ValueError(
                        f"placement={self.placement.name} ignores `pcgraph.node` marks, but the "
                        f"mark {name or ''!r} has {what} energy, which only a node can hold. "
                        "Use placement=pcgraph.Marks() (the default when the function holds "
                        "marks)."
                    )

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
                precision=(
                    self.energies[k].precision
                    if isinstance(self.energies[k], Gaussian) and self._precision_ids[k] is None
                    else math.nan
                ),
                parents=parent_names(parents[n]),
                distance=int(np.min(first[n])),
                final_step=int(np.max(final[n])),
                iterations=self._iterations[k],
                energy=self.energies[k],
                computed_precision=self._precision_ids[k] is not None,
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
            precisions=self._precisions_in(env),
        )

    def _precisions_in(self, env) -> list[Any]:
        return [None if i is None else self._read(env, i) for i in self._precision_ids]

    def predict(
        self,
        values: Sequence[Any],
        params: Sequence[Any],
        data: Sequence[Any],
        frozen: Sequence[Any],
    ) -> Predictions:
        """All node predictions `mu_i`, the loss and the computed precisions, with node values
        substituted for the nodes' outputs: every node's prediction depends only on its
        parents' values."""
        return self._pass(params, data, frozen, values=values)[1]

    def forward(
        self,
        errors: Sequence[Any],
        params: Sequence[Any],
        data: Sequence[Any],
        frozen: Sequence[Any],
    ) -> tuple[list[Any], Predictions]:
        """The node values that hold `errors`, and their predictions: one pass in topological
        order in which each node's value is the mean of its prediction plus its error (the
        values of Goemaere et al. 2025's error optimisation). With zero errors it is the
        feedforward pass. Needs a graph whose scans are kept whole (no stacked nodes)."""
        return self._pass(params, data, frozen, errors=errors)

    def _pass(self, params, data, frozen, *, values=None, errors=None):
        env = dict(zip(self._param_ids, params, strict=True))
        env.update(zip(self._data_ids, data, strict=True))
        env.update(zip(self._frozen_ids, frozen, strict=True))
        if values is not None:
            env.update(zip(self._node_ids, values, strict=True))
        out = list(values) if values is not None else [None] * len(self._node_ids)
        mus: list[Any] = [None] * len(self._node_ids)
        for eqn in self._pass_segments:
            invals = [self._read(env, i) for i in eqn.inputs]
            if isinstance(eqn, _ScanEqn):
                if errors is not None:
                    raise ValueError(
                        "A forward pass from errors cannot enter a lifted scan; trace the "
                        "graph with its scans kept whole."
                    )
                # Stacked carries that are not nodes keep their (frozen) feedforward values.
                outs = eqn.predict(invals, [env[s] for s in eqn.stacked])
                skip = set(eqn.stacked)
            else:
                outs = eqn(invals)
                skip = ()
            for var, mu in zip(eqn.outputs, outs, strict=True):
                if var in self._node_index:
                    k = self._node_index[var]
                    mus[k] = mu
                    if errors is not None:
                        env[var] = out[k] = self.energies[k].mean(mu) + errors[k]
                elif var not in skip:
                    env[var] = mu
        predictions = Predictions(mus, self._read(env, self._loss_id), self._precisions_in(env))
        return out, predictions

    @property
    def bounded_values(self) -> bool:
        """Whether any node's energy (Bernoulli, categorical) holds its value in [0, 1]."""
        return any(not isinstance(e, Gaussian) for e in self.energies)

    @property
    def computed_precisions(self) -> bool:
        """Whether any node's precision is an array computed from the inputs."""
        return any(i is not None for i in self._precision_ids)

    @property
    def learned_precisions(self) -> bool:
        """Whether any node's precision is computed from the differentiated arguments."""
        learned = {i for e in self._pass_eqns for i in e.outputs} | set(self._param_ids)
        return any(i in learned for i in self._precision_ids if i is not None)

    # -- display -----------------------------------------------------------------------------

    def summary(self) -> str:
        """A table of the value nodes: name, op, shape, precision, parents, distance to the
        loss (shortest path) and the step after which the node's error is final (longest).
        A node stacked over the iterations of a lifted scan shows its shape as
        `iterations x dtype[slice shape]`."""
        return _render.summary(
            self.nodes, self._loss_parents, self.depth, len(self._param_ids), self.placement.name
        )

    def __repr__(self) -> str:
        return self.summary()

    def to_dot(
        self,
        errors: dict[str, Any] | None = None,
        *,
        colour_by: dict[str, Any] | None = None,
        label: str = "||eps||",
    ) -> str:
        """The graph in Graphviz DOT: parameters as boxes, value nodes as ellipses (labelled
        with name, shape and distance to the loss) and the loss as a double circle.

        **Arguments:**

        - `errors`: optionally, each node's error at equilibrium, keyed by node name, e.g.
            `pcgraph.relax(fn, *args).errors`. Each node is then filled by the norm of its
            error `||eps_i||` on a log scale from pale yellow (small) to dark red (large),
            spanning at most 6 decades below the largest; the norm is added to its label and
            the scale to the graph's caption. Nodes missing from `errors` stay unfilled.
        - `colour_by`: instead of `errors`, any per-node quantity keyed by node name, coloured
            by its norm in the same way: e.g. the energies a relaxation recorded at its last
            step, `{name: e[-1] for name, e in solution.stats.nodes.energies.items()}`.
        - `label`: what the colour shows, for the caption and the node labels.

        **Returns:**

        The DOT source. Draw it with [`pcgraph.Graph.render`][] or any Graphviz tool.
        """
        return _render.to_dot(
            self.nodes,
            self.param_names,
            self._loss_parents,
            errors,
            colour_by=colour_by,
            label=label,
        )

    def render(
        self,
        path,
        errors: dict[str, Any] | None = None,
        *,
        colour_by: dict[str, Any] | None = None,
        label: str = "||eps||",
        format: str | None = None,
    ):
        """Draw the graph to an SVG, PNG or PDF file with Graphviz.

        Needs Graphviz's `dot` executable on PATH (Debian/Ubuntu: `apt install graphviz`);
        without it this raises `FileNotFoundError` saying so, and `to_dot()` still works.

        **Arguments:**

        - `path`: the file to write; its suffix (`.svg`, `.png`, `.pdf`) picks the format.
        - `errors`, `colour_by`, `label`: as for [`pcgraph.Graph.to_dot`][]: colour the nodes
            by their error or by any recorded per-node quantity.
        - `format`: `"svg"`, `"png"` or `"pdf"`, overriding the suffix.

        **Returns:**

        The path written, as a `pathlib.Path`.
        """
        return _render.render_dot(
            self.to_dot(errors, colour_by=colour_by, label=label), path, format
        )
