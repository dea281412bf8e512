"""Runtime checks, callbacks and opaque calls: `equinox.error_if`, `pure_callback`, a diffrax
solve and `shard_map` are traced; effects (`io_callback`, `jax.debug.print`) are refused."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close
from jax.sharding import PartitionSpec as P

import pcgraph


def _problem(seed=0):
    kw, kx = jax.random.split(jax.random.key(seed))
    return 0.5 * jax.random.normal(kw, (3, 3)), jax.random.normal(kx, (2, 3))


def checked_loss(w, x):
    h = jnp.tanh(x @ w)
    h = eqx.error_if(h, jnp.any(jnp.abs(h) > 0.999), "hidden layer saturated")
    return jnp.sum(jnp.sin(h @ w) ** 2)


def test_error_if_matches_jax_grad(x64):
    w, x = _problem()
    # Also inside a nested jit, whose body is inlined around the check.
    for fn in (checked_loss, jax.jit(checked_loss)):
        grads = pcgraph.grad(fn, algorithm=pcgraph.FPA())(w, x)
        assert_grads_close(grads, jax.grad(fn)(w, x), 1e-8)


def test_error_if_raises_on_the_feedforward_pass():
    w, x = _problem()
    with pytest.raises(eqx.EquinoxRuntimeError, match="hidden layer saturated"):
        jax.grad(checked_loss)(100 * w, x)
    with pytest.raises(eqx.EquinoxRuntimeError, match="hidden layer saturated"):
        pcgraph.grad(checked_loss)(100 * w, x)


def _fail(h):
    raise RuntimeError("check ran on relaxed values")


@jax.custom_jvp
def below_one(h):
    """A runtime check by structure alone: return `h`, or call back into Python to raise."""
    struct = jax.ShapeDtypeStruct(h.shape, h.dtype)
    return jax.lax.cond(
        jnp.max(h) < 1, lambda h: h, lambda h: jax.pure_callback(_fail, struct, h), h
    )


below_one.defjvp(lambda primals, tangents: (below_one(*primals), tangents[0]))


def test_check_is_not_rerun_during_relaxation():
    # The check reads a node: the feedforward value passes it, the relaxed value (pulled
    # towards the target 3) would not.
    def loss(w, x):
        h = pcgraph.node(jnp.tanh(x @ w), name="h")
        return jnp.sum((below_one(h) - 3.0) ** 2)

    w, x = _problem()
    algorithm = pcgraph.IL(beta=1.0, stepper=pcgraph.Euler(0.1), max_steps=50, rtol=None)
    solution = pcgraph.relax(loss, w, x, algorithm=algorithm)
    assert jnp.max(solution.values["h"]) > 1
    assert bool(solution.stats.converged)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(solution.grads))


def test_pure_callback(x64):
    # Pure by contract, so allowed anywhere; its derivative is the custom_jvp rule around it,
    # and without one pcgraph fails where jax.grad does.
    @jax.custom_jvp
    def host_sin(v):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(v.shape, v.dtype), v)

    host_sin.defjvp(lambda primals, tangents: (host_sin(*primals), jnp.cos(*primals) * tangents[0]))

    def loss(w, x):
        return jnp.sum(host_sin(jnp.tanh(x @ w) @ w) ** 2)

    w, x = _problem()
    assert_grads_close(
        pcgraph.grad(loss, algorithm=pcgraph.FPA())(w, x), jax.grad(loss)(w, x), 1e-8
    )
    il = pcgraph.relax(loss, w, x, algorithm=pcgraph.IL(beta=0.1, max_steps=20, rtol=None))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(il.grads))

    def bare(w, x):
        h = jnp.tanh(x @ w)
        return jnp.sum(jax.pure_callback(np.sin, jax.ShapeDtypeStruct(h.shape, h.dtype), h))

    with pytest.raises(ValueError, match="Pure callbacks do not support JVP"):
        jax.grad(bare)(w, x)
    with pytest.raises(ValueError, match="Pure callbacks do not support JVP"):
        pcgraph.grad(bare)(w, x)


def neural_ode_loss(w, x):
    # The solve (a checkpointed while loop in a custom_vjp, with checks inside) is one opaque
    # call: node `y1` is predicted from node `y0` by it.
    y0 = pcgraph.node(jnp.tanh(x @ w), name="y0")
    term = diffrax.ODETerm(lambda t, y, args: jnp.tanh(args @ y))
    solution = diffrax.diffeqsolve(term, diffrax.Tsit5(), t0=0, t1=1, dt0=0.1, y0=y0, args=w)
    y1 = pcgraph.node(solution.ys[-1], name="y1")
    return jnp.sum(jnp.sin(w @ y1) ** 2)


@pytest.mark.slow
def test_neural_ode_matches_jax_grad(x64):
    w, x = _problem()
    assert pcgraph.trace(neural_ode_loss, w, x[0]).node_names == ("y0", "y1")
    grads = pcgraph.grad(neural_ode_loss, algorithm=pcgraph.FPA())(w, x[0])
    assert_grads_close(grads, jax.jit(jax.grad(neural_ode_loss))(w, x[0]), 1e-8)


@pytest.mark.slow
@pytest.mark.slow  # compiles the solve's derivative inside the relaxation loop
def test_neural_ode_il(x64):
    w, x = _problem()
    il = pcgraph.relax(
        neural_ode_loss, w, x[0], algorithm=pcgraph.IL(beta=0.1, max_steps=10, rtol=None)
    )
    assert bool(il.stats.converged)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(il.grads))


def _sharded_layer(body):
    mesh = jax.make_mesh((1,), ("b",), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.shard_map(body, mesh=mesh, in_specs=(P("b"), P()), out_specs=P())


def test_shard_map(x64):
    # Kept whole, one opaque call: its body sees one shard of each operand and sums over the
    # mesh axis, which only means something inside the shard_map.
    layer = _sharded_layer(lambda h, w: jax.lax.psum(jnp.tanh(h @ w), "b"))

    def loss(w, x):
        h = pcgraph.node(jnp.tanh(x @ w), name="h")
        out = pcgraph.node(layer(h, w), name="out")
        return jnp.sum(jnp.sin(out @ w) ** 2)

    w, x = _problem()
    assert pcgraph.trace(loss, w, x).node_names == ("h", "out")
    assert_grads_close(
        pcgraph.grad(loss, algorithm=pcgraph.FPA())(w, x), jax.grad(loss)(w, x), 1e-8
    )


@pytest.mark.parametrize(
    "effect",
    [
        lambda v, w: jax.debug.print("value {}", v),
        lambda v, w: jax.experimental.io_callback(
            lambda a: a, jax.ShapeDtypeStruct(v.shape, v.dtype), v
        ),
        _sharded_layer(lambda h, w: jax.lax.psum(jax.debug.print("{}", h) or h, "b")),
    ],
    ids=["debug_print", "io_callback", "debug_print_in_shard_map"],
)
def test_effects_are_refused(effect):
    def loss(w):
        h = jnp.tanh(w)
        effect(eqx.error_if(h, jnp.any(h > 1), "unreachable"), w)
        return jnp.sum(h**2)

    with pytest.raises(
        ValueError, match="side effects: found `(debug_print|io_callback|shard_map)`"
    ):
        pcgraph.grad(loss)(jnp.ones((2, 2)))
