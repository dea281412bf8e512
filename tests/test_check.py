"""pcgraph.check_grad: per-leaf agreement with jax.grad, a readable table, assert_close."""

import jax
import jax.numpy as jnp
import pytest
from helpers import tanh_mlp, with_aux

import pcgraph


@pytest.mark.slow
def test_fpa_report_is_exact(x64):
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(0), jnp.float64, mark=True)
    report = pcgraph.check_grad(fn, *args)
    assert [leaf.name for leaf in report.leaves] == [
        f"[{i}]['{k}']" for i in range(3) for k in ("b", "w")
    ]
    assert report.max_relative_error < 1e-12 and report.min_cosine > 1 - 1e-12
    report.assert_close(rtol=1e-10, atol=0)


@pytest.mark.slow
def test_il_report_shows_the_approximation(x64):
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(1), jnp.float64, mark=True)
    report = pcgraph.check_grad(fn, *args, algorithm=pcgraph.IL(beta=1.0, max_steps=200))
    assert 1e-3 < report.max_relative_error < 1.0
    with pytest.raises(AssertionError, match=r"PC gradients \(IL\) differ from jax.grad .* at: "):
        report.assert_close(rtol=1e-6, atol=0)
    report.assert_close(rtol=1.0, atol=1e-2)


@pytest.mark.slow
def test_report_table():
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(2), jnp.float32)
    lines = str(pcgraph.check_grad(fn, *args)).splitlines()
    assert lines[0] == "PC (FPA) vs jax.grad"
    assert lines[1].split() == ["leaf", "shape", "cosine", "rel.", "error", "max", "abs", "error"]
    assert len(lines) == 2 + 6
    name, shape, cosine, *_ = lines[2].split()
    assert (name, shape) == ("[0]['b']", "(7,)") and float(cosine) == pytest.approx(1.0, abs=1e-6)


def test_argnums_and_has_aux(x64):
    fn, args, kwargs = with_aux(jax.random.PRNGKey(3), jnp.float64)
    report = pcgraph.check_grad(fn, *args, argnums=(0, 1), **kwargs)
    assert report.leaves[-1].name == "[1]" and report.leaves[-1].shape == (6, 5)
    report.assert_close(rtol=1e-10)
