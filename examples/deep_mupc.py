"""Train 8-, 32- and 128-layer ReLU residual networks on digits with predictive coding (IL),
in the muPC and the standard parameterisation.

The networks are `pcgraph.nn.ResidualMLP`s (width 128, no biases, as in Innocenti et al. 2025):

    z_1 = a_1 W_1 x,   z_l = z_{l-1} + a_l W_l relu(z_{l-1}),   y = a_L W_L relu(z_{L-1}),

with muPC's a_1 = 1/sqrt(D), a_l = 1/sqrt(N L), a_L = 1/N and W ~ N(0, 1), or SP's
W ~ N(0, 1/fan_in) and a = 1. Every hidden state z_l is a pcgraph value node, so IL relaxes
the layered PC network with energy sum_l 1/2 ||z_l - mu_l||^2 + beta * loss, the loss being
the batch mean of 1/2 ||y - onehot||^2.

Settings (those of Innocenti et al. 2025's reference): batch 64, T = number of hidden layers Euler
steps of 0.5 on the batch-mean energy, Adam 0.1 on the weights. The batch-mean energy of other PC
libraries, (1/B) sum_i [sum_l 1/2 ||eps_il||^2 + 1/2 ||y_i - out_i||^2], is 1/B times pcgraph's
energy with beta = B and a batch-mean loss, so the same dynamics are
`pcgraph.IL(beta=B, stepper=pcgraph.Euler(0.5 / B), max_steps=T)`, and IL's gradient (divided
by beta) is the gradient of the batch-mean energy (tests/test_mupc.py checks this equivalence
against a hand-written layered PC network). Inputs are standardised with the training set's
per-pixel mean and standard deviation.

The table reports, per run, how many hidden layers (from the top) the errors reached in the
last relaxation ("layers reached": RMS error at least 1e-3 of the top layer's) and how many
weight matrices moved by more than 1% over training ("W_l moved"); a control trains only the
readout of the muPC network, its hidden weights frozen at initialisation. The script also
prints the condition number of the activity Hessian (the curvature of the energy that
inference descends) at initialisation, for width 16 and one digit, with the identity chain's
value for reference (see docs/deep-pc.md).

Run:  pip install -e ".[examples]" && python examples/deep_mupc.py [--epochs 8] [--seed 0]
      (--quick: 4 and 8 hidden layers, width 32, 1 epoch: a smoke test)
"""

import math
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import batch_order, command_line, compiled, digits, save
from tqdm import tqdm

import pcgraph
from pcgraph.nn import MuPC, ResidualMLP, Standard
from pcgraph.theory import activity_hessian

BATCH_SIZE = 64
STEP_SIZE = 0.5  # Euler step on the batch-mean energy
LEARNING_RATE = 0.1  # Adam, on the weights
TARGET = 0.95  # test accuracy whose first arrival is timed
REACH_FRACTION = 1e-3  # an error this much smaller than the top layer's counts as not arrived
MOVED_FRACTION = 1e-2  # a weight matrix counts as trained once it moved this far (relative)
HESSIAN_WIDTH = 16  # the dense activity Hessian has (depth * width)^2 entries
FIGURE = pathlib.Path(__file__).parent / "figures" / "deep_mupc.png"
PARAMETERISATIONS = {MuPC(): "muPC", Standard(): "SP"}  # the runs, and their labels


def load_data(seed: int):
    """sklearn's bundled 8x8 digits, standardised per pixel, stratified 80/20 split."""
    x_train, x_test, y_train, y_test = digits(seed, scale=1.0)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant border pixels stay at zero
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def mse(model, x, y):
    """The batch mean of 1/2 ||y_i - model(x_i)||^2."""
    return 0.5 * jnp.mean(jnp.sum((model(x) - y) ** 2, axis=-1))


def make_train_step(algorithm, optimizer):
    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        solution = pcgraph.relax(mse, model, x, y, algorithm=algorithm)
        updates, opt_state = optimizer.update(solution.grads, opt_state, model)
        model = eqx.apply_updates(model, updates)
        # How far the errors reached: the hidden layers, counted down from the top, whose RMS
        # error is at least REACH_FRACTION of the top one's (below, float32 round-off rules).
        depth = len(solution.errors)
        rms = jnp.stack(
            [jnp.sqrt(jnp.mean(solution.errors[f"z{k}"] ** 2)) for k in range(depth, 0, -1)]
        )
        below = rms <= REACH_FRACTION * rms[0]
        reach = jnp.where(jnp.any(below), jnp.argmax(below), depth)
        healthy = jnp.isfinite(solution.value) & solution.stats.converged
        return model, opt_state, solution.value, healthy, reach

    return train_step


@eqx.filter_jit
def accuracy(model, x, labels):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == labels)


