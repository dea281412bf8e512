"""Depth study: backprop, IL and ePC on residual networks of 8 to 128 hidden layers.

ReLU and tanh `pcgraph.nn.ResidualMLP`s of width 128, in the standard (`nn.Standard()`) and
the muPC (`nn.MuPC()`, Innocenti et al. 2025) parameterisation, are trained on scikit-learn's
digits (standardised per pixel, stratified 80/20 split) with three gradients:

- backprop, `jax.grad`;
- IL (Whittington & Bogacz 2017), `pcgraph.IL(beta=1, stepper=pcgraph.Euler(0.1),
  max_steps=T)`: T Euler steps of the node values from the feedforward pass;
- ePC (Goemaere et al. 2025), `pcgraph.EPC(beta=1, stepper=pcgraph.Euler(0.1),
  max_steps=T)`: T Euler steps of the node errors from the feedforward pass;

at two relaxation budgets, T = 8 and T = depth. "ePC + muPC" is the ePC row of the muPC
network. Every run of one parameterisation uses the same initialisation, minibatch order
(batch 64), loss (mean softmax cross-entropy) and optimiser: Adam, with the learning rate that
suits the parameterisation's weight scale (SP 1e-3, muPC 1e-2: muPC's weights are N(0, 1), a
hundred times SP's at width 128), for the same number of epochs. A run whose loss or gradient
turns non-finite stops there and is reported as diverged, without an accuracy.

The columns: the final test accuracy; the median wall time of a training epoch after the
first (the step is compiled beforehand; compile time separately), and its ratio to backprop's
epoch of the same network, measured in the same run; and the cosine between each weight
matrix's gradient and `jax.grad`'s at initialisation, on 128 training digits, for the first
matrix, the middle one and the readout (the full per-layer curves go to the JSON dump and the
figure `docs/figures/depth_cosine.png`; final accuracies against depth to
`docs/figures/depth_accuracy.png`). The model and training code are `examples/deep_pc.py`'s.

Timings are wall-clock on whatever else the machine runs, so they are noisy; the ratios to
backprop come from epochs measured minutes apart.

Run `python benchmarks/depth.py --help` for the options; `--quick` is a subset (tanh, depths
8 and 32, 2 epochs; about 5 minutes on 2 CPU cores). The full run (3 depths, 2 activations,
2 epochs) takes about 40 minutes on 2 CPU cores.
"""

import argparse
import json
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import pcgraph
from pcgraph.nn import MuPC, ResidualMLP, Standard

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from deep_mupc import batch_order, load_data  # noqa: E402
from deep_pc import COSINE_EXAMPLES, STEPS, layer_cosines, relaxation, train  # noqa: E402

WIDTH = 128
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}
PARAMETERISATIONS = {"SP": Standard(), "muPC": MuPC()}
LEARNING_RATES = {"SP": 1e-3, "muPC": 1e-2}  # Adam, per parameterisation
FIGURES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "figures"


def budgets(depth: int) -> list[int]:
    """The relaxation budgets compared: T = 8 and T = depth (once when they coincide)."""
    return sorted({STEPS, depth})


def run_network(activation, parameterisation, depth, data, order, seed) -> list[dict]:
    """Every gradient on one network: its per-layer cosines at initialisation and its
    training run. Returns one record per (method, T)."""
    model = ResidualMLP(
        depth, WIDTH, data[0].shape[1], 10, activation=ACTIVATIONS[activation],
        parameterisation=PARAMETERISATIONS[parameterisation], key=jax.random.PRNGKey(seed),
    )  # fmt: skip
    x, labels = data[0][:COSINE_EXAMPLES], data[1][:COSINE_EXAMPLES]
    network = dict(activation=activation, parameterisation=parameterisation, depth=depth)
    runs = [("backprop", None)] + [(m, t) for t in budgets(depth) for m in ("IL", "ePC")]
    records = []
    for method, steps in runs:
        algorithm = relaxation(method) if steps is None else relaxation(method, steps)
        cosines = (
            np.ones(depth + 1) if algorithm is None else layer_cosines(model, x, labels, algorithm)
        )
        label = f"{activation} {parameterisation} {depth}: {method}" + (
            f" T={steps}" if steps else ""
        )
        result = train(
            model, algorithm, data, order, label, learning_rate=LEARNING_RATES[parameterisation]
        )
        times = result["epoch_seconds"]
        records.append(
            dict(
                network,
                method=method,
                steps=steps,
                test_accuracy=None if result["diverged_at"] else result["test"][-1],
                test_history=result["test"],
                diverged_at=result["diverged_at"],
                epoch_seconds=float(np.median(times[1:] if len(times) > 1 else times)),
                compile_seconds=result["compile_seconds"],
                cosines=[float(c) for c in cosines],
            )
        )
        print(f"done: {label}", file=sys.stderr, flush=True)
    backprop = records[0]["epoch_seconds"]
    for record in records:
        record["time_ratio"] = record["epoch_seconds"] / backprop
    return records


def _cell(value, fmt: str) -> str:
    return "NaN" if value is None or not np.isfinite(value) else format(value, fmt)


