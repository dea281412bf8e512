"""Train an unchanged equinox CNN on digits with predictive coding, next to backprop.

Nothing in the model or the loss knows about predictive coding: no `pcgraph.node` marks, only
`equinox.nn.Conv2d`, `MaxPool2d` and `Linear`. pcgraph finds the layers on its own
(`pcgraph.Layers`: one value node per convolution block, the linear head folded into the loss),
so the traced graph is the standard layered predictive-coding network (Whittington & Bogacz
2017), and `pcgraph.IL()` with its default settings trains it.

Two runs from the same initialisation, minibatch order and optimiser (Adam), differing only
in the gradient function: `eqx.filter_value_and_grad(loss)` (backprop) and
`pcgraph.filter_value_and_grad(loss, algorithm=pcgraph.IL())` (inference learning). The script
prints the automatic graph's summary, each run's held-out accuracy, and the cosine between
IL's gradient and `jax.grad`'s at the start of training.

Run:  pip install -e ".[examples]" && python examples/unchanged_models.py [--epochs 10]
      (--quick: 5 epochs)
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import pcgraph

BATCH_SIZE = 64
LEARNING_RATE = 3e-3


class CNN(eqx.Module):
    """8x8x1 -> conv 3x3 (16) -> relu -> max pool 2 -> conv 3x3 (32) -> relu -> max pool 2
    -> linear (10). Plain equinox layers, unmarked."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    pool: eqx.nn.MaxPool2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 16, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(16, 32, 3, padding=1, key=k2)
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.head = eqx.nn.Linear(32 * 2 * 2, 10, key=k3)

    def __call__(self, image):
        h = self.pool(jax.nn.relu(self.conv1(image)))
        h = self.pool(jax.nn.relu(self.conv2(h)))
        return self.head(h.reshape(-1))


def loss_fn(model, images, labels):
    logits = jax.vmap(model)(images)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def load_data(seed: int):
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = np.eye(10, dtype=np.float32)[digits.target]
    return train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=digits.target
    )


def accuracy(model, images, labels) -> float:
    logits = jax.vmap(model)(images)
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1)))


def cosine(a, b) -> float:
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def train(name, value_and_grad_fn, model, data, epochs, seed) -> float:
    x_train, x_test, y_train, y_test = data
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        loss, grads = value_and_grad_fn(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    batches = len(x_train) // BATCH_SIZE
    with tqdm(total=epochs * batches, desc=name, leave=False) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(x_train))
            for b in range(batches):
                idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
                model, opt_state, loss = step(model, opt_state, x_train[idx], y_train[idx])
                bar.set_postfix(loss=f"{float(loss):.3f}")
                bar.update()
    return accuracy(model, x_test, y_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and order")
    parser.add_argument("--quick", action="store_true", help="5 epochs")
    args = parser.parse_args()
    epochs = 5 if args.quick else args.epochs
    data = load_data(args.seed)
    model = CNN(jax.random.key(args.seed))
    x, y = data[0][:BATCH_SIZE], data[2][:BATCH_SIZE]

    diff, static = eqx.partition(model, eqx.is_inexact_array)
    graph = pcgraph.trace(lambda d, x, y: loss_fn(eqx.combine(d, static), x, y), diff, x, y)
    print("The automatic graph of the unchanged CNN:")
    print(graph.summary())
    il = pcgraph.filter_value_and_grad(loss_fn, algorithm=pcgraph.IL())
    start = cosine(il(model, x, y)[1], eqx.filter_grad(loss_fn)(model, x, y))
    print(f"IL vs jax.grad at initialisation: cosine {start:.4f}")

    bp = train("backprop", eqx.filter_value_and_grad(loss_fn), model, data, epochs, args.seed)
    pc = train("PC (IL, defaults)", il, model, data, epochs, args.seed)
    print(f"test accuracy after {epochs} epochs: backprop {bp:.3f}, PC (IL) {pc:.3f}")
    print(f"difference: {abs(bp - pc) * 100:.1f} points")


if __name__ == "__main__":
    main()
