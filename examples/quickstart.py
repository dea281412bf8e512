"""pcgraph quickstart: train an MLP on digits with backprop and with predictive coding.

pcgraph makes predictive coding (PC) a drop-in replacement for `jax.grad`. The loss below is
plain JAX; the only PC-specific lines are the `pcgraph.node(...)` marks on the hidden layer
outputs (identities for plain JAX), which turn the traced function into the standard layered
PC network

    F(z) = 1/2 ||z1 - tanh(x W1 + b1)||^2 + 1/2 ||z2 - tanh(z1 W2 + b2)||^2
           + beta * cross_entropy(z2 W3 + b3, y).

The same network, from the same initialisation and with the same minibatch order, is trained
three ways, each with a jit-compiled optax (Adam) step that differs only in its gradient
function:

- backprop:  `jax.grad(loss)`;
- PC (IL):   `pcgraph.grad(loss, algorithm=pcgraph.IL(...))`, standard inference learning:
             the hidden activities relax by gradient descent on F for a fixed number of
             Euler steps, then every weight is updated from its own layer's prediction error.
             Approximate by design (the error vs backprop is O(beta) and depends on how far
             the relaxation got), yet it trains to the same accuracy;
- PC (FPA):  `pcgraph.grad(loss, algorithm=pcgraph.FPA())`, PC under the fixed-prediction
             assumption: exact, so its training run matches backprop up to float round-off.

It then prints a results table and, on a test batch, `pcgraph.check_grad`'s per-parameter
comparison of the PC gradients with `jax.grad`.

Run:  pip install -e ".[examples]" && python examples/quickstart.py [--epochs 15] [--seed 0]
      (--il-steps, --il-step-size and --il-beta change IL's settings; see `--help`)
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import pcgraph

LAYER_SIZES = (64, 64, 64, 10)  # 8x8 pixels -> two tanh hidden layers -> 10 classes
BATCH_SIZE = 64
LEARNING_RATE = 3e-3


def load_data(seed: int):
    """sklearn's bundled 8x8 digits, pixels scaled to [0, 1], stratified 80/20 split."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    return train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=seed)


