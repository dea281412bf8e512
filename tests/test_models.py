"""Real models, unchanged, through pcgraph: equinox (filtered entry points), flax nnx and
linen. FPA's gradients equal `jax.grad`'s, under `jit`, in float32 and float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from flax import linen, nnx
from helpers import RTOL, assert_grads_close, normal

import pcgraph


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def _labels(batch, classes, dtype):
    return jax.nn.one_hot(jnp.arange(batch) % classes, classes, dtype=dtype)


#: float32 in the quick run; float64 (another compilation of each model) with the slow tests.
DTYPES = pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(jnp.float32, id="float32"),
        pytest.param(jnp.float64, id="float64", marks=pytest.mark.slow),
    ],
    indirect=True,
)


def _check_filtered(loss, model, args, dtype):
    """`pcgraph.filter_grad` under `eqx.filter_jit` against `eqx.filter_grad`."""
    pc = eqx.filter_jit(pcgraph.filter_grad(loss))(model, *args)
    assert_grads_close(pc, eqx.filter_grad(loss)(model, *args), RTOL[dtype])


# -- equinox ----------------------------------------------------------------------------------


class CNN(eqx.Module):
    """Two convolutions with max and average pooling and a linear head."""

    conv1: eqx.nn.Conv2d
    pool1: eqx.nn.MaxPool2d
    conv2: eqx.nn.Conv2d
    pool2: eqx.nn.AvgPool2d
    head: eqx.nn.Linear

    def __init__(self, key, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1, dtype=dtype)
        self.pool1 = eqx.nn.MaxPool2d(2, 2)
        self.conv2 = eqx.nn.Conv2d(4, 6, 3, padding=1, key=k2, dtype=dtype)
        self.pool2 = eqx.nn.AvgPool2d(2, 2)
        self.head = eqx.nn.Linear(6 * 2 * 2, 3, key=k3, dtype=dtype)

    def __call__(self, x):
        h = self.pool1(jax.nn.relu(self.conv1(x)))
        h = self.pool2(jnp.tanh(self.conv2(h)))
        return self.head(h.reshape(-1))


def cnn_loss(model, x, y):
    return cross_entropy(jax.vmap(model)(x), y)


@pytest.mark.slow
@DTYPES
def test_equinox_cnn(dtype):
    model = CNN(jax.random.PRNGKey(0), dtype)
    x = normal(jax.random.PRNGKey(1), (3, 1, 8, 8), dtype)
    _check_filtered(cnn_loss, model, (x, _labels(3, 3, dtype)), dtype)


class ElmanRNN(eqx.Module):
    """h_t = tanh(W_ih x_t + W_hh h_{t-1} + b), under `lax.scan`; a linear readout of h_T."""

    input_to_hidden: eqx.nn.Linear
    hidden_to_hidden: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, dtype, d_in=3, hidden=5, d_out=2):
        k1, k2, k3 = jax.random.split(key, 3)
        self.input_to_hidden = eqx.nn.Linear(d_in, hidden, key=k1, dtype=dtype)
        self.hidden_to_hidden = eqx.nn.Linear(hidden, hidden, use_bias=False, key=k2, dtype=dtype)
        self.head = eqx.nn.Linear(hidden, d_out, key=k3, dtype=dtype)

    def __call__(self, xs):
        def step(h, x):
            return jnp.tanh(self.input_to_hidden(x) + self.hidden_to_hidden(h)), None

        h0 = jnp.zeros(self.hidden_to_hidden.in_features, xs.dtype)
        h, _ = jax.lax.scan(step, h0, xs)
        return self.head(h)


@pytest.mark.slow
@pytest.mark.slow  # the LSTM tests and tests/test_scan.py cover the scan in the quick run
@DTYPES
def test_equinox_rnn(dtype):
    model = ElmanRNN(jax.random.PRNGKey(2), dtype)
    xs = normal(jax.random.PRNGKey(3), (4, 7, 3), dtype)  # batch 4, length 7

    def loss(model, xs, y):
        return jnp.mean((jax.vmap(model)(xs) - y) ** 2)

    _check_filtered(loss, model, (xs, normal(jax.random.PRNGKey(4), (4, 2), dtype)), dtype)


class LSTM(eqx.Module):
    """`eqx.nn.LSTMCell` under `lax.scan` with a linear readout: of the last hidden state
    (many-to-one) or of every hidden state (many-to-many)."""

    cell: eqx.nn.LSTMCell
    head: eqx.nn.Linear

    def __init__(self, key, dtype, d_in=3, hidden=5, d_out=2):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.LSTMCell(d_in, hidden, key=k1, dtype=dtype)
        self.head = eqx.nn.Linear(hidden, d_out, key=k2, dtype=dtype)

    def __call__(self, xs, many_to_many: bool):
        def step(state, x):
            state = self.cell(x, state)
            return state, self.head(state[0]) if many_to_many else None

        zeros = jnp.zeros(self.cell.hidden_size, xs.dtype)
        (h, _), outputs = jax.lax.scan(step, (zeros, zeros), xs)
        return outputs if many_to_many else self.head(h)


@pytest.mark.slow
@pytest.mark.parametrize("many_to_many", [False, True], ids=["many_to_one", "many_to_many"])
@DTYPES
def test_equinox_lstm(dtype, many_to_many):
    model = LSTM(jax.random.PRNGKey(5), dtype)
    xs = normal(jax.random.PRNGKey(6), (3, 6, 3), dtype)  # batch 3, length 6
    target_shape = (3, 6, 2) if many_to_many else (3, 2)

    def loss(model, xs, y):
        return jnp.mean((jax.vmap(lambda s: model(s, many_to_many))(xs) - y) ** 2)

    y = normal(jax.random.PRNGKey(7), target_shape, dtype)
    _check_filtered(loss, model, (xs, y), dtype)
    # The hidden and cell states are nodes stacked over the 6 time steps.
    diff, rest = eqx.partition(model, eqx.is_inexact_array)
    graph = pcgraph.trace(lambda d, xs, y: loss(eqx.combine(d, rest), xs, y), diff, xs, y)
    assert [info.shape for info in graph.nodes if info.iterations == 6][:2] == [(6, 3, 5)] * 2


class TransformerBlock(eqx.Module):
    """Pre-norm transformer block: multi-head self-attention and an MLP, each with a layer norm
    before it and a residual connection around it."""

    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, key, dtype, width=8, heads=2):
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx.nn.LayerNorm(width, dtype=dtype)
        self.attention = eqx.nn.MultiheadAttention(
            heads, width, use_query_bias=True, use_output_bias=True, key=k1, dtype=dtype
        )
        self.norm2 = eqx.nn.LayerNorm(width, dtype=dtype)
        self.mlp = eqx.nn.MLP(
            width, width, 2 * width, 1, activation=jax.nn.gelu, key=k2, dtype=dtype
        )

    def __call__(self, x):
        h = jax.vmap(self.norm1)(x)
        x = x + self.attention(h, h, h)
        return x + jax.vmap(self.mlp)(jax.vmap(self.norm2)(x))


@pytest.mark.slow
@DTYPES
def test_equinox_transformer_block(dtype):
    model = TransformerBlock(jax.random.PRNGKey(8), dtype)
    x = normal(jax.random.PRNGKey(9), (2, 5, 8), dtype)  # batch 2, 5 tokens, width 8

    def loss(model, x, y):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    _check_filtered(loss, model, (x, normal(jax.random.PRNGKey(10), (2, 5, 8), dtype)), dtype)


# -- flax -------------------------------------------------------------------------------------


class NnxNet(nnx.Module):
    def __init__(self, dtype, rngs):
        self.linear1 = nnx.Linear(5, 8, param_dtype=dtype, rngs=rngs)
        self.norm = nnx.BatchNorm(8, use_running_average=True, param_dtype=dtype, rngs=rngs)
        self.layer_norm = nnx.LayerNorm(8, param_dtype=dtype, rngs=rngs)
        self.linear2 = nnx.Linear(8, 3, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.layer_norm(self.norm(self.linear1(x)))
        return self.linear2(nnx.gelu(h))


@pytest.mark.slow
@DTYPES
def test_flax_nnx(dtype):
    """Split the module into its graph definition, its `nnx.Param` state (differentiated) and
    the rest (BatchNorm's running statistics, held fixed); merge inside the loss."""
    graphdef, params, rest = nnx.split(NnxNet(dtype, nnx.Rngs(0)), nnx.Param, ...)
    x = normal(jax.random.PRNGKey(11), (4, 5), dtype)

    def loss(params, rest, x, y):
        return cross_entropy(nnx.merge(graphdef, params, rest)(x), y)

    args = (params, rest, x, _labels(4, 3, dtype))
    pc = jax.jit(pcgraph.grad(loss))(*args)
    assert isinstance(pc, nnx.State)
    assert_grads_close(pc, jax.grad(loss)(*args), RTOL[dtype])


class LinenNet(linen.Module):
    dtype: jnp.dtype

    @linen.compact
    def __call__(self, x):
        h = linen.relu(linen.Conv(4, (3, 3), param_dtype=self.dtype)(x))
        h = linen.max_pool(h, (2, 2), strides=(2, 2))
        h = linen.Dense(6, param_dtype=self.dtype)(h.reshape(h.shape[0], -1))
        return linen.Dense(3, param_dtype=self.dtype)(jnp.tanh(linen.LayerNorm()(h)))


@pytest.mark.slow
@DTYPES
def test_flax_linen(dtype):
    """`model.apply(variables, x)`, differentiated with respect to `variables`."""
    model = LinenNet(dtype)
    x = normal(jax.random.PRNGKey(12), (2, 6, 6, 1), dtype)
    variables = model.init(jax.random.PRNGKey(13), x)

    def loss(variables, x, y):
        return cross_entropy(model.apply(variables, x), y)

    args = (variables, x, _labels(2, 3, dtype))
    assert_grads_close(jax.jit(pcgraph.grad(loss))(*args), jax.grad(loss)(*args), RTOL[dtype])


# -- the filtered entry points ---------------------------------------------------------------


class Mixed(eqx.Module):
    weight: jax.Array
    counts: jax.Array
    scale: float
    activation: callable

    def __call__(self, x):
        return self.activation(x @ self.weight) * self.scale + self.counts


def _mixed():
    return Mixed(jnp.ones((3, 2)) / 3, jnp.arange(2), 2.0, jnp.tanh)


def test_filter_grad_differentiates_inexact_arrays_only(x64):
    model = _mixed()
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

    def loss(model, x, *, offset):
        return jnp.sum((model(x) - offset) ** 2)

    pc = pcgraph.filter_grad(loss)(model, x, offset=0.5)
    reference = eqx.filter_grad(loss)(model, x, offset=0.5)
    assert pc.counts is None and pc.scale is None and pc.activation is None
    assert_grads_close(pc, reference, 1e-10)


def test_filter_value_and_grad_with_aux(x64):
    model = _mixed()
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

    @pcgraph.filter_value_and_grad(has_aux=True, algorithm=pcgraph.FPA())
    def loss(model, x):
        out = model(x)
        return jnp.sum(out**2), {"mean": jnp.mean(out)}

    (value, aux), grads = loss(model, x)
    (ref_value, ref_aux), ref_grads = eqx.filter_value_and_grad(loss.__wrapped__, has_aux=True)(
        model, x
    )
    assert jnp.allclose(value, ref_value) and jnp.allclose(aux["mean"], ref_aux["mean"])
    assert_grads_close(grads, ref_grads, 1e-10)
    grads_only, aux_only = pcgraph.filter_grad(loss.__wrapped__, has_aux=True)(model, x)
    assert_grads_close(grads_only, ref_grads, 1e-10)
    assert jnp.allclose(aux_only["mean"], ref_aux["mean"])


def test_filter_grad_does_not_retrace():
    traces = []

    def loss(model, x):
        traces.append(None)
        return jnp.sum(model(x) ** 2)

    x = jnp.ones((2, 3))
    for scale in (1.0, 2.0, 3.0):
        model = eqx.tree_at(lambda m: m.weight, _mixed(), _mixed().weight * scale)
        pcgraph.filter_grad(loss)(model, x)  # a new wrapper every call, as in a loop
    assert len(traces) == 1


def test_filter_grad_needs_a_positional_argument():
    wrapped = pcgraph.filter_grad(lambda model: jnp.sum(model.weight))
    with pytest.raises(TypeError, match=r"pcgraph.filter_grad.*first positional.*by position"):
        wrapped(model=_mixed())


def test_filter_grad_passes_the_algorithm(x64):
    """`algorithm=` reaches the solve: IL through `filter_grad` is IL through `grad` on the
    partitioned model, and differs from the exact gradient."""
    model = _mixed()
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    algorithm = pcgraph.IL(beta=0.5, max_steps=50)

    def loss(model, x):
        return jnp.sum((model(x) - 1.0) ** 2)

    diff, rest = eqx.partition(model, eqx.is_inexact_array)
    # The per-primitive graph: with one layer, the layered graph has no node and IL is exact.
    primitives = pcgraph.Primitives()
    il = pcgraph.filter_grad(loss, algorithm=algorithm, placement=primitives)(model, x)
    by_grad = pcgraph.grad(
        lambda d: loss(eqx.combine(d, rest), x), algorithm=algorithm, placement=primitives
    )(diff)
    assert_grads_close(il, by_grad, 1e-12)
    exact = pcgraph.filter_grad(loss)(model, x)
    assert not jnp.allclose(il.weight, exact.weight, rtol=1e-3)