def markdown_table(records: list[dict]) -> str:
    """One row per run."""
    lines = [
        "| activation | param. | depth | method | T | test acc. | s / epoch | x backprop "
        "| compile (s) | cos first | cos middle | cos last |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        accuracy = (
            f"diverged (epoch {r['diverged_at']})"
            if r["diverged_at"]
            else f"{100 * r['test_accuracy']:.1f}%"
        )
        cos = r["cosines"]
        first, middle, last = (
            ("–",) * 3
            if r["method"] == "backprop"
            else (_cell(cos[0], ".3f"), _cell(cos[len(cos) // 2], ".3f"), _cell(cos[-1], ".3f"))
        )
        lines.append(
            f"| {r['activation']} | {r['parameterisation']} | {r['depth']} | {r['method']} | "
            f"{r['steps'] or '–'} | {accuracy} | {r['epoch_seconds']:.2f} | "
            f"{r['time_ratio']:.1f} | {r['compile_seconds']:.1f} | {first} | {middle} | {last} |"
        )
    return "\n".join(lines)


def plot_cosines(records: list[dict], path: pathlib.Path):
    """Per-layer cosine against layer index, IL and ePC with T = 8, at the largest depth."""
    depth = max(r["depth"] for r in records)
    activations = sorted({r["activation"] for r in records})
    figure, axes = plt.subplots(
        1, len(activations), figsize=(6.5 * len(activations), 4.2), squeeze=False
    )
    styles = {"IL": "--", "ePC": "-"}
    colors = {"SP": "C3", "muPC": "C0"}
    for axis, activation in zip(axes[0], activations):
        for r in records:
            if (r["activation"], r["depth"], r["steps"]) != (activation, depth, STEPS):
                continue
            layers = np.arange(1, len(r["cosines"]) + 1)
            axis.plot(
                layers, r["cosines"], styles[r["method"]], color=colors[r["parameterisation"]],
                label=f"{r['method']}, {r['parameterisation']}",
            )  # fmt: skip
        axis.set(
            xlabel="weight matrix (1 = input layer, last = readout)",
            ylabel="cosine with jax.grad",
            ylim=(-0.05, 1.05),
            title=f"{activation} ResidualMLP, {depth} hidden layers, T = {STEPS}",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_accuracies(records: list[dict], path: pathlib.Path):
    """Final test accuracy against depth, per activation and parameterisation."""
    panels = sorted({(r["activation"], r["parameterisation"]) for r in records})
    depths = sorted({r["depth"] for r in records})
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for axis, (activation, parameterisation) in zip(axes[0], panels):
        lines = {}
        for r in records:
            if (r["activation"], r["parameterisation"]) != (activation, parameterisation):
                continue
            accuracy = np.nan if r["test_accuracy"] is None else r["test_accuracy"]
            budgets_met = [""] if r["steps"] is None else []
            budgets_met += [" T=8"] if r["steps"] == STEPS else []
            budgets_met += [" T=depth"] if r["steps"] == r["depth"] else []
            for budget in budgets_met:
                lines.setdefault(r["method"] + budget, {})[r["depth"]] = accuracy
        for label, by_depth in sorted(lines.items()):
            xs = sorted(by_depth)
            axis.plot(
                xs, [by_depth[d] for d in xs], "s:" if "depth" in label else "o-", label=label
            )
        axis.set(
            xscale="log", xticks=depths, xticklabels=depths, ylim=(0, 1),
            xlabel="hidden layers", title=f"{activation}, {parameterisation}",
        )  # fmt: skip
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy (diverged: not drawn)")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tanh, depths 8 and 32, 2 epochs")
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS))
    parser.add_argument("--seed", type=int, default=0, help="split, init and minibatch order")
    parser.add_argument(
        "--out", type=pathlib.Path, help="write the records (.json) and table (.md)"
    )
    parser.add_argument("--figures", type=pathlib.Path, default=FIGURES, help="figure folder")
    args = parser.parse_args()
    depths, activations = ([8, 32], ["tanh"]) if args.quick else (args.depths, args.activations)

    data = load_data(args.seed)
    order = batch_order(len(data[0]), args.epochs, args.seed)
    print(
        f"python {platform.python_version()}, jax {jax.__version__}, pcgraph "
        f"{pcgraph.__version__}, {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); "
        f"digits {len(data[0])} train / {len(data[2])} test; width {WIDTH}, batch "
        f"{order.shape[-1]}, {args.epochs} epoch(s), seed {args.seed}, Adam {LEARNING_RATES}; "
        f"IL/ePC: Euler(0.1), beta 1, T in {{{STEPS}, depth}}"
    )
    records = []
    for activation in activations:
        for depth in depths:
            for parameterisation in PARAMETERISATIONS:
                records += run_network(activation, parameterisation, depth, data, order, args.seed)
                if args.out is not None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    table = markdown_table(records)
    print(table)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(table + "\n")
    args.figures.mkdir(parents=True, exist_ok=True)
    plot_cosines(records, args.figures / "depth_cosine.png")
    plot_accuracies(records, args.figures / "depth_accuracy.png")
    print(f"figures: {args.figures / 'depth_cosine.png'}, {args.figures / 'depth_accuracy.png'}")


if __name__ == "__main__":
    main()
