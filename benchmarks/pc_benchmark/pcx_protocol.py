"""The MLP protocol of Pinchetti et al. (2025), "Benchmarking predictive coding networks -- made
simple" (pcx), Table 1: a 784-128-128-128-10 MLP on MNIST and Fashion-MNIST, run by pcgraph.

Each configuration is the one of pcx's file `examples/s4_1_discriminative_mode/MLP/<dataset>/
L_<config>_<dataset>.yaml` (tag v0.6.1-public) and its script beside it:

- pixels scaled to [-1, 1], batch 128 (the ragged last batch dropped), 25 epochs;
- weights: AdamW with optax's warm-up cosine schedule (from `lr` to `1.1 lr` over the first
  10 % of the updates, then down to `0.1 lr`), weight decay `wd`; initialised as
  `equinox.nn.Linear` does (pcx's `pxnn.Linear` wraps it);
- PC-SE / PC-CE: inference learning (Whittington & Bogacz 2017) with `T` steps of SGD with
  momentum on the activities from the feedforward pass, the one-hot label clamped at the
  output, whose energy is the squared error (SE) or the cross-entropy (CE) of the last layer's
  output; then one AdamW step on the weights at the relaxed activities;
- iPC-SE: incremental PC (Salvatori et al. 2024): `T` steps, each moving the activities
  (SGD with momentum) and the weights (AdamW; the schedule counts `T` updates per batch);
- BP-SE / BP-CE: backprop on the squared error or the cross-entropy.

pcgraph runs the user's plain JAX MLP, `activation(x @ w + b)` layers and a linear last layer,
through `pcgraph.train_step` with automatic layer placement: no hand-declared layers or nodes.
pcx's activity optimiser is `pcgraph.OptaxStepper(optax.sgd(x_lr, momentum=x_momentum))`. The
energy sums over the batch, so each example's activities take their own step (what pcx's
`scale_by_batch_size=True` does); AdamW does not see the weight gradient's scale.

Reported, per configuration and dataset, over the seeds: the best-epoch test accuracy (what
pcx reports) and the last-epoch one, and the training time per epoch.

Run:
    python benchmarks/pc_benchmark/pcx_protocol.py --dataset mnist --data-dir /data/mnist
    python benchmarks/pc_benchmark/pcx_protocol.py --dataset fashion_mnist \\
        --data-dir /data/fashion --configs pc_se bp_se --seeds 0 1 2 --epochs 25
    python benchmarks/pc_benchmark/render.py          # the tables and figure in docs
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

import pcgraph

try:
    from . import common
except ImportError:  # run as a script
    import common

SIZES = (784, 128, 128, 128, 10)
BATCH_SIZE = 128
EPOCHS = 25
SEEDS = 7

ACTIVATIONS = {
    "gelu": jax.nn.gelu,
    "leaky_relu": jax.nn.leaky_relu,
    "relu": jax.nn.relu,
    "hard_tanh": jax.nn.hard_tanh,
}

# (config, dataset) -> the hyperparameters of pcx's yaml file, digit for digit.
HPARAMS = {
    ("pc_se", "mnist"): dict(
        T=8, act="gelu", w_lr=0.0002968930522737348, wd=0.0003550241114984682,
        x_lr=0.010534787245955935, x_momentum=0.65,
    ),
    ("pc_se", "fashion_mnist"): dict(
        T=5, act="gelu", w_lr=0.0002972210629627541, wd=0.0018383293983087593,
        x_lr=0.026070879231635192, x_momentum=0.1,
    ),
    ("pc_ce", "mnist"): dict(
        T=5, act="gelu", w_lr=0.00029959151754717025, wd=0.003314230264294929,
        x_lr=0.01828189494026352, x_momentum=0.35000000000000003,
    ),
    ("pc_ce", "fashion_mnist"): dict(
        T=5, act="gelu", w_lr=0.0002770746850948943, wd=0.0008402702337314271,
        x_lr=0.013125101796600251, x_momentum=0.4,
    ),
    ("ipc_se", "mnist"): dict(
        T=8, act="leaky_relu", w_lr=0.0002525584875644335, wd=0.032533390000821956,
        x_lr=0.8495322487988946, x_momentum=0.35000000000000003,
    ),
    ("ipc_se", "fashion_mnist"): dict(
        T=8, act="leaky_relu", w_lr=0.0002691306332359123, wd=0.01162214097249978,
        x_lr=0.7996939108085619, x_momentum=0.25,
    ),
    ("bp_se", "mnist"): dict(act="gelu", w_lr=0.00027487989229471686, wd=0.0051207238497154115),
    ("bp_se", "fashion_mnist"): dict(
        act="relu", w_lr=0.0002751176541841286, wd=0.0001717093341589651
    ),
    ("bp_ce", "mnist"): dict(
        act="hard_tanh", w_lr=0.0002809966056688163, wd=0.0014781820367232845
    ),
    ("bp_ce", "fashion_mnist"): dict(
        act="hard_tanh", w_lr=0.00027158235095962934, wd=8.731835889688842e-05
    ),
}  # fmt: skip
CONFIGS = ("pc_se", "bp_se", "pc_ce", "ipc_se", "bp_ce")
LABELS = {
    "pc_se": "PC-SE",
    "pc_ce": "PC-CE",
    "ipc_se": "iPC-SE",
    "bp_se": "BP-SE",
    "bp_ce": "BP-CE",
}

# Best-run test accuracies (%) read from pcx's repository, where the task states them.
PCX_REPORTED = {
    ("pc_se", "mnist"): 98.42,
    ("pc_se", "fashion_mnist"): 89.88,
    ("bp_se", "mnist"): 98.46,
    ("bp_se", "fashion_mnist"): 89.83,
}


def squared_error(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def cross_entropy(out, target):
    return -jnp.sum(target * jax.nn.log_softmax(out))


def marked_mlp(params, x, activation):
    """The MLP with a `pcgraph.node` mark on every hidden activation: pcx's `Vode` placement
    (after the nonlinearity), for the `--placement marks` experiment."""
    for layer in params[:-1]:
        x = pcgraph.node(activation(x @ layer["w"] + layer["b"]))
    return x @ params[-1]["w"] + params[-1]["b"]


def make_loss(config: str, activation, placement: str = "auto"):
    """The user's plain JAX loss: the MLP and SE or CE, summed over the batch. With
    `placement="marks"` the hidden activations carry `pcgraph.node` marks (an experiment:
    the protocol's runs use the automatic placement)."""
    error = cross_entropy if config.endswith("_ce") else squared_error
    network = marked_mlp if placement == "marks" else common.mlp

    def loss(params, x, y):
        return error(network(params, x, activation), y)

    return loss


def make_step(config: str, hp: dict, batches_per_epoch: int, epochs: int, placement="auto"):
    """The jit-compiled training step of one configuration, and its optimiser."""
    activation = ACTIVATIONS[hp["act"]]
    loss = make_loss(config, activation, placement)
    updates_per_batch = hp["T"] if config.startswith("ipc") else 1
    total = batches_per_epoch * epochs * updates_per_batch
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=hp["w_lr"],
        peak_value=1.1 * hp["w_lr"],
        warmup_steps=int(0.1 * total),
        decay_steps=total,
        end_value=0.1 * hp["w_lr"],
    )
    optimizer = optax.adamw(schedule, weight_decay=hp["wd"])
    if config.startswith("bp"):

        @jax.jit
        def step(params, opt_state, x, y):
            value, grads = jax.value_and_grad(loss)(params, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        return step, optimizer, activation
    stepper = pcgraph.OptaxStepper(optax.sgd(hp["x_lr"], momentum=hp["x_momentum"]))
    if config.startswith("ipc"):
        algorithm = pcgraph.IPC(stepper=stepper, num_steps=hp["T"], throw=False)
    else:
        algorithm = pcgraph.IL(stepper=stepper, max_steps=hp["T"], rtol=None, throw=False)
    pc_step = pcgraph.train_step(loss, optimizer, algorithm=algorithm)

    def step(params, opt_state, x, y):
        params, opt_state, info = pc_step(params, opt_state, x, y)
        return params, opt_state, info.loss

    return step, optimizer, activation


def run(config, dataset, seed, epochs, data, *, placement="auto"):
    """Train one configuration for one seed; returns the per-epoch test accuracies (%) and
    training times (s), and the first step's time (compilation included)."""
    x_train, y_train, x_test, y_test = data
    targets = common.one_hot(y_train)
    hp = HPARAMS[(config, dataset)]
    order = common.batch_order(len(x_train), BATCH_SIZE, epochs, seed)
    step, optimizer, activation = make_step(config, hp, order.shape[1], epochs, placement)
    params = common.init_mlp(jax.random.PRNGKey(seed), SIZES)
    opt_state = optimizer.init(params)
    predict = jax.jit(lambda p, x: common.mlp(p, x, activation))

    first = order[0, 0]
    start = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, x_train[first], targets[first]))
    compile_s = time.perf_counter() - start

    accuracies, epoch_s = [], []
    name = f"{LABELS[config]} {dataset} seed {seed}"
    with tqdm(range(epochs), desc=name, unit="epoch", leave=True) as bar:
        for epoch in bar:
            start = time.perf_counter()
            for idx in order[epoch]:
                params, opt_state, value = step(params, opt_state, x_train[idx], targets[idx])
            jax.block_until_ready(params)
            epoch_s.append(time.perf_counter() - start)
            accuracies.append(100 * common.accuracy(predict, params, x_test, y_test))
            bar.set_postfix(test=f"{accuracies[-1]:.2f}", s=f"{epoch_s[-1]:.1f}")
    return {
        "test_acc": accuracies,
        "epoch_s": epoch_s,
        "compile_s": compile_s,
        "epochs": epochs,
        "train_examples": len(x_train),
        "placement": placement,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, default_seeds=SEEDS, epochs=True)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument(
        "--placement",
        choices=("auto", "marks"),
        default="auto",
        help="auto: pcgraph's layer placement (the protocol); marks: a pcgraph.node mark on "
        "every hidden activation, as pcx's Vodes (an experiment, written to its own files)",
    )
    args = parser.parse_args(argv)
    dataset = common.DATASETS[args.dataset]
    epochs = args.epochs or (1 if args.quick else EPOCHS)
    seeds = args.seeds[:1] if args.quick else args.seeds
    data = common.load_data(
        args.dataset, args.data_dir, scale="pm1", limit=1024 if args.quick else None
    )
    meta = {"machine": common.machine(), "command": common.command(), "dataset": dataset}
    print(f"pcx protocol on {dataset}: {len(data[0])} train / {len(data[2])} test examples, "
          f"configs {args.configs}, seeds {seeds}, {epochs} epochs; {meta['machine']}")  # fmt: skip
    for config in args.configs:
        suffix = ("_marks" if args.placement == "marks" else "") + ("_quick" if args.quick else "")
        path = args.out / f"pcx_{dataset}_{config}{suffix}.json"
        for seed in seeds:
            result = run(config, dataset, seed, epochs, data, placement=args.placement)
            best, last = max(result["test_acc"]), result["test_acc"][-1]
            print(f"{LABELS[config]:7} {dataset} seed {seed}: best {best:.2f} % last "
                  f"{last:.2f} %, {sum(result['epoch_s']) / epochs:.2f} s/epoch")  # fmt: skip
            common.save_run(
                path,
                f"seed{seed}_e{epochs}",
                result,
                {
                    **meta,
                    "config": config,
                    "hparams": HPARAMS[(config, dataset)],
                    "placement": args.placement,
                },  # fmt: skip
            )


if __name__ == "__main__":
    main()
