"""What the real-data benchmark scripts share: reading MNIST / Fashion-MNIST, the command-line
flags, the plain JAX networks, minibatch orders, evaluation, and the results files.

Every script trains a network written in plain `jax.numpy` (a list of `{"w", "b"}` dicts, no
pcgraph layers and no `pcgraph.node` marks unless the model family needs them) with
`pcgraph.train_step`, and writes one JSON file per run family under `--out` (default
`benchmarks/pc_benchmark/results/`). `render.py` turns those files into the tables of
`docs/real-data.md` and its figures, so partial results can be published as they come.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import pcgraph

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent.parent
DOCS = REPO / "docs"

DATASETS = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "fashion": "fashion_mnist",
}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NUM_CLASSES = 10


class DataError(SystemExit):
    """Raised (as a clean exit with a message) when the data cannot be used."""


def add_common_arguments(parser: argparse.ArgumentParser, *, default_seeds: int, epochs: bool):
    """The flags every script takes: `--dataset`, `--data-dir`, `--seeds`, `--epochs`,
    `--quick`, `--out`."""
    parser.add_argument(
        "--dataset",
        default="mnist",
        choices=sorted(DATASETS),
        help="mnist or fashion_mnist (the four IDX files, plain or gzipped, under --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="the folder holding the dataset's IDX files (required: there is no fallback)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(range(default_seeds)),
        help=f"the seeds to run (default 0..{default_seeds - 1})",
    )
    if epochs:
        parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: one seed, one short epoch on at most 1024 training examples",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=RESULTS,
        help="where the results JSON files go (default: benchmarks/pc_benchmark/results)",
    )


def load_data(dataset: str, data_dir, *, scale: str, limit: int | None = None):
    """The dataset as flat float32 arrays `(x_train, y_train, x_test, y_test)`.

    `scale="pm1"` maps the pixels to [-1, 1] (pcx's `Normalize((0.5,), (0.5,))`);
    `scale="mnist_std"` standardises with MNIST's mean 0.1307 and std 0.3081 (jpc's notebooks).
    `limit` keeps the first `limit` training and test examples (for `--quick`).

    Refuses (a clean exit with a message) a missing `data_dir` or a folder without the four IDX
    files: this benchmark never falls back to scikit-learn's digits.
    """
    name = DATASETS[dataset]
    if data_dir is None:
        raise DataError(
            f"--data-dir is required for --dataset {dataset}: the folder with the four IDX files "
            f"({', '.join(IDX_FILES)}, plain or .gz). Get them with "
            "`bash shared/datasets/get_datasets.sh DIR` or from the dataset's site."
        )
    data_dir = pathlib.Path(data_dir).expanduser()
    missing = [
        f for f in IDX_FILES if not (data_dir / f).exists() and not (data_dir / f"{f}.gz").exists()
    ]
    if missing:
        raise DataError(
            f"--data-dir {data_dir} does not hold the {dataset} IDX files: missing "
            f"{', '.join(missing)} (plain or .gz)"
        )
    try:
        data = pcgraph.datasets.load(name, data_dir)
    except pcgraph.datasets.DatasetError as error:
        raise DataError(f"cannot read {dataset} from {data_dir}: {error}") from None

    def prepare(images):
        x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
        if scale == "pm1":
            return (x - 0.5) / 0.5
        if scale == "mnist_std":
            return (x - 0.1307) / 0.3081
        raise ValueError(scale)

    x_train, y_train = prepare(data.x_train), np.asarray(data.y_train, np.int32)
    x_test, y_test = prepare(data.x_test), np.asarray(data.y_test, np.int32)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]
    return x_train, y_train, x_test, y_test


def one_hot(labels) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


# -- the plain JAX MLP ----------------------------------------------------------------------------


def init_mlp(key, sizes) -> list[dict]:
    """An MLP's parameters as `[{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]`, drawn as
    `equinox.nn.Linear` draws them (pcx's and jpc's layers): weights and biases uniform in
    `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, wkey, bkey = jax.random.split(key, 3)
        bound = 1 / math.sqrt(fan_in)
        params.append(
            {
                "w": jax.random.uniform(wkey, (fan_in, fan_out), minval=-bound, maxval=bound),
                "b": jax.random.uniform(bkey, (fan_out,), minval=-bound, maxval=bound),
            }
        )
    return params


def mlp(params, x, activation):
    """The plain MLP: `activation(x @ w + b)` on every layer but the last, which is linear."""
    for layer in params[:-1]:
        x = activation(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def batch_order(num_examples: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """Minibatch indices `(epochs, batches, batch_size)`: a fresh shuffle per epoch, the ragged
    last batch dropped (as the peers' `drop_last=True` loaders)."""
    rng = np.random.default_rng(seed)
    batches = num_examples // batch_size
    return np.stack(
        [
            rng.permutation(num_examples)[: batches * batch_size].reshape(batches, -1)
            for _ in range(epochs)
        ]
    )


def accuracy(predict, params, x, y, chunk: int = 10_000) -> float:
    """Test accuracy (a fraction) of `predict(params, x)`'s argmax over the whole test set."""
    correct = 0
    for start in range(0, len(x), chunk):
        logits = predict(params, x[start : start + chunk])
        correct += int(jnp.sum(jnp.argmax(logits, -1) == y[start : start + chunk]))
    return correct / len(x)


# -- results files --------------------------------------------------------------------------------


def machine() -> dict:
    """The machine a run used: CPU model and cores, JAX backend and device, versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(getattr(device, "device_kind", device)),
        "jax": jax.__version__,
        "pcgraph": getattr(pcgraph, "__version__", "?"),
        "python": platform.python_version(),
    }


def command() -> str:
    """The command line that is running, relative to the repository root."""
    script = pathlib.Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def save_run(path: pathlib.Path, key: str, run: dict, meta: dict) -> None:
    """Add (or replace) one run, under `key`, in the results file `path`, read-modify-write:
    every finished seed is on disk at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    commands = data.get("commands", [data["command"]] if "command" in data else [])
    data.update(meta)
    if "command" in meta and meta["command"] not in commands:
        commands.append(meta["command"])
    data["commands"] = commands
    data["runs"][key] = run
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def timed(fn, *args):
    """`fn(*args)` with its result blocked on, and the seconds it took."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start
