"""What exact predictive coding costs, measured against `jax.grad` in the same run.

Two parts:

1. **Time.** For tanh MLPs of depth 4, 16 and 64 (marked layers, width `--width`, batch
   `--batch`) and the small CNN of `step_cost.py`, the time of one jitted exact PC gradient,
   `pcgraph.grad(loss, algorithm=pcgraph.ZIL())` (the wavefront schedule: every node's local
   VJP evaluated once, at the step its error is final), divided by the time of one jitted
   `jax.grad(loss)` call. For contrast, FPA's step-by-step relaxation (`graph.depth` Euler
   steps of 1, exact too) and `pcgraph.cost`'s count of local evaluations relative to
   backprop. Goal: the wavefront <= 1.5x `jax.grad` at every depth.
2. **Steps.** The lemma of Zahid, Guo & Fountas (2023) says an error needs at least `depth` steps to
   reach the first layer. For MLPs of depth 4, 8 and 16, the cosine between the PC gradient and
   `jax.grad`'s after `k` relaxation steps, for IL, FPA and Z-IL (the relaxation itself) at several
   step sizes: a table of the first sampled `k` where the cosine reaches 0.9999, and a plot of
   cosine against `k / depth` (`--plot PATH`).

Run `python benchmarks/exact_cost.py --help`. It runs unchanged on a GPU.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from step_cost import Bench, cnn_loss, cnn_params, cross_entropy, header, run_rounds

import pcgraph

NUM_CLASSES = 10


def deep_mlp(key, depth, width, batch, dtype):
    """`depth` marked tanh layers of `width`, a dense softmax head, cross-entropy loss."""
    keys = jax.random.split(key, depth + 3)
    params = [
        {
            "w": jax.random.normal(keys[i], (width, width), dtype) / np.sqrt(width),
            "b": jnp.zeros((width,), dtype),
        }
        for i in range(depth)
    ]
    params.append(
        {
            "w": jax.random.normal(keys[depth], (width, NUM_CLASSES), dtype) / np.sqrt(width),
            "b": jnp.zeros((NUM_CLASSES,), dtype),
        }
    )
    x = jax.random.normal(keys[-2], (batch, width), dtype)
    labels = jax.nn.one_hot(jax.random.randint(keys[-1], (batch,), 0, NUM_CLASSES), NUM_CLASSES)

    def loss(params, x, labels):
        h = x
        for i, layer in enumerate(params[:-1]):
            h = pcgraph.node(jnp.tanh(h @ layer["w"] + layer["b"]), name=f"layer{i + 1}")
        return cross_entropy(h @ params[-1]["w"] + params[-1]["b"], labels.astype(h.dtype))

    return loss, (params, x, labels)


def timing_table(args) -> list[str]:
    dtype = jnp.dtype(args.dtype)
    models = {
        f"mlp depth {d}": deep_mlp(jax.random.key(d), d, args.width, args.batch, dtype)
        for d in args.depths
    }
    key = jax.random.key(1)
    images = jax.random.uniform(key, (args.batch, 8, 8, 1), dtype)
    labels = jax.nn.one_hot(jax.random.randint(key, (args.batch,), 0, NUM_CLASSES), NUM_CLASSES)
    models["cnn"] = (cnn_loss, (cnn_params(key, dtype), images, labels.astype(dtype)))

    lines = [
        "| model | nodes | depth | jax.grad | PC wavefront (Z-IL) | ratio | FPA relaxation "
        "ratio | counted work (wavefront) | goal <= 1.5x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (loss, fn_args) in models.items():
        graph = pcgraph.trace(loss, *fn_args)
        functions = {
            "jax.grad": jax.jit(jax.grad(loss)),
            "wavefront": jax.jit(pcgraph.grad(loss, algorithm=pcgraph.ZIL())),
            "fpa": jax.jit(pcgraph.grad(loss, algorithm=pcgraph.FPA())),
        }
        reference = functions["jax.grad"](*fn_args)
        for label, fn in functions.items():  # compile, and check before timing
            grads = fn(*fn_args)
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6, err_msg=f"{name} {label}")
        benches = {label: Bench(fn, fn_args, args.min_time) for label, fn in functions.items()}
        run_rounds(benches, args.repeats)
        seconds = {label: bench.seconds("min") for label, bench in benches.items()}
        ratio = seconds["wavefront"] / seconds["jax.grad"]
        work = pcgraph.cost(graph, pcgraph.ZIL()).relative_work
        lines.append(
            f"| {name} | {len(graph.nodes)} | {graph.depth} | {seconds['jax.grad'] * 1e3:.3f} ms "
            f"| {seconds['wavefront'] * 1e3:.3f} ms | **{ratio:.2f}x** "
            f"| {seconds['fpa'] / seconds['jax.grad']:.2f}x | {work:.2f} "
            f"| {'met' if ratio <= 1.5 else 'NOT met'} |"
        )
        print(lines[-1], flush=True)
    return lines


def _cosine(a, b) -> float:
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
    cos = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    return cos if np.isfinite(cos) else float("nan")


def step_algorithms(step_sizes, beta):
    """name -> (step size -> k -> algorithm) for the convergence study."""
    return {
        "IL": lambda s, k: pcgraph.IL(
            beta=beta, stepper=pcgraph.Euler(s), max_steps=k, throw=False
        ),
        "FPA": lambda s, k: pcgraph.FPA(stepper=pcgraph.Euler(s), max_steps=k, throw=False),
        "Z-IL": lambda s, k: pcgraph.ZIL(
            schedule=pcgraph.Relaxation(), step_size=s, max_steps=k, throw=False
        ),
    }


def convergence(args):
    """Cosine with jax.grad after k steps, per depth, algorithm and step size."""
    results = {}
    for depth in args.step_depths:
        loss, fn_args = deep_mlp(jax.random.key(depth), depth, args.step_width, 16, jnp.float32)
        reference = jax.grad(loss)(*fn_args)
        ks = sorted({*range(0, 2 * depth + 1, max(1, depth // 4)), depth - 1, depth, depth + 1})
        for name, make in step_algorithms(args.step_sizes, args.il_beta).items():
            for s in args.step_sizes:
                cosines = []
                for k in ks:
                    grads = pcgraph.grad(loss, algorithm=make(s, k))(*fn_args)
                    cosines.append(_cosine(grads, reference))
                results[depth, name, s] = (ks, cosines)
                print(
                    f"  depth {depth:3d} {name:5s} step {s:<4g} "
                    + " ".join(f"{k}:{c:.4f}" for k, c in zip(ks, cosines)),
                    flush=True,
                )
    return results


def convergence_table(results, threshold=0.9999) -> list[str]:
    lines = [
        f"| depth | algorithm | step size | cosine at depth - 1 steps | at depth steps | "
        f"first sampled k with cosine >= {threshold} |",
        "|---|---|---|---|---|---|",
    ]
    for (depth, name, s), (ks, cosines) in results.items():
        at = dict(zip(ks, cosines))
        reached = next((k for k, c in zip(ks, cosines) if c >= threshold), None)
        lines.append(
            f"| {depth} | {name} | {s:g} | {at[depth - 1]:.4f} | {at[depth]:.4f} | "
            f"{reached if reached is not None else f'> {max(ks)}'} |"
        )
    return lines


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for _, name, _ in results})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), names):
        for (depth, n, s), (ks, cosines) in results.items():
            if n == name:
                ax.plot(
                    np.asarray(ks) / depth, cosines, marker=".", label=f"depth {depth}, step {s:g}"
                )
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("relaxation steps / depth")
        ax.set_ylim(-0.05, 1.05)
    np.atleast_1d(axes)[0].set_ylabel("cosine(PC gradient, jax.grad)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per sample")
    parser.add_argument("--step-depths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--step-width", type=int, default=32)
    parser.add_argument("--step-sizes", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    parser.add_argument("--il-beta", type=float, default=0.01)
    parser.add_argument("--plot", default=None, help="save the convergence plot here")
    parser.add_argument("--skip-steps", action="store_true", help="only the timing table")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.depths, args.repeats = 32, 16, [2, 4], 2
        args.min_time, args.step_depths, args.step_sizes = 0.02, [2, 3], [1.0, 0.5]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    print(header(jnp.dtype(args.dtype)))
    print(
        f"  width {args.width}, batch {args.batch}; times are the minimum over "
        f"{args.repeats} interleaved rounds\n"
    )
    timing = timing_table(args)
    print("\n" + "\n".join(timing))
    if not args.skip_steps:
        print(
            "\nCosine with jax.grad after k steps (MLP width "
            f"{args.step_width}, batch 16, IL beta {args.il_beta}):"
        )
        results = convergence(args)
        print("\n" + "\n".join(convergence_table(results)))
        if args.plot:
            plot(results, args.plot)


if __name__ == "__main__":
    main()
