"""`check_grad` on approximate algorithms: leaves the error has not reached are reported as
such, not with a cosine measured on round-off."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import normal

import pcgraph


def _mlp(params, x, y):
    h = x
    for w in params[:-1]:
        h = jnp.tanh(h @ w)
    return jnp.mean((h @ params[-1] - y) ** 2)


def _problem():
    k = jax.random.split(jax.random.key(0), 6)
    params = [
        normal(k[0], (8, 32), jnp.float32, 0.35),
        normal(k[1], (32, 32), jnp.float32, 0.18),
        normal(k[2], (32, 32), jnp.float32, 0.18),
        normal(k[3], (32, 4), jnp.float32, 0.18),
    ]
    return params, normal(k[4], (16, 8), jnp.float32), normal(k[5], (16, 4), jnp.float32)


def test_leaves_not_reached_after_one_step_are_reported_as_such():
    """After one IL step the error has reached only the last layers: the first two leaves'
    PC gradients are zero up to round-off, so their cosine means nothing."""
    params, x, y = _problem()
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=1, rtol=None)
    report = pcgraph.check_grad(_mlp, params, x, y, algorithm=algorithm)
    assert report.not_reached == ("[0]", "[1]")
    assert [leaf.reached for leaf in report.leaves] == [False, False, True, True]
    assert all(np.isnan(leaf.cosine) for leaf in report.leaves[:2])
    assert np.isnan(report.min_cosine)
    assert str(report).count("not reached") == 2
    # Given enough steps, every leaf is reached.
    converged = pcgraph.check_grad(_mlp, params, x, y, algorithm=pcgraph.IL())
    assert converged.not_reached == () and converged.min_cosine > 0.9


def test_round_off_sized_gradient_is_not_reached_but_an_exact_zero_reference_is():
    report = pcgraph.check_grad(lambda w: jnp.sum(w * 0.0), jnp.ones(3))
    assert report.not_reached == () and report.leaves[0].cosine == 1.0
