"""Trace + compile time of `pcgraph.grad` for a scanned RNN, against the sequence length.

pcgraph lifts a `lax.scan` into value nodes stacked over the iterations and evaluates their
predictions for all iterations at once, so the compiled program should not grow with the
sequence length. For each length the script builds a fresh `jax.jit(pcgraph.grad(loss))` of
an RNN, `h_t = tanh(h_{t-1} W + x_t U)` under `lax.scan` with a linear readout of `h_T`
(hidden 32, batch 8, inputs 8, float32), and measures:

- trace + compile: `jit(...).lower(*args).compile()`, the minimum over `--repeats` fresh
  functions (nothing is reused between them);
- run: one call of the compiled function, the minimum over a few calls. FPA relaxes for
  `graph.depth` steps, one per time step (the error travels back along the sequence), so this
  grows with the length;
- the largest relative error of the PC gradient against `jax.grad`'s, per leaf, over its
  largest entry;

and the same for the RNN written as an unrolled Python loop (one node per time step, a
program that grows with the length) up to `--max-unrolled`, and for `jax.grad` of the scanned
RNN. It prints a markdown table and the ratio of the longest to the shortest length's compile
time of the lifted scan (the goal: within 2x).

Run:  python benchmarks/scan_compile.py [--lengths 16 64 256 1024] [--repeats 3]
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import pcgraph

HIDDEN, BATCH, INPUTS = 32, 8, 8


def make_args(length: int):
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {
        "w": jax.random.normal(k[0], (HIDDEN, HIDDEN)) / np.sqrt(HIDDEN),
        "u": jax.random.normal(k[1], (INPUTS, HIDDEN)) / np.sqrt(INPUTS),
        "head": jax.random.normal(k[2], (HIDDEN, 1)) / np.sqrt(HIDDEN),
    }
    xs = jax.random.normal(k[3], (length, BATCH, INPUTS))
    return params, xs, jax.random.normal(k[4], (BATCH, 1))


def scanned(params, xs, y):
    def step(h, x):
        return jnp.tanh(h @ params["w"] + x @ params["u"]), None

    h, _ = jax.lax.scan(step, jnp.zeros((BATCH, HIDDEN)), xs)
    return jnp.mean((h @ params["head"] - y) ** 2)


def unrolled(params, xs, y):
    h = jnp.zeros((BATCH, HIDDEN))
    for x in xs:
        h = jnp.tanh(h @ params["w"] + x @ params["u"])
    return jnp.mean((h @ params["head"] - y) ** 2)


def measure(make_grad, args, repeats: int, reference) -> tuple[float, float, float]:
    """(trace + compile seconds, run seconds, worst relative error vs `reference`)."""
    compile_times = []
    for _ in range(repeats):
        fn = jax.jit(make_grad())  # a fresh function: no cached trace or executable
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_times.append(time.perf_counter() - start)
    grads = jax.block_until_ready(compiled(*args))
    run_times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        run_times.append(time.perf_counter() - start)
    error = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    )
    return min(compile_times), min(run_times), error


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="fresh compilations per entry")
    parser.add_argument("--max-unrolled", type=int, default=64, help="longest unrolled loop")
    args = parser.parse_args()

    print(
        f"Python {platform.python_version()}, JAX {jax.__version__}, pcgraph "
        f"{pcgraph.__version__}, {jax.default_backend()} ({jax.devices()[0].device_kind})"
    )
    rows, lifted = [], {}
    for length in args.lengths:
        inputs = make_args(length)
        reference = jax.jit(jax.grad(scanned))(*inputs)
        entries = [("scan, lifted (pcgraph.grad)", scanned, pcgraph.grad)]
        if length <= args.max_unrolled:
            entries.append(("unrolled loop (pcgraph.grad)", unrolled, pcgraph.grad))
        entries.append(("scan (jax.grad)", scanned, jax.grad))
        for name, loss, grad in entries:
            # A new lambda per compilation, so that nothing is cached between them.
            make_grad = lambda loss=loss, grad=grad: grad(lambda *a: loss(*a))  # noqa: E731
            compile_s, run_s, error = measure(make_grad, inputs, args.repeats, reference)
            if loss is scanned and grad is pcgraph.grad:
                lifted[length] = compile_s
            depth = pcgraph.trace(loss, *inputs).depth if grad is pcgraph.grad else "-"
            rows.append((length, name, depth, compile_s, run_s, error))
            print(f"  T={length:<5} {name:<29} compile {compile_s:6.2f} s", flush=True)

    print("\n| length | program | graph depth | trace + compile (s) | run (ms) | max rel. error |")
    print("|---:|---|---:|---:|---:|---:|")
    for length, name, depth, compile_s, run_s, error in rows:
        print(
            f"| {length} | {name} | {depth} | {compile_s:.2f} | {1e3 * run_s:.1f} | {error:.1e} |"
        )
    shortest, longest = min(lifted), max(lifted)
    ratio = lifted[longest] / lifted[shortest]
    print(
        f"\nlifted scan: trace + compile at T={longest} is {ratio:.2f}x that at T={shortest} "
        f"(goal: within 2x) -> {'met' if ratio <= 2 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
