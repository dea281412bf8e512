"""The tracer: node granularity, markers, inlining, opaque calls, summary and DOT output."""

import jax
import jax.numpy as jnp
import pytest
from helpers import custom_derivatives, nested_jit, residual_block, tanh_mlp

import pcgraph


def test_primitive_granularity_folds_structural_ops():
    def fn(w, x):
        h = jnp.reshape(x @ w, (-1,))
        h = jnp.tanh(h.astype(jnp.float32)).reshape(2, 3).T
        return jnp.sum(jnp.broadcast_to(h, (4, 3, 2)))

    graph = pcgraph.trace(fn, jnp.ones((3, 3)), jnp.ones((2, 3)), placement=pcgraph.Primitives())
    assert [info.op for info in graph.nodes] == ["dot_general", "tanh"]
    assert graph.nodes[1].parents == ("dot_general_0",)


def test_data_only_computation_is_not_a_node():
    def fn(w, x):
        features = jnp.exp(x) * 2.0
        return jnp.sum(jnp.sin(features * w))

    graph = pcgraph.trace(fn, jnp.ones(3), jnp.ones(3), placement=pcgraph.Primitives())
    assert [info.op for info in graph.nodes] == ["mul", "sin"]


def test_markers_define_the_nodes():
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(0), jnp.float32, mark=True)
    graph = pcgraph.trace(fn, *args)
    assert graph.node_names == ("hidden0", "hidden1")
    assert graph.nodes[0].parents == ("[0]['b']", "[0]['w']")
    assert graph.nodes[1].parents == ("[1]['b']", "[1]['w']", "hidden0")
    assert graph.depth == 2


def test_marker_precision_and_duplicate_names():
    def fn(w):
        h = w
        for _ in range(3):
            h = pcgraph.node(jnp.tanh(h), name="h", precision=2.5)
        return jnp.sum(h**2)

    graph = pcgraph.trace(fn, jnp.ones(3))
    assert graph.node_names == ("h", "h_1", "h_2")
    assert [info.precision for info in graph.nodes] == [2.5, 2.5, 2.5]


def test_precision_weights_the_energy(x64):
    def fn(w, precision):
        h = pcgraph.node(jnp.tanh(w), name="h", precision=precision)
        return jnp.sum((h - 2.0) ** 2)

    w = jnp.array([0.3, -0.2])
    algorithm = pcgraph.IL(beta=1.0, max_steps=2000, rtol=1e-10)
    for precision in (1.0, 4.0):
        solution = pcgraph.relax(lambda w, p=precision: fn(w, p), w, algorithm=algorithm)
        # Equilibrium of p/2 e^2 + (mu + e - 2)^2 in e: e = -2 (mu - 2) / (p + 2).
        expected = -2 * (jnp.tanh(w) - 2) / (precision + 2)
        assert jnp.allclose(solution.errors["h"], expected, rtol=1e-8)


def test_node_marks_pytrees():
    def fn(w):
        parts = pcgraph.node({"a": jnp.sin(w), "b": jnp.cos(w)}, name="pair")
        return jnp.sum(parts["a"] * parts["b"])

    assert pcgraph.trace(fn, jnp.ones(2)).node_names == ("pair['a']", "pair['b']")


def test_nested_jit_is_inlined():
    fn, args, _ = nested_jit(jax.random.PRNGKey(1), jnp.float32)
    ops = {info.op for info in pcgraph.trace(fn, *args, placement=pcgraph.Primitives()).nodes}
    assert "jit" not in ops and {"dot_general", "tanh"} <= ops


def test_custom_derivatives_are_single_opaque_nodes():
    fn, args, _ = custom_derivatives(jax.random.PRNGKey(2), jnp.float32)
    ops = [info.op for info in pcgraph.trace(fn, *args, placement=pcgraph.Primitives()).nodes]
    assert ops.count("custom_jvp_call") == 3  # relu, softplus's logaddexp, custom logsumexp
    assert ops.count("custom_vjp_call") == 1
    assert "max" not in ops  # relu's body stays inside its node


def test_summary_and_repr():
    fn, args, _ = residual_block(jax.random.PRNGKey(3), jnp.float32)
    graph = pcgraph.trace(fn, *args)
    text = graph.summary()
    assert text.splitlines()[0] == (
        f"Graph: {len(graph.nodes)} value nodes, depth {graph.depth}, 3 parameter leaves, "
        "placement: layers"
    )
    header = text.splitlines()[1].split()
    assert header == ["#", "name", "op", "shape", "precision", "dist", "final", "parents"]
    assert "float32[6, 5]" in text and text.splitlines()[-1].split()[0] == "loss"
    assert repr(graph) == text


def test_to_dot():
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(4), jnp.float32, mark=True)
    dot = pcgraph.trace(fn, *args).to_dot()
    assert dot.startswith("digraph pcgraph {") and dot.endswith("}")
    assert '"hidden0" -> "hidden1";' in dot
    assert '"hidden1" -> "loss";' in dot
    assert '"[0][\'w\']" -> "hidden0";' in dot
    assert dot.count("shape=box") == 6


def test_trace_accepts_argnums_and_has_aux():
    def fn(a, b):
        return jnp.sum(jnp.sin(a) * b), {"norm": jnp.linalg.norm(a)}

    graph = pcgraph.trace(
        fn, jnp.ones(2), jnp.ones(2), argnums=(0, 1), has_aux=True, placement=pcgraph.Primitives()
    )
    assert graph.param_names == ("[0]", "[1]")
    assert [info.op for info in graph.nodes] == ["sin", "mul"]


@pytest.mark.parametrize("jit", [False, True])
def test_node_is_identity_in_plain_jax(jit):
    f = jax.jit(pcgraph.node) if jit else pcgraph.node
    x = jnp.arange(3.0)
    assert jnp.array_equal(f(x), x)
    assert jnp.array_equal(jax.grad(lambda v: jnp.sum(pcgraph.node(v) ** 2))(x), 2 * x)
    assert jnp.array_equal(jax.vmap(pcgraph.node)(jnp.ones((2, 3))), jnp.ones((2, 3)))
    assert jnp.array_equal(jax.jvp(pcgraph.node, (x,), (x,))[1], x)
