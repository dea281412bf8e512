"""The peer benchmark: pcgraph against the other predictive-coding libraries on the same tasks.

Every library trains the same networks (`common.py`: a tanh MLP, a small CNN and a 32-layer muPC
residual network) from the same initial weights, on the same minibatches, with the same inference
(20 Euler steps of 0.1 from the feedforward pass) and the same optimiser (Adam), each through a
small adapter (`<library>_adapter.py`) run in the virtual environment the library needs:

| library | environment | |
|---|---|---|
| pcgraph | `current` | this checkout, pcgraph's JAX |
| FabricPC 0.6.0 | `current` | the same JAX as pcgraph |
| pcx 0.6.3 | `jax04` | pins JAX < 0.5 |
| jpc | `jax04` | not on PyPI: included when installed there |

`bash benchmarks/peers/setup_envs.sh` creates both environments (packages only). Then, with the
`current` environment's Python:

    python benchmarks/peers/run.py --quick        # 2 seeds, 5 epochs: under 15 min on 2 cores
    python benchmarks/peers/run.py                # 5 seeds, 10 epochs
    python benchmarks/peers/run.py --dataset mnist --data-dir ~/data/mnist

For each task and library it reports test accuracy (mean and 95% t-interval over seeds), time per
epoch (median of the epochs after the first; the first epoch's excess is the compile time), the
PC/BP time ratio (the library's PC epoch against a `jax.grad` epoch of the same network in the
same environment), peak memory, the agreement of the library's first weight update with
pcgraph's (the relative error of each weight leaf's update, worst leaf shown; the same
algorithm gives float32 round-off), and a paired t-test of pcgraph's accuracy against
the library's (same seeds, so same initial weights and minibatches). A second table times one PC
train step of the MLP in interleaved rounds: pcgraph and FabricPC in one process, pcx and jpc in
their environment's process, the two processes alternating, each also timing the step's two
floors: its matrix products alone (`common.MatmulFloor`) and its inference steps' elementwise
work alone (`common.ElementwiseFloor`); on one CPU core, which runs a step's kernels one at a
time, their sum is a bound under every library's step. Results go to `--out` (default
`benchmarks/peers/results/`): `results.json`, `table.md` and `peers.png`.

Runs alternate between libraries (the order rotates with the seed), so a change in the machine's
load falls on all of them; for timings, run it on a quiet machine.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import common
import numpy as np
import scipy.stats

import pcgraph

HERE = pathlib.Path(__file__).resolve().parent
LIBRARIES = {  # library -> (its environment, the module its adapter imports)
    "pcgraph": ("current", "pcgraph"),
    "fabricpc": ("current", "fabricpc"),
    "pcx": ("jax04", "pcx"),
    "jpc": ("jax04", "jpc"),
}


def environment_python(env: str) -> pathlib.Path | None:
    """The Python of `env` under `.venvs/`; the running Python stands in for `current`."""
    python = HERE / ".venvs" / env / "bin" / "python"
    if python.exists():
        return python
    return pathlib.Path(sys.executable) if env == "current" else None


def find_libraries(names) -> tuple[dict, dict]:
    """The libraries that import in their environment (name -> Python) and why the others
    are left out."""
    found, missing = {}, {}
    for name in names:
        env, module = LIBRARIES[name]
        python = environment_python(env)
        if python is None:
            missing[name] = f"no {env!r} environment: run benchmarks/peers/setup_envs.sh"
            continue
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
        if probe.returncode != 0:
            missing[name] = f"`import {module}` fails in the {env!r} environment"
            if name == "jpc":
                missing[name] += " (jpc is not on PyPI: pip install a local copy there)"
        else:
            found[name] = python
    return found, missing


def prepare_data(name: str, data_dir: str | None, path: pathlib.Path) -> common.Data:
    """Load a dataset with `pcgraph.datasets`, scale it to [0, 1] as NHWC float32 images and
    save it where the adapters read it."""
    dataset = pcgraph.datasets.load(name, data_dir, seed=0)
    if dataset.name != name:
        raise SystemExit(f"asked for {name}, but {data_dir} gave {dataset.name}: refusing.")
    scale = 16.0 if dataset.name == "digits" else 255.0

    def images(x):
        x = np.asarray(x, np.float32) / scale
        return x[..., None] if x.ndim == 3 else x

    data = common.Data(
        images(dataset.x_train),
        np.asarray(dataset.y_train, np.int32),
        images(dataset.x_test),
        np.asarray(dataset.y_test, np.int32),
    )
    common.save_data(str(path), data)
    return data


def run_json(command: list) -> dict:
    """Run an adapter's command line and parse the JSON it prints."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def adapter_command(python, script, task, seed, epochs, data_path, *extra) -> list:
    return [
        str(python), script, "--task", task, "--seed", str(seed),
        "--epochs", str(epochs), "--data", str(data_path), *extra,
    ]  # fmt: skip


