"""Programs with legitimately non-finite intermediates: a buffer that a loop fills with inf as
"not written yet" (diffrax, optimistix, padded scans) is no node, and the feedforward check
blames only non-finite values that reach the loss."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, normal

import pcgraph


def _ode_loss(params, y0, target):
    def vector_field(t, y, w):
        return jnp.tanh(y @ w)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Heun(), 0.0, 1.0, 0.1, y0, args=params["w"],
        saveat=diffrax.SaveAt(t1=True), max_steps=16,
    )  # fmt: skip
    return jnp.mean((solution.ys[-1] - target) ** 2)


def _ode_problem():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"w": normal(k[0], (4, 4), jnp.float64, 0.5)}
    return params, normal(k[1], (3, 4), jnp.float64), normal(k[2], (3, 4), jnp.float64)


@pytest.mark.parametrize("algorithm", [pcgraph.FPA(), pcgraph.ZIL()], ids=["fpa", "wavefront"])
def test_diffrax_solve_with_unwritten_buffers_equals_jax_grad(x64, algorithm):
    """max_steps (16) above the steps taken (10): the solver's save buffers hold inf where
    nothing was written. They are no nodes, and the gradient is jax.grad's."""
    args = _ode_problem()
    assert pcgraph.trace(_ode_loss, *args).placement.name == "layers"
    grads = pcgraph.grad(_ode_loss, algorithm=algorithm)(*args)
    assert_grads_close(grads, jax.grad(_ode_loss)(*args), 1e-8)


def test_il_on_unwritten_buffers_names_the_cause(x64):
    """The solve's outputs pass through equinox's `custom_jvp` wrapper of the loop's final
    state, whose derivative pcgraph cannot see through, so the layer placement still makes
    nodes of the save buffers. FPA and the wavefront never evaluate their energy; IL and EPC
    do, and say why it is not finite instead of blaming the step size."""
    args = _ode_problem()
    with pytest.raises(pcgraph.RelaxationError, match="NaN or Inf entries that the loss never"):
        pcgraph.grad(_ode_loss, algorithm=pcgraph.IL())(*args)


def _buffer_loss(params, x, y):
    """A loop-style buffer: filled with inf, then overwritten entirely with the layer's output
    before the loss reads it."""
    h = jnp.tanh(x @ params[0])
    buffer = jnp.full((1, *h.shape), jnp.inf, h.dtype) + 0.0 * h[None]  # computed from h
    buffer = jax.lax.dynamic_update_slice(buffer, h[None], (0, 0, 0))
    return jnp.mean((buffer[0] @ params[1] - y) ** 2)


def test_a_buffer_overwritten_entirely_is_no_node():
    k = jax.random.split(jax.random.key(1), 4)
    params = [normal(k[0], (5, 8), jnp.float32, 0.4), normal(k[1], (8, 3), jnp.float32, 0.3)]
    x, y = normal(k[2], (6, 5), jnp.float32), normal(k[3], (6, 3), jnp.float32)
    graph = pcgraph.trace(_buffer_loss, params, x, y)
    assert [info.shape for info in graph.nodes] == [(1, 6, 8)]  # h[None], not the buffer
    expected = jax.grad(_buffer_loss)(params, x, y)
    for algorithm in (pcgraph.FPA(), pcgraph.ZIL()):
        assert_grads_close(pcgraph.grad(_buffer_loss, algorithm=algorithm)(params, x, y),
                           expected, 1e-5)  # fmt: skip


def _masked_loss(params, x, y):
    """A marked node with -inf at masked entries, which the softmax turns into zeros."""
    logits = x @ params
    mask = jnp.arange(logits.shape[-1]) < 3
    logits = pcgraph.node(jnp.where(mask, logits, -jnp.inf), name="masked_logits")
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(jnp.where(mask, logits, 0.0)) * y, axis=-1))


def test_masked_non_finite_node_that_never_reaches_the_loss_is_not_blamed():
    k = jax.random.split(jax.random.key(2), 3)
    params = normal(k[0], (5, 4), jnp.float32, 0.4)
    x = normal(k[1], (6, 5), jnp.float32)
    y = jax.nn.one_hot(jax.random.randint(k[2], (6,), 0, 3), 4)
    assert np.isfinite(_masked_loss(params, x, y))
    grads = pcgraph.grad(_masked_loss)(params, x, y)
    assert_grads_close(grads, jax.grad(_masked_loss)(params, x, y), 1e-5)


def _reads_inf(params, x):
    h = jnp.tanh(x @ params[0])
    h = pcgraph.node(jnp.log(h), name="log_h")  # log of negative entries: NaN
    return jnp.mean(h @ params[1])


def test_a_non_finite_value_the_loss_reads_still_raises():
    k = jax.random.split(jax.random.key(3), 3)
    params = [normal(k[0], (5, 8), jnp.float32, 0.4), normal(k[1], (8, 3), jnp.float32, 0.3)]
    x = normal(k[2], (6, 5), jnp.float32)
    with pytest.raises(pcgraph.NonFiniteError, match="feedforward value of node `log_h`"):
        pcgraph.grad(_reads_inf)(params, x)
    with pytest.raises(pcgraph.NonFiniteError, match="feedforward value of node `exp_h`"):
        pcgraph.grad(_overflows)(params, x.at[0, 0].set(1e3))


def _overflows(params, x):
    h = pcgraph.node(jnp.exp(x @ params[0]), name="exp_h")  # inf in float32
    return jnp.mean(h @ params[1])