def train(parameterisation, depth, width, data, order, seed):
    """Train one network; stops early if it diverges (non-finite loss or relaxation)."""
    x_train, y_train, x_test, y_test = data
    model = ResidualMLP(
        depth, width, x_train.shape[1], 10, parameterisation=parameterisation,
        key=jax.random.PRNGKey(seed),
    )  # fmt: skip
    algorithm = pcgraph.IL(
        beta=float(BATCH_SIZE),
        stepper=pcgraph.Euler(STEP_SIZE / BATCH_SIZE),
        max_steps=depth,
        throw=False,
    )
    initial_weights = model.weights
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(model)
    targets = np.eye(10, dtype=np.float32)[y_train]

    first = order[0, 0]
    train_step, compile_time = compiled(
        make_train_step(algorithm, optimizer), model, opt_state, x_train[first], targets[first]
    )

    history = {"test": [], "wall": [], "cpu": []}
    diverged_at, reach = None, 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    name = f"{PARAMETERISATIONS[parameterisation]:>4}, {depth:>3} layers"
    with tqdm(total=order.shape[0] * order.shape[1], desc=name, unit="step", leave=False) as bar:
        for epoch, batches in enumerate(order):
            for idx in batches:
                model, opt_state, loss, healthy, step_reach = train_step(
                    model, opt_state, x_train[idx], targets[idx]
                )
                bar.update()
                if not bool(healthy):
                    diverged_at = epoch + 1
                    break
                reach = int(step_reach)
            history["test"].append(float(accuracy(model, x_test, y_test)))
            history["wall"].append(time.perf_counter() - wall0)
            history["cpu"].append(time.process_time() - cpu0)
            bar.set_postfix(loss=f"{float(loss):.3g}", test=f"{history['test'][-1]:.3f}")
            if diverged_at is not None:
                break
    reached = [k for k, acc in enumerate(history["test"]) if acc >= TARGET]
    moved = sum(
        float(jnp.linalg.norm(w - w0) / jnp.linalg.norm(w0)) > MOVED_FRACTION
        for w, w0 in zip(model.weights, initial_weights)
    )
    return dict(
        moved=moved,
        history=history,
        compile_time=compile_time,
        diverged_at=diverged_at,
        reach=reach,
        target_epoch=reached[0] + 1 if reached else None,
        target_wall=history["wall"][reached[0]] if reached else None,
    )


def train_readout(depth, width, data, order, seed):
    """Control: the muPC network with its hidden weights frozen at initialisation and only the
    readout W_L trained (Adam, exact gradient). If PC trained the hidden layers, it beats this.
    Returns the test accuracy after each epoch."""
    x_train, y_train, x_test, y_test = data
    model = ResidualMLP(
        depth, width, x_train.shape[1], 10, key=jax.random.PRNGKey(seed), mark_nodes=False
    )
    scale, readout = model.scalings[-1], model.weights[-1]
    features_train, features_test = (
        jax.nn.relu(model.hidden_states(x)[-1]) for x in (x_train, x_test)
    )
    targets = np.eye(10, dtype=np.float32)[y_train]
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(readout)

    def loss(readout, features, y):
        return 0.5 * jnp.mean(jnp.sum((scale * features @ readout.T - y) ** 2, axis=-1))

    @jax.jit
    def step(readout, opt_state, features, y):
        updates, opt_state = optimizer.update(jax.grad(loss)(readout, features, y), opt_state)
        return optax.apply_updates(readout, updates), opt_state

    history = []
    for batches in order:
        for idx in batches:
            readout, opt_state = step(readout, opt_state, features_train[idx], targets[idx])
        predictions = jnp.argmax(features_test @ readout.T, axis=-1)
        history.append(float(jnp.mean(predictions == y_test)))
    return history


def identity_chain_condition(depth: int) -> float:
    """The activity-Hessian condition number of a bare identity chain z_l = z_{l-1}: the floor
    of every residual network (eigenvalues 2 - 2 cos((2k - 1) pi / (2H + 1)))."""
    angle = math.pi / (2 * depth + 1)
    return (math.sin((2 * depth - 1) * angle / 2) / math.sin(angle / 2)) ** 2


def condition_numbers(depths, x, label, seed):
    """Activity-Hessian condition numbers at initialisation, width HESSIAN_WIDTH, one digit,
    float64 (the SP ones exceed float32's range of resolvable eigenvalues)."""

    def loss(model, x, y):
        return 0.5 * jnp.sum((model(x) - y) ** 2)

    table = {}
    with jax.enable_x64(True):
        x = jnp.asarray(x[None], jnp.float64)
        y = jax.nn.one_hot(jnp.asarray([label]), 10, dtype=jnp.float64)
        for depth in tqdm(depths, desc="activity Hessians", leave=False):
            for parameterisation in PARAMETERISATIONS:
                model = ResidualMLP(
                    depth, HESSIAN_WIDTH, x.shape[1], 10, parameterisation=parameterisation,
                    key=jax.random.PRNGKey(seed), dtype=jnp.float64,
                )  # fmt: skip
                hessian = activity_hessian(loss, model, x, y)
                table[parameterisation, depth] = float(hessian.condition_number)
    return table