def update_agreement(reference: dict, other: dict, initial: dict) -> dict[str, float]:
    """Per weight leaf, the relative error of another library's first weight update against
    pcgraph's, `||d_other - d_ref|| / ||d_ref||`. Per leaf and by relative error, so that an
    update scaled by a constant (a cosine of 1) or wrong only in a deep layer's tiny update
    (invisible in one cosine over all weights) shows."""
    errors = {}
    for k in initial:
        a, b = reference[k] - initial[k], other[k] - initial[k]
        scale = np.linalg.norm(a)
        errors[k] = float(np.linalg.norm(b - a) / scale) if scale else float(np.linalg.norm(b))
    return errors


def check_updates(libraries, task_name, data, data_path, out) -> dict:
    """Each library's first SGD update against pcgraph's, on the first minibatch of seed 0."""
    task = common.make_task(task_name, data.image_shape)
    initial = common.init_weights(task, 0)
    updates = {}
    for library, python in libraries.items():
        path = out / f"check_{task_name}_{library}.npz"
        result = run_json(
            adapter_command(
                python, f"{library}_adapter.py", task_name, 0, 1, data_path, "--check", str(path)
            )
        )
        if "error" not in result and "unsupported" not in result:
            with np.load(path) as f:
                updates[library] = dict(f)
    if "pcgraph" not in updates:
        return {}
    return {lib: update_agreement(updates["pcgraph"], w, initial) for lib, w in updates.items()}


def worst_leaf(errors: dict[str, float] | None) -> float:
    return max(errors.values(), default=math.nan) if errors else math.nan


# What time_steps.py measures in every environment besides the libraries.
PER_ENVIRONMENT = ("backprop", common.MatmulFloor.NAME, common.ElementwiseFloor.NAME)


def time_train_steps(libraries, data_path, rounds, alternations) -> dict:
    """Seconds per PC train step of the MLP task, the minimum over alternating processes (one
    per environment: its libraries and backprop, interleaved within the process)."""
    by_env = {}
    for library, python in libraries.items():
        by_env.setdefault(str(python), []).append(library)
    best = {}
    for _ in range(alternations):
        for python, names in by_env.items():
            command = [python, "time_steps.py", "--data", str(data_path), "--rounds", str(rounds)]
            result = run_json([*command, "--libraries", *names])
            env = LIBRARIES[names[0]][0]
            for name, seconds in result.items():
                key = f"{name} ({env})" if name in PER_ENVIRONMENT else name
                best[key] = min(best.get(key, math.inf), seconds)
    return best


def mean_interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (NaN with fewer than two values)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(np.mean(values)) if len(values) else math.nan, math.nan
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def paired_test(ours, theirs) -> tuple[float, float]:
    """pcgraph's mean accuracy minus the peer's over paired seeds, and the two-sided p-value
    of the paired t-test (NaN when it cannot be computed)."""
    differences = np.asarray(ours) - np.asarray(theirs)
    difference = float(np.mean(differences))
    if len(differences) < 2 or np.ptp(differences) <= 1e-9:  # no spread: t is undefined
        return difference, math.nan
    return difference, float(scipy.stats.ttest_rel(ours, theirs).pvalue)


def failed(runs, task, library, method) -> int:
    """The runs of `library` on `task` that ended in an error (not counted in its seeds)."""
    return sum(
        1
        for r in runs
        if r["task"] == task and r["library"] == library and r["method"] == method
        and "error" in r
    )  # fmt: skip


