"""The networks and budgets of jpc's example notebooks (Innocenti et al.; repository
thebuckleylab/jpc, `examples/*.ipynb`) on MNIST, run by pcgraph, beside the notebooks' numbers.

Every run: batch 64, MNIST pixels standardised with mean 0.1307 and std 0.3081 (the notebooks'
`Normalize`), the loss `1/2 ||out - onehot||^2` averaged over the batch, Adam on the weights,
the test accuracy of the feedforward pass on the whole test set after the notebook's number of
training iterations. The notebooks' inference runs on the batch-mean energy (each example's
energy divided by the batch size `B`); pcgraph's energy is `sum_nodes 1/2 ||eps||^2 + beta *
loss`, so with `beta = B` and the batch-mean loss it is `B` times the notebooks' and the same
dynamics are Euler steps of `lr / B` (as in `examples/deep_mupc.py`). IL's gradient, divided
by `beta`, is then the batch-mean energy's gradient, which Adam receives.

- `pcn`: a discriminative PC network, 784-300-300-10 ReLU MLP with biases (jpc's
  `make_mlp(depth=3, width=300)`), Adam 1e-3, 300 iterations; jpc integrates the activities
  to time 20 with an adaptive Heun solver, pcgraph takes 20 Euler steps of 1 (time 20):
  `IL(beta=B, stepper=Euler(1/B), max_steps=20)`. Notebook: 95.90 %.
- `pcn_il`: the same PCN and budget with pcgraph's own inference instead of the notebook's:
  `IL()`'s defaults (100 heavy-ball steps of 0.1, momentum 0.8, `beta = 1`) on the energy
  summed over the batch, so each example's activities relax to their equilibrium.
- `epc`: error optimisation (ePC; Goemaere et al. 2025) on a 10-layer ReLU MLP of width 128
  (784-128x9-10, biases), 10 SGD steps of 0.5 on the errors, Adam 1e-3, 300 iterations:
  `EPC(beta=B, stepper=Euler(0.5/B), max_steps=10)`. Notebook: 91.61 %.
- `mupc`: muPC (Innocenti et al. 2025), a 30-layer bias-free ReLU residual network of width
  128 (`pcgraph.nn.ResidualMLP(depth=29)`: 30 weight matrices), 30 Euler steps of 0.5 on the
  activities, Adam 0.1, 900 iterations: `IL(beta=B, stepper=Euler(0.5/B), max_steps=30)`.
  Notebook: 93.26 %.
- `bpc`: bidirectional PC (bPC; Oliviers, Tang & Bogacz 2025), one hidden layer of 256 ReLU
  units between image and label, a bottom-up and a top-down network
  (`pcgraph.nn.Bidirectional`), the generative (label-to-image, pcgraph's top-down) errors
  weighted 1e-3 (the notebook's `forward_energy_weight`, which weights the terms of the model
  it passes as `top_down_model`, its generator), one SGD step of 0.5 on the activities,
  Adam 1e-3 on both networks, 300 iterations; accuracy of the bottom-up sweep. Notebook:
  94.02 %.

The plain networks (`pcn`, `epc`) are the user's `jax.numpy` MLP, placed automatically; the
muPC and bPC networks are pcgraph.nn's models. The notebooks report one seed each; this
script runs `--seeds` and reports the mean, standard deviation and minimum.

Run:
    python benchmarks/pc_benchmark/jpc_anchors.py --data-dir /data/mnist
    python benchmarks/pc_benchmark/jpc_anchors.py --data-dir /data/mnist --runs mupc --seeds 0
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

BATCH_SIZE = 64
SEEDS = 5
TEST_EVERY = 100

# name -> (description, notebook's test accuracy %, training iterations)
ANCHORS = {
    "pcn": ("discriminative PCN, 3 layers of 300, ReLU", 95.90, 300),
    "pcn_il": ("the same PCN, pcgraph's IL defaults", 95.90, 300),
    "epc": ("ePC, 10 layers of 128, ReLU", 91.61, 300),
    "mupc": ("muPC, 30-layer ReLU residual network, width 128", 93.26, 900),
    "bpc": ("bPC, 2 layers of 256, ReLU", 94.02, 300),
}
RUNS = tuple(ANCHORS)


def mse(out, target):
    """jpc's `mse_loss`: `1/2 ||out - target||^2` averaged over the batch."""
    return 0.5 * jnp.mean(jnp.sum((out - target) ** 2, axis=-1))


