"""Render the real-data benchmark's results files into the tables of `docs/real-data.md` and
the figures `docs/figures/pc_benchmark_*.png`.

Reads every `pcx_*.json`, `jpc_*.json` and `mupc*.json` under `--results` (files of `--quick`
runs are skipped), and replaces the text between the `<!-- BEGIN name -->` and
`<!-- END name -->` markers of `--doc` (tables `pcx`, `jpc`, `mupc`). Only what was measured
is shown: a configuration without results reads "not run", and every table says how many
seeds and epochs each row has, the command that produced it and the machine.

Run:  python benchmarks/pc_benchmark/render.py
"""

import argparse
import json
import pathlib
import re
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

try:
    from . import common, jpc_anchors, mupc_depth, pcx_protocol
except ImportError:  # run as a script
    import common
    import jpc_anchors
    import mupc_depth
    import pcx_protocol

DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def _load(results: pathlib.Path, pattern: str) -> list[dict]:
    files = sorted(p for p in results.glob(pattern) if not p.stem.endswith("_quick"))
    return [json.loads(p.read_text()) for p in files]


def _mean_std(values) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _machine(meta: dict) -> str:
    m = meta["machine"]
    return f"{m['cpu']}, {m['cores']} cores, JAX {m['jax']} on {m['backend']}"


def _provenance(files) -> str:
    """The commands that wrote `files`, one bullet each, with their machine."""
    lines = []
    for data in files:
        for command in data.get("commands", [data["command"]]):
            line = f"- `{command}` ({_machine(data)})"
            if line not in lines:
                lines.append(line)
    return "Produced by:\n\n" + "\n".join(sorted(lines)) if lines else "No runs yet."


def pcx_rows(results: pathlib.Path):
    """One row per (dataset, config, epochs) with results; 'not run' rows for the rest."""
    files = {
        (d["dataset"], d["config"], d.get("placement", "auto")): d
        for d in _load(results, "pcx_*.json")
    }
    rows = []
    for dataset in ("mnist", "fashion_mnist"):
        for config in pcx_protocol.CONFIGS:
            reported = pcx_protocol.PCX_REPORTED.get((config, dataset))
            for placement in ("auto", "marks"):
                data = files.get((dataset, config, placement))
                if data is None and placement == "marks":
                    continue
                groups = {}
                for run in (data or {"runs": {}})["runs"].values():
                    groups.setdefault(run["epochs"], []).append(run)
                if not groups:
                    rows.append(dict(dataset=dataset, config=config, runs=[], epochs=None,
                                     reported=reported, placement=placement))  # fmt: skip
                for epochs, runs in sorted(groups.items(), reverse=True):
                    rows.append(dict(dataset=dataset, config=config, runs=runs, epochs=epochs,
                                     reported=reported, placement=placement))  # fmt: skip
    return rows, list(files.values())


def _label(row) -> str:
    label = pcx_protocol.LABELS[row["config"]]
    return label + " (marks)" if row["placement"] == "marks" else label


