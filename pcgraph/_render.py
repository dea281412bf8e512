"""Showing graphs: the summary table, the DOT source with error magnitudes as colours, and
running Graphviz's `dot`."""

import math
import os
import pathlib
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._node_energy import Gaussian


class NodeInfo(NamedTuple):
    """What `Graph.summary()` shows about one value node. `iterations` is the length of the
    leading iteration axis of a node stacked over a lifted `lax.scan`, and None otherwise.
    `precision` is a Gaussian node's constant precision, NaN when it is an array or computed,
    and NaN for the other energies."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: np.dtype
    precision: float
    parents: tuple[str, ...]
    distance: int
    final_step: int
    iterations: int | None = None
    #: The node's term in the energy (a `pcgraph.Gaussian`, `Bernoulli` or `Categorical`).
    energy: Any = None
    #: Whether the precision is an array computed at each call (`precision` is then NaN).
    computed_precision: bool = False


# A sequential palette from pale yellow (small error) to dark red (large error). Each stop is
# darker than the one before, so the fill darkens monotonically with the error.
_PALETTE = (
    (255, 255, 204),
    (254, 217, 118),
    (253, 141, 60),
    (227, 26, 28),
    (128, 0, 38),
)
#: Errors more than this many decades below the largest share the palest colour: on a log
#: scale, round-off (1e-16) would otherwise squeeze every meaningful error into the dark end.
DECADES = 6
#: The formats `Graph.render` accepts, by file suffix.
FORMATS = ("svg", "png", "pdf")


def error_magnitudes(errors: Any, names: Sequence[str]) -> dict[str, float]:
    """The Euclidean norm `||eps_i||` of each node's error, keyed by node name.

    `errors` maps node names to arrays, as `pcgraph.relax(...).errors` does. Nodes missing
    from it get no entry (they are drawn uncoloured)."""
    if hasattr(errors, "errors") and not isinstance(errors, Mapping):
        raise TypeError(
            "Graph.to_dot(errors=...) takes the mapping of node errors, not the whole "
            f"{type(errors).__name__}; pass `solution.errors`."
        )
    if not isinstance(errors, Mapping):
        raise TypeError(
            "Graph.to_dot(errors=...) takes a mapping from node name to error array, such as "
            f"`pcgraph.relax(...).errors`, but got a {type(errors).__name__}."
        )
    unknown = sorted(set(errors) - set(names))
    if unknown:
        raise ValueError(
            f"Graph.to_dot(errors=...) got errors for {unknown}, which are not nodes of this "
            f"graph (its nodes are {list(names)}). Pass the errors of a relaxation of the same "
            "function, e.g. `pcgraph.relax(fn, *args).errors`."
        )
    magnitudes = {}
    for name in names:
        if name in errors:
            value = float(np.linalg.norm(np.asarray(errors[name], dtype=np.float64)))
            if not math.isfinite(value):
                raise ValueError(
                    f"Graph.to_dot(errors=...): the error of node {name!r} is not finite "
                    f"({value}); the relaxation diverged, see `Solution.stats`."
                )
            magnitudes[name] = value
    return magnitudes


def _position(magnitude: float, low: float, high: float) -> float:
    """Where `magnitude` sits on the log scale from `low` to `high`, in [0, 1]."""
    if magnitude <= 0 or magnitude < low:
        return 0.0
    if high <= low:
        return 1.0
    return (math.log10(magnitude) - math.log10(low)) / (math.log10(high) - math.log10(low))


def _interpolate(t: float) -> str:
    scaled = t * (len(_PALETTE) - 1)
    k = min(int(scaled), len(_PALETTE) - 2)
    frac = scaled - k
    rgb = [round(a + (b - a) * frac) for a, b in zip(_PALETTE[k], _PALETTE[k + 1])]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def colour_scale(magnitudes: Mapping[str, float]) -> tuple[dict[str, str], float, float]:
    """Fill colours on a log scale spanning at most `DECADES` decades below the largest
    magnitude; returns the colours (hex `#rrggbb`) and the scale's low and high ends. Zero
    errors get the palest colour."""
    high = max(magnitudes.values(), default=0.0)
    positive = [m for m in magnitudes.values() if m > 0]
    low = max(min(positive), high * 10.0**-DECADES) if positive else 0.0
    colours = {name: _interpolate(_position(m, low, high)) for name, m in magnitudes.items()}
    return colours, low, high


def luminance(colour: str) -> float:
    """Relative luminance (ITU-R BT.709 weights) of a `#rrggbb` colour, in [0, 1]."""
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_colour(fill: str) -> str:
    """Black on pale fills, white on dark ones, so labels stay readable."""
    return "black" if luminance(fill) > 0.45 else "white"


def summary(
    nodes: Sequence[NodeInfo],
    loss_parents: Sequence[str],
    depth: int,
    num_params: int,
    placement: str,
) -> str:
    """The table `Graph.summary()` shows: one row per value node, then the loss."""
    rows = [("#", "name", "op", "shape", "precision", "dist", "final", "parents")]
    for k, info in enumerate(nodes):
        shape = f"{info.dtype.name}{list(info.shape)}"
        if info.iterations is not None:
            shape = f"{info.iterations} x {info.dtype.name}{list(info.shape[1:])}"
        rows.append(
            (
                str(k),
                info.name,
                info.op,
                shape,
                _precision_cell(info),
                str(info.distance),
                str(info.final_step),
                ", ".join(info.parents),
            )
        )
    rows.append(("", "loss", "", "", "", "0", "0", ", ".join(loss_parents)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    stacked = sum(info.iterations is not None for info in nodes)
    lines = [
        f"Graph: {len(nodes)} value nodes"
        + (f" ({stacked} stacked over scan iterations)" if stacked else "")
        + f", depth {depth}, {num_params} parameter leaves, placement: {placement}"
    ]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _precision_cell(info: NodeInfo) -> str:
    if not isinstance(info.energy, Gaussian):
        return info.energy.describe
    return "computed" if info.computed_precision else f"{info.precision:g}"


def to_dot(
    nodes: Sequence[NodeInfo],
    param_names: Sequence[str],
    loss_parents: Sequence[str],
    errors: dict[str, Any] | None = None,
    *,
    colour_by: dict[str, Any] | None = None,
    label: str = "||eps||",
) -> str:
    """The DOT source `Graph.to_dot()` returns; nodes coloured by `errors` or `colour_by`."""
    lines = ["digraph pcgraph {", "  rankdir=LR;", '  node [fontname="Helvetica"];']

    def quoted(text):
        # A DOT string escapes backslashes and quotes and spells a line break `\n`.
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'

    if errors is not None and colour_by is not None:
        raise TypeError("Graph.to_dot: pass `errors` or `colour_by`, not both.")
    colour_by = errors if colour_by is None else colour_by
    magnitudes, colours = {}, {}
    if colour_by is not None:
        magnitudes = error_magnitudes(colour_by, [info.name for info in nodes])
        colours, low, high = colour_scale(magnitudes)
        what = "error norm ||eps||" if errors is not None else f"norm of {label}"
        caption = f"node colour: {what}, log scale from {low:.2g} (pale) to {high:.2g} (dark)"
        lines.append(f"  label={quoted(caption)}; labelloc=b; fontname=Helvetica;")
    for name in param_names:
        lines.append(f"  {quoted(name)} [shape=box, style=filled, fillcolor=lightgrey];")
    label_name = "|eps|" if errors is not None else label
    for info in nodes:
        text = f"{info.name}\n{list(info.shape)}\nd={info.distance}"
        style = ""
        if info.name in colours:
            text += f"\n{label_name}={magnitudes[info.name]:.2g}"
            fill = colours[info.name]
            font = text_colour(fill)
            style = f', style=filled, fillcolor="{fill}", fontcolor={font}'
        lines.append(f"  {quoted(info.name)} [shape=ellipse, label={quoted(text)}{style}];")
    lines.append('  "loss" [shape=doublecircle];')
    for info in nodes:
        lines.extend(f"  {quoted(p)} -> {quoted(info.name)};" for p in info.parents)
    lines.extend(f'  {quoted(p)} -> "loss";' for p in loss_parents)
    lines.append("}")
    return "\n".join(lines)


def render_dot(dot_source: str, path, format: str | None) -> pathlib.Path:
    """Write `dot_source` rendered by Graphviz's `dot` executable to `path`."""
    path = pathlib.Path(path)
    fmt = format or path.suffix.removeprefix(".").lower()
    if fmt not in FORMATS:
        raise ValueError(
            f"Graph.render({str(path)!r}): cannot tell the output format from the suffix "
            f"{path.suffix!r}. Use a path ending in .svg, .png or .pdf, or pass "
            "format='svg' (or 'png', 'pdf')."
        )
    executable = shutil.which("dot")
    if executable is None:
        raise FileNotFoundError(
            "Graph.render needs Graphviz's `dot` executable, which is not on PATH. Install "
            "Graphviz (Debian/Ubuntu: `sudo apt install graphviz`; macOS: `brew install "
            "graphviz`; conda: `conda install graphviz`), or write `graph.to_dot()` to a "
            ".dot file and render it elsewhere."
        )
    result = subprocess.run(
        [executable, f"-T{fmt}", "-o", os.fspath(path)],
        input=dot_source.encode(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"Graphviz `dot -T{fmt}` failed with exit code {result.returncode} writing "
            f"{str(path)!r}:\n{result.stderr.decode(errors='replace').strip()}"
        )
    return path
