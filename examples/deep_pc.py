"""Signal decay in deep predictive-coding networks, and how error optimisation (ePC) avoids it.

In inference learning (IL, Whittington & Bogacz 2017) the node values relax from the
feedforward pass, and the loss's error moves down the network one layer per relaxation step,
shrinking on the way: after T steps, every layer more than T below the output still has a zero
error, so its weights get a zero gradient. Error optimisation (ePC, Goemaere et al. 2025)
relaxes the node errors instead and recomputes the values by a forward pass; each step carries
the loss's gradient to every layer at once, so T = 8 steps suffice at any depth.

The script shows both on plain tanh MLPs in the standard parameterisation (no biases, weights
drawn LeCun normal, N(0, 1/fan_in); every hidden state h_l = tanh(W_l h_{l-1}) a value node):

1. for a 64-hidden-layer network at initialisation, the cosine between each weight matrix's
   gradient and `jax.grad`'s, for IL and ePC after T = 8 Euler steps of 0.1 from the
   feedforward pass, on 128 training digits (printed per layer; IL's first layer gets exactly
   zero, ePC's is within a few degrees of backprop's);
2. trains 32-hidden-layer networks with backprop (`jax.grad`), IL (T = 8) and ePC (T = 8) and
   prints their test accuracies.

Settings (the same for the three runs of one seed: initialisation, minibatch order, optimiser,
epochs): width 128, mean softmax cross-entropy, batch 64, 10 epochs, Adam on the weights with a
learning rate decaying from 2e-4 to 0 along a cosine (at a constant 1e-4, backprop and ePC alike
collapse after about 10 epochs on one seed in three); IL and ePC run
`pcgraph.IL/EPC(beta=1, stepper=pcgraph.Euler(0.1), max_steps=8)`. With a batch-mean loss and
beta = 1 each example's loss is weighted by 1/batch size, a small nudge, at which IL's and
ePC's equilibrium gradient is close to backprop's.
Inputs are scikit-learn's digits, standardised per pixel, 80/20 split (`deep_mupc.py`'s).

Measured on a 2-core CPU (seeds 0 to 2): see docs/deep-pc.md, "Signal decay and error
optimisation".

Run:  pip install -e ".[examples]" && python examples/deep_pc.py [--epochs 10] [--seeds 0 1 2]
      (--quick: seed 0 only, about 2 minutes on 2 cores)
"""

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import batch_order, command_line, compiled
from deep_mupc import load_data
from tqdm import tqdm

import pcgraph

WIDTH = 128
BATCH_SIZE = 64
STEPS = 8  # T, the relaxation budget of IL and ePC
STEP_SIZE = 0.1  # Euler step of the relaxation (pcgraph's energy: summed errors, mean loss)
LEARNING_RATE = 2e-4  # Adam, on the weights: the start of a cosine decay to 0
COSINE_DEPTH = 64  # hidden layers of the network whose gradients are compared
COSINE_EXAMPLES = 128  # training digits in that comparison
TRAIN_DEPTH = 32  # hidden layers of the trained networks


class PlainMLP(eqx.Module):
    """A bias-free tanh MLP in the standard parameterisation: `h_0 = x`,
    `h_l = tanh(W_l h_{l-1})` for `l = 1, ..., depth`, output `W_L h_depth`; every `W` drawn
    from `N(0, 1/fan_in)` (LeCun normal). Each hidden state is a value node `h{l}`."""

    weights: tuple[jax.Array, ...]
    activation: Callable[[jax.Array], jax.Array] = eqx.field(static=True)

    def __init__(self, depth, width, in_size, out_size, *, key, activation=jnp.tanh):
        shapes = [(width, in_size), *[(width, width)] * (depth - 1), (out_size, width)]
        keys = jax.random.split(key, len(shapes))
        self.weights = tuple(
            jax.random.normal(k, shape) / np.sqrt(shape[1])
            for k, shape in zip(keys, shapes, strict=True)
        )
        self.activation = activation

    def __call__(self, x):
        h = x
        for layer, w in enumerate(self.weights[:-1], start=1):
            h = pcgraph.node(self.activation(h @ w.T), name=f"h{layer}")
        return h @ self.weights[-1].T


def cross_entropy(model, x, labels):
    """The batch mean of the softmax cross-entropy of `model(x)` against integer `labels`."""
    log_probs = jax.nn.log_softmax(model(x))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def relaxation(name: str, steps: int = STEPS) -> pcgraph.AbstractAlgorithm | None:
    """The gradient of a run: `"backprop"` (None: `jax.grad`), `"IL"` or `"ePC"` with
    `steps` Euler steps of `STEP_SIZE` from the feedforward pass, output weight 1."""
    if name == "backprop":
        return None
    algorithm = {"IL": pcgraph.IL, "ePC": pcgraph.EPC}[name]
    return algorithm(beta=1.0, stepper=pcgraph.Euler(STEP_SIZE), max_steps=steps, throw=False)


def gradients(model, x, labels, algorithm):
    """The gradient of `cross_entropy` in the model (its weights): `jax.grad`'s when
    `algorithm` is None, else the one `algorithm` reads off its relaxation."""
    grad = jax.grad if algorithm is None else lambda f: pcgraph.grad(f, algorithm=algorithm)
    return grad(cross_entropy)(model, x, labels)


