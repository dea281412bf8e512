"""Train an equinox CNN on digits with backprop and with predictive coding, side by side.

The model is an ordinary `equinox.Module` (two 3x3 convolutions with max and average pooling,
a linear head); the loss is plain JAX. The only PC-specific lines are the three
`pcgraph.node(...)` marks on the block outputs (identities under plain JAX), which make the
traced graph the layered PC network of the literature: one value node per block, each
predicted from the one before.

Three runs from the same initialisation, the same minibatch order and the same optimiser
(Adam), differing only in the gradient function of the jit-compiled training step:

- backprop:  `eqx.filter_value_and_grad(loss)`;
- PC (FPA):  `pcgraph.filter_value_and_grad(loss)`: predictive coding under the
             fixed-prediction assumption, exact after `graph.depth` relaxation steps of size 1,
             so it trains as backprop does (up to float round-off);
- PC (IL):   `pcgraph.filter_value_and_grad(loss, algorithm=pcgraph.IL(...))`: standard
             inference learning, an approximation: the activities relax for a fixed number of
             steps on the energy with output weight beta = 1 (settings below), and every weight
             is updated from its own block's prediction error.

At every step the PC runs also compute `jax.grad` at their own parameters, to record how far
PC's gradient is from backprop's over training (relative error and cosine similarity).

Run:  pip install -e ".[examples]" && python examples/cnn_digits.py [--epochs 15] [--seed 0]
      (--quick: 2 epochs, for a smoke test; --il-* change IL's settings, see --help)
"""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import batch_order, command_line, digits, save, train_each

import pcgraph

BATCH_SIZE = 64
#: Adam, its learning rate decaying from LEARNING_RATE to 0 over the run (a cosine schedule).
LEARNING_RATE = 1e-2
#: IL: relax the activities for IL_STEPS steps of gradient descent with heavy-ball momentum
#: (`optax.sgd(IL_STEP_SIZE, momentum=IL_MOMENTUM)`) at output weight IL_BETA. As training
#: sharpens the network the relaxation gets stiffer; plain Euler steps of 0.1 diverge after a
#: few epochs, and momentum reaches further in the same number of steps.
IL_BETA = 1.0
IL_STEP_SIZE = 0.05
IL_MOMENTUM = 0.9
IL_STEPS = 100
FIGURE = pathlib.Path(__file__).parent / "figures" / "cnn_digits.png"


class CNN(eqx.Module):
    """8x8x1 -> conv 3x3 (16) -> relu -> max pool 2 -> conv 3x3 (32) -> relu -> average pool 2
    -> linear (10), with a PC node marked at each block's output."""

    conv1: eqx.nn.Conv2d
    pool1: eqx.nn.MaxPool2d
    conv2: eqx.nn.Conv2d
    pool2: eqx.nn.AvgPool2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 16, 3, padding=1, key=k1)
        self.pool1 = eqx.nn.MaxPool2d(2, 2)
        self.conv2 = eqx.nn.Conv2d(16, 32, 3, padding=1, key=k2)
        self.pool2 = eqx.nn.AvgPool2d(2, 2)
        self.head = eqx.nn.Linear(32 * 2 * 2, 10, key=k3)

    def __call__(self, image):
        h = pcgraph.node(self.pool1(jax.nn.relu(self.conv1(image))), name="block1")
        h = pcgraph.node(self.pool2(jax.nn.relu(self.conv2(h))), name="block2")
        return pcgraph.node(self.head(h.reshape(-1)), name="logits")


def loss_fn(model, images, labels):
    logits = jax.vmap(model)(images)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 10), axis=-1))


@eqx.filter_jit
def accuracy(model, images, labels):
    return jnp.mean(jnp.argmax(jax.vmap(model)(images), axis=-1) == labels)


