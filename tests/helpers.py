"""Shared test utilities and a zoo of differentiable programs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import pcgraph

#: Gradient tolerances against jax.grad, per dtype (elementwise, see `assert_grads_close`).
RTOL = {jnp.float32: 1e-5, jnp.float64: 1e-10}


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Same structure, same shapes and dtypes, and allclose leaves."""
    if jax.tree.structure(x) != jax.tree.structure(y):
        return False
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            return False
    return True


def assert_grads_close(pc, reference, rtol):
    """Every element within `rtol * (|ref| + max |ref| of its leaf)` of jax.grad's value, with
    identical tree structure, shapes and dtypes."""
    assert jax.tree.structure(pc) == jax.tree.structure(reference)
    for path, a, b in zip(
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(pc)],
        jax.tree.leaves(pc),
        jax.tree.leaves(reference),
        strict=True,
    ):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (path, a.shape, b.shape, a.dtype)
        scale = np.max(np.abs(b), initial=0.0)
        bound = rtol * (np.abs(b) + scale)
        worst = np.max(np.abs(a - b) - bound, initial=-1.0)
        assert worst <= 0, f"{path}: max |pc - ref| exceeds rtol={rtol} by {worst:.3g}"


def normal(key, shape, dtype, scale=1.0):
    return (scale * jax.random.normal(key, shape)).astype(dtype)


# -- the zoo ------------------------------------------------------------------------------------
# Each factory takes (key, dtype) and returns (fn, args, kwargs for jax.grad / pcgraph.grad).


def mlp_params(key, sizes, dtype):
    keys = jax.random.split(key, len(sizes))
    return [
        {
            "w": normal(k, (m, n), dtype, 1 / np.sqrt(m)),
            "b": normal(jax.random.fold_in(k, 1), (n,), dtype, 0.1),
        }
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=False)
    ]


def mlp_forward(params, x, activation, mark):
    h = x
    for i, layer in enumerate(params[:-1]):
        h = activation(h @ layer["w"] + layer["b"])
        if mark:
            h = pcgraph.node(h, name=f"hidden{i}")
    return h @ params[-1]["w"] + params[-1]["b"]


def softmax_cross_entropy(logits, labels):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def _data(key, dtype, batch=6, d_in=5, classes=3):
    kx, ky = jax.random.split(key)
    x = normal(kx, (batch, d_in), dtype)
    y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, classes), classes, dtype=dtype)
    return x, y


def tanh_mlp(key, dtype, mark=False):
    kp, kd = jax.random.split(key)
    params = mlp_params(kp, [5, 7, 6, 3], dtype)
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        return jnp.mean((mlp_forward(params, x, jnp.tanh, mark) - y) ** 2)

    return loss, (params, x, y), {}


def relu_mlp_cross_entropy(key, dtype, mark=False):
    kp, kd = jax.random.split(key)
    params = mlp_params(kp, [5, 8, 8, 3], dtype)
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        return softmax_cross_entropy(mlp_forward(params, x, jax.nn.relu, mark), y)

    return loss, (params, x, y), {}


def residual_block(key, dtype):
    kp, kd = jax.random.split(key)
    k1, k2, k3 = jax.random.split(kp, 3)
    params = {
        "w1": normal(k1, (5, 5), dtype, 0.5),
        "w2": normal(k2, (5, 5), dtype, 0.5),
        "head": normal(k3, (5, 3), dtype, 0.5),
    }
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        h = x + jnp.tanh(jnp.tanh(x @ params["w1"]) @ params["w2"])
        h = h + jax.nn.softplus(h @ params["w1"])
        return softmax_cross_entropy(h @ params["head"], y)

    return loss, (params, x, y), {}


def shared_parameter(key, dtype):
    """One weight read by two different nodes (weight sharing / a tiny unrolled RNN)."""
    kp, kd = jax.random.split(key)
    params = (normal(kp, (5, 5), dtype, 0.5), normal(jax.random.fold_in(kp, 1), (5, 3), dtype))
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        w, head = params
        h = jnp.sin(x @ w)
        h = jnp.tanh(h @ w + x)
        return jnp.mean((h @ head - y) ** 2)

    return loss, (params, x, y), {}


def nested_jit(key, dtype):
    kp, kd = jax.random.split(key)
    params = mlp_params(kp, [5, 6, 3], dtype)
    x, y = _data(kd, dtype)

    @jax.jit
    def layer(p, h):
        return jnp.tanh(h @ p["w"] + p["b"])

    @jax.jit
    def loss(params, x, y):
        h = jax.jit(lambda h: layer(params[0], h))(x)
        return softmax_cross_entropy(h @ params[1]["w"] + params[1]["b"], y)

    return loss, (params, x, y), {}


@jax.custom_jvp
def custom_logsumexp(x):
    top = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return jnp.log(jnp.sum(jnp.exp(x - top), axis=-1)) + top[..., 0]


@custom_logsumexp.defjvp
def _custom_logsumexp_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    out = custom_logsumexp(x)
    return out, jnp.sum(jax.nn.softmax(x) * dx, axis=-1)


@jax.custom_vjp
def scaled_sin(x):
    return jnp.sin(x) * 2


