"""Draw where pcgraph puts the value nodes of four unchanged models (`pcgraph.Layers`).

Without `pcgraph.node` marks, pcgraph finds the layers of a traced function itself: a layer
starts at an operation that reads a parameter (a matmul, a convolution) and extends through
what follows it elementwise, and its last value is a value node when another layer reads it
(the layered network of Whittington & Bogacz 2017). This script traces four small models,
none of which knows about predictive coding, prints each graph's summary and renders it:

- an `eqx.nn.MLP` with a softmax cross-entropy loss, also with `pcgraph.Primitives()` (a node
  at every primitive result) to show what the layer rule saves;
- a residual network in plain JAX, `z = z + 0.5 * tanh(z) @ W`;
- a flax linen block Dense -> LayerNorm -> gelu -> Dense;
- a single-head self-attention block in plain JAX.

    python examples/placement_pictures.py [--out docs/figures]

writes `placement_<name>.svg` into `--out`. Needs Graphviz's `dot` executable (Debian/Ubuntu:
`apt install graphviz`). The pictures in the documentation's "Wrap your model" page are made
by this script.
"""

import argparse
from pathlib import Path

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

import pcgraph

BATCH = 4
CLASSES = 4


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def mlp_loss(params, static, x, labels):
    model = eqx.combine(params, static)  # the arrays to differentiate, and the rest
    return cross_entropy(jax.vmap(model)(x), labels)


def residual_loss(params, x, labels):
    z = x @ params["embed"]
    for w in params["blocks"]:
        z = z + 0.5 * jnp.tanh(z) @ w
    return cross_entropy(z @ params["head"], labels)


class NormBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8)(x)
        h = nn.gelu(nn.LayerNorm()(h))
        return nn.Dense(CLASSES)(h)


def norm_loss(variables, x, labels):
    return cross_entropy(NormBlock().apply(variables, x), labels)


def attention_loss(params, x, labels):
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    scores = q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(q.shape[-1])
    h = jax.nn.softmax(scores, axis=-1) @ v @ params["wo"]
    return cross_entropy(jnp.mean(h, axis=1) @ params["head"], labels)


def models():
    """(name, loss, parameters, data...) for each picture, with tiny shapes."""
    keys = iter(jax.random.split(jax.random.key(0), 16))

    def normal(*shape):
        return jax.random.normal(next(keys), shape) / shape[0] ** 0.5

    labels = jax.nn.one_hot(jnp.arange(BATCH) % CLASSES, CLASSES)
    x8 = normal(BATCH, 8)
    mlp = eqx.nn.MLP(8, CLASSES, 16, 3, activation=jnp.tanh, key=next(keys))
    residual = {
        "embed": normal(8, 16),
        "blocks": [normal(16, 16), normal(16, 16)],
        "head": normal(16, CLASSES),
    }
    variables = NormBlock().init(next(keys), x8)
    tokens = normal(BATCH, 5, 8)  # 5 tokens of width 8
    attention = {name: normal(8, 8) for name in ("wq", "wk", "wv", "wo")}
    attention["head"] = normal(8, CLASSES)
    return [
        ("mlp", mlp_loss, *eqx.partition(mlp, eqx.is_inexact_array), x8, labels),
        ("residual", residual_loss, residual, x8, labels),
        ("layernorm", norm_loss, variables, x8, labels),
        ("attention", attention_loss, attention, tokens, labels),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/figures", help="directory for the SVG files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, loss, params, *data in models():
        graph = pcgraph.trace(loss, params, *data)
        print(f"{name}:\n{graph.summary()}\n")
        print("wrote", graph.render(out / f"placement_{name}.svg"), "\n")
        if name == "mlp":
            fine = pcgraph.trace(loss, params, *data, placement=pcgraph.Primitives())
            print(f"{name}, one node per primitive:\n{fine.summary()}\n")
            print("wrote", fine.render(out / f"placement_{name}_primitives.svg"), "\n")


if __name__ == "__main__":
    main()