def plot(results, path: pathlib.Path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, history), color in zip(results.items(), ("C0", "C1", "C2"), strict=True):
        epochs = np.arange(1, len(history["test"]) + 1)
        left.plot(epochs, history["test"], "o-", color=color, label=f"{name}: test")
        left.plot(epochs, history["train"], ":", color=color, label=f"{name}: train")
        if name != "backprop":
            right.semilogy(history["rel_error"], color=color, lw=0.8, label=name)
    left.set(xlabel="epoch", ylabel="accuracy", title="CNN on digits", ylim=(0.8, 1.0))
    left.grid(alpha=0.3)
    left.legend(loc="lower right", fontsize=8)
    right.set(
        xlabel="training step",
        ylabel="||g_PC - g_backprop|| / ||g_backprop||",
        title="PC gradient vs backprop's, at PC's own parameters",
    )
    right.grid(alpha=0.3, which="both")
    right.legend()
    save(figure, path)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=15, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and order")
    parser.add_argument("--quick", action="store_true", help="2 epochs: a smoke test")
    parser.add_argument("--il-beta", type=float, default=IL_BETA, help="IL output weight")
    parser.add_argument("--il-step-size", type=float, default=IL_STEP_SIZE, help="IL step size")
    parser.add_argument("--il-momentum", type=float, default=IL_MOMENTUM, help="IL momentum")
    parser.add_argument("--il-steps", type=int, default=IL_STEPS, help="IL relaxation steps")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs

    x_train, x_test, y_train, y_test = digits(args.seed, shape=(1, 8, 8))
    print(f"digits: {len(x_train)} train / {len(x_test)} test images (8x8), 10 classes")
    model = CNN(jax.random.PRNGKey(args.seed))
    diff, rest = eqx.partition(model, eqx.is_inexact_array)
    graph = pcgraph.trace(
        lambda d: loss_fn(eqx.combine(d, rest), x_train[:BATCH_SIZE], y_train[:BATCH_SIZE]), diff
    )
    print(graph)
    stepper = pcgraph.OptaxStepper(optax.sgd(args.il_step_size, momentum=args.il_momentum))
    il = pcgraph.IL(beta=args.il_beta, stepper=stepper, max_steps=args.il_steps)
    print(
        f"IL settings: beta={args.il_beta}, {args.il_steps} steps of optax.sgd("
        f"{args.il_step_size}, momentum={args.il_momentum}) on the activities"
    )
    # The same minibatches and optimiser for every run.
    order = batch_order(len(x_train), epochs, args.seed, BATCH_SIZE)
    batches = [(x_train[idx], y_train[idx]) for idx in order.reshape(-1, BATCH_SIZE)]
    optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, len(batches)))

    def evaluate(model):  # after every epoch
        return {"train": accuracy(model, x_train, y_train), "test": accuracy(model, x_test, y_test)}

    runs = {
        "backprop": (eqx.filter_value_and_grad(loss_fn), False),
        "PC (FPA)": (pcgraph.filter_value_and_grad(loss_fn), True),
        "PC (IL)": (pcgraph.filter_value_and_grad(loss_fn, algorithm=il), True),
    }
    results = train_each(
        runs, loss_fn, model, optimizer, batches, evaluate=evaluate, every=order.shape[1]
    )
    plot(results, FIGURE)

    backprop = results["backprop"]["test"][-1]
    print(
        f"\n{'method':<10}  {'test acc':>8}  {'vs backprop':>11}  {'best test':>9}  "
        f"{'rel. error (median)':>19}  {'cosine (min)':>12}  {'train (s)':>9}"
    )
    for name, h in results.items():
        gap = 100 * (h["test"][-1] - backprop)
        rel = f"{np.median(h['rel_error']):.2e}" if name != "backprop" else "-"
        cos = f"{min(h['cosine']):.6f}" if name != "backprop" else "-"
        print(
            f"{name:<10}  {h['test'][-1]:>8.2%}  {gap:>+10.2f}pt  {max(h['test']):>9.2%}  "
            f"{rel:>19}  {cos:>12}  {h['seconds']:>9.1f}"
        )
    print(
        "(rel. error and cosine: PC's gradient against jax.grad's at the same parameters, over "
        "every training step)"
    )
    print(f"saved {FIGURE}")


if __name__ == "__main__":
    main()