def build(name: str, key):
    """A run's model, its loss, its prediction function, algorithm, optimiser and settings."""
    b = float(BATCH_SIZE)
    relu = jax.nn.relu
    if name in ("pcn", "pcn_il", "epc"):
        sizes = (784,) + (128,) * 9 + (10,) if name == "epc" else (784, 300, 300, 10)
        params = common.init_mlp(key, sizes)
        scale = b if name == "pcn_il" else 1.0  # pcn_il: the loss summed over the batch

        def loss(p, x, y):
            return scale * mse(common.mlp(p, x, relu), y)

        def predict(p, x):
            return common.mlp(p, x, relu)

        if name == "pcn_il":
            algorithm = pcgraph.IL(throw=False)
            settings = (
                "IL() defaults: Momentum(0.1, 0.8), 100 steps, beta 1, summed loss; Adam 1e-3"
            )
        elif name == "pcn":
            algorithm = pcgraph.IL(beta=b, stepper=pcgraph.Euler(1 / b), max_steps=20, throw=False)
            settings = "IL(beta=64, Euler(1/64), max_steps=20); Adam 1e-3"
        else:
            algorithm = pcgraph.EPC(
                beta=b, stepper=pcgraph.Euler(0.5 / b), max_steps=10, throw=False
            )
            settings = "EPC(beta=64, Euler(0.5/64), max_steps=10); Adam 1e-3"
        return params, loss, predict, algorithm, optax.adam(1e-3), settings
    if name == "mupc":
        model = pcgraph.nn.ResidualMLP(
            29, 128, 784, 10, parameterisation=pcgraph.nn.MuPC(), activation=relu, key=key
        )

        def loss(m, x, y):
            return mse(m(x), y)

        algorithm = pcgraph.IL(beta=b, stepper=pcgraph.Euler(0.5 / b), max_steps=30, throw=False)
        settings = (
            "ResidualMLP(29, 128, MuPC()); IL(beta=64, Euler(0.5/64), max_steps=30); Adam 0.1"
        )
        return model, loss, lambda m, x: m(x), algorithm, optax.adam(0.1), settings
    if name == "bpc":
        model = pcgraph.nn.Bidirectional.from_sizes(
            [784, 256, 10], key=key, activation=relu, down_precision=1e-3
        )

        def loss(m, x, y):
            return m.energy(x, y)

        algorithm = pcgraph.IL(stepper=pcgraph.Euler(0.5 / b), max_steps=1, throw=False)
        settings = (
            "Bidirectional([784, 256, 10], relu, down_precision=1e-3); "
            "IL(Euler(0.5/64), max_steps=1); Adam 1e-3"
        )
        return model, loss, lambda m, x: m.bottom_up(x), algorithm, optax.adam(1e-3), settings
    raise ValueError(name)


def run(name, seed, data, iterations):
    """Train one anchor for `iterations` minibatches; returns the test accuracy (%) every
    `TEST_EVERY` iterations and at the end, and the time of the training steps."""
    x_train, y_train, x_test, y_test = data
    targets = common.one_hot(y_train)
    model, loss, predict, algorithm, optimizer, settings = build(name, jax.random.PRNGKey(seed))
    params, static = eqx.partition(model, eqx.is_array)

    def split_loss(p, x, y):
        return loss(eqx.combine(p, static), x, y)

    step = pcgraph.train_step(split_loss, optimizer, algorithm=algorithm)
    predict_jit = jax.jit(lambda p, x: predict(eqx.combine(p, static), x))
    opt_state = optimizer.init(params)
    epochs = -(-iterations * BATCH_SIZE // len(x_train))
    order = common.batch_order(len(x_train), BATCH_SIZE, epochs, seed).reshape(-1, BATCH_SIZE)
    order = order[:iterations]

    start = time.perf_counter()
    params, opt_state, info = step(params, opt_state, x_train[order[0]], targets[order[0]])
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - start
    curve, train_s = [], 0.0
    with tqdm(total=iterations, desc=f"{name} seed {seed}", unit="it", leave=True) as bar:
        bar.update()
        start = time.perf_counter()
        for it, idx in enumerate(order[1:], start=2):
            params, opt_state, info = step(params, opt_state, x_train[idx], targets[idx])
            bar.update()
            if it % TEST_EVERY == 0 or it == iterations:
                jax.block_until_ready(params)
                train_s += time.perf_counter() - start
                accuracy = 100 * common.accuracy(predict_jit, params, x_test, y_test)
                curve.append((it, accuracy))
                bar.set_postfix(test=f"{accuracy:.2f}")
                start = time.perf_counter()
    return {
        "curve": curve,
        "test_acc": curve[-1][1],
        "iterations": iterations,
        "train_s": train_s,
        "compile_s": compile_s,
        "settings": settings,
        "train_examples": len(x_train),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, default_seeds=SEEDS, epochs=False)
    parser.add_argument(
        "--runs", nargs="+", choices=RUNS, default=[r for r in RUNS if r != "pcn_il"]
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="override every run's iterations"
    )
    args = parser.parse_args(argv)
    dataset = common.DATASETS[args.dataset]
    seeds = args.seeds[:1] if args.quick else args.seeds
    data = common.load_data(
        args.dataset, args.data_dir, scale="mnist_std", limit=1024 if args.quick else None
    )
    meta = {"machine": common.machine(), "command": common.command(), "dataset": dataset}
    print(f"jpc anchors on {dataset}: runs {args.runs}, seeds {seeds}; {meta['machine']}")
    for name in args.runs:
        iterations = args.iterations or (5 if args.quick else ANCHORS[name][2])
        path = args.out / f"jpc_{dataset}_{name}{'_quick' if args.quick else ''}.json"
        for seed in seeds:
            result = run(name, seed, data, iterations)
            print(f"{name:5} seed {seed}: {result['test_acc']:.2f} % after {iterations} "
                  f"iterations (notebook {ANCHORS[name][1]:.2f} %), "
                  f"{result['train_s']:.1f} s")  # fmt: skip
            common.save_run(
                path,
                f"seed{seed}_it{iterations}",
                result,
                {**meta, "run": name, "description": ANCHORS[name][0],
                 "notebook_acc": ANCHORS[name][1]},
            )  # fmt: skip


if __name__ == "__main__":
    main()
