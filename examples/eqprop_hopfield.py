"""Train a continuous Hopfield network on digits with equilibrium propagation.

The network is the classical setting of equilibrium propagation (Scellier & Bengio 2017): an
input layer clamped to the 8x8 image, a hidden layer of 256 units and an output layer of 10
units, connected by symmetric weights, with energy

    E(s) = 1/2 sum_l ||s_l||^2 - sum_l rho(s_{l-1}) W_l rho(s_l) - sum_l b_l . rho(s_l),

hard-sigmoid units rho(s) = clip(s, 0, 1), and the cost C = 1/2 ||s_out - y||^2 against the
one-hot label. There is no forward pass: the prediction is the output layer at the minimum of
the energy (the free phase). `pcgraph.ebm_relax` relaxes the free phase, then the nudged phases
E + beta * C (and E - beta * C with symmetric nudging), and returns EqProp's estimate of the
gradient of the cost at the free equilibrium; an optax (Adam) step applies it.

Two runs from the same initialisation and minibatch order:

- EqProp (one-sided):  nudged phase at +beta; gradient error O(beta);
- EqProp (symmetric):  nudged phases at +beta and -beta; gradient error O(beta^2).

Every phase relaxes to pcgraph's default tolerance, a fraction of the force of the nudge (a
relaxation that misses it raises rather than return an unconverged gradient); the table
reports the steps this took per update and the largest force left after the free phase.

Run:  pip install -e ".[examples]" && python examples/eqprop_hopfield.py [--epochs 20] [--seed 0]
      (--quick: 3 epochs, for a smoke test)
"""

import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import batch_order, command_line, compiled, digits, save
from tqdm import tqdm

import pcgraph

LAYER_SIZES = (64, 256, 10)  # 8x8 pixels -> 256 hidden units -> 10 output units
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
BETA = 0.5  # the nudge each example feels (the Hopfield cost is summed over the batch)
STEP_SIZE = 0.5  # Euler steps of at most 1 keep every unit in [0, 1]
FIGURE = pathlib.Path(__file__).parent / "figures" / "eqprop_hopfield.png"


def make_train_step(model, algorithm, optimizer):
    """One jit-compiled update: relax the phases, then apply the EqProp gradient with optax."""

    @jax.jit
    def train_step(params, opt_state, x, labels):
        solution = pcgraph.ebm_relax(
            model, params, x, jax.nn.one_hot(labels, 10), algorithm=algorithm
        )
        # The cost is summed over the batch; average the gradient over the examples.
        grads = jax.tree.map(lambda g: g / x.shape[0], solution.grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        correct = jnp.sum(jnp.argmax(solution.state[-1], axis=-1) == labels)
        steps = solution.stats.total_steps
        return optax.apply_updates(params, updates), opt_state, correct, steps

    return train_step


def make_evaluate(model, algorithm):
    """Accuracy of the free equilibrium's output layer, and the free phase's residual force."""

    @jax.jit
    def evaluate(params, x, labels):
        targets = jax.nn.one_hot(labels, 10)
        solution = pcgraph.ebm_relax(model, params, x, targets, algorithm=algorithm)
        accuracy = jnp.mean(jnp.argmax(solution.state[-1], axis=-1) == labels)
        return accuracy, solution.stats.phases[0].residual

    return evaluate


def train(name, model, algorithm, params, data, order):
    """Train from `params`; returns per-epoch train/test accuracy, the last residual, the mean
    relaxation steps per update, times."""
    x_train, y_train, x_test, y_test = data
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    first = order[0, 0]
    train_step, compile_train = compiled(
        make_train_step(model, algorithm, optimizer), params, opt_state, x_train[first],
        y_train[first],
    )  # fmt: skip
    evaluate, compile_evaluate = compiled(make_evaluate(model, algorithm), params, x_test, y_test)

    history = {"train": [], "test": []}
    steps = []
    start = time.perf_counter()
    with tqdm(order, desc=f"{name:<20}", unit="epoch") as bar:
        for epoch_batches in bar:
            correct = 0
            for idx in epoch_batches:
                params, opt_state, batch_correct, batch_steps = train_step(
                    params, opt_state, x_train[idx], y_train[idx]
                )
                correct += int(batch_correct)
                steps.append(int(batch_steps))
            test_accuracy, residual = evaluate(params, x_test, y_test)
            history["train"].append(correct / epoch_batches.size)
            history["test"].append(float(test_accuracy))
            bar.set_postfix(train=f"{history['train'][-1]:.3f}", test=f"{float(test_accuracy):.3f}")
    return dict(
        history=history,
        residual=float(residual),
        steps=float(np.mean(steps)),
        compile_time=compile_train + compile_evaluate,
        train_time=time.perf_counter() - start,
    )


def plot(results, path: pathlib.Path):
    figure, axis = plt.subplots(figsize=(6, 4))
    for (name, result), color in zip(results.items(), ("C0", "C1"), strict=False):
        epochs = np.arange(1, len(result["history"]["test"]) + 1)
        axis.plot(epochs, result["history"]["test"], "o-", color=color, label=f"{name}: test")
        axis.plot(epochs, result["history"]["train"], "--", color=color, label=f"{name}: train")
    axis.set(
        xlabel="epoch",
        ylabel="accuracy",
        title="Hopfield network 64-256-10 on digits, trained with EqProp",
        ylim=(0.0, 1.0),
    )
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    save(figure, path)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init, order")
    parser.add_argument("--quick", action="store_true", help="3 epochs: a smoke test")
    args = parser.parse_args()
    epochs = 3 if args.quick else args.epochs

    x_train, x_test, y_train, y_test = digits(args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test examples, 64 features, 10 classes")
    model = pcgraph.HopfieldEnergy()
    init = model.init_params(jax.random.PRNGKey(args.seed), LAYER_SIZES)
    order = batch_order(len(x_train), epochs, args.seed, BATCH_SIZE)
    settings = dict(beta=BETA, stepper=pcgraph.Euler(STEP_SIZE))
    algorithms = {
        "EqProp (one-sided)": pcgraph.EqProp(**settings),
        "EqProp (symmetric)": pcgraph.EqProp(symmetric=True, **settings),
    }
    for name, algorithm in algorithms.items():
        print(f"{name}: {algorithm}")

    data = (x_train, y_train, x_test, y_test)
    results = {
        name: train(name, model, algorithm, init, data, order)
        for name, algorithm in algorithms.items()
    }
    plot(results, FIGURE)

    print(
        f"\n{'method':<20}  {'test acc':>8}  {'best test':>9}  {'train acc':>9}  "
        f"{'free residual':>13}  {'steps/update':>12}  {'compile (s)':>11}  {'train (s)':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<20}  {r['history']['test'][-1]:>8.2%}  {max(r['history']['test']):>9.2%}  "
            f"{r['history']['train'][-1]:>9.2%}  {r['residual']:>13.2e}  "
            f"{r['steps']:>12.0f}  {r['compile_time']:>11.2f}  {r['train_time']:>9.2f}"
        )
    print(
        "(train acc: predictions of the free phase before each update, over the last epoch; "
        "free residual: the largest force left after the free phase on the test set; "
        "steps/update: all phases together, averaged over training)"
    )
    print(f"saved {FIGURE}")


if __name__ == "__main__":
    main()
