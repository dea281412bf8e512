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

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from _common import agreement, batch_order, command_line, digits, train_each

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


def accuracy(model, images, labels) -> float:
    logits = jax.vmap(model)(images)
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1)))


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and order")
    parser.add_argument("--quick", action="store_true", help="5 epochs")
    args = parser.parse_args()
    epochs = 5 if args.quick else args.epochs
    x_train, x_test, y_train, y_test = digits(args.seed, shape=(1, 8, 8), one_hot=True)
    model = CNN(jax.random.key(args.seed))
    x, y = x_train[:BATCH_SIZE], y_train[:BATCH_SIZE]

    diff, static = eqx.partition(model, eqx.is_inexact_array)
    graph = pcgraph.trace(lambda d, x, y: loss_fn(eqx.combine(d, static), x, y), diff, x, y)
    print("The automatic graph of the unchanged CNN:")
    print(graph.summary())
    il = pcgraph.filter_value_and_grad(loss_fn, algorithm=pcgraph.IL())
    _, start = agreement(il(model, x, y)[1], eqx.filter_grad(loss_fn)(model, x, y))
    print(f"IL vs jax.grad at initialisation: cosine {float(start):.4f}")

    # The same minibatches and optimiser for both runs.
    order = batch_order(len(x_train), epochs, args.seed, BATCH_SIZE)
    batches = [(x_train[idx], y_train[idx]) for idx in order.reshape(-1, BATCH_SIZE)]
    runs = {
        "backprop": (eqx.filter_value_and_grad(loss_fn), False),
        "PC (IL, defaults)": (il, False),
    }

    def evaluate(model):  # once, after the last step
        return {"test": accuracy(model, x_test, y_test)}

    optimizer = optax.adam(LEARNING_RATE)
    results = train_each(
        runs, loss_fn, model, optimizer, batches, evaluate=evaluate, every=len(batches), leave=False
    )
    bp, pc = (history["test"][-1] for history in results.values())
    print(f"test accuracy after {epochs} epochs: backprop {bp:.3f}, PC (IL) {pc:.3f}")
    print(f"difference: {abs(bp - pc) * 100:.1f} points")


if __name__ == "__main__":
    main()
