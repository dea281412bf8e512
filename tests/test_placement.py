"""Automatic node placement on models a user cannot edit: an unchanged `eqx.nn.MLP`, an equinox
CNN, flax linen and nnx MLPs become the standard layered predictive-coding network
(Whittington & Bogacz 2017), on which IL's defaults converge close to `jax.grad`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from helpers import RTOL, assert_grads_close, normal, tree_allclose

import pcgraph


def _cosines(pc, reference):
    out = []
    for a, b in zip(jax.tree.leaves(pc), jax.tree.leaves(reference), strict=True):
        a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return out


def _cross_entropy(logits, labels):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def _labels(batch, classes, dtype=jnp.float32):
    return jax.nn.one_hot(jnp.arange(batch) % classes, classes, dtype=dtype)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def _eqx_mlp(dtype):
    mlp = eqx.nn.MLP(16, 10, 32, 3, activation=jnp.tanh, key=jax.random.key(0))
    return _cast(mlp, dtype)


def _mlp_loss(model, x, y):
    return _cross_entropy(jax.vmap(model)(x), y)


class _CNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    pool: eqx.nn.MaxPool2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(4, 6, 3, padding=1, key=k2)
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.head = eqx.nn.Linear(6 * 2 * 2, 10, key=k3)

    def __call__(self, x):
        h = self.pool(jax.nn.relu(self.conv1(x)))
        h = self.pool(jax.nn.relu(self.conv2(h)))
        return self.head(h.reshape(-1))


class _Linen(linen.Module):
    @linen.compact
    def __call__(self, x):
        for _ in range(2):
            x = jnp.tanh(linen.Dense(24)(x))
        return linen.Dense(10)(x)


class _Nnx(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(16, 24, rngs=rngs)
        self.out = nnx.Linear(24, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.gelu(self.hidden(x)))


def _models():
    """(name, loss, differentiated argument, data, number of hidden layers)."""
    x = normal(jax.random.key(1), (12, 16), jnp.float32)
    y = _labels(12, 10)
    mlp = _eqx_mlp(jnp.float32)
    cnn = _CNN(jax.random.key(2))
    images = normal(jax.random.key(3), (16, 1, 8, 8), jnp.float32)
    cnn_diff, cnn_static = eqx.partition(cnn, eqx.is_inexact_array)
    mlp_diff, mlp_static = eqx.partition(mlp, eqx.is_inexact_array)
    linen_model = _Linen()
    variables = linen_model.init(jax.random.key(4), x)
    graphdef, state = nnx.split(_Nnx(nnx.Rngs(5)))
    return [
        (
            "eqx.nn.MLP",
            lambda d, x, y: _mlp_loss(eqx.combine(d, mlp_static), x, y),
            mlp_diff, (x, y), 3,
        ),
        (
            "equinox CNN",
            lambda d, x, y: _mlp_loss(eqx.combine(d, cnn_static), x, y),
            cnn_diff, (images, _labels(16, 10)), 2,
        ),
        (
            "flax linen MLP",
            lambda v, x, y: _cross_entropy(linen_model.apply(v, x), y),
            variables, (x, y), 2,
        ),
        (
            "flax nnx MLP",
            lambda s, x, y: _cross_entropy(nnx.merge(graphdef, s)(x), y),
            state, (x, y), 1,
        ),
    ]  # fmt: skip


MODELS = _models()


@pytest.mark.parametrize("name, loss, diff, data, hidden", MODELS, ids=[m[0] for m in MODELS])
def test_layers_make_one_node_per_hidden_layer(name, loss, diff, data, hidden):
    graph = pcgraph.trace(loss, diff, *data)
    assert isinstance(graph.placement, pcgraph.Layers)
    assert len(graph.nodes) == hidden
    assert [info.distance for info in graph.nodes] == list(range(hidden, 0, -1))
    assert "placement: layers" in graph.summary()


@pytest.mark.slow
@pytest.mark.parametrize("name, loss, diff, data, hidden", MODELS, ids=[m[0] for m in MODELS])
def test_il_defaults_converge_near_jax_grad(name, loss, diff, data, hidden):
    solution = pcgraph.relax(loss, diff, *data, algorithm=pcgraph.IL(), save_energy=True)
    assert bool(solution.stats.converged)
    energies = np.asarray(solution.stats.energy_trajectory)
    # Settled: the energy fell from the feedforward loss and stopped moving.
    assert energies[-1] < energies[0]
    assert abs(energies[-1] - energies[-11]) <= 1e-4 * abs(energies[0] - energies[-1]) + 1e-7
    assert min(_cosines(solution.grads, jax.grad(loss)(diff, *data))) >= 0.99


@pytest.mark.slow
def test_automatic_layers_equal_hand_marks_for_nnx_mlp(x64):
    """gelu reads its input more than once, so the layer's node is the pre-activation: the
    same graph as marking `hidden(x)` by hand."""
    x = normal(jax.random.key(1), (12, 16), jnp.float64)
    y = _labels(12, 10, jnp.float64)
    graphdef, state = nnx.split(_Nnx(nnx.Rngs(5)))
    state = _cast(state, jnp.float64)

    def automatic(s, x, y):
        return _cross_entropy(nnx.merge(graphdef, s)(x), y)

    def marked(s, x, y):
        model = nnx.merge(graphdef, s)
        h = pcgraph.node(model.hidden(x))
        return _cross_entropy(model.out(jax.nn.gelu(h)), y)

    assert [info.op for info in pcgraph.trace(automatic, state, x, y).nodes] == ["dot_general..add"]
    a = pcgraph.grad(automatic, algorithm=pcgraph.IL())(state, x, y)
    b = pcgraph.grad(marked, algorithm=pcgraph.IL())(state, x, y)
    assert tree_allclose(a, b, rtol=1e-10, atol=1e-14)


def _hand_marked_mlp(params, x, y):
    """The same MLP in plain JAX, each hidden activation marked by hand."""
    h = x
    for w, b in params[:-1]:
        h = pcgraph.node(jnp.tanh(h @ w.T + b))
    w, b = params[-1]
    return _cross_entropy(h @ w.T + b, y)


@pytest.mark.slow
def test_automatic_layers_equal_hand_marks_for_eqx_mlp(x64):
    mlp = _eqx_mlp(jnp.float64)
    x = normal(jax.random.key(1), (12, 16), jnp.float64)
    y = _labels(12, 10, jnp.float64)
    diff, static = eqx.partition(mlp, eqx.is_inexact_array)
    params = [(layer.weight, layer.bias) for layer in mlp.layers]
    algorithm = pcgraph.IL()
    automatic = pcgraph.relax(
        lambda d, x, y: _mlp_loss(eqx.combine(d, static), x, y), diff, x, y, algorithm=algorithm
    )
    marked = pcgraph.relax(_hand_marked_mlp, params, x, y, algorithm=algorithm)
    pairs = [(layer.weight, layer.bias) for layer in automatic.grads.layers]
    assert tree_allclose(pairs, marked.grads, rtol=1e-10, atol=1e-14)
    assert tree_allclose(list(automatic.values.values()), list(marked.values.values()), rtol=1e-10)


@pytest.mark.slow
def test_automatic_layers_equal_hand_marks_for_linen_mlp(x64):
    x = normal(jax.random.key(1), (12, 16), jnp.float64)
    y = _labels(12, 10, jnp.float64)
    variables = _cast(_Linen().init(jax.random.key(4), x), jnp.float64)

    def automatic(v, x, y):
        return _cross_entropy(_Linen().apply(v, x), y)

    def marked(v, x, y):
        p = v["params"]
        h = x
        for k in range(2):
            layer = p[f"Dense_{k}"]
            h = pcgraph.node(jnp.tanh(h @ layer["kernel"] + layer["bias"]))
        return _cross_entropy(h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"], y)

    a = pcgraph.grad(automatic, algorithm=pcgraph.IL())(variables, x, y)
    b = pcgraph.grad(marked, algorithm=pcgraph.IL())(variables, x, y)
    assert tree_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_plain_jax_mlp_without_marks_is_layered():
    """The plain-JAX network that the per-primitive graph made stiff and unbounded: on the
    layered graph IL's defaults converge, and FPA equals jax.grad."""
    k = jax.random.split(jax.random.key(0), 4)
    params = [normal(k[0], (10, 16), jnp.float32, 0.3), normal(k[1], (16, 5), jnp.float32, 0.25)]
    x, y = normal(k[2], (32, 10), jnp.float32), normal(k[3], (32, 5), jnp.float32)

    def loss(p, x, y):
        return jnp.mean(jnp.sum((jnp.tanh(x @ p[0]) @ p[1] - y) ** 2, axis=-1))

    graph = pcgraph.trace(loss, params, x, y)
    assert [info.op for info in graph.nodes] == ["dot_general..tanh"]
    solution = pcgraph.relax(loss, params, x, y, algorithm=pcgraph.IL())
    assert bool(solution.stats.converged)
    assert float(solution.stats.energy) < float(solution.stats.initial_energy)
    assert min(_cosines(solution.grads, jax.grad(loss)(params, x, y))) >= 0.99
    assert_grads_close(pcgraph.grad(loss)(params, x, y), jax.grad(loss)(params, x, y), 1e-5)


