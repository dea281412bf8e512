"""IL's default relaxation against backprop: how many steps it takes to settle, how close its
gradient is, and what an epoch costs.

Two parts, both on unchanged models passed as they are to `pcgraph.train_step`:

1. `--table`: on the 784-128-128-128-10 MLP of Pinchetti et al. (2025) (GELU and ReLU), one
   batch of 128 at initialisation, each stepper with each `settle` value: the steps the
   relaxation took and the largest per-leaf relative error of IL's gradient against `jax.grad`
   (the table in docs/algorithms.md).
2. Training (default): the same MLP on MNIST (squared error, AdamW with a warm-up cosine
   schedule, batch 128, as pcx's protocol) and an unchanged depth-3 equinox CNN on scikit-learn's
   digits, with backprop (`eqx.filter_value_and_grad`), FPA, IL with its defaults (100 fixed
   steps of `Momentum(0.1, 0.8)`) and IL with the settling rule (`Momentum(0.3, 0.5)`,
   `settle=1e-4`, `throw=False`: a relaxation that diverges is counted, not raised),
   interleaved epoch by epoch in one process. Prints, per model, each run's seconds per
   epoch (compile excluded: the first epoch's extra time is reported as compile), its ratio
   to backprop's measured in the same run, and the test accuracy after the last epoch.

Run:  python benchmarks/il_settling.py --data-dir DIR [--epochs 3] [--table]
      (DIR from `bash ../shared/datasets/get_datasets.sh DIR`; --quick: a smoke test on
      generated IDX files or any small data, one epoch on a slice)
"""

import argparse
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import pcgraph

BATCH = 128
WEIGHT_DECAY = 1e-4
SETTLING_IL = pcgraph.IL(stepper=pcgraph.Momentum(0.3, 0.5), settle=1e-4, throw=False)


def mlp(activation, key):
    return eqx.nn.MLP(784, 10, 128, 3, activation=activation, key=key)


