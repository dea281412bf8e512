"""What every library's run of the peer benchmark shares: the tasks (each network written once in
plain JAX), the initial weights, the minibatch order, the training and timing loop, and the
backprop reference.

It imports only numpy, JAX and optax, with nothing newer than JAX 0.4.30 asks for, so that it
runs in every library's own virtual environment (pcx pins an older JAX). An adapter module
(`<library>_adapter.py`) turns a task and its initial weights into a `Trainer`; `main` runs
one adapter on one task and seed and prints its measurements as JSON.

Every library trains the same network in the same way:

- the energy is the standard layered one (Whittington & Bogacz 2017), summed over the batch:
  `F = sum_l 1/2 ||z_l - f_l(z_{l-1})||^2 + 1/2 ||y - f_L(z_{L-1})||^2` with the one-hot
  label `y` clamped at the output;
- inference: the hidden activities start at the feedforward pass and take `INFERENCE_STEPS`
  Euler steps `z <- z - INFERENCE_STEP_SIZE * dF/dz` (each example's own step: the sum over
  the batch does not scale it);
- learning: Adam (`LEARNING_RATE`) on `dF/dtheta` at the relaxed activities, the gradient of
  the batch sum (an adapter whose library averages over the batch scales its gradient back up:
  Adam's epsilon would otherwise make small entries' steps smaller);
- the same weights at initialisation (drawn here with numpy from the seed), the same
  minibatches in the same order, and test accuracy from the feedforward pass.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

INFERENCE_STEPS = 20
INFERENCE_STEP_SIZE = 0.1
LEARNING_RATE = 1e-3
BATCH_SIZE = 64
NUM_CLASSES = 10


class Task(NamedTuple):
    """One benchmark task: a network and its training schedule.

    `kind` is `"mlp"`, `"cnn"` or `"resnet"`; `image_shape` is `(H, W, C)` of the dataset's
    images; `width` the hidden width (MLP and residual network) and `depth` the number of weight
    matrices of the residual network; `channels` the CNN's two convolutions' output channels.
    """

    name: str
    kind: str
    description: str
    image_shape: tuple[int, int, int]
    width: int = 128
    hidden_layers: int = 3
    depth: int = 32
    channels: tuple[int, int] = (8, 16)

    @property
    def in_size(self) -> int:
        return math.prod(self.image_shape)

    def conv_output_shape(self) -> tuple[int, int, int]:
        """The CNN's second convolution's output `(H, W, C)`: the first keeps the size, the
        second halves it (stride 2, 'SAME' padding)."""
        height, width, _ = self.image_shape
        return (-(-height // 2), -(-width // 2), self.channels[1])


def make_task(name: str, image_shape: tuple[int, int, int]) -> Task:
    """The task called `name` (`mlp`, `cnn` or `resnet`) for images of `image_shape`."""
    if name == "mlp":
        return Task(name, "mlp", "MLP, tanh, 3 hidden layers of 128", image_shape)
    if name == "cnn":
        return Task(name, "cnn", "CNN, tanh, two 3x3 convolutions (8, 16 channels)", image_shape)
    if name == "resnet":
        return Task(name, "resnet", "muPC residual MLP, ReLU, 32 layers of 128", image_shape)
    raise ValueError(f"unknown task {name!r}: one of 'mlp', 'cnn', 'resnet'")


TASK_NAMES = ("mlp", "cnn", "resnet")


# -- initial weights: numpy arrays by name, one layout for every library --------------------------
#
# Dense weights are (fan_in, fan_out) and act as `x @ w + b`; convolution kernels are HWIO and
# act on NHWC images with 'SAME' padding; the CNN flattens its (H, W, C) feature map in that
# order. An adapter whose library keeps another layout transposes these.


def init_weights(task: Task, seed: int) -> dict[str, np.ndarray]:
    """The task's initial weights for `seed`, identical in every environment.

    MLP and CNN: LeCun normal (`N(0, 1/fan_in)`) weights and zero biases. Residual network: the
    muPC parameterisation of Innocenti et al. (2025): bias-free, every weight `N(0, 1)`, the
    multipliers `residual_scalings` applied in the forward pass.
    """
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    weights = {}
    if task.kind == "mlp":
        sizes = [task.in_size] + [task.width] * task.hidden_layers + [NUM_CLASSES]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            weights[f"w{i}"] = normal((fan_in, fan_out), 1 / math.sqrt(fan_in))
            weights[f"b{i}"] = np.zeros(fan_out, np.float32)
    elif task.kind == "cnn":
        in_channels = task.image_shape[2]
        for i, (c_in, c_out) in enumerate(zip((in_channels, *task.channels[:-1]), task.channels)):
            weights[f"conv{i}_w"] = normal((3, 3, c_in, c_out), 1 / math.sqrt(9 * c_in))
            weights[f"conv{i}_b"] = np.zeros(c_out, np.float32)
        fan_in = math.prod(task.conv_output_shape())
        weights["dense_w"] = normal((fan_in, NUM_CLASSES), 1 / math.sqrt(fan_in))
        weights["dense_b"] = np.zeros(NUM_CLASSES, np.float32)
    else:
        sizes = [task.in_size] + [task.width] * (task.depth - 1) + [NUM_CLASSES]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            weights[f"w{i}"] = normal((fan_in, fan_out), 1.0)
    return weights


def residual_scalings(task: Task) -> list[float]:
    """muPC's multipliers `a_l` of the residual network's `depth` layers (Innocenti et al.
    2025): `1/sqrt(D)` for the input layer, `1/sqrt(N L)` for each residual branch, `1/N` for
    the output layer."""
    n, depth = task.width, task.depth
    return [1 / math.sqrt(task.in_size)] + [1 / math.sqrt(n * depth)] * (depth - 2) + [1 / n]


# -- the networks in plain JAX --------------------------------------------------------------------


def layers(task: Task) -> list[Callable]:
    """The task's network as a list of functions `f_l(params, z_{l-1}) -> z_l`, one per PC
    layer: every output but the last is a value node, the last is the prediction of the
    clamped label. `z_0` is the batch of inputs: flat `(B, H*W*C)` for the MLP and the residual
    network, NHWC images for the CNN."""
    if task.kind == "mlp":
        hidden = [
            lambda p, z, i=i: jnp.tanh(z @ p[f"w{i}"] + p[f"b{i}"])
            for i in range(task.hidden_layers)
        ]
        last = task.hidden_layers
        return [*hidden, lambda p, z: z @ p[f"w{last}"] + p[f"b{last}"]]
    if task.kind == "cnn":

        def conv(i, stride):
            def layer(p, z):
                out = jax.lax.conv_general_dilated(
                    z, p[f"conv{i}_w"], (stride, stride), "SAME",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )  # fmt: skip
                return jnp.tanh(out + p[f"conv{i}_b"])

            return layer

        def head(p, z):
            return z.reshape(z.shape[0], -1) @ p["dense_w"] + p["dense_b"]

        return [conv(0, 1), conv(1, 2), head]
    scalings = residual_scalings(task)
    last = task.depth - 1

    def block(p, z, i):
        return z + scalings[i] * jax.nn.relu(z) @ p[f"w{i}"]

    return [
        lambda p, z: scalings[0] * z @ p["w0"],
        *[lambda p, z, i=i: block(p, z, i) for i in range(1, last)],
        lambda p, z: scalings[last] * jax.nn.relu(z) @ p[f"w{last}"],
    ]


def forward(task: Task, params, x):
    """The feedforward pass: the network's output (the logits) for inputs `x`."""
    for layer in layers(task):
        x = layer(params, x)
    return x


