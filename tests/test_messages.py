"""Errors that name the real cause: a non-finite warm start, a `SaveAt` step beyond
`max_steps`, an array precision given as `precision=`, and the divergence of IL on a
per-primitive graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, normal

import pcgraph


def _loss(params, x, y):
    h = pcgraph.node(jnp.tanh(x @ params[0]), name="hidden")
    return jnp.mean((h @ params[1] - y) ** 2)


def _problem():
    k = jax.random.split(jax.random.key(0), 4)
    params = [normal(k[0], (5, 16), jnp.float32, 0.4), normal(k[1], (16, 3), jnp.float32, 0.25)]
    return params, normal(k[2], (8, 5), jnp.float32), normal(k[3], (8, 3), jnp.float32)


def test_a_non_finite_warm_start_is_named_before_the_relaxation():
    params, x, y = _problem()
    algorithm = pcgraph.IL(max_steps=20)
    previous = pcgraph.relax(_loss, params, x, y, algorithm=algorithm)
    bad = {"hidden": previous.values["hidden"].at[0, 0].set(jnp.nan)}
    with pytest.raises(pcgraph.NonFiniteError, match=r"warm start init\['hidden'\] holds NaN"):
        pcgraph.relax(_loss, params, x, y, algorithm=algorithm, init=bad)
    # A finite warm start is accepted.
    pcgraph.relax(_loss, params, x, y, algorithm=algorithm, init=previous)


def test_saveat_steps_beyond_max_steps_are_refused():
    params, x, y = _problem()
    saveat = pcgraph.SaveAt(steps=(0, 5, 50))
    with pytest.raises(ValueError, match=r"asks for step 50, beyond the relaxation's max_steps=10"):
        pcgraph.relax(_loss, params, x, y, algorithm=pcgraph.IL(max_steps=10), saveat=saveat)
    solution = pcgraph.relax(_loss, params, x, y, algorithm=pcgraph.IL(max_steps=50),
                             saveat=saveat)  # fmt: skip
    assert solution.stats.nodes.steps.shape == (3,)


def test_node_precision_shorthand_takes_an_array_as_its_docstring_says():
    params, x, y = _problem()
    precision = jnp.linspace(0.5, 2.0, 16)

    def shorthand(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params[0]), precision=precision)
        return jnp.mean((h @ params[1] - y) ** 2)

    def explicit(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params[0]), energy=pcgraph.Gaussian(precision))
        return jnp.mean((h @ params[1] - y) ** 2)

    algorithm = pcgraph.IL(max_steps=30)
    assert_grads_close(
        pcgraph.grad(shorthand, algorithm=algorithm)(params, x, y),
        pcgraph.grad(explicit, algorithm=algorithm)(params, x, y), 1e-6,
    )  # fmt: skip


def test_a_wrong_array_precision_names_its_shape_not_a_tracer():
    params, x, y = _problem()

    def loss(params, x, y):
        h = pcgraph.node(jnp.tanh(x @ params[0]), precision=jnp.ones(5))
        return jnp.mean((h @ params[1] - y) ** 2)

    with pytest.raises(ValueError, match=r"a precision of shape \(5,\) does not broadcast") as e:
        pcgraph.grad(loss)(params, x, y)
    assert "Tracer" not in str(e.value)


def test_il_diverging_on_a_per_primitive_graph_points_at_epc():
    params, x, y = _problem()
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(5.0), max_steps=50)
    with pytest.raises(pcgraph.RelaxationError, match=r"Primitives\(\).*pcgraph\.EPC\(\)"):
        pcgraph.grad(_loss, algorithm=algorithm, placement=pcgraph.Primitives())(params, x, y)
    assert np.all(np.isfinite(jax.grad(_loss)(params, x, y)[0]))