class CNN(eqx.Module):
    """An unchanged depth-3 CNN on 8x8 digits: conv, conv, linear."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    linear: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 16, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(16, 32, 3, stride=2, padding=1, key=k2)
        self.linear = eqx.nn.Linear(32 * 4 * 4, 10, key=k3)

    def __call__(self, image):
        h = jax.nn.relu(self.conv1(image))
        h = jax.nn.relu(self.conv2(h))
        return self.linear(jnp.ravel(h))


def squared_error(model, x, y):
    return jnp.mean(jnp.sum((jax.vmap(model)(x) - jax.nn.one_hot(y, 10)) ** 2, -1)) / 2


def cross_entropy(model, x, y):
    logits = jax.vmap(model)(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def accuracy(model, x, y):
    return float(jnp.mean(jnp.argmax(jax.vmap(model)(x), -1) == y))


def relative_errors(grads, reference):
    return [
        float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    ]


def settling_table(x, y):
    steppers = {
        "Momentum(0.1, 0.8)": pcgraph.Momentum(0.1, 0.8),
        "Momentum(0.2, 0.6)": pcgraph.Momentum(0.2, 0.6),
        "Momentum(0.3, 0.5)": pcgraph.Momentum(0.3, 0.5),
        "Momentum(0.5, 0.3)": pcgraph.Momentum(0.5, 0.3),
    }
    print("\nIL's relaxation on one batch at initialisation: steps taken, largest per-leaf")
    print("relative error of the gradient against jax.grad")
    print(f"{'activation':10} {'stepper':20} {'settle 1e-3':>14} {'settle 1e-4':>14}")
    for name, activation in [("GELU", jax.nn.gelu), ("ReLU", jax.nn.relu)]:
        model = mlp(activation, jax.random.key(0))
        reference = eqx.filter_grad(squared_error)(model, x, y)
        for label, stepper in steppers.items():
            cells = []
            for settle in (1e-3, 1e-4):
                algorithm = pcgraph.IL(stepper=stepper, settle=settle, throw=False)
                solution = pcgraph.relax(squared_error, model, x, y, algorithm=algorithm)
                worst = max(relative_errors(solution.grads, reference))
                cells.append(f"{int(solution.stats.num_steps)}, {worst:.3f}")
            print(f"{name:10} {label:20} {cells[0]:>14} {cells[1]:>14}", flush=True)


def batches(num, key):
    order = np.asarray(jax.random.permutation(key, num))
    return [order[i : i + BATCH] for i in range(0, num - BATCH + 1, BATCH)]


def train_runs(title, make_model, loss, data, epochs, seed, learning_rate):
    """Every run from the same initialisation and batch order, interleaved epoch by epoch."""
    x_train, y_train, x_test, y_test = data
    steps_per_epoch = len(x_train) // BATCH
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, steps_per_epoch // 2, steps_per_epoch * epochs
    )
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)

    @eqx.filter_jit
    def backprop_step(model, opt_state, x, y):
        value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value, None

    def pc_step(algorithm):
        step = pcgraph.train_step(loss, optimizer, algorithm=algorithm)

        def run(model, opt_state, x, y):
            model, opt_state, info = step(model, opt_state, x, y)
            return model, opt_state, info.loss, info.stats

        return run

    runs = {
        "backprop": backprop_step,
        "FPA (defaults)": pc_step(pcgraph.FPA()),
        "IL (defaults: 100 steps)": pc_step(pcgraph.IL()),
        "IL (Momentum(0.3, 0.5), settle=1e-4)": pc_step(SETTLING_IL),
    }
    model = make_model(jax.random.key(seed))
    state = {name: (model, optimizer.init(eqx.filter(model, eqx.is_array))) for name in runs}
    times = {name: [] for name in runs}
    # Per PC run: the relaxation steps of every training step, and how many failed.
    steps = {name: [] for name in runs}
    failed = {name: 0 for name in runs}
    for epoch in range(epochs):
        order = batches(len(x_train), jax.random.key(1000 * seed + epoch))
        for name, step in runs.items():
            model, opt_state = state[name]
            start = time.perf_counter()
            stats = []
            for index in tqdm(order, desc=f"{title} {name} epoch {epoch + 1}", leave=False):
                model, opt_state, value, stat = step(
                    model, opt_state, x_train[index], y_train[index]
                )
                stats.append(stat)
            jax.block_until_ready(value)
            times[name].append(time.perf_counter() - start)
            for stat in stats:  # read after the timing: reading a result waits for it
                if stat is not None and stat.num_steps is not None:
                    steps[name].append(int(stat.num_steps))
                    failed[name] += not bool(stat.result == pcgraph.RESULTS.successful)
            state[name] = (model, opt_state)
    print(f"\n{title}: {epochs} epoch(s), batch {BATCH}, {steps_per_epoch} steps per epoch")
    header = (
        f"{'run':40} {'s/epoch':>8} {'x backprop':>10} {'compile s':>10} {'test acc.':>9} "
        f"{'median steps':>12} {'failed':>6}"
    )
    print(header)
    steady = {name: float(np.median(t[1:] if len(t) > 1 else t)) for name, t in times.items()}
    for name in runs:
        compile_time = times[name][0] - steady[name] if len(times[name]) > 1 else float("nan")
        acc = accuracy(state[name][0], x_test, y_test)
        ratio = steady[name] / steady["backprop"]
        median_steps = f"{np.median(steps[name]):.0f}" if steps[name] else "-"
        failures = f"{failed[name]}" if steps[name] else "-"
        print(
            f"{name:40} {steady[name]:8.2f} {ratio:10.2f} {compile_time:10.2f} {100 * acc:8.2f}% "
            f"{median_steps:>12} {failures:>6}",
            flush=True,
        )


def mnist(data_dir: pathlib.Path, quick: bool):
    data = pcgraph.datasets.load("mnist", data_dir=data_dir)

    def prepare(images):
        images = np.asarray(images, np.float32).reshape(len(images), -1)
        return jnp.asarray(images / 255.0 * 2.0 - 1.0)  # pixels in [-1, 1], as pcx

    x_train, x_test = prepare(data.x_train), prepare(data.x_test)
    y_train, y_test = jnp.asarray(data.y_train), jnp.asarray(data.y_test)
    if quick:
        x_train, y_train, x_test, y_test = x_train[:512], y_train[:512], x_test[:256], y_test[:256]
    return x_train, y_train, x_test, y_test


def digits():
    data = pcgraph.datasets.load("digits")

    def to_images(x):
        return jnp.asarray(np.asarray(x, np.float32).reshape(-1, 1, 8, 8) / 16.0)

    return (
        to_images(data.x_train),
        jnp.asarray(data.y_train),
        to_images(data.x_test),
        jnp.asarray(data.y_test),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=pathlib.Path, required=True, help="MNIST's IDX files")
    parser.add_argument("--epochs", type=int, default=3, help="MNIST MLP epochs")
    parser.add_argument("--digits-epochs", type=int, default=30, help="digits CNN epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="only the settling table")
    parser.add_argument("--quick", action="store_true", help="a smoke test on a slice")
    args = parser.parse_args()
    cpu = jax.devices()[0]
    print(
        f"JAX {jax.__version__} on {cpu.platform} ({cpu.device_kind}), "
        f"pcgraph {pcgraph.__version__}"
    )
    data = mnist(args.data_dir, args.quick)
    if args.table:
        settling_table(data[0][:BATCH], data[1][:BATCH])
        return
    epochs = 1 if args.quick else args.epochs
    train_runs(
        "MLP 784-128-128-128-10 (GELU), MNIST, squared error",
        lambda key: mlp(jax.nn.gelu, key),
        squared_error,
        data,
        epochs,
        args.seed,
        learning_rate=3e-4,
    )
    train_runs(
        "CNN conv-conv-linear (ReLU), digits, cross-entropy",
        CNN,
        cross_entropy,
        digits(),
        2 if args.quick else args.digits_epochs,
        args.seed,
        learning_rate=3e-3,
    )


if __name__ == "__main__":
    main()