def output_energy(prediction, target):
    """The clamped output layer's energy, summed over the batch."""
    return 0.5 * jnp.sum((target - prediction) ** 2)


# -- data and minibatches -------------------------------------------------------------------------


class Data(NamedTuple):
    """Inputs scaled to [0, 1] (NHWC images), integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def load_data(path: str) -> Data:
    """The `.npz` file `run.py` writes (see `save_data`)."""
    with np.load(path) as f:
        return Data(f["x_train"], f["y_train"], f["x_test"], f["y_test"])


def save_data(path: str, data: Data) -> None:
    np.savez(path, **data._asdict())


def inputs_for(task: Task, images: np.ndarray) -> np.ndarray:
    """A batch of images in the form the task's first layer takes."""
    return images if task.kind == "cnn" else images.reshape(len(images), -1)


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def batch_order(num_examples: int, epochs: int, seed: int) -> np.ndarray:
    """Indices of every minibatch, `(epochs, batches, BATCH_SIZE)`: a fresh permutation per
    epoch from `seed`, the ragged last batch dropped (one shape, one compilation)."""
    rng = np.random.default_rng(seed)
    batches = num_examples // BATCH_SIZE
    return np.stack(
        [
            rng.permutation(num_examples)[: batches * BATCH_SIZE].reshape(batches, -1)
            for _ in range(epochs)
        ]
    )


