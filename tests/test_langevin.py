"""Monte Carlo predictive coding (Oliviers et al. 2024): Langevin noise in the relaxation
samples the posterior instead of settling at its mode."""

import functools

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import tree_allclose

import pcgraph

# z ~ N(m0, P0^-1), h | z ~ N(W z + b, 1/ph), x | h ~ N(h, 1/q): x | z ~ N(W z + b, 1/ph + 1/q).
M0 = jnp.array([0.5, -1.0])
P0 = jnp.array([[2.0, 0.6], [0.6, 1.0]])
W = jnp.array([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7]])
B = jnp.array([0.1, 0.0, -0.2])
PH, Q = 2.0, 4.0
X = jnp.array([1.5, -0.5, 2.0])


def neg_log_joint(params, z, x):
    w, b = params
    h = pcgraph.node(w @ z + b, "h", precision=PH)
    prior = (z - M0) @ P0 @ (z - M0) / 2
    return prior + Q * jnp.sum((x - h) ** 2) / 2


def _posterior():
    s = 1 / PH + 1 / Q
    cov = jnp.linalg.inv(P0 + W.T @ W / s)
    return cov @ (P0 @ M0 + W.T @ (X - B) / s), cov


@functools.partial(jax.jit, static_argnums=1)
def _chains(keys, use_epc):
    def chain(key):
        algorithm = (pcgraph.EPC if use_epc else pcgraph.IL)(
            stepper=pcgraph.Langevin(0.02, 1.0, key), max_steps=600
        )
        (z,) = pcgraph.relax(
            neg_log_joint, (W, B), M0, X, latents=(1,), algorithm=algorithm
        ).latents
        return z

    return jax.vmap(chain)(keys)


@pytest.mark.parametrize("use_epc", [False, True], ids=["IL", "EPC"])
def test_langevin_samples_the_exact_posterior(use_epc, x64):
    """4,000 chains of 600 steps: the last states' mean and covariance are within 10% of the
    exact posterior's (the node `h` is sampled too and marginalised by ignoring it). ePC
    samples the same posterior: the map from errors to values has unit Jacobian
    determinant."""
    mean, cov = _posterior()
    samples = _chains(jax.random.split(jax.random.key(0), 4000), use_epc)
    assert float(jnp.linalg.norm(samples.mean(0) - mean) / jnp.linalg.norm(mean)) < 0.1
    assert float(jnp.linalg.norm(jnp.cov(samples.T) - cov) / jnp.linalg.norm(cov)) < 0.1
    # Reproducible from the key, and another key draws other samples.
    again = _chains(jax.random.split(jax.random.key(0), 4000), use_epc)
    assert jnp.array_equal(samples, again)
    other = _chains(jax.random.split(jax.random.key(1), 4000), use_epc)
    assert not jnp.allclose(samples, other)


def test_langevin_keeps_observed_entries_clamped():
    """Noise moves only free entries: a partly observed latent keeps its observed entries."""
    start = jnp.array([0.3, -0.2])
    mask = jnp.array([True, False])
    algorithm = pcgraph.IL(stepper=pcgraph.Langevin(0.02, 1.0, jax.random.key(2)), max_steps=50)
    (z,) = pcgraph.relax(
        neg_log_joint, (W, B), pcgraph.Observed(start, mask), X, latents=(1,), algorithm=algorithm
    ).latents
    assert float(z[0]) == float(start[0])
    assert float(z[1]) != float(start[1])


def test_mcpc_trains_with_train_step():
    """Learning from samples (MCPC): train_step with a Langevin stepper, built inside a jitted
    loop so that every step draws fresh noise, moves the weights and does not retrace."""
    optimizer = optax.sgd(1e-2)
    counted = chex.assert_max_traces(neg_log_joint, n=1)

    @jax.jit
    def train(params, opt_state, key):
        algorithm = pcgraph.IL(stepper=pcgraph.Langevin(0.02, 1.0, key), max_steps=20)
        step = pcgraph.train_step(counted, optimizer, algorithm=algorithm, latents=(1,))
        params, opt_state, info = step(params, opt_state, M0, X)
        return params, opt_state, info.latents

    params = (W, B)
    opt_state = optimizer.init(params)
    first, opt_state, z1 = train(params, opt_state, jax.random.key(0))
    second, _, z2 = train(first, opt_state, jax.random.key(1))
    assert not tree_allclose(first, params) and not tree_allclose(second, first)
    assert not jnp.allclose(z1[0], z2[0])


def test_langevin_bad_input():
    with pytest.raises(TypeError, match=r"pass a JAX random key, e.g. `key=jax.random.key\(0\)`"):
        pcgraph.Langevin(0.1, 1.0, 0)
    with pytest.raises(ValueError, match=r"Langevin\(temperature=0.0\): must be a positive"):
        pcgraph.Langevin(0.1, 0.0, jax.random.key(0))
    algorithm = pcgraph.IL(stepper=pcgraph.Langevin(0.1, 1.0, jax.random.key(0)), rtol=1e-3)
    with pytest.raises(ValueError, match="Langevin samples: its relaxation has no fixed point"):
        pcgraph.relax(neg_log_joint, (W, B), M0, X, latents=(1,), algorithm=algorithm)


if __name__ == "__main__":
    # The numbers docs/inference.md quotes: `python tests/test_langevin.py`.
    with jax.enable_x64(True):
        exact_mean, exact_cov = _posterior()
        for use_epc in (False, True):
            drawn = _chains(jax.random.split(jax.random.key(0), 4000), use_epc)
            mean_error = jnp.linalg.norm(drawn.mean(0) - exact_mean) / jnp.linalg.norm(exact_mean)
            cov_error = jnp.linalg.norm(jnp.cov(drawn.T) - exact_cov) / jnp.linalg.norm(exact_cov)
            print(f"{'EPC' if use_epc else 'IL'}: posterior mean within {float(mean_error):.1%}, "
                  f"covariance within {float(cov_error):.1%}")  # fmt: skip