def plot(results, readouts, conditions, depths, path: pathlib.Path):
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {MuPC(): "C0", Standard(): "C3"}
    for parameterisation, label in PARAMETERISATIONS.items():
        final = [results[parameterisation, d]["history"]["test"][-1] for d in depths]
        axes[0].plot(depths, final, "o-", color=colors[parameterisation], label=f"{label}, IL")
        for depth, style in zip(depths, ("-", "--", ":")):
            result = results[parameterisation, depth]
            diverged = result["diverged_at"] is not None
            axes[1].plot(
                np.arange(1, len(result["history"]["test"]) + 1),
                result["history"]["test"],
                style,
                marker="x" if diverged else ".",
                color=colors[parameterisation],
                label=f"{label}, {depth} layers" + (" (diverged)" if diverged else ""),
            )
        kappa = [conditions[parameterisation, d] for d in depths]
        axes[2].plot(depths, kappa, "o-", color=colors[parameterisation], label=label)
    axes[0].plot(
        depths, [readouts[d][-1] for d in depths], "s--", color="grey",
        label="muPC, readout only (control)",
    )  # fmt: skip
    axes[2].plot(
        depths, [identity_chain_condition(d) for d in depths], "k--", label="identity chain"
    )
    axes[0].axhline(0.1, color="grey", lw=0.8, ls=":", label="chance")
    axes[0].set(
        xscale="log", xticks=depths, xticklabels=depths, ylim=(0, 1),
        xlabel="hidden layers", ylabel="final test accuracy",
        title="ReLU ResNets (width 128) on digits, IL",
    )  # fmt: skip
    axes[1].set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="test accuracy")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[2].set(
        xscale="log", yscale="log", xticks=depths, xticklabels=depths,
        xlabel="hidden layers", ylabel="condition number",
        title=f"activity Hessian at init (width {HESSIAN_WIDTH})",
    )  # fmt: skip
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save(figure, path, dpi=110)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init, order")
    parser.add_argument("--quick", action="store_true", help="a smoke test (< 1 minute)")
    args = parser.parse_args()
    depths, width, epochs = ((4, 8), 32, 1) if args.quick else ((8, 32, 128), 128, args.epochs)

    data = load_data(args.seed)
    x_train, y_train, x_test, y_test = data
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test examples; width {width}, batch "
        f"{BATCH_SIZE}, T = depth Euler steps of {STEP_SIZE} (batch-mean energy), "
        f"Adam {LEARNING_RATE}, {epochs} epoch(s)"
    )
    conditions = condition_numbers(depths, x_train[0], int(y_train[0]), args.seed)
    order = batch_order(len(x_train), epochs, args.seed, BATCH_SIZE)
    results = {
        (parameterisation, depth): train(parameterisation, depth, width, data, order, args.seed)
        for depth in depths
        for parameterisation in PARAMETERISATIONS
    }
    readouts = {depth: train_readout(depth, width, data, order, args.seed) for depth in depths}
    plot(results, readouts, conditions, depths, FIGURE)

    print(
        f"\n{'model':<16} {'test acc':>8} {'best':>6} {'status':>16} "
        f"{f'>= {TARGET:.0%} at':>18} {'train wall (s)':>14} {'train CPU (s)':>13} "
        f"{'compile (s)':>11} {'layers reached':>14} {'W_l moved':>9}"
    )
    for (parameterisation, depth), r in results.items():
        history = r["history"]
        status = "trained" if r["diverged_at"] is None else f"diverged, epoch {r['diverged_at']}"
        target = (
            f"epoch {r['target_epoch']}, {r['target_wall']:.0f} s"
            if r["target_epoch"] is not None
            else "never"
        )
        moved = f"{r['moved']}/{depth + 1}"
        print(
            f"{PARAMETERISATIONS[parameterisation] + f', {depth} layers':<16} "
            f"{history['test'][-1]:>8.2%} {max(history['test']):>6.1%} {status:>16} "
            f"{target:>18} {history['wall'][-1]:>14.1f} {history['cpu'][-1]:>13.1f} "
            f"{r['compile_time']:>11.1f} {r['reach']:>14} {moved:>9}"
        )
    for depth in depths:
        final, best = readouts[depth][-1], max(readouts[depth])
        print(f"{f'readout only, {depth}':<16} {final:>8.2%} {best:>6.1%}")
    print(
        f"\nActivity-Hessian condition number at initialisation (width {HESSIAN_WIDTH}, one "
        "digit, float64):"
    )
    print(f"{'hidden layers':>13} {'SP':>10} {'muPC':>10} {'identity chain':>15}")
    for depth in depths:
        print(
            f"{depth:>13} {conditions[Standard(), depth]:>10.3g} "
            f"{conditions[MuPC(), depth]:>10.3g} "
            f"{identity_chain_condition(depth):>15.3g}"
        )
    print(f"\nfigure: {FIGURE}")


if __name__ == "__main__":
    main()