# -- training and measurement ---------------------------------------------------------------------


class Trainer(Protocol):
    """What an adapter builds: one training update per call of `step`, which may return
    before the update is computed (JAX dispatches asynchronously); `sync` waits for it."""

    def step(self, x: np.ndarray, y: np.ndarray) -> None:
        """One PC (or backprop) update on inputs `x` and one-hot targets `y`."""

    def sync(self) -> None:
        """Block until every update so far is computed."""

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The feedforward pass's outputs for inputs `x`."""

    def weights(self) -> dict[str, np.ndarray]:
        """The current weights, by the names and in the layout of `init_weights`."""


class DictTrainer:
    """A trainer that keeps its weights as `init_weights` lays them out (`params`), with its
    optimiser's state; a subclass sets `_step(params, opt_state, x, y) -> (params, opt_state,
    ...)`."""

    def __init__(self, task, weights, optimizer):
        self.params = {k: jnp.asarray(v) for k, v in weights.items()}
        self.opt_state = optimizer.init(self.params)
        self._logits = jax.jit(lambda params, x: forward(task, params, x))

    def step(self, x, y):
        self.params, self.opt_state, *_ = self._step(self.params, self.opt_state, x, y)

    def sync(self):
        jax.block_until_ready(self.params)

    def logits(self, x):
        return np.asarray(self._logits(self.params, x))

    def weights(self):
        return {k: np.asarray(v) for k, v in self.params.items()}