def init_params(key: jax.Array) -> dict:
    """LeCun-normal weights, zero biases."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]), start=1):
        key, subkey = jax.random.split(key)
        params[f"layer{i}"] = {
            "w": jax.random.normal(subkey, (fan_in, fan_out)) / np.sqrt(fan_in),
            "b": jnp.zeros(fan_out),
        }
    return params


def logits_fn(params: dict, x: jax.Array) -> jax.Array:
    h1 = jnp.tanh(x @ params["layer1"]["w"] + params["layer1"]["b"])
    h1 = pcgraph.node(h1, name="hidden1")  # a PC value node; the identity in plain JAX
    h2 = jnp.tanh(h1 @ params["layer2"]["w"] + params["layer2"]["b"])
    h2 = pcgraph.node(h2, name="hidden2")
    return h2 @ params["layer3"]["w"] + params["layer3"]["b"]


def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy: a plain JAX function of (params, x, y)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


@jax.jit
def accuracy(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits_fn(params, x), axis=-1) == y)


def make_train_step(grad_fn, optimizer: optax.GradientTransformation):
    """One jit-compiled optax update; `grad_fn` is `jax.grad(loss)` or `pcgraph.grad(loss, ...)`."""

    @jax.jit
    def train_step(params, opt_state, x, y):
        grads = grad_fn(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss(params, x, y)

    return train_step


def batch_order(num_examples: int, epochs: int, seed: int) -> np.ndarray:
    """Indices of every minibatch, shape (epochs, batches, BATCH_SIZE): a fresh shuffle per
    epoch, dropping the ragged last batch so every step has the same shape (no recompiles).
    Shared by all three runs."""
    rng = np.random.default_rng(seed)
    num_batches = num_examples // BATCH_SIZE
    return np.stack(
        [
            rng.permutation(num_examples)[: num_batches * BATCH_SIZE].reshape(num_batches, -1)
            for _ in range(epochs)
        ]
    )


def train(name, grad_fn, params, data, order):
    """Train from `params`; returns the trained params, compile time and training time."""
    x_train, y_train = data
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    train_step = make_train_step(grad_fn, optimizer)

    start = time.perf_counter()  # compile once up front so the timing below is pure training
    train_step = train_step.lower(params, opt_state, x_train[order[0, 0]], y_train[order[0, 0]])
    train_step = train_step.compile()
    compile_time = time.perf_counter() - start

    start = time.perf_counter()
    with tqdm(order, desc=f"{name:<10}", unit="epoch") as bar:
        for epoch_batches in bar:
            losses = []
            for idx in epoch_batches:
                params, opt_state, batch_loss = train_step(
                    params, opt_state, x_train[idx], y_train[idx]
                )
                losses.append(batch_loss)
            bar.set_postfix(loss=f"{float(jnp.mean(jnp.stack(losses))):.4f}")
    jax.block_until_ready(params)
    return params, compile_time, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=15, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init, order")
    parser.add_argument("--il-steps", type=int, default=100, help="IL relaxation steps")
    parser.add_argument("--il-step-size", type=float, default=0.1, help="IL Euler step size")
    parser.add_argument("--il-beta", type=float, default=1.0, help="IL output weight beta")
    args = parser.parse_args()

    # Standard inference learning: a fixed number of explicit Euler steps on the activities
    # (`rtol=None`: no tolerance test, so every training step costs the same and never fails
    # on a missed tolerance). Step size 0.1 is well below the stability limit 2 / (curvature
    # of the energy in the activities); 0.3 becomes unstable as the weights grow. IL's error
    # here comes mostly from stopping the relaxation early, not from beta: at initialisation
    # 20 steps give cosine ~0.98 with backprop, 100 steps ~0.999 (relative error ~7%); both
    # reach backprop's test accuracy. beta = 1 with a batch-mean loss nudges each example's
    # output by only beta / batch size; beta = 64 (a full nudge per example) drops the cosine
    # to ~0.8.
    il = pcgraph.IL(
        beta=args.il_beta,
        stepper=pcgraph.Euler(args.il_step_size),
        max_steps=args.il_steps,
        rtol=None,
    )
    fpa = pcgraph.FPA()  # Euler(1.0) for `graph.depth` steps: exact

    x_train, x_test, y_train, y_test = load_data(args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test examples, 64 features, 10 classes")
    init = init_params(jax.random.PRNGKey(args.seed))
    order = batch_order(len(x_train), args.epochs, args.seed)
    print(pcgraph.trace(loss, init, x_train[:BATCH_SIZE], y_train[:BATCH_SIZE]).summary())
    print(f"IL:  {il}\nFPA: {fpa}\n")

    methods = {
        "backprop": jax.grad(loss),
        "PC (IL)": pcgraph.grad(loss, algorithm=il),
        "PC (FPA)": pcgraph.grad(loss, algorithm=fpa),
    }
    results = {}
    for name, grad_fn in methods.items():
        params, compile_time, train_time = train(name, grad_fn, init, (x_train, y_train), order)
        results[name] = dict(
            params=params,
            test_acc=float(accuracy(params, x_test, y_test)),
            train_loss=float(loss(params, x_train, y_train)),
            compile_time=compile_time,
            train_time=train_time,
        )

    print(
        f"\n{'method':<10}  {'test acc':>8}  {'train loss':>10}  {'compile (s)':>11}  "
        f"{'train (s)':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}  {r['test_acc']:>8.2%}  {r['train_loss']:>10.4f}  "
            f"{r['compile_time']:>11.2f}  {r['train_time']:>9.2f}"
        )
    print("(train loss: cross-entropy on the whole training set after the last epoch)")

    # FPA is exact, so its whole training trajectory should equal backprop's up to round-off.
    diff = jax.tree.map(
        lambda a, b: jnp.max(jnp.abs(a - b)),
        results["PC (FPA)"]["params"],
        results["backprop"]["params"],
    )
    print(f"max |params(FPA) - params(backprop)| after training: {max(jax.tree.leaves(diff)):.2e}")

    # Per-parameter agreement of the PC gradients with jax.grad, on one test batch, at the
    # shared initialisation.
    x_batch, y_batch = x_test[:BATCH_SIZE], y_test[:BATCH_SIZE]
    for algorithm in (il, fpa):
        print()
        print(pcgraph.check_grad(loss, init, x_batch, y_batch, algorithm=algorithm))


if __name__ == "__main__":
    main()
