"""What the examples share: scikit-learn's digits, minibatch order, the tanh MLP of the
data-parallel examples, a training loop that compares predictive coding's gradient with
backprop's, compiling a step ahead of its timing, the command line and figure saving.

The examples import it as a sibling module (`python examples/X.py` puts `examples/` on the
path); it is not part of the `pcgraph` package.
"""

import argparse
import pathlib
import time
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import pcgraph


def digits(seed: int, *, scale: float = 1 / 16, shape=(64,), one_hot: bool = False):
    """scikit-learn's bundled 8x8 digits as float32 images of `shape` (pixels times `scale`:
    [0, 1] by default), split 80/20 stratified by class; returns `x_train, x_test, y_train,
    y_test`, the labels integers or, with `one_hot`, float32 one-hot vectors."""
    images, labels = load_digits(return_X_y=True)
    images = (images * scale).astype(np.float32).reshape(-1, *shape)
    targets = np.eye(10, dtype=np.float32)[labels] if one_hot else labels
    return train_test_split(images, targets, test_size=0.2, stratify=labels, random_state=seed)


def batch_order(num_examples: int, epochs: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """Minibatch indices, shape (epochs, batches, batch_size): a fresh shuffle per epoch,
    the ragged last batch dropped so that every step has the same shape (no recompiles).
    The same for every run of one seed."""
    rng = np.random.default_rng(seed)
    num_batches = num_examples // batch_size
    return np.stack(
        [
            rng.permutation(num_examples)[: num_batches * batch_size].reshape(num_batches, -1)
            for _ in range(epochs)
        ]
    )


def mlp_params(key, sizes: Sequence[int]) -> list[dict]:
    """A tanh MLP's parameters: LeCun-normal weights, zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_logits(params: list[dict], x):
    """The MLP's logits, each hidden layer marked as a value node `hidden1`, `hidden2`, ..."""
    h = x
    for i, layer in enumerate(params[:-1]):
        h = pcgraph.node(jnp.tanh(h @ layer["w"] + layer["b"]), name=f"hidden{i + 1}")
    return h @ params[-1]["w"] + params[-1]["b"]


def mlp_loss(params: list[dict], x, y):
    """Mean softmax cross-entropy against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, x), y).mean()


def agreement(grads, reference):
    """Relative error ||g - g_ref|| / ||g_ref|| and cosine over all parameters."""
    g = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grads)])
    r = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(reference)])
    norm_g, norm_r = jnp.linalg.norm(g), jnp.linalg.norm(r)
    return jnp.linalg.norm(g - r) / norm_r, g @ r / norm_g / norm_r


def make_train_step(loss_fn, value_and_grad_fn, optimizer, compare: bool = False):
    """A compiled optax update of an equinox model with `value_and_grad_fn`'s gradient of
    `loss_fn(model, x, y)`; it also returns the loss, and with `compare` the `agreement` of
    the gradient with backprop's at the same parameters (for the record only)."""

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        loss, grads = value_and_grad_fn(model, x, y)
        if compare:
            stats = agreement(grads, eqx.filter_grad(loss_fn)(model, x, y))
        else:
            stats = (jnp.zeros(()), jnp.ones(()))
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss, stats

    return train_step


def train(
    desc: str,
    loss_fn,
    value_and_grad_fn,
    model,
    optimizer,
    batches: Sequence,
    *,
    compare: bool = False,
    evaluate: Callable[..., dict] | None = None,
    every: int = 1,
    first: bool = False,
    leave: bool = True,
):
    """Train an equinox model with `make_train_step` over `batches` (pairs `(x, y)`), under
    a progress bar `desc`; `evaluate(model)`, a dict of numbers, runs every `every` steps
    (and after the first with `first`).

    Returns the trained model and its history: per step the `loss`, `rel_error` and `cosine`
    (zero and one without `compare`); per evaluation its `step` and each of `evaluate`'s
    entries; and the wall time in `seconds` (compilation included)."""
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    train_step = make_train_step(loss_fn, value_and_grad_fn, optimizer, compare)
    history = {"step": [], "loss": [], "rel_error": [], "cosine": []}
    start = time.perf_counter()
    with tqdm(batches, desc=desc, unit="step", leave=leave) as bar:
        for step, (x, y) in enumerate(bar, start=1):
            model, opt_state, loss, (rel_error, cosine) = train_step(model, opt_state, x, y)
            history["loss"].append(float(loss))
            history["rel_error"].append(float(rel_error))
            history["cosine"].append(float(cosine))
            if evaluate is not None and (step % every == 0 or (first and step == 1)):
                metrics = {name: float(value) for name, value in evaluate(model).items()}
                history["step"].append(step)
                for name, value in metrics.items():
                    history.setdefault(name, []).append(value)
                bar.set_postfix({name: f"{value:.4f}" for name, value in metrics.items()})
    history["seconds"] = time.perf_counter() - start
    return model, history


def train_each(runs: dict, loss_fn, model, optimizer, batches: Sequence, **options) -> dict:
    """`train` the same model on the same batches once per run, `runs` mapping a name to
    `(value_and_grad_fn, compare)`; returns each run's history, by name (`options`: those of
    `train`)."""
    return {
        name: train(
            f"{name:<10}", loss_fn, fn, model, optimizer, batches, compare=compare, **options
        )[1]
        for name, (fn, compare) in runs.items()
    }


def compiled(step, *args):
    """`step` (a `jax.jit` or `equinox.filter_jit` function) compiled for `args`, and the
    seconds it took: compiled up front, the training that follows is timed alone."""
    start = time.perf_counter()
    step = step.lower(*args).compile()
    return step, time.perf_counter() - start


def command_line(doc: str) -> argparse.ArgumentParser:
    """The command line of an example: its docstring's first line, defaults in `--help`."""
    return argparse.ArgumentParser(
        description=doc.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def save(figure, path: pathlib.Path, dpi: int = 120):
    """Lay `figure` out, save it to `path` (making its folder) and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
