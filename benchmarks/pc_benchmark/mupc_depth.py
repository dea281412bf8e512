"""muPC at 128 hidden layers on MNIST, 3 epochs, beside FabricPC's muPC example (82.2 % after 3
epochs at depth 128).

The network is `pcgraph.nn.ResidualMLP(128, 128, 784, 10, parameterisation=MuPC())`: the
bias-free ReLU residual network of width 128 of Innocenti et al. (2025), in the muPC
parameterisation, 129 weight matrices, every hidden state a value node. Training: batch 64,
the mean softmax cross-entropy, Adam 3e-3 on the weights (with `benchmarks/depth.py`'s 1e-2
for muPC's `N(0, 1)` weights, ePC's loss turned non-finite in the second epoch), MNIST
pixels standardised with mean 0.1307 and std 0.3081, and one of these gradients:

- `epc`: error optimisation (Goemaere et al. 2025), `pcgraph.EPC(stepper=Euler(0.1),
  max_steps=T)`: T Euler steps of the node errors from the feedforward pass (default T = 8);
- `il`: inference learning (Whittington & Bogacz 2017), `pcgraph.IL(stepper=Euler(0.1),
  max_steps=T)`: T Euler steps of the node values (its error reaches only the top T layers);
- `bp`: backprop (`jax.grad`), the reference.

Reported: the test accuracy after each epoch and the training time per epoch.

Run:
    python benchmarks/pc_benchmark/mupc_depth.py --data-dir /data/mnist
    python benchmarks/pc_benchmark/mupc_depth.py --data-dir /data/mnist --algorithms epc il \\
        --steps 8 --epochs 3 --seeds 0
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

import pcgraph

try:
    from . import common
except ImportError:  # run as a script
    import common

DEPTH = 128
WIDTH = 128
BATCH_SIZE = 64
EPOCHS = 3
LEARNING_RATE = 3e-3
STEP_SIZE = 0.1
CHECK_EVERY = 50  # steps between checks of the loss for divergence
FABRICPC = 82.2  # FabricPC's muPC example, depth 128, 3 epochs (%)
ALGORITHMS = ("epc", "il", "bp")


def cross_entropy(model, x, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(model(x)), axis=-1))


def make_step(algorithm: str, steps: int, optimizer, static):
    """The jit-compiled training step `(params, opt_state, x, y) -> (params, opt_state, loss)`."""

    def loss(params, x, y):
        return cross_entropy(eqx.combine(params, static), x, y)

    if algorithm == "bp":

        @jax.jit
        def step(params, opt_state, x, y):
            value, grads = jax.value_and_grad(loss)(params, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        return step
    stepper = pcgraph.Euler(STEP_SIZE)
    if algorithm == "epc":
        pc = pcgraph.EPC(stepper=stepper, max_steps=steps, throw=False)
    else:
        pc = pcgraph.IL(stepper=stepper, max_steps=steps, throw=False)
    pc_step = pcgraph.train_step(loss, optimizer, algorithm=pc)

    def step(params, opt_state, x, y):
        params, opt_state, info = pc_step(params, opt_state, x, y)
        return params, opt_state, info.loss

    return step


def run(algorithm, seed, data, *, depth, steps, epochs, learning_rate=LEARNING_RATE, save=None):
    """Train one network; stops at a non-finite loss (reported as diverged, checked every
    `CHECK_EVERY` steps). `save(result)` is called after every epoch with the run so far."""
    x_train, y_train, x_test, y_test = data
    targets = common.one_hot(y_train)
    model = pcgraph.nn.ResidualMLP(
        depth, WIDTH, x_train.shape[1], 10, parameterisation=pcgraph.nn.MuPC(),
        activation=jax.nn.relu, key=jax.random.PRNGKey(seed),
    )  # fmt: skip
    params, static = eqx.partition(model, eqx.is_array)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    step = make_step(algorithm, steps, optimizer, static)
    predict = jax.jit(lambda p, x: eqx.combine(p, static)(x))
    order = common.batch_order(len(x_train), BATCH_SIZE, epochs, seed)

    first = order[0, 0]
    start = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, x_train[first], targets[first]))
    compile_s = time.perf_counter() - start
    accuracies, epoch_s, diverged = [], [], None
    label = f"{algorithm} depth {depth} seed {seed}"

    def result():
        return {
            "test_acc": accuracies,
            "epoch_s": epoch_s,
            "compile_s": compile_s,
            "epochs": epochs,
            "epochs_done": len(accuracies),
            "steps": steps if algorithm != "bp" else None,
            "depth": depth,
            "learning_rate": learning_rate,
            "diverged_in_epoch": diverged,
            "train_examples": len(x_train),
        }

    with tqdm(total=order.shape[0] * order.shape[1], desc=label, unit="it") as bar:
        for epoch, batches in enumerate(order):
            start = time.perf_counter()
            for i, idx in enumerate(batches):
                params, opt_state, value = step(params, opt_state, x_train[idx], targets[idx])
                bar.update()
                if i % CHECK_EVERY == 0 and not bool(jnp.isfinite(value)):
                    diverged = epoch + 1
                    break
            if diverged is not None or not bool(jnp.isfinite(value)):
                diverged = epoch + 1
                break
            epoch_s.append(time.perf_counter() - start)
            accuracies.append(100 * common.accuracy(predict, params, x_test, y_test))
            bar.set_postfix(test=f"{accuracies[-1]:.2f}", loss=f"{float(value):.3g}")
            if save is not None:
                save(result())
    return result()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, default_seeds=1, epochs=True)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=["epc", "bp"])
    parser.add_argument("--steps", type=int, default=8, help="relaxation steps T (default 8)")
    parser.add_argument("--depth", type=int, default=None, help="hidden layers (default 128)")
    parser.add_argument(
        "--lr", type=float, default=LEARNING_RATE, help=f"Adam's rate (default {LEARNING_RATE})"
    )
    args = parser.parse_args(argv)
    dataset = common.DATASETS[args.dataset]
    epochs = args.epochs or (1 if args.quick else EPOCHS)
    depth = args.depth or (8 if args.quick else DEPTH)
    seeds = args.seeds[:1] if args.quick else args.seeds
    data = common.load_data(
        args.dataset, args.data_dir, scale="mnist_std", limit=1024 if args.quick else None
    )
    meta = {"machine": common.machine(), "command": common.command(), "dataset": dataset}
    print(f"muPC depth {depth} on {dataset}: {args.algorithms}, T = {args.steps}, seeds "
          f"{seeds}, {epochs} epochs; {meta['machine']}")  # fmt: skip
    for algorithm in args.algorithms:
        name = f"mupc{depth}_{dataset}_{algorithm}{'_quick' if args.quick else ''}.json"
        for seed in seeds:
            key = f"seed{seed}_e{epochs}_lr{args.lr:g}"
            key += f"_T{args.steps}" if algorithm != "bp" else ""
            extra = {**meta, "algorithm": algorithm, "fabricpc": FABRICPC}

            def save(result, key=key, extra=extra, name=name):
                common.save_run(args.out / name, key, result, extra)

            result = run(algorithm, seed, data, depth=depth, steps=args.steps, epochs=epochs,
                         learning_rate=args.lr, save=save)  # fmt: skip
            save(result)
            done = result["epochs_done"]
            final = result["test_acc"][-1] if result["test_acc"] else float("nan")
            print(f"{algorithm} depth {depth} seed {seed}: {final:.2f} % after {done} of "
                  f"{epochs} epochs (FabricPC {FABRICPC} %), diverged in epoch "
                  f"{result['diverged_in_epoch']}, {result['epoch_s']} s/epoch")  # fmt: skip


if __name__ == "__main__":
    main()
