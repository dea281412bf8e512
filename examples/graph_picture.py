"""Draw a traced predictive-coding graph, nodes coloured by their error at equilibrium.

A small residual network on digits (two residual blocks, so some paths to the loss are longer
than others) is traced, relaxed with FPA, and rendered with Graphviz:

    python examples/graph_picture.py [--out examples/figures/graph_errors.svg]

Needs the `dot` executable (Debian/Ubuntu: `apt install graphviz`). The picture in the
documentation's "How it works" page is made by this script.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import pcgraph


def loss(params, x, labels):
    h = pcgraph.node(jnp.tanh(x @ params["embed"]), name="embed")
    for i, w in enumerate(params["blocks"]):
        branch = pcgraph.node(jnp.tanh(h @ w), name=f"branch{i + 1}")
        h = pcgraph.node(h + branch, name=f"block{i + 1}")
    logits = h @ params["head"]
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="examples/figures/graph_errors.svg")
    args = parser.parse_args(argv)
    images, digits = load_digits(return_X_y=True)
    x = jnp.asarray(images[:64] / 16.0, jnp.float32)
    labels = jax.nn.one_hot(digits[:64], 10)
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "embed": jax.random.normal(keys[0], (64, 32)) / 8.0,
        "blocks": [jax.random.normal(k, (32, 32)) / np.sqrt(32) for k in keys[1:3]],
        "head": jax.random.normal(keys[3], (32, 10)) / np.sqrt(32),
    }
    solution = pcgraph.relax(loss, params, x, labels)
    graph = pcgraph.trace(loss, params, x, labels)
    print(graph.summary())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in (out, out.with_suffix(".png")):
        print("wrote", graph.render(path, errors=solution.errors))


if __name__ == "__main__":
    main()