def summarise(runs, checks) -> list[dict]:
    """One row per task and library, from the runs' JSON."""
    rows = []
    for task in common.TASK_NAMES:
        task_runs = [r for r in runs if r["task"] == task and "accuracy" in r]
        pc = {}
        for r in task_runs:
            if r["method"] == "pc":
                pc.setdefault(r["library"], {})[r["seed"]] = r
        bp = {}
        for r in task_runs:
            if r["method"] == "bp":
                bp.setdefault(r["library"], {})[r["seed"]] = r
        for library, by_seed in pc.items():
            seeds = sorted(by_seed)
            accuracy = [by_seed[s]["accuracy"] for s in seeds]
            epoch = statistics.median(by_seed[s]["epoch_time"] for s in seeds)
            bp_runs = bp.get(LIBRARIES[library][0], {})
            bp_epoch = (
                statistics.median(bp_runs[s]["epoch_time"] for s in bp_runs)
                if bp_runs
                else math.nan
            )
            row = {
                "task": task,
                "library": library,
                "seeds": len(seeds),
                "accuracy": mean_interval(accuracy),
                "epoch_time": epoch,
                "compile_time": statistics.median(by_seed[s]["compile_time"] for s in seeds),
                "pc_bp_ratio": epoch / bp_epoch,
                "peak_memory_mib": max(by_seed[s]["peak_memory"] for s in seeds) / 2**20,
                "memory_source": by_seed[seeds[0]]["memory_source"],
                "update_error": worst_leaf(checks.get(task, {}).get(library)),
                "diverged": sum(not by_seed[s]["finite"] for s in seeds),
                "failed": failed(runs, task, library, "pc"),
                "vs_pcgraph": (math.nan, math.nan),
            }
            ours = pc.get("pcgraph", {})
            common_seeds = [s for s in seeds if s in ours]
            if library != "pcgraph" and len(common_seeds) > 0:
                row["vs_pcgraph"] = paired_test(
                    [ours[s]["accuracy"] for s in common_seeds],
                    [by_seed[s]["accuracy"] for s in common_seeds],
                )
            rows.append(row)
        for env, by_seed in bp.items():
            accuracy = [by_seed[s]["accuracy"] for s in sorted(by_seed)]
            epoch = statistics.median(r["epoch_time"] for r in by_seed.values())
            rows.append(
                {
                    "task": task,
                    "library": f"backprop ({env})",
                    "seeds": len(by_seed),
                    "accuracy": mean_interval(accuracy),
                    "epoch_time": epoch,
                    "compile_time": statistics.median(r["compile_time"] for r in by_seed.values()),
                    "pc_bp_ratio": math.nan,
                    "peak_memory_mib": max(r["peak_memory"] for r in by_seed.values()) / 2**20,
                    "memory_source": next(iter(by_seed.values()))["memory_source"],
                    "update_error": math.nan,
                    "diverged": sum(not r["finite"] for r in by_seed.values()),
                    "failed": failed(runs, task, env, "bp"),
                    "vs_pcgraph": (math.nan, math.nan),
                }
            )
    return rows


