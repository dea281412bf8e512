"""Train an LSTM on the adding problem with backprop and with predictive coding.

The adding problem (Hochreiter & Schmidhuber 1997) is generated here: each sequence has
LENGTH steps of two inputs, a random number in [0, 1) and a marker that is 1 at exactly two
random positions (one in each half) and 0 elsewhere; the target is the sum of the two marked
numbers. Predicting the mean (1.0) gives a mean squared error of 1/6 ~ 0.167; solving it needs
the LSTM to remember the first marked number across the sequence.

The model is `eqx.nn.LSTMCell` run over time with `jax.lax.scan`, plus a linear readout of the
last hidden state (many-to-one). pcgraph lifts the scan: the hidden and cell states become two
value nodes stacked over the LENGTH time steps, whose predictions are evaluated for all time
steps at once. The compiled program does not grow with the sequence length; the relaxation
needs one step per time step for the error to travel back along the sequence (`graph.depth`).

Two runs from the same initialisation, the same batches and the same optimiser (Adam,
its learning rate decaying from LEARNING_RATE to 0 on a cosine schedule), differing only in
the gradient function: `eqx.filter_value_and_grad` (backprop) and
`pcgraph.filter_value_and_grad` (PC under the fixed-prediction assumption, exact after
`graph.depth` steps). The PC run also records, every step, how far its gradient is from
`jax.grad`'s at the same parameters.

Run:  pip install -e ".[examples]" && python examples/lstm_sequence.py [--steps 1500]
      (--quick: 100 steps, for a smoke test)
"""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import command_line, save, train_each

import pcgraph

LENGTH = 20
HIDDEN = 32
BATCH_SIZE = 64
LEARNING_RATE = 1e-2
EVAL_EVERY = 50
FIGURE = pathlib.Path(__file__).parent / "figures" / "lstm_sequence.png"


def adding_problem(key, num_sequences: int, length: int = LENGTH):
    """Inputs of shape (num_sequences, length, 2) and targets of shape (num_sequences,)."""
    k_values, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_values, (num_sequences, length))
    first = jax.random.randint(k_first, (num_sequences,), 0, length // 2)
    second = jax.random.randint(k_second, (num_sequences,), length // 2, length)
    positions = jnp.arange(length)
    markers = (positions == first[:, None]) | (positions == second[:, None])
    inputs = jnp.stack([values, markers.astype(values.dtype)], axis=-1)
    return inputs, jnp.sum(values * markers, axis=-1)


class LSTMRegressor(eqx.Module):
    cell: eqx.nn.LSTMCell
    readout: eqx.nn.Linear

    def __init__(self, key):
        k_cell, k_readout = jax.random.split(key)
        self.cell = eqx.nn.LSTMCell(2, HIDDEN, key=k_cell)
        self.readout = eqx.nn.Linear(HIDDEN, 1, key=k_readout)

    def __call__(self, sequence):
        def step(state, x):
            return self.cell(x, state), None

        zeros = jnp.zeros(HIDDEN)
        (hidden, _), _ = jax.lax.scan(step, (zeros, zeros), sequence)
        return self.readout(hidden)[0]


def loss_fn(model, inputs, targets):
    return jnp.mean((jax.vmap(model)(inputs) - targets) ** 2)


def plot(results, path: pathlib.Path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, history), style in zip(results.items(), ("o-", "x--"), strict=True):
        left.semilogy(history["step"], history["test"], style, ms=4, label=name)
    left.axhline(1 / 6, color="grey", ls=":", label="predict the mean (1/6)")
    left.set(
        xlabel="training step",
        ylabel="test mean squared error",
        title=f"LSTM ({HIDDEN} units) on the adding problem, length {LENGTH}",
    )
    left.grid(alpha=0.3, which="both")
    left.legend()
    right.semilogy(results["PC (FPA)"]["rel_error"], lw=0.8, color="C1")
    right.set(
        xlabel="training step",
        ylabel="||g_PC - g_backprop|| / ||g_backprop||",
        title="PC (FPA) gradient vs backprop's, at PC's own parameters",
    )
    right.grid(alpha=0.3, which="both")
    save(figure, path)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and batches")
    parser.add_argument("--quick", action="store_true", help="100 steps: a smoke test")
    args = parser.parse_args()
    steps = 100 if args.quick else args.steps

    k_model, k_train, k_test = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    inputs, targets = adding_problem(k_train, steps * BATCH_SIZE)
    batches = list(
        zip(
            np.asarray(inputs).reshape(steps, BATCH_SIZE, LENGTH, 2),
            np.asarray(targets).reshape(steps, BATCH_SIZE),
        )
    )
    test = adding_problem(k_test, 1000)
    model = LSTMRegressor(k_model)
    diff, rest = eqx.partition(model, eqx.is_inexact_array)
    graph = pcgraph.trace(lambda d: loss_fn(eqx.combine(d, rest), *batches[0]), diff)
    print(graph)

    # Adam, its learning rate decaying from LEARNING_RATE to 0 over the run.
    optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, steps))
    test_mse = eqx.filter_jit(loss_fn)
    runs = {
        "backprop": (eqx.filter_value_and_grad(loss_fn), False),
        "PC (FPA)": (pcgraph.filter_value_and_grad(loss_fn), True),
    }

    def evaluate(model):
        return {"test": test_mse(model, *test)}

    results = train_each(
        runs, loss_fn, model, optimizer, batches, evaluate=evaluate, every=EVAL_EVERY, first=True
    )
    plot(results, FIGURE)

    print(
        f"\n{'method':<9}  {'test MSE':>9}  {'best':>9}  {'rel. error (max)':>16}  {'time (s)':>8}"
    )
    for name, h in results.items():
        rel = f"{max(h['rel_error']):.2e}" if name != "backprop" else "-"
        print(
            f"{name:<9}  {h['test'][-1]:>9.5f}  {min(h['test']):>9.5f}  {rel:>16}  "
            f"{h['seconds']:>8.1f}"
        )
    print(f"(predicting the mean gives 1/6 = 0.16667; graph depth {graph.depth})")
    print(f"saved {FIGURE}")


if __name__ == "__main__":
    main()
