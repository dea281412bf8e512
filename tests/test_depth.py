"""The depth claims of docs/deep-pc.md ("Signal decay and error optimisation"), at small scale:
IL's error moves down a layered network one layer per relaxation step, so after T steps
every deeper weight gets exactly zero gradient, while ePC's T steps reach every layer with
close to backprop's direction. (That both relax to the same equilibrium is checked in
tests/test_epc.py.)"""

import jax
import jax.numpy as jnp
import numpy as np

import pcgraph

DEPTH = 16
WIDTH = 32


def _plain_tanh(depth, key, dtype):
    """A bias-free tanh MLP in the standard parameterisation (LeCun normal): `depth` hidden
    layers of `WIDTH` units, each a value node, then a linear readout to 10 classes."""
    shapes = [(WIDTH, 12), *[(WIDTH, WIDTH)] * (depth - 1), (10, WIDTH)]
    keys = jax.random.split(key, len(shapes))
    return [jax.random.normal(k, s, dtype) / np.sqrt(s[1]) for k, s in zip(keys, shapes)]


def _cross_entropy(weights, x, labels):
    h = x
    for layer, w in enumerate(weights[:-1], start=1):
        h = pcgraph.node(jnp.tanh(h @ w.T), name=f"h{layer}")
    log_probs = jax.nn.log_softmax(h @ weights[-1].T)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def _data(dtype, examples=32, features=12):
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (examples, features), dtype)
    return x, jax.random.randint(ky, (examples,), 0, 10)


def _cosine(a, b):
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def test_il_error_reaches_eight_layers_and_epc_every_layer(dtype):
    # The same budget, T = 8 Euler steps of 0.1 from the feedforward pass, on a 16-layer tanh
    # MLP. IL's error moves down one layer per step, so the DEPTH - 8 weight matrices under
    # the top 8 hidden nodes get exactly zero gradient. In float64 the readout and the 8
    # matrices below it all get one; in float32 the deepest of them may not: IL holds the
    # values, and an error under float32's round-off of its value (here 1e-8 of it, 8
    # layers down) rounds to zero. ePC's gradient of the first weight matrix, and of every
    # matrix in the lower half, points within 25 degrees of backprop's (cosine >= 0.9;
    # measured >= 0.98 in float32 and float64).
    steps = 8
    weights = _plain_tanh(DEPTH, jax.random.PRNGKey(0), dtype)
    x, labels = _data(dtype)
    il = pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=steps)
    il_grads = pcgraph.grad(_cross_entropy, algorithm=il)(weights, x, labels)
    nonzero = [bool(jnp.any(g != 0)) for g in il_grads]
    assert not any(nonzero[: DEPTH - steps])
    assert all(nonzero[DEPTH - steps :] if dtype == jnp.float64 else nonzero[-3:])

    exact = jax.jit(jax.grad(_cross_entropy))(weights, x, labels)
    epc = pcgraph.EPC(stepper=pcgraph.Euler(0.1), max_steps=steps)
    epc_grads = pcgraph.grad(_cross_entropy, algorithm=epc)(weights, x, labels)
    cosines = [_cosine(g, e) for g, e in zip(epc_grads, exact)]
    assert cosines[0] >= 0.9
    assert min(cosines[: DEPTH // 2]) >= 0.9