def _number(x, spec) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(rows, steps, missing, unsupported, header) -> str:
    """The results as Markdown tables."""
    lines = [header, ""]
    lines.append(
        "| task | library | seeds (failed) | test accuracy (%) | epoch (s) | compile (s) | "
        "PC/BP time | peak memory (MiB) | update rel. error vs pcgraph (worst leaf) | "
        "pcgraph - library (points) | p |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        mean, half = row["accuracy"]
        difference, p = row["vs_pcgraph"]
        accuracy = f"{_number(100 * mean, '.1f')} ± {_number(100 * half, '.1f')}"
        if row["diverged"]:
            accuracy += f" ({row['diverged']} diverged)"
        lines.append(
            f"| {row['task']} | {row['library']} | {row['seeds']} ({row['failed']}) | {accuracy} | "
            f"{_number(row['epoch_time'], '.3f')} | {_number(row['compile_time'], '.1f')} | "
            f"{_number(row['pc_bp_ratio'], '.1f')} | {_number(row['peak_memory_mib'], '.0f')} | "
            f"{_number(row['update_error'], '.1e')} | {_number(100 * difference, '+.1f')} | "
            f"{_number(p, '.2f')} |"
        )
    if steps:
        fastest_peer = min(
            (s for name, s in steps.items() if not name.startswith(("pcgraph", *PER_ENVIRONMENT))),
            default=math.nan,
        )
        floor = steps.get(f"{common.MatmulFloor.NAME} (current)", math.nan)
        bound = floor + steps.get(f"{common.ElementwiseFloor.NAME} (current)", math.nan)
        lines += [
            "",
            f"PC train step of the MLP task (batch {common.BATCH_SIZE}, "
            f"{common.INFERENCE_STEPS} inference steps), minimum over interleaved rounds:",
            "",
            "| library | ms per step | / pcgraph | pcgraph / this |",
            "|---|---|---|---|",
        ]
        for name, seconds in sorted(steps.items(), key=lambda item: item[1]):
            ratio = seconds / steps["pcgraph"] if "pcgraph" in steps else math.nan
            lines.append(
                f"| {name} | {1e3 * seconds:.2f} | {_number(ratio, '.2f')} | "
                f"{_number(1 / ratio, '.2f')} |"
            )
        if "pcgraph" in steps and not math.isnan(fastest_peer):
            lines += [
                "",
                f"pcgraph / fastest peer: {steps['pcgraph'] / fastest_peer:.2f}; "
                f"pcgraph / matmuls alone: {_number(steps['pcgraph'] / floor, '.2f')}; "
                f"fastest peer / matmuls alone: {_number(fastest_peer / floor, '.2f')}; "
                f"matmuls + elementwise alone: {_number(1e3 * bound, '.2f')} ms, "
                f"{_number(bound / fastest_peer, '.2f')}x the fastest peer (the floors timed "
                "in pcgraph's environment)",
            ]
    for name, reason in missing.items():
        lines.append(f"\n- {name}: not run ({reason}).")
    for (task, name), reason in sorted(unsupported.items()):
        lines.append(f"- {name} cannot run the {task} task: {reason}")
    return "\n".join(lines) + "\n"


def figure(rows, path) -> None:
    """Accuracy (with 95% intervals) and time per epoch, per task and library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in common.TASK_NAMES if any(r["task"] == t for r in rows)]
    names = list(dict.fromkeys(r["library"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        by_task = {r["task"]: r for r in rows if r["library"] == name}
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(tasks))]
        mean = [100 * by_task[t]["accuracy"][0] if t in by_task else np.nan for t in tasks]
        half = [100 * by_task[t]["accuracy"][1] if t in by_task else np.nan for t in tasks]
        axes[0].bar(xs, mean, width, yerr=np.nan_to_num(half), label=name, capsize=2)
        epoch = [by_task[t]["epoch_time"] if t in by_task else np.nan for t in tasks]
        axes[1].bar(xs, epoch, width, label=name)
    for ax, label in zip(axes, ("test accuracy (%)", "seconds per epoch (log)")):
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds, 5 epochs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tasks", nargs="+", choices=common.TASK_NAMES, default=common.TASK_NAMES)
    parser.add_argument("--libraries", nargs="+", choices=list(LIBRARIES), default=list(LIBRARIES))
    parser.add_argument(
        "--dataset", default="digits", choices=("digits", "mnist", "fashion_mnist", "cifar10")
    )
    parser.add_argument("--data-dir", help="the folder holding the dataset's files")
    parser.add_argument("--step-rounds", type=int, default=5, help="rounds per step timing")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.step_rounds = 2, 5, 3

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "data.npz"
    if args.dataset != "digits" and args.data_dir is None:
        parser.error(
            f"--dataset {args.dataset} needs --data-dir, the folder holding its files "
            "(pcgraph.datasets would otherwise fall back to scikit-learn's digits, and the "
            "table would be titled with the wrong dataset)."
        )
    data = prepare_data(args.dataset, args.data_dir, data_path)
    libraries, missing = find_libraries(args.libraries)
    for name, reason in missing.items():
        print(f"skipping {name}: {reason}", flush=True)
    bp_pythons = {LIBRARIES[name][0]: python for name, python in libraries.items()}

    start = time.perf_counter()
    runs, unsupported, checks = [], {}, {}
    for task in args.tasks:
        checks[task] = check_updates(libraries, task, data, data_path, out)
        for seed in range(args.seeds):
            names = list(libraries)
            names = names[seed % len(names) :] + names[: seed % len(names)]
            jobs = [(name, "pc", libraries[name]) for name in names]
            jobs += [(env, "bp", python) for env, python in bp_pythons.items()]
            for name, method, python in jobs:
                script = f"{name}_adapter.py" if method == "pc" else "common.py"
                command = adapter_command(
                    python, script, task, seed, args.epochs, data_path, "--method", method
                )
                result = run_json(command)
                result.update(task=task, seed=seed, method=method, library=name)
                if "unsupported" in result:
                    unsupported[(task, name)] = result["unsupported"]
                elif "error" in result:
                    print(f"{task} {name} {method} seed {seed}: {result['error']}", flush=True)
                else:
                    print(
                        f"{task:>6} {name:>8} {method} seed {seed}: accuracy "
                        f"{result['accuracy']:.3f}, epoch {result['epoch_time']:.3f} s "
                        f"({time.perf_counter() - start:.0f} s)",
                        flush=True,
                    )
                runs.append(result)
    steps = {}
    if "mlp" in args.tasks:
        steps = time_train_steps(libraries, data_path, args.step_rounds, alternations=3)

    rows = summarise(runs, checks)
    header = (
        f"Dataset {data.x_train.shape[0]} training / {data.x_test.shape[0]} test images "
        f"({args.dataset}), {args.seeds} seeds, {args.epochs} epochs, batch "
        f"{common.BATCH_SIZE}; machine: {machine()}; device: "
        f"{next((r['device'] for r in runs if 'device' in r), 'n/a')}."
    )
    table = markdown(rows, steps, missing, unsupported, header)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(
        json.dumps({"runs": runs, "checks": checks, "steps": steps}, indent=1)
    )
    figure(rows, out / "peers.png")
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'peers.png'}")


if __name__ == "__main__":
    main()