def _residual_loss(params, x, y):
    z = jnp.tanh(x @ params["in"])
    for w in params["blocks"]:
        z = z + 0.5 * jnp.tanh(z) @ w
    return _cross_entropy(z @ params["out"], y)


def test_layer_rule_on_a_residual_network():
    """A residual sum joins the branch's layer: one node per block, the head folds into the
    loss, and the parents follow the skip connections."""
    k = jax.random.split(jax.random.key(0), 5)
    params = {
        "in": normal(k[0], (6, 8), jnp.float32, 0.4),
        "blocks": [normal(k[1], (8, 8), jnp.float32, 0.3), normal(k[2], (8, 8), jnp.float32, 0.3)],
        "out": normal(k[3], (8, 3), jnp.float32, 0.3),
    }
    x, y = normal(k[4], (5, 6), jnp.float32), _labels(5, 3)
    graph = pcgraph.trace(_residual_loss, params, x, y)
    assert len(graph.nodes) == 3
    assert graph.nodes[2].op == "dot_general..add"
    assert graph.nodes[2].parents == ("['blocks'][1]", graph.nodes[1].name)
    assert_grads_close(
        pcgraph.grad(_residual_loss)(params, x, y), jax.grad(_residual_loss)(params, x, y), 1e-5
    )


@pytest.mark.parametrize(
    "placement, expected",
    [(pcgraph.Layers(), 1), (pcgraph.Marks(), 0), (pcgraph.Primitives(), 4)],
    ids=["layers", "marks", "primitives"],
)
def test_placement_is_a_config_object(placement, expected, dtype):
    w, v = jnp.ones((3, 4), dtype) * 0.1, jnp.ones((4, 2), dtype) * 0.2
    x = jnp.arange(6, dtype=dtype).reshape(2, 3)

    def loss(params, x):
        w, v = params
        return jnp.sum(jnp.sin(jnp.tanh(x @ w) @ v))

    graph = pcgraph.trace(loss, (w, v), x, placement=placement)
    assert len(graph.nodes) == expected
    assert f"placement: {placement.name}" in graph.summary()
    pc = pcgraph.grad(loss, placement=placement)((w, v), x)
    assert_grads_close(pc, jax.grad(loss)((w, v), x), RTOL[dtype])


