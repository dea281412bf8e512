"""Graph pictures: `Graph.to_dot(errors=...)` colours and `Graph.render` through Graphviz."""

import os
import pathlib
import re
import stat
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tanh_mlp

import pcgraph
from pcgraph import _render

FILL = re.compile(
    r'^\s*"([^"]+)" \[shape=ellipse, label="([^"]*)", style=filled, fillcolor="(#[0-9a-f]{6})"'
)


def chain(depth):
    """A chain of `depth` marked tanh layers; node `layer{i}` is at distance `depth - i`."""

    def loss(ws, x):
        h = x
        for i, w in enumerate(ws):
            h = pcgraph.node(jnp.tanh(h @ w), name=f"layer{i}")
        return jnp.sum(h**2)

    keys = jax.random.split(jax.random.PRNGKey(0), depth + 1)
    ws = [jax.random.normal(k, (4, 4)) * 0.8 for k in keys[:-1]]
    return loss, (ws, jax.random.normal(keys[-1], (3, 4)))


def fills(dot: str) -> dict[str, str]:
    return {m[1]: m[3] for line in dot.splitlines() if (m := FILL.match(line))}


def test_to_dot_without_errors_fills_no_value_node():
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(1), jnp.float32, mark=True)
    dot = pcgraph.trace(fn, *args).to_dot()
    assert fills(dot) == {}
    assert 'label="node colour' not in dot
    # Labels break lines with DOT's `\n` escape, not a literal backslash.
    assert '"hidden0\\n[6, 7]\\nd=2"' in dot


def test_colours_darken_monotonically_with_the_error():
    loss, args = chain(5)
    graph = pcgraph.trace(loss, *args)
    magnitudes = {f"layer{i}": 10.0 ** (i - 4) for i in range(5)}  # 1e-4 ... 1
    # Arrays whose norm is the given magnitude (two equal entries, each m / sqrt(2)).
    errors = {name: np.full((2,), m / np.sqrt(2)) for name, m in magnitudes.items()}
    colours = fills(graph.to_dot(errors))
    assert set(colours) == set(magnitudes)
    by_error = sorted(magnitudes, key=magnitudes.get)
    lum = [_render.luminance(colours[name]) for name in by_error]
    assert all(a > b for a, b in zip(lum, lum[1:])), lum
    assert colours[by_error[0]] == "#ffffcc" and colours[by_error[-1]] == "#800026"


def test_equilibrium_errors_of_a_relaxation_are_drawn_in_order():
    loss, args = chain(4)
    solution = pcgraph.relax(loss, *args, algorithm=pcgraph.FPA())
    dot = pcgraph.trace(loss, *args).to_dot(solution.errors)
    colours = fills(dot)
    assert set(colours) == set(solution.errors)
    norms = {name: float(np.linalg.norm(e)) for name, e in solution.errors.items()}
    order = sorted(norms, key=norms.get)
    lum = [_render.luminance(colours[name]) for name in order]
    assert all(a >= b for a, b in zip(lum, lum[1:])), (norms, lum)
    assert lum[0] > lum[-1]
    # Each label carries the error norm; the caption states the scale.
    for name, norm in norms.items():
        assert f"{name}\\n[3, 4]" in dot and f"|eps|={norm:.2g}" in dot
    assert f"log scale from {min(norms.values()):.2g} (pale) to {max(norms.values()):.2g}" in dot


def test_zero_errors_are_palest_and_tiny_errors_are_clipped():
    colours, low, high = _render.colour_scale({"a": 0.0, "b": 1e-30, "c": 1e-3, "d": 2.0})
    assert high == 2.0 and low == pytest.approx(2e-6)
    assert colours["a"] == colours["b"] == "#ffffcc"
    assert _render.luminance(colours["c"]) > _render.luminance(colours["d"])
    # All errors equal, or all zero: one colour, no division by zero.
    assert _render.colour_scale({"a": 0.5, "b": 0.5})[0] == {"a": "#800026", "b": "#800026"}
    assert _render.colour_scale({"a": 0.0})[0] == {"a": "#ffffcc"}


def test_label_text_stays_readable_on_dark_fills():
    assert _render.text_colour("#ffffcc") == "black"
    assert _render.text_colour("#800026") == "white"


def test_bad_errors_arguments():
    loss, args = chain(2)
    graph = pcgraph.trace(loss, *args)
    solution = pcgraph.relax(loss, *args)
    with pytest.raises(TypeError, match=r"not the whole Solution; pass `solution.errors`"):
        graph.to_dot(solution)
    with pytest.raises(TypeError, match=r"mapping from node name to error array.*got a list"):
        graph.to_dot([1.0, 2.0])
    with pytest.raises(ValueError, match=r"got errors for \['hidden9'\], which are not nodes"):
        graph.to_dot({"hidden9": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"error of node 'layer0' is not finite"):
        graph.to_dot({"layer0": jnp.array([jnp.nan])})


def test_render_without_graphviz_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `dot` anywhere
    loss, args = chain(2)
    with pytest.raises(FileNotFoundError, match=r"`dot` executable.*apt install graphviz"):
        pcgraph.trace(loss, *args).render(tmp_path / "graph.svg")
    assert not (tmp_path / "graph.svg").exists()


def _fake_dot(bin_dir: pathlib.Path, body: str) -> None:
    """A `dot` executable on PATH: a Python script standing in for Graphviz."""
    script = bin_dir / "dot"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


FAKE_DOT = """
fmt = sys.argv[1].removeprefix("-T")
out = sys.argv[sys.argv.index("-o") + 1]
with open(out, "w") as f:
    f.write(f"rendered as {fmt}\\n" + sys.stdin.read())
"""


@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_render_runs_dot_with_the_format_of_the_suffix(tmp_path, monkeypatch, suffix):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, FAKE_DOT)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    loss, args = chain(3)
    graph = pcgraph.trace(loss, *args)
    errors = pcgraph.relax(loss, *args).errors
    written = graph.render(str(tmp_path / f"graph.{suffix}"), errors=errors)
    assert written == tmp_path / f"graph.{suffix}"
    assert written.read_text() == f"rendered as {suffix}\n" + graph.to_dot(errors)


def test_render_format_argument_and_bad_suffix(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, FAKE_DOT)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    loss, args = chain(2)
    graph = pcgraph.trace(loss, *args)
    written = graph.render(tmp_path / "picture", format="png")
    assert written.read_text().startswith("rendered as png\n")
    with pytest.raises(ValueError, match=r"suffix '\.jpg'.*\.svg, \.png or \.pdf"):
        graph.render(tmp_path / "graph.jpg")


def test_render_reports_a_failing_dot(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, 'sys.stderr.write("Error: syntax error in line 1")\nsys.exit(3)')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    loss, args = chain(2)
    graph = pcgraph.trace(loss, *args)
    with pytest.raises(RuntimeError, match=r"(?s)`dot -Tsvg` failed with exit code 3.*syntax"):
        graph.render(tmp_path / "graph.svg")
