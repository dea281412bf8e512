"""The prediction pass in segments: runs of equations, each up to one that outputs a node (or
the loss), evaluated as one call. Segments built alike share one compiled program, so a deep
network of alike layers is traced, linearised and transposed once per kind of layer.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from . import _jax_adapter as adapter
from ._equations import Eqn
from ._scan import _ScanEqn


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
    def of(cls, eqns: Sequence[Eqn], outputs: Sequence[int]) -> "_Segment":
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
    current: list[Eqn] = []
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


def _live_eqns(eqns: Sequence[Eqn], outputs: Sequence[int]) -> list[Eqn]:
    needed = set(outputs)
    live = []
    for eqn in reversed(eqns):
        if needed.intersection(eqn.outputs):
            live.append(eqn)
            needed.update(eqn.inputs)
    return live[::-1]
