"""Graphs without value nodes: every algorithm returns backprop's gradient, so pcgraph says so
(once per compilation) and reports the node count in `Solution.stats.num_nodes`."""

import warnings

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_grads_close, normal

import pcgraph


def _two_layers(params, x, y):
    h = jnp.tanh(x @ params[0])
    return jnp.mean((h @ params[1] - y) ** 2)


def _one_layer(w, x, y):
    return jnp.mean((jnp.tanh(x @ w) - y) ** 2)


def _complex_only(w, x, y):
    z = (x @ w) * (1.0 + 2.0j)
    return jnp.mean(jnp.abs(jnp.fft.fft(z, axis=-1)) ** 2) + 0.0 * jnp.sum(y)


def _problem():
    k = jax.random.split(jax.random.key(0), 4)
    params = [normal(k[0], (5, 8), jnp.float32, 0.4), normal(k[1], (8, 3), jnp.float32, 0.3)]
    return params, normal(k[2], (6, 5), jnp.float32), normal(k[3], (6, 3), jnp.float32)


CASES = {
    "marks without marks": (_two_layers, lambda p: p, pcgraph.Marks(), "Marks"),
    "one layer": (_one_layer, lambda p: p[0][:, :3], None, "Layers"),
    "complex only": (_complex_only, lambda p: p[0], None, "Layers"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("algorithm", [pcgraph.FPA(), pcgraph.IL(), pcgraph.EPC()],
                         ids=["fpa", "il", "epc"])  # fmt: skip
def test_a_graph_without_nodes_warns_and_counts_zero(case, algorithm):
    fn, pick, placement, name = CASES[case]
    params, x, y = _problem()
    w = pick(params)
    with pytest.warns(UserWarning, match=rf"has no value nodes \(placement=pcgraph\.{name}\(\)\)"):
        solution = pcgraph.relax(fn, w, x, y, algorithm=algorithm, placement=placement)
    assert solution.stats.num_nodes == 0
    assert_grads_close(solution.grads, jax.grad(fn)(w, x, y), 1e-5)
    with warnings.catch_warnings():  # once: the second call reuses the compiled solve
        warnings.simplefilter("error")
        pcgraph.relax(fn, w, x, y, algorithm=algorithm, placement=placement)


def test_a_graph_with_nodes_does_not_warn_and_counts_them():
    params, x, y = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solution = pcgraph.relax(_two_layers, params, x, y, algorithm=pcgraph.IL())
        optimizer = __import__("optax").sgd(0.1)
        _, _, info = pcgraph.train_step(_two_layers, optimizer)(
            params, optimizer.init(params), x, y
        )
    assert solution.stats.num_nodes == 1 and info.stats.num_nodes == 1