def layer_cosines(model, x, labels, algorithm) -> np.ndarray:
    """Per weight matrix (first to readout), the cosine between `algorithm`'s gradient and
    `jax.grad`'s; 0 where the PC gradient is exactly zero, NaN where it is not finite."""
    exact = gradients(model, x, labels, None).weights
    approx = gradients(model, x, labels, algorithm).weights
    cosines = []
    for a, b in zip(approx, exact, strict=True):
        norms = float(jnp.linalg.norm(a) * jnp.linalg.norm(b))
        dot = float(jnp.vdot(a, b))
        cosines.append(dot / norms if norms > 0 else (0.0 if np.isfinite(dot) else np.nan))
    return np.asarray(cosines)


@eqx.filter_jit
def accuracy(model, x, labels):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == labels)


def make_train_step(algorithm, optimizer):
    """A compiled step: the loss, `algorithm`'s gradient (None: `jax.grad`), one optimiser
    update, and whether the loss and the gradient are finite."""

    @eqx.filter_jit
    def train_step(model, opt_state, x, labels):
        loss = cross_entropy(model, x, labels)
        grads = gradients(model, x, labels, algorithm)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in grads.weights])
        )
        return eqx.apply_updates(model, updates), opt_state, loss, finite

    return train_step


def train(model, algorithm, data, order, desc: str, learning_rate) -> dict:
    """Train `model` with Adam (`learning_rate`: a number or an optax schedule) on
    `algorithm`'s gradients (None: `jax.grad`), minibatches in `order` (epochs x batches x
    examples). The step is compiled before the timed epochs. Stops
    at the first non-finite loss or gradient, recording the epoch as `diverged_at`.

    Returns the test accuracy after each epoch (`test`), the wall time of each epoch's
    training steps (`epoch_seconds`), the compile time and `diverged_at` (None if trained)."""
    x_train, y_train, x_test, y_test = data
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(model)
    first = order[0, 0]
    step, compile_seconds = compiled(
        make_train_step(algorithm, optimizer), model, opt_state, x_train[first], y_train[first]
    )
    result = dict(test=[], epoch_seconds=[], compile_seconds=compile_seconds, diverged_at=None)
    with tqdm(total=order.size // order.shape[-1], desc=desc, unit="step", leave=False) as bar:
        for epoch, batches in enumerate(order, start=1):
            start = time.perf_counter()
            for idx in batches:
                model, opt_state, loss, finite = step(model, opt_state, x_train[idx], y_train[idx])
                bar.update()
                if not bool(finite):
                    result["diverged_at"] = epoch
                    break
            result["epoch_seconds"].append(time.perf_counter() - start)
            if result["diverged_at"] is not None:
                break
            result["test"].append(float(accuracy(model, x_test, y_test)))
            bar.set_postfix(loss=f"{float(loss):.3g}", test=f"{result['test'][-1]:.3f}")
    return result


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds: split, init, order"
    )
    parser.add_argument("--quick", action="store_true", help="the first seed only (~2 min)")
    args = parser.parse_args()
    epochs, seeds = args.epochs, (args.seeds[:1] if args.quick else args.seeds)

    data = load_data(seeds[0])
    x_train, y_train = data[0][:COSINE_EXAMPLES], data[1][:COSINE_EXAMPLES]
    model = PlainMLP(COSINE_DEPTH, WIDTH, x_train.shape[1], 10, key=jax.random.PRNGKey(seeds[0]))
    print(
        f"{COSINE_DEPTH}-hidden-layer tanh MLP (width {WIDTH}, standard parameterisation), "
        f"{COSINE_EXAMPLES} digits: cosine of each weight gradient with jax.grad's after T = "
        f"{STEPS} Euler steps of {STEP_SIZE}"
    )
    cosines = {
        name: layer_cosines(model, x_train, y_train, relaxation(name)) for name in ("IL", "ePC")
    }
    for name, values in cosines.items():
        shown = " ".join(f"{c:.2f}" for c in values)
        print(f"  {name:>3}, layers 1 to {len(values)}: {shown}")
    print(
        f"first layer: IL {cosines['IL'][0]:.3f}, ePC {cosines['ePC'][0]:.3f}; "
        f"readout: IL {cosines['IL'][-1]:.3f}, ePC {cosines['ePC'][-1]:.3f}"
    )

    print(
        f"\nTraining {TRAIN_DEPTH}-hidden-layer tanh MLPs: batch 64, Adam with a cosine decay "
        f"from {LEARNING_RATE}, {epochs} epochs, IL and ePC with T = {STEPS}; seeds {seeds}"
    )
    finals = {name: [] for name in ("backprop", "IL", "ePC")}
    for seed in seeds:
        data = load_data(seed)
        order = batch_order(len(data[0]), epochs, seed, BATCH_SIZE)
        schedule = optax.cosine_decay_schedule(LEARNING_RATE, order.shape[0] * order.shape[1])
        model = PlainMLP(TRAIN_DEPTH, WIDTH, data[0].shape[1], 10, key=jax.random.PRNGKey(seed))
        for name in finals:
            result = train(model, relaxation(name), data, order, f"{name}, seed {seed}", schedule)
            final = np.nan if result["diverged_at"] is not None else result["test"][-1]
            finals[name].append(final)
            status = "diverged" if np.isnan(final) else f"{final:.4f}"
            print(
                f"  seed {seed}, {name:>8}: test accuracy {status}, "
                f"{np.median(result['epoch_seconds'][1:] or result['epoch_seconds']):.2f} s/epoch"
            )
    mean = {name: float(np.mean(values)) for name, values in finals.items()}
    print(
        f"test accuracy (mean over {len(seeds)} seed(s)): backprop {mean['backprop']:.4f}, "
        f"IL {mean['IL']:.4f}, ePC {mean['ePC']:.4f}"
    )


if __name__ == "__main__":
    main()