def pcx_table(results: pathlib.Path) -> str:
    rows, files = pcx_rows(results)
    out = [
        "| dataset | config | seeds | epochs | best-epoch test acc. (%) | last-epoch test acc. (%) "
        "| pcx's best run (%) | mean best − pcx | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        best = [max(r["test_acc"]) for r in row["runs"]]
        last = [r["test_acc"][-1] for r in row["runs"]]
        times = [t for r in row["runs"] for t in r["epoch_s"]]
        reported = row["reported"]
        gap = f"{statistics.mean(best) - reported:+.2f}" if best and reported is not None else "–"
        out.append(
            f"| {DATASET_LABELS[row['dataset']]} | {_label(row)} "
            f"| {len(row['runs']) or '–'} | {row['epochs'] or '–'} | {_mean_std(best)} "
            f"| {_mean_std(last)} | {reported if reported is not None else '–'} | {gap} "
            f"| {statistics.median(times):.1f} |"
            if row["runs"]
            else f"| {DATASET_LABELS[row['dataset']]} | {_label(row)} "
            f"| – | – | not run | not run | {reported if reported is not None else '–'} | – | – |"
        )
    out.append("")
    out.append(_provenance(files))
    return "\n".join(out)


def jpc_table(results: pathlib.Path) -> str:
    files = {d["run"]: d for d in _load(results, "jpc_*.json")}
    out = [
        "| run | network | iterations | seeds | pcgraph test acc. (%) | min (%) "
        "| jpc notebook (%) | mean − notebook | train s / run | pcgraph settings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (description, notebook, iterations) in jpc_anchors.ANCHORS.items():
        data = files.get(name)
        runs = list(data["runs"].values()) if data else []
        if not runs:
            out.append(f"| {name} | {description} | {iterations} | – | not run | – "
                       f"| {notebook:.2f} | – | – | – |")  # fmt: skip
            continue
        accs = [r["test_acc"] for r in runs]
        out.append(
            f"| {name} | {description} | {runs[0]['iterations']} | {len(runs)} "
            f"| {_mean_std(accs)} | {min(accs):.2f} | {notebook:.2f} "
            f"| {statistics.mean(accs) - notebook:+.2f} "
            f"| {statistics.median(r['train_s'] for r in runs):.1f} | `{runs[0]['settings']}` |"
        )
    out.append("")
    out.append(_provenance(files.values()))
    return "\n".join(out)


def mupc_table(results: pathlib.Path) -> str:
    files = _load(results, "mupc*.json")
    out = [
        "| algorithm | hidden layers | T | Adam rate | seeds | epochs done / planned "
        "| test acc. after each epoch (%) | last (%) | FabricPC, 3 epochs (%) | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data in files:
        for run in data["runs"].values():
            curve = ", ".join(f"{a:.2f}" for a in run["test_acc"])
            if run.get("diverged_in_epoch"):
                curve += f" (diverged in epoch {run['diverged_in_epoch']})"
            final = f"{run['test_acc'][-1]:.2f}" if run["test_acc"] else "–"
            times = statistics.median(run["epoch_s"]) if run["epoch_s"] else float("nan")
            out.append(
                f"| {data['algorithm']} | {run['depth']} | {run['steps'] or '–'} "
                f"| {run.get('learning_rate', 1e-2):g} | 1 "
                f"| {len(run['test_acc'])} / {run['epochs']} | {curve or '–'} | {final} "
                f"| {mupc_depth.FABRICPC} | {times:.0f} |"
            )
    if not files:
        out.append("| epc | 128 | 8 | – | – | – | not run | – | 82.2 | – |")
    out.append("")
    out.append(_provenance(files))
    return "\n".join(out)


def pcx_figure(results: pathlib.Path, path: pathlib.Path) -> None:
    """Best- and last-epoch accuracy per configuration (mean and std over seeds), pcx's
    reported best run marked; and the mean test-accuracy curves."""
    rows, _ = pcx_rows(results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for col, dataset in enumerate(("mnist", "fashion_mnist")):
        ax, curve_ax = axes[0, col], axes[1, col]
        shown = [r for r in rows if r["dataset"] == dataset and r["runs"]]
        for i, row in enumerate(shown):
            best = [max(r["test_acc"]) for r in row["runs"]]
            last = [r["test_acc"][-1] for r in row["runs"]]
            std = statistics.stdev if len(best) > 1 else (lambda v: 0.0)
            ax.bar(i - 0.2, statistics.mean(best), 0.4, yerr=std(best), color="C0",
                   label="best epoch" if i == 0 else None)  # fmt: skip
            ax.bar(i + 0.2, statistics.mean(last), 0.4, yerr=std(last), color="C1",
                   label="last epoch" if i == 0 else None)  # fmt: skip
            if row["reported"] is not None:
                ax.plot([i - 0.4, i + 0.4], [row["reported"]] * 2, "k--",
                        label="pcx's best run" if i == 0 else None)  # fmt: skip
            epochs = min(len(r["test_acc"]) for r in row["runs"])
            mean_curve = [
                statistics.mean(r["test_acc"][e] for r in row["runs"]) for e in range(epochs)
            ]
            curve_ax.plot(range(1, epochs + 1), mean_curve,
                          label=f"{_label(row)} ({len(best)} seeds)")  # fmt: skip
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(
            [f"{_label(r)}\n{len(r['runs'])}x{r['epochs']}" for r in shown], fontsize=7
        )
        low = min((min(r["test_acc"]) for row in shown for r in row["runs"]), default=80)
        finals = [r["test_acc"][-1] for row in shown for r in row["runs"]]
        finals += [row["reported"] for row in shown if row["reported"] is not None]
        if finals:
            ax.set_ylim(min(finals) - 1.0, max(finals) + 0.6)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{DATASET_LABELS[dataset]}: pcx's MLP protocol in pcgraph")
        ax.legend(fontsize=8, loc="lower right")
        curve_ax.set_xlabel("epoch")
        curve_ax.set_ylabel("mean test accuracy (%)")
        curve_ax.set_ylim(max(low, 80) - 1, 100 if dataset == "mnist" else 92)
        curve_ax.legend(fontsize=8, loc="lower right")
        curve_ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def anchors_figure(results: pathlib.Path, path: pathlib.Path) -> None:
    """pcgraph's accuracy on each jpc anchor and muPC-128 against the peers' numbers."""
    labels, ours, errs, theirs = [], [], [], []
    files = {d["run"]: d for d in _load(results, "jpc_*.json")}
    for name, (_, notebook, _) in jpc_anchors.ANCHORS.items():
        runs = list(files[name]["runs"].values()) if name in files else []
        accs = [r["test_acc"] for r in runs]
        labels.append(f"jpc {name}\n({len(accs)} seeds)")
        ours.append(statistics.mean(accs) if accs else float("nan"))
        errs.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
        theirs.append(notebook)
    for data in _load(results, "mupc*.json"):
        if data["algorithm"] == "bp":
            continue
        for run in data["runs"].values():
            if run["test_acc"]:
                labels.append(
                    f"muPC {run['depth']}, {data['algorithm']}\n"
                    f"lr {run.get('learning_rate', 1e-2):g}, {len(run['test_acc'])} ep."
                )
                ours.append(run["test_acc"][-1])
                errs.append(0.0)
                theirs.append(mupc_depth.FABRICPC)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    xs = range(len(labels))
    ax.bar(xs, ours, 0.6, yerr=errs, color="C0", label="pcgraph")
    for x, value in zip(xs, theirs):
        ax.plot([x - 0.35, x + 0.35], [value] * 2, "k--", label="peer's number" if x == 0 else None)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(75, 100)
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("jpc's notebooks and FabricPC's muPC-128, at their budgets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"the doc has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=pathlib.Path, default=common.RESULTS)
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "real-data.md")
    parser.add_argument("--figures", type=pathlib.Path, default=common.DOCS / "figures")
    args = parser.parse_args(argv)
    text = args.doc.read_text()
    text = replace_block(text, "pcx", pcx_table(args.results))
    text = replace_block(text, "jpc", jpc_table(args.results))
    text = replace_block(text, "mupc", mupc_table(args.results))
    args.doc.write_text(text)
    pcx_figure(args.results, args.figures / "pc_benchmark_pcx.png")
    anchors_figure(args.results, args.figures / "pc_benchmark_anchors.png")
    print(f"wrote {args.doc} and {args.figures}/pc_benchmark_{{pcx,anchors}}.png")


if __name__ == "__main__":
    main()