class BackpropTrainer(DictTrainer):
    """The reference: `jax.grad` of the same network's squared-error loss, the same Adam."""

    def __init__(self, task, weights, optimizer):
        super().__init__(task, weights, optimizer)

        def loss(params, x, y):
            return output_energy(forward(task, params, x), y)

        @jax.jit
        def step(params, opt_state, x, y):
            grads = jax.grad(loss)(params, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self._step = step


class _Floor:
    """A part of one PC train step of the MLP task, computed alone and timed as a trainer's
    steps are (`step`, `sync`; it learns nothing)."""

    def __init__(self, task: Task, floor: str):
        if task.kind != "mlp":
            raise ValueError(f"the {floor} is defined for the MLP task, not {task.kind!r}")
        self._out = None

    def sync(self):
        jax.block_until_ready(self._out)


class MatmulFloor(_Floor):
    """The matrix products of one PC train step of the MLP task and nothing else, timed as a
    trainer's steps are (`step`, `sync`; it learns nothing): the floor under every library's
    step on that task.

    A step of inference learning computes the feedforward pass (one product per layer), then
    per inference step the prediction of every node above the first (the first one's input is
    clamped) and the pull-back of every prediction error through its weights, then one
    weight-gradient product per layer. Each inference step's products here depend on the last
    (a tiny update of the activities), so that none is hoisted out of the loop; no activation,
    error, bias or optimiser work is done."""

    NAME = "matmuls alone"

    def __init__(self, task, weights):
        super().__init__(task, "matmul floor")
        self.weights_list = [jnp.asarray(weights[f"w{i}"]) for i in range(task.hidden_layers + 1)]

        @jax.jit
        def step(ws, x):
            zs = [x]
            for w in ws:
                zs.append(zs[-1] @ w)

            def inference_step(_, hidden):
                predictions = [z @ w for z, w in zip(hidden, ws[1:])]
                pulled = [e @ w.T for e, w in zip(predictions, ws[1:])]
                return [z + 1e-3 * p for z, p in zip(hidden, pulled)]

            hidden = jax.lax.fori_loop(0, INFERENCE_STEPS, inference_step, zs[1:-1])
            inputs, errors = [x, *hidden], [*hidden, zs[-1]]
            return [z.T @ e for z, e in zip(inputs, errors)]

        self._step = step

    def step(self, x, y):
        self._out = self._step(self.weights_list, x)


def embed(z, size):
    """`z @ eye(z.shape[1], size)`, without the product: `z`'s columns cut or zero-padded to
    `size`."""
    if z.shape[1] >= size:
        return z[:, :size]
    return jnp.pad(z, ((0, 0), (0, size - z.shape[1])))


class ElementwiseFloor(_Floor):
    """The elementwise work of the inference steps of one PC train step of the MLP task and
    nothing else, timed as `MatmulFloor` is. With it, the two floors add up to a bound under
    every library's step on one CPU core, where XLA runs its kernels one at a time and a
    product's kernel does not take elementwise work in.

    Each inference step computes, as inference learning does (Whittington & Bogacz 2017), every
    hidden node's `tanh` prediction, its error, the error scaled by `tanh`'s derivative, the
    output's error against the clamped label, and the update
    `z <- z - INFERENCE_STEP_SIZE * (error - pulled-back error)`; every product `z @ W` and
    pull-back `d @ W.T` is replaced by what it gives for `W = eye(fan_in, fan_out)` (`embed`),
    so that no matmul is computed. `step` returns the relaxed hidden values (what inference
    learning reaches with those identity weights and the task's biases); the feedforward pass,
    the weight gradients and the optimiser are left out."""

    NAME = "elementwise alone"

    def __init__(self, task, weights):
        super().__init__(task, "elementwise floor")
        self.biases = [jnp.asarray(weights[f"b{i}"]) for i in range(task.hidden_layers + 1)]

        @jax.jit
        def step(biases, x, y):
            hidden, z = [], x
            for b in biases[:-1]:
                z = jnp.tanh(embed(z, b.shape[0]) + b)
                hidden.append(z)
            first = hidden[0]  # the first node's prediction: its input is clamped

            def inference_step(_, hidden):
                mus = [first]
                mus += [jnp.tanh(embed(z, b.shape[0]) + b) for z, b in zip(hidden, biases[1:-1])]
                errors = [z - mu for z, mu in zip(hidden, mus)]
                scaled = [e * (1 - mu * mu) for e, mu in zip(errors[1:], mus[1:])]
                scaled.append(y - (embed(hidden[-1], y.shape[1]) + biases[-1]))
                pulled = [embed(d, z.shape[1]) for d, z in zip(scaled, hidden)]
                return [
                    z - INFERENCE_STEP_SIZE * (e - p) for z, e, p in zip(hidden, errors, pulled)
                ]

            return jax.lax.fori_loop(0, INFERENCE_STEPS, inference_step, hidden)

        self._step = step

    def step(self, x, y):
        self._out = self._step(self.biases, x, y)


def peak_memory_bytes() -> tuple[int, str]:
    """The peak memory so far: the device allocator's peak where it reports one (GPU), else the
    process's peak resident set size (CPU, which includes the JAX runtime's own ~hundreds of
    MiB; compare runs, not absolute values)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"


def train(trainer: Trainer, task: Task, data: Data, epochs: int, seed: int) -> dict:
    """Train for `epochs` epochs; returns test accuracy, each epoch's seconds and peak memory.
    The first epoch includes compilation; the rest are pure training."""
    x_train = inputs_for(task, data.x_train)
    y_train = one_hot(data.y_train)
    epoch_seconds = []
    for batches in batch_order(len(x_train), epochs, seed):
        start = time.perf_counter()
        for idx in batches:
            trainer.step(x_train[idx], y_train[idx])
        trainer.sync()
        epoch_seconds.append(time.perf_counter() - start)
    logits = trainer.logits(inputs_for(task, data.x_test))
    memory, memory_source = peak_memory_bytes()
    steady = statistics.median(epoch_seconds[1:]) if epochs > 1 else math.nan
    return {
        "accuracy": float(np.mean(np.argmax(logits, axis=-1) == data.y_test)),
        "epoch_seconds": epoch_seconds,
        "epoch_time": steady,
        "compile_time": epoch_seconds[0] - steady,
        "peak_memory": memory,
        "memory_source": memory_source,
        "finite": bool(np.all(np.isfinite(logits))),
    }


def time_steps(trainers: dict[str, Trainer], task: Task, data: Data, rounds: int) -> dict:
    """Seconds per training step of each trainer, timed in interleaved rounds (each round runs
    every trainer over the same minibatches, so load from elsewhere hits them alike); the
    minimum over rounds, after one warm-up round that compiles."""
    x_train = inputs_for(task, data.x_train)
    y_train = one_hot(data.y_train)
    batches = batch_order(len(x_train), 1, 0)[0]
    best = {name: math.inf for name in trainers}
    for _ in range(rounds + 1):
        for name, trainer in trainers.items():
            trainer.sync()
            start = time.perf_counter()
            for idx in batches:
                trainer.step(x_train[idx], y_train[idx])
            trainer.sync()
            best[name] = min(best[name], (time.perf_counter() - start) / len(batches))
    return best


class Adapter(Protocol):
    """An adapter module: `NAME`, `unsupported(task)` (None, or why the library cannot run the
    task) and `make_trainer(task, weights)`."""

    NAME: str

    def unsupported(self, task: Task) -> str | None: ...

    def make_trainer(
        self, task: Task, weights: dict[str, np.ndarray], optimizer: optax.GradientTransformation
    ) -> Trainer: ...


def first_update(trainer: Trainer, task: Task, data: Data, seed: int) -> dict[str, np.ndarray]:
    """The weights after one step on the first minibatch (with `optax.sgd(1.0)` this is minus
    the library's gradient): run.py compares them across libraries."""
    x_train = inputs_for(task, data.x_train)
    idx = batch_order(len(x_train), 1, seed)[0, 0]
    trainer.step(x_train[idx], one_hot(data.y_train)[idx])
    trainer.sync()
    return trainer.weights()


def main(adapter: Adapter | None) -> None:
    """Command line of an adapter: `python <library>_adapter.py --task T --seed S --epochs E
    --data FILE [--method pc|bp] [--check FILE]` prints one JSON object of measurements.
    `python common.py ... --method bp` trains the backprop reference alone."""
    name = "backprop" if adapter is None else adapter.NAME
    parser = argparse.ArgumentParser(description=f"Train one task with {name}.")
    parser.add_argument("--task", choices=TASK_NAMES, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--data", required=True, help="the .npz file run.py wrote")
    parser.add_argument("--method", choices=("pc", "bp"), default="pc" if adapter else "bp")
    parser.add_argument(
        "--check",
        metavar="FILE",
        help="instead of training, take one SGD step (learning rate 1) on the first minibatch "
        "and save the weights to FILE (.npz)",
    )
    args = parser.parse_args()
    data = load_data(args.data)
    task = make_task(args.task, data.image_shape)
    if adapter is None and args.method == "pc":
        parser.error("PC needs a library: run <library>_adapter.py")
    result = {"library": name, "task": args.task, "seed": args.seed}
    result.update(method=args.method, jax=jax.__version__, device=jax.devices()[0].device_kind)
    reason = adapter.unsupported(task) if args.method == "pc" else None
    if reason is not None:
        result["unsupported"] = reason
    else:
        weights = init_weights(task, args.seed)
        optimizer = optax.sgd(1.0) if args.check else optax.adam(LEARNING_RATE)
        if args.method == "pc":
            trainer = adapter.make_trainer(task, weights, optimizer)
        else:
            trainer = BackpropTrainer(task, weights, optimizer)
        if args.check:
            np.savez(args.check, **first_update(trainer, task, data, args.seed))
        else:
            result.update(train(trainer, task, data, args.epochs, args.seed))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main(None)
