"""Comparing predictive-coding gradients with `jax.grad`, leaf by leaf."""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np

from ._algorithms import AbstractAlgorithm
from ._grad import relax
from ._placement import AbstractPlacement


@dataclasses.dataclass(frozen=True)
class LeafComparison:
    """One parameter leaf: PC gradient against `jax.grad`."""

    name: str
    shape: tuple[int, ...]
    cosine: float
    relative_error: float
    max_abs_error: float
    pc: np.ndarray
    reference: np.ndarray
    #: False when the PC gradient is at round-off level next to `jax.grad`'s (below
    #: `sqrt(eps)` of its dtype times the reference's norm): the error has not reached the
    #: leaf (after too few relaxation steps), and `cosine` (NaN then) would measure round-off.
    reached: bool = True


def _compare(name: str, pc, reference) -> LeafComparison:
    dtype = np.asarray(pc).dtype
    tiny = float(np.sqrt(np.finfo(dtype).eps)) if np.issubdtype(dtype, np.inexact) else 0.0
    pc = np.asarray(pc, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    diff = np.linalg.norm(pc - reference)
    ref_norm = np.linalg.norm(reference)
    pc_norm = np.linalg.norm(pc)
    if ref_norm == 0 and pc_norm == 0:
        cosine = 1.0
    elif ref_norm == 0 or pc_norm == 0:
        cosine = 0.0
    else:
        cosine = float(np.vdot(pc, reference) / (pc_norm * ref_norm))
    reached = not (ref_norm > 0 and pc_norm <= tiny * ref_norm)
    if not reached:
        cosine = float("nan")
    return LeafComparison(
        name=name,
        shape=reference.shape,
        cosine=cosine,
        relative_error=float(diff / ref_norm) if ref_norm else float(diff),
        max_abs_error=float(np.max(np.abs(pc - reference), initial=0.0)),
        pc=pc,
        reference=reference,
        reached=reached,
    )


@dataclasses.dataclass(frozen=True)
class GradReport:
    """Per-leaf agreement of predictive-coding gradients with `jax.grad`.

    Print it for a table. `relative_error` is `||g_pc - g_jax|| / ||g_jax||` (the absolute
    error where `g_jax` is zero); `cosine` is 1 for parallel gradients. A leaf whose PC
    gradient is at round-off level (the error has not reached it after the relaxation's steps)
    is reported as not reached, with a NaN cosine.
    """

    algorithm: str
    leaves: tuple[LeafComparison, ...]

    @property
    def max_relative_error(self) -> float:
        return max((leaf.relative_error for leaf in self.leaves), default=0.0)

    @property
    def min_cosine(self) -> float:
        """The smallest cosine; NaN when some leaf was not reached."""
        if not all(leaf.reached for leaf in self.leaves):
            return float("nan")
        return min((leaf.cosine for leaf in self.leaves), default=1.0)

    @property
    def not_reached(self) -> tuple[str, ...]:
        """The leaves the error has not reached (see [`pcgraph.GradReport`][])."""
        return tuple(leaf.name for leaf in self.leaves if not leaf.reached)

    def assert_close(self, rtol: float = 1e-5, atol: float = 1e-8) -> None:
        """Raise `AssertionError` unless every element satisfies
        `|g_pc - g_jax| <= atol + rtol * |g_jax|` (as `numpy.allclose`)."""
        failing = [
            leaf
            for leaf in self.leaves
            if not np.allclose(leaf.pc, leaf.reference, rtol=rtol, atol=atol)
        ]
        if failing:
            names = ", ".join(leaf.name for leaf in failing)
            raise AssertionError(
                f"PC gradients ({self.algorithm}) differ from jax.grad beyond rtol={rtol}, "
                f"atol={atol} at: {names}\n{self}"
            )

    def __str__(self) -> str:
        rows = [("leaf", "shape", "cosine", "rel. error", "max abs error")]
        rows += [
            (
                leaf.name,
                str(leaf.shape),
                f"{leaf.cosine:.6f}" if leaf.reached else "not reached",
                f"{leaf.relative_error:.2e}",
                f"{leaf.max_abs_error:.2e}",
            )
            for leaf in self.leaves
        ]
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = [f"PC ({self.algorithm}) vs jax.grad"]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        return "\n".join(line.rstrip() for line in lines)


def _filtered_grad(fn: Callable, args, kwargs, argnums, has_aux: bool):
    """`jax.grad` of the floating-point arrays of the arguments at `argnums`, the other leaves
    held fixed (`equinox.filter_grad`'s rule, which `pcgraph.relax` follows)."""
    many = isinstance(argnums, tuple | list)
    nums = [n % len(args) for n in (argnums if many else (argnums,))]
    parts = [eqx.partition(args[n], eqx.is_inexact_array) for n in nums]

    def on_arrays(*arrays):
        full = list(args)
        for n, array, (_, fixed) in zip(nums, arrays, parts, strict=True):
            full[n] = eqx.combine(array, fixed)
        return fn(*full, **kwargs)

    grads = jax.grad(on_arrays, tuple(range(len(nums))), has_aux=has_aux)(
        *(array for array, _ in parts)
    )
    grads = grads[0] if has_aux else grads
    return grads if many else grads[0]


def check_grad(
    fn: Callable,
    *args,
    argnums=0,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    **kwargs,
) -> GradReport:
    """Compare the gradient predictive coding reads off (`pcgraph.relax(fn, *args,
    argnums=argnums, algorithm=algorithm, **kwargs).grads`) with `jax.grad`'s, leaf by leaf
    (`placement`: where the value nodes go, see [`pcgraph.trace`][]).

    The arguments at `argnums` may be equinox Modules or any pytrees: their floating-point
    arrays are compared and their other leaves held fixed, as `equinox.filter_grad` does.

    **Returns:**

    A [`GradReport`][pcgraph.GradReport] with each leaf's cosine, relative error and largest
    absolute error; print it for a table, or call `.assert_close(rtol, atol)`.
    """
    pc = relax(
        fn, *args, argnums=argnums, has_aux=has_aux, algorithm=algorithm, placement=placement,
        **kwargs,
    ).grads  # fmt: skip
    reference = _filtered_grad(fn, args, kwargs, argnums, has_aux)
    pc_leaves = jax.tree_util.tree_leaves_with_path(pc)
    reference_leaves = jax.tree.leaves(reference)
    name = type(algorithm).__name__ if algorithm is not None else "FPA"
    return GradReport(
        algorithm=name,
        leaves=tuple(
            _compare(jax.tree_util.keystr(path) or "<root>", leaf, ref)
            for (path, leaf), ref in zip(pc_leaves, reference_leaves, strict=True)
        ),
    )
