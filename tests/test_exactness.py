"""How PC gradients approach backprop: FPA's error wavefront, the branching toy of Millidge,
Tschantz & Buckley (2022), and IL's O(beta) bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_grads_close,
    mlp_forward,
    relu_mlp_cross_entropy,
    residual_block,
    tanh_mlp,
)

import pcgraph


@pytest.mark.slow
@pytest.mark.parametrize("model", [tanh_mlp, residual_block])
def test_fpa_wavefront_is_exact_after_depth_steps(model, x64):
    """With step size 1 the error at distance d from the loss is first non-zero at step d, and
    the gradient is exact after exactly `graph.depth` steps (not before)."""
    fn, args, _ = model(jax.random.PRNGKey(0), jnp.float64)
    # The finest graph: one node per primitive, so the wavefront has several steps to take.
    graph = pcgraph.trace(fn, *args, placement=pcgraph.Primitives())
    distances = {info.name: info.distance for info in graph.nodes}
    reference = jax.grad(fn)(*args)
    assert graph.depth >= 4
    for steps in range(graph.depth + 2):
        solution = pcgraph.relax(
            fn, *args, algorithm=pcgraph.FPA(max_steps=steps), placement=pcgraph.Primitives()
        )
        assert int(solution.stats.num_steps) == steps
        for name, error in solution.errors.items():
            nonzero = bool(jnp.any(error != 0))
            assert nonzero == (steps >= distances[name]), (name, steps, distances[name])
        error = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(
                jax.tree.leaves(solution.grads), jax.tree.leaves(reference), strict=True
            )
        )
        if steps < graph.depth:
            assert error > 1e-6, f"already exact after {steps} < depth={graph.depth} steps"
        else:
            assert_grads_close(solution.grads, reference, 1e-10)


def test_branching_graph_distances():
    """Shortest path sets when an error arrives, longest path when it is final."""

    def fn(w, x):
        a = pcgraph.node(jnp.tanh(x * w), name="a")
        b = pcgraph.node(jnp.sin(a), name="b")
        c = pcgraph.node(jnp.cos(b), name="c")
        return jnp.sum(a * c)

    graph = pcgraph.trace(fn, jnp.ones(3), jnp.ones(3))
    info = {n.name: n for n in graph.nodes}
    assert (info["a"].distance, info["a"].final_step) == (1, 3)
    assert (info["b"].distance, info["b"].final_step) == (2, 2)
    assert (info["c"].distance, info["c"].final_step) == (1, 1)
    assert info["c"].parents == ("b",)
    assert info["a"].parents == ("arg0",)
    assert graph.depth == 3


def _branching_toy(theta, y0, target=1.0):
    y1 = pcgraph.node(theta * y0, name="y1")
    y2 = pcgraph.node(jnp.sqrt(y1), name="y2")
    y3 = pcgraph.node(y0**2, name="y3")
    y4 = pcgraph.node(jnp.tan(y2) + jnp.sin(y3), name="y4")
    return (target - y4) ** 2


def test_branching_toy_errors_converge_to_autodiff(x64):
    """The toy of Millidge, Tschantz & Buckley (2022): y0 = 5, theta = 2, T = 1, step size 0.02, 500
    steps. The PC errors converge to minus the autodiff gradients of the loss with respect to each
    node."""
    theta, y0 = jnp.float64(2.0), jnp.float64(5.0)

    def relaxed(steps):
        algorithm = pcgraph.FPA(stepper=pcgraph.Euler(0.02), max_steps=steps)
        return pcgraph.relax(_branching_toy, theta, y0, argnums=(0, 1), algorithm=algorithm)

    def perturbed(deltas):
        y1 = theta * y0 + deltas[0]
        y2 = jnp.sqrt(y1) + deltas[1]
        y3 = y0**2 + deltas[2]
        y4 = jnp.tan(y2) + jnp.sin(y3) + deltas[3]
        return (1.0 - y4) ** 2

    node_grads = jax.grad(perturbed)(jnp.zeros(4))
    gaps = []
    for steps in (100, 250, 500):
        solution = relaxed(steps)
        errors = jnp.stack([solution.errors[name] for name in ("y1", "y2", "y3", "y4")])
        gaps.append(float(jnp.max(jnp.abs(errors + node_grads) / jnp.abs(node_grads))))
    assert gaps[0] > gaps[1] > gaps[2], gaps
    np.testing.assert_allclose(errors, -node_grads, rtol=5e-3)
    reference = jax.grad(_branching_toy, argnums=(0, 1))(theta, y0)
    np.testing.assert_allclose(solution.grads, reference, rtol=5e-3)


@pytest.mark.slow
def test_il_error_shrinks_linearly_in_beta(x64):
    fn, args, _ = relu_mlp_cross_entropy(jax.random.PRNGKey(2), jnp.float64, mark=True)
    reference = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(jax.grad(fn)(*args))])
    betas = np.array([1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    errors = []
    for beta in betas:
        algorithm = pcgraph.IL(beta=float(beta), rtol=1e-10, max_steps=5000)
        grads = pcgraph.grad(fn, algorithm=algorithm)(*args)
        flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])
        errors.append(float(jnp.linalg.norm(flat - reference) / jnp.linalg.norm(reference)))
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert 0.9 < slope < 1.1, (slope, errors)
    assert errors[0] < 1e-2


def _layered_pc_reference(params, x, y, beta, step_size, steps):
    """A hand-written standard layered PC network (as in PC libraries): free hidden activities
    z_l, energy sum_l 1/2 ||z_l - tanh(W_l z_{l-1} + b_l)||^2 + beta * loss(head(z_{L-1}), y)."""

    def predictions(zs, params):
        inputs = [x, *zs[:-1]]
        return [jnp.tanh(h @ p["w"] + p["b"]) for h, p in zip(inputs, params[:-1], strict=True)]

    def energy(zs, params):
        mus = predictions(zs, params)
        logits = zs[-1] @ params[-1]["w"] + params[-1]["b"]
        loss = jnp.mean((logits - y) ** 2)
        return (
            sum(0.5 * jnp.sum((z - mu) ** 2) for z, mu in zip(zs, mus, strict=True)) + beta * loss
        )

    h, zs = x, []
    for p in params[:-1]:
        h = jnp.tanh(h @ p["w"] + p["b"])
        zs.append(h)
    energies = [energy(zs, params)]
    for _ in range(steps):
        grads = jax.grad(energy)(zs, params)
        zs = [z - step_size * g for z, g in zip(zs, grads, strict=True)]
        energies.append(energy(zs, params))
    weight_grads = jax.tree.map(lambda g: g / beta, jax.grad(energy, argnums=1)(zs, params))
    return jnp.stack(energies), weight_grads


def test_il_on_marked_mlp_is_the_standard_layered_network(x64):
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(3), jnp.float64, mark=True)
    beta, step_size, steps = 0.5, 0.1, 20
    algorithm = pcgraph.IL(beta=beta, stepper=pcgraph.Euler(step_size), max_steps=steps, rtol=None)
    solution = pcgraph.relax(fn, params, x, y, algorithm=algorithm, save_energy=True)
    energies, weight_grads = _layered_pc_reference(params, x, y, beta, step_size, steps)
    np.testing.assert_allclose(solution.stats.energy_trajectory, energies, rtol=1e-12)
    assert_grads_close(solution.grads, weight_grads, 1e-10)
    assert [n.name for n in pcgraph.trace(fn, params, x, y).nodes] == ["hidden0", "hidden1"]


def test_marked_mlp_forward_matches_plain(dtype):
    """`pcgraph.node` is the identity in plain JAX, under jit, grad and vmap."""
    fn, (params, x, y), _ = tanh_mlp(jax.random.PRNGKey(4), dtype, mark=True)
    plain, _, _ = tanh_mlp(jax.random.PRNGKey(4), dtype, mark=False)
    assert jnp.allclose(jax.jit(fn)(params, x, y), plain(params, x, y))
    assert_grads_close(jax.grad(fn)(params, x, y), jax.grad(plain)(params, x, y), 1e-6)
    per_example = jax.vmap(lambda xi: mlp_forward(params, xi, jnp.tanh, True))(x)
    assert per_example.shape == (x.shape[0], 3)
