"""Lifting a `lax.scan` into value nodes stacked over its iterations.

A scan on the path from the parameters to the loss becomes one node per carry, and per `ys`
output computed in its body, each with a leading axis over the iterations. Its prediction is
the body evaluated for all iterations at once, so the program does not grow with the length.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import _jax_adapter as adapter
from ._equations import Eqn
from ._node_energy import Gaussian

#: The energy of a node without a mark's own: Gaussian with precision 1.
_DEFAULT_ENERGY = Gaussian(1.0)


def _body_deps(jaxpr: adapter.Jaxpr) -> tuple[frozenset[int], ...]:
    """For each output of `jaxpr`, the positions of the inputs it depends on through floating
    values: the paths along which a gradient can flow."""
    deps: dict[Any, frozenset[int]] = {
        var: frozenset({p})
        for p, var in enumerate(adapter.jaxpr_inputs(jaxpr))
        if adapter.is_inexact_aval(adapter.aval_of(var))
    }

    def of(atom) -> frozenset[int]:
        return frozenset() if adapter.is_literal(atom) else deps.get(atom, frozenset())

    for eqn in adapter.jaxpr_eqns(jaxpr):
        found = (
            frozenset()
            if adapter.eqn_primitive(eqn) in adapter.STOP_GRADIENT
            else frozenset().union(*(of(atom) for atom in adapter.eqn_inputs(eqn)))
        )
        for var in adapter.eqn_outputs(eqn):
            if not adapter.is_drop_var(var) and adapter.is_inexact_aval(adapter.aval_of(var)):
                deps[var] = found
    return tuple(of(atom) for atom in adapter.jaxpr_outputs(jaxpr))


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
    #: Per carry, then per y: the `(name, energy)` of a `pcgraph.node` mark in the body.
    marks: tuple[tuple[str | None, Any], ...]

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

    def node_outputs(self) -> list[tuple[int, tuple[str | None, Any]]]:
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


def _lift_scan(eqn: Eqn, avals: list[Any], marker_mode: bool) -> _ScanEqn:
    """Replace a scan equation by its lifted form, adding one stacked variable per carry."""
    scan = adapter.scan_params(eqn.params)
    jaxpr = adapter.jaxpr_of(scan.body)
    nc = scan.num_carry
    producers = {var: e for e in adapter.jaxpr_eqns(jaxpr) for var in adapter.eqn_outputs(e)}

    def mark(atom) -> tuple[str | None, Any]:
        producer = None if adapter.is_literal(atom) else producers.get(atom)
        if producer is not None and adapter.is_node_marker(adapter.eqn_primitive(producer)):
            name, energy = adapter.marker_params(adapter.eqn_params(producer))
            computed = len(adapter.eqn_inputs(producer)) > 1
            if computed or energy.describe != "gaussian":
                raise ValueError(
                    f"The `pcgraph.node` mark {name or ''!r} inside a lax.scan body has "
                    f"{'a computed precision' if computed else energy.describe + ' energy'}"
                    "; a node stacked over scan iterations takes a constant Gaussian precision. "
                    "Mark the node outside the scan, or give it `precision=<number>`."
                )
            return name, energy
        return None, _DEFAULT_ENERGY

    def is_node(atom) -> bool:
        producer = None if adapter.is_literal(atom) else producers.get(atom)
        if producer is None:
            return False  # a literal or a body input passed through: nothing to predict
        if marker_mode:
            return adapter.is_node_marker(adapter.eqn_primitive(producer))
        return adapter.is_float_aval(adapter.aval_of(atom)) and (
            adapter.eqn_primitive(producer) not in adapter.STRUCTURAL | adapter.STOP_GRADIENT
        )

    body_outputs = adapter.jaxpr_outputs(jaxpr)
    y_atoms = body_outputs[nc:]
    views = [
        None
        if adapter.is_literal(atom)
        else next((j for j, c in enumerate(body_outputs[:nc]) if c is atom), None)
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
        marks=tuple(mark(atom) for atom in body_outputs),
    )