scaled_sin.defvjp(lambda x: (scaled_sin(x), x), lambda x, ct: (2 * jnp.cos(x) * ct,))


def custom_derivatives(key, dtype):
    """relu and softplus (custom_jvp inside jax.nn), a hand-written custom_jvp logsumexp and a
    custom_vjp function."""
    kp, kd = jax.random.split(key)
    params = mlp_params(kp, [5, 6, 6, 3], dtype)
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        h = jax.nn.relu(x @ params[0]["w"] + params[0]["b"])
        h = jax.nn.softplus(h @ params[1]["w"] + params[1]["b"])
        logits = scaled_sin(h @ params[2]["w"] + params[2]["b"])
        return jnp.mean(custom_logsumexp(logits) - jnp.sum(logits * y, axis=-1))

    return loss, (params, x, y), {}


def mixed_pytree(key, dtype):
    """dict / list / tuple parameters and a None leaf."""
    kp, kd = jax.random.split(key)
    k = jax.random.split(kp, 4)
    params = {
        "encoder": [normal(k[0], (5, 4), dtype), (normal(k[1], (4,), dtype), None)],
        "decoder": (normal(k[2], (4, 3), dtype), {"bias": normal(k[3], (3,), dtype)}),
    }
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        w, (b, _) = params["encoder"]
        h = jnp.tanh(x @ w + b)
        out = h @ params["decoder"][0] + params["decoder"][1]["bias"]
        return jnp.sum((out - y) ** 2)

    return loss, (params, x, y), {}


def two_argnums(key, dtype):
    """Differentiate with respect to the weights and the input."""
    loss, (params, x, y), _ = tanh_mlp(key, dtype)
    return loss, (params, x, y), {"argnums": (0, 1)}


def with_aux(key, dtype):
    loss, args, _ = relu_mlp_cross_entropy(key, dtype)

    def loss_and_aux(params, x, y):
        value = loss(params, x, y)
        return value, {
            "loss": value,
            "logits_norm": jnp.linalg.norm(mlp_forward(params, x, jnp.tanh, False)),
        }

    return loss_and_aux, args, {"has_aux": True}


def control_flow(key, dtype):
    """`cond` (one opaque node) and a fixed-length `scan` (lifted into stacked nodes)."""
    kp, kd = jax.random.split(key)
    k1, k2 = jax.random.split(kp)
    params = {"w": normal(k1, (5, 5), dtype, 0.4), "head": normal(k2, (5, 3), dtype)}
    x, y = _data(kd, dtype)

    def loss(params, x, y):
        h = jax.lax.cond(x.sum() > 0, jnp.tanh, jnp.sin, x @ params["w"])

        def step(carry, _):
            return jnp.tanh(carry @ params["w"]), carry.sum()

        h, _ = jax.lax.scan(step, h, None, length=3)
        return jnp.mean((h @ params["head"] - y) ** 2)

    return loss, (params, x, y), {}


ZOO = {
    "tanh_mlp": tanh_mlp,
    "tanh_mlp_marked": functools.partial(tanh_mlp, mark=True),
    "relu_mlp_cross_entropy": relu_mlp_cross_entropy,
    "relu_mlp_cross_entropy_marked": functools.partial(relu_mlp_cross_entropy, mark=True),
    "residual_block": residual_block,
    "shared_parameter": shared_parameter,
    "nested_jit": nested_jit,
    "custom_derivatives": custom_derivatives,
    "mixed_pytree": mixed_pytree,
    "two_argnums": two_argnums,
    "with_aux": with_aux,
    "control_flow": control_flow,
}


def small_cnn(key, dtype, mark=False):
    """Two 3x3 convolutions (NHWC), relu, 2x2 average and max pooling, a dense head."""
    k = jax.random.split(key, 4)
    params = {
        "conv1": normal(k[0], (3, 3, 1, 4), dtype, 0.4),
        "conv2": normal(k[1], (3, 3, 4, 6), dtype, 0.2),
        "head": normal(k[2], (6 * 2 * 2, 3), dtype, 0.3),
    }
    x = normal(k[3], (4, 8, 8, 1), dtype)
    y = jax.nn.one_hot(jnp.arange(4) % 3, 3, dtype=dtype)
    dimension_numbers = ("NHWC", "HWIO", "NHWC")

    def maybe_mark(h, name):
        return pcgraph.node(h, name=name) if mark else h

    def loss(params, x, y):
        h = jax.lax.conv_general_dilated(
            x, params["conv1"], (1, 1), "SAME", dimension_numbers=dimension_numbers
        )
        h = maybe_mark(jax.nn.relu(h), "conv1")
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        h = jax.lax.conv_general_dilated(
            h, params["conv2"], (1, 1), "SAME", dimension_numbers=dimension_numbers
        )
        h = maybe_mark(jnp.tanh(h), "conv2")
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return softmax_cross_entropy(h.reshape(h.shape[0], -1) @ params["head"], y)

    return loss, (params, x, y), {}


ZOO["small_cnn"] = small_cnn
ZOO["small_cnn_marked"] = functools.partial(small_cnn, mark=True)
