"""A jaxpr flattened into equations over integer variable ids: the records the tracer produces
and every pass over a graph reads. Nested calls (`jit`, `closed_call`) are inlined, so a graph
sees one flat list of primitive applications."""

import dataclasses
from collections.abc import Sequence
from typing import Any

from . import _jax_adapter as adapter


@dataclasses.dataclass(frozen=True)
class Eqn:
    """One primitive application: its inputs and outputs are integer variable ids."""

    primitive: adapter.Primitive
    params: dict[str, Any]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class Builder:
    """Flattens a jaxpr into `Eqn`s over integer variable ids, inlining nested calls."""

    def __init__(self):
        self.avals: list[Any] = []
        self.constants: dict[int, Any] = {}
        self.eqns: list[Eqn] = []

    def new_var(self, aval) -> int:
        self.avals.append(aval)
        return len(self.avals) - 1

    def constant(self, value, aval) -> int:
        var = self.new_var(aval)
        self.constants[var] = value
        return var

    def inline(self, jaxpr: adapter.Jaxpr, consts: Sequence[Any], inputs: Sequence[int]):
        env: dict[Any, int] = {}
        for var, value in zip(adapter.jaxpr_constants(jaxpr), consts, strict=True):
            env[var] = self.constant(value, adapter.aval_of(var))
        env.update(zip(adapter.jaxpr_inputs(jaxpr), inputs, strict=True))

        def read(atom) -> int:
            if adapter.is_literal(atom):
                return self.constant(adapter.literal_value(atom), adapter.aval_of(atom))
            return env[atom]

        for eqn in adapter.jaxpr_eqns(jaxpr):
            ins = [read(atom) for atom in adapter.eqn_inputs(eqn)]
            body = adapter.inline_body(eqn)
            if body is not None:
                outs = self.inline(*body, ins)
            else:
                if adapter.has_side_effects(eqn):
                    name = adapter.primitive_name(adapter.eqn_primitive(eqn))
                    raise ValueError(
                        f"pcgraph cannot trace a function with side effects: found `{name}`. "
                        "Predictive coding re-evaluates the function's predictions many times "
                        "during relaxation, so a callback, print or other effect would run an "
                        "unpredictable number of times. Move it out of the function you pass to "
                        "pcgraph (for example, print the returned aux values instead); "
                        "`jax.pure_callback` and runtime checks such as `equinox.error_if` are "
                        "allowed."
                    )
                outs = [self.new_var(adapter.aval_of(var)) for var in adapter.eqn_outputs(eqn)]
                # A runtime check is recorded as such: it runs on the feedforward pass only.
                primitive, params = adapter.recorded(eqn)
                self.eqns.append(Eqn(primitive, params, tuple(ins), tuple(outs)))
            for var, out in zip(adapter.eqn_outputs(eqn), outs, strict=True):
                if not adapter.is_drop_var(var):
                    env[var] = out
        return [read(atom) for atom in adapter.jaxpr_outputs(jaxpr)]