def test_marks_win_by_default_and_layers_ignore_them():
    def loss(w, x):
        h = pcgraph.node(jnp.tanh(x @ w), name="h")
        return jnp.sum(jnp.tanh(h @ w) ** 2)

    w, x = jnp.eye(3) * 0.5, jnp.ones((2, 3))
    assert pcgraph.trace(loss, w, x).node_names == ("h",)
    assert isinstance(pcgraph.trace(loss, w, x).placement, pcgraph.Marks)
    assert pcgraph.trace(loss, w, x, placement=pcgraph.Layers()).node_names == ("layer_0",)


def test_placement_must_be_an_instance():
    with pytest.raises(TypeError, match=r"placement=Layers is a class; pass an instance"):
        pcgraph.grad(jnp.sum, placement=pcgraph.Layers)
    with pytest.raises(TypeError, match="is not a node placement"):
        pcgraph.trace(jnp.sum, jnp.ones(2), placement="layers")


# -- complex intermediates ------------------------------------------------------------------


def _fft_loss(w, x):
    h = jnp.tanh(jnp.tanh(x @ w) @ w.T)  # a real hidden layer: a node
    spectrum = jnp.fft.rfft(h @ w, axis=-1)
    return jnp.sum(jnp.abs(spectrum) ** 2) / x.shape[0]


def _complex_loss(w, x):
    h = jnp.tanh(jnp.tanh(x @ w) @ w.T)  # a real hidden layer: a node
    z = (h @ w) * (1.0 + 2.0j) + jnp.exp(1j * (h @ w))
    return jnp.sum(jnp.real(z * jnp.conj(z)) + jnp.imag(z) ** 3)


@pytest.mark.parametrize("loss", [_fft_loss, _complex_loss], ids=["fft", "complex arithmetic"])
@pytest.mark.parametrize(
    "placement", [None, pcgraph.Primitives()], ids=["default placement", "primitives"]
)
@pytest.mark.parametrize(
    "algorithm",
    [pcgraph.FPA(), pcgraph.ZIL(), pcgraph.FPA(schedule=pcgraph.Wavefront())],
    ids=["FPA", "ZIL", "wavefront"],
)
def test_complex_intermediates_give_jax_grad(loss, placement, algorithm, x64):
    """Complex values are never nodes: they fold into the next real node's prediction, whose
    local derivative is JAX's own."""
    w = normal(jax.random.key(0), (4, 6), jnp.float64, 0.5)
    x = normal(jax.random.key(1), (3, 4), jnp.float64)
    graph = pcgraph.trace(loss, w, x, placement=placement)
    assert graph.nodes and all(np.issubdtype(info.dtype, np.floating) for info in graph.nodes)
    pc = pcgraph.grad(loss, algorithm=algorithm, placement=placement)(w, x)
    assert_grads_close(pc, jax.grad(loss)(w, x), 1e-10)
