"""Scale: peak memory and trace + compile time of `pcgraph.grad`, against `jax.grad`.

Everything is measured in one process, and every ratio divides by `jax.grad` of the same
function on the same arguments, measured in the same run.

**Memory.** For each gradient function `g` the script compiles `jax.jit(g)` for the given
arguments and reads XLA's buffer assignment through `compiled.memory_analysis()`:

    peak = argument bytes + output bytes + temp bytes - alias bytes

`argument` is the inputs (parameters and data), `output` the returned gradients, `temp` the
scratch buffers the program needs at its high-water mark (XLA allocates them as one block,
sized by the peak of simultaneously live buffers), and `alias` the outputs written in place
of donated inputs (zero here: nothing is donated). This is what the executable reserves on
the device, computed by the compiler, not sampled at run time, so it is exact and does not
depend on the machine's load. The models: a 64-layer MLP with marked layers and a small
CNN (marked conv layers), for FPA's relaxation, the exact (wavefront) schedule of FPA and
Z-IL, and IL; for the MLP also FPA written by hand without pcgraph, as a reference. The IL
rows at 10 and 1000 steps, and with the energy trajectory saved (`save_energy=True`, through
`pcgraph.relax`), show that the state of the relaxation does not grow with the number of
steps unless the trajectory is kept.

**Compile time.** The time to trace and lower (`jax.jit(g).lower(*args)`) and to compile
(`.compile()`) a 128-layer network, written as an unrolled Python loop over marked layers
and as a `lax.scan` over stacked layers (marked inside the body). Every repeat builds a fresh
loss function and clears JAX's caches, so nothing is reused; all methods are measured in
interleaved rounds and the minimum over the rounds is reported.

Run `python benchmarks/scale.py --help` for the options; `--quick` is a smoke run with small
sizes. It runs unchanged on a GPU.
"""

import argparse
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pcgraph

MEMORY_GOAL = 2.0
COMPILE_GOAL = 3.0


# -- models -------------------------------------------------------------------------------------


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))


def dense(key, fan_in, fan_out):
    return {
        "w": jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in),
        "b": jnp.zeros((fan_out,)),
    }


def mlp_loss(params, x, labels):
    """Marked tanh layers, then a dense softmax head."""
    h = x
    for i, layer in enumerate(params[:-1]):
        h = pcgraph.node(jnp.tanh(h @ layer["w"] + layer["b"]), name=f"layer{i + 1}")
    return cross_entropy(h @ params[-1]["w"] + params[-1]["b"], labels)


def scan_loss(params, x, labels):
    """The same network with its hidden layers stacked and run by `lax.scan`."""

    def layer(h, p):
        return pcgraph.node(jnp.tanh(h @ p["w"] + p["b"]), name="layer"), None

    h, _ = jax.lax.scan(layer, x, params["stack"])
    return cross_entropy(h @ params["head"]["w"] + params["head"]["b"], labels)


def handwritten_fpa(params, x, labels):
    """FPA on `mlp_loss` written directly in JAX, without pcgraph: the feedforward pass, then
    `depth` Euler steps of size 1 on the layer errors, each step pulling every error back
    through its layer's transposed Jacobian (`tanh' = 1 - v^2`, from the stored values), then
    the weight gradients from the errors. A reference for what an FPA relaxation that keeps
    the values and the errors costs, whoever writes it."""
    hidden, head = params[:-1], params[-1]
    values = [x]
    for layer in hidden:
        values.append(jnp.tanh(values[-1] @ layer["w"] + layer["b"]))
    loss_grad, head_grad = jax.grad(
        lambda h, p: cross_entropy(h @ p["w"] + p["b"], labels), argnums=(0, 1)
    )(values[-1], head)

    def step(_, errors):
        # errors[k] is the error of values[k + 1]; the top layer's comes from the loss.
        pulled = [
            -(errors[k + 1] * (1 - values[k + 2] ** 2)) @ hidden[k + 1]["w"].T
            for k in range(len(hidden) - 1)
        ]
        pulled.append(loss_grad)
        return [e - (e + b) for e, b in zip(errors, pulled, strict=True)]

    errors = jax.lax.fori_loop(0, len(hidden), step, [jnp.zeros_like(v) for v in values[1:]])
    grads = []
    for below, above, e in zip(values[:-1], values[1:], errors, strict=True):
        delta = -e * (1 - above**2)
        grads.append({"w": below.T @ delta, "b": delta.sum(0)})
    return [*grads, head_grad]


def cnn_loss(params, x, labels):
    """3x3 'SAME' convolutions with relu (NHWC, marked), flatten, dense softmax head."""
    h = x
    for i, layer in enumerate(params[:-1]):
        h = jax.lax.conv_general_dilated(
            h, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = pcgraph.node(jax.nn.relu(h + layer["b"]), name=f"conv{i + 1}")
    return cross_entropy(h.reshape(h.shape[0], -1) @ params[-1]["w"] + params[-1]["b"], labels)


class Problem(NamedTuple):
    name: str
    description: str
    loss: Callable
    args: tuple
    #: The same gradient by FPA written without pcgraph, where there is one.
    handwritten_fpa: Callable | None = None


def labels_for(key, batch, classes=10):
    return jax.nn.one_hot(jax.random.randint(key, (batch,), 0, classes), classes)


def mlp_problem(depth, width, batch, *, scanned=False) -> Problem:
    keys = jax.random.split(jax.random.key(0), depth + 3)
    hidden = [dense(k, width, width) for k in keys[:depth]]
    head = dense(keys[depth], width, 10)
    x = jax.random.normal(keys[depth + 1], (batch, width))
    labels = labels_for(keys[depth + 2], batch)
    shape = f"x[{batch},{width}], {depth} x tanh(h @ W[{width},{width}] + b), head [{width},10]"
    if scanned:
        stack = jax.tree.map(lambda *leaves: jnp.stack(leaves), *hidden)
        params = {"stack": stack, "head": head}
        return Problem(
            f"mlp-{depth} (scan)",
            f"{shape}; lax.scan over stacked layers",
            scan_loss,
            (params, x, labels),
        )
    return Problem(
        f"mlp-{depth}",
        f"{shape}; marked layers, unrolled",
        mlp_loss,
        ([*hidden, head], x, labels),
        handwritten_fpa,
    )


def cnn_problem(batch, image, channels) -> Problem:
    keys = jax.random.split(jax.random.key(1), len(channels) + 3)
    params, c_in = [], 1
    for k, c_out in zip(keys, channels):
        w = jax.random.normal(k, (3, 3, c_in, c_out)) / np.sqrt(9 * c_in)
        params.append({"w": w, "b": jnp.zeros((c_out,))})
        c_in = c_out
    params.append(dense(keys[len(channels)], image * image * c_in, 10))
    x = jax.random.uniform(keys[-2], (batch, image, image, 1))
    convs = " -> ".join(f"conv3x3 {a}->{b}, relu" for a, b in zip((1, *channels), channels))
    description = (
        f"x[{batch},{image},{image},1] -> {convs} (marked) -> dense {image * image * c_in}->10"
    )
    return Problem("cnn", description, cnn_loss, (params, x, labels_for(keys[-1], batch)))


# -- measurements -------------------------------------------------------------------------------


class Memory(NamedTuple):
    argument: int
    output: int
    temp: int
    alias: int

    @property
    def peak(self) -> int:
        return self.argument + self.output + self.temp - self.alias


def memory_of(compiled) -> Memory:
    """The buffer sizes XLA assigned to a compiled program."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        sys.exit(f"the {jax.default_backend()} backend does not report memory_analysis()")
    return Memory(
        analysis.argument_size_in_bytes,
        analysis.output_size_in_bytes,
        analysis.temp_size_in_bytes,
        analysis.alias_size_in_bytes,
    )


def memory(fn: Callable, args: tuple) -> Memory:
    return memory_of(jax.jit(fn).lower(*args).compile())


def relax_fn(loss, algorithm, save_energy):
    """The gradients (and, when saved, the energy trajectory) through `pcgraph.relax`."""

    def fn(*args):
        solution = pcgraph.relax(loss, *args, algorithm=algorithm, save_energy=save_energy)
        return solution.grads, solution.stats.energy_trajectory

    return fn


def il(steps, **kwargs):
    return pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=steps, rtol=None, **kwargs)


def memory_methods(problem: Problem) -> dict[str, Callable]:
    loss = problem.loss
    methods = {
        "jax.grad": jax.grad(loss),
        "FPA": pcgraph.grad(loss, algorithm=pcgraph.FPA()),
        "FPA (throw=False)": pcgraph.grad(loss, algorithm=pcgraph.FPA(throw=False)),
        "FPA, wavefront schedule": pcgraph.grad(
            loss, algorithm=pcgraph.FPA(schedule=pcgraph.Wavefront())
        ),
        "Z-IL": pcgraph.grad(loss, algorithm=pcgraph.ZIL()),
        "IL, 100 steps": pcgraph.grad(loss, algorithm=il(100)),
        "IL, 100 steps (throw=False)": pcgraph.grad(loss, algorithm=il(100, throw=False)),
        "IL, 10 steps": pcgraph.grad(loss, algorithm=il(10)),
        "IL, 1000 steps": pcgraph.grad(loss, algorithm=il(1000)),
        # throw=False: `pcgraph.relax` returns every node's value and error, and with
        # throw=True the failure check would keep a copy of all of them (see the docs).
        "IL, 1000 steps, save_energy (throw=False)": relax_fn(
            loss, il(1000, throw=False), save_energy=True
        ),
    }
    if problem.handwritten_fpa is not None:
        methods["FPA by hand, without pcgraph"] = problem.handwritten_fpa
    return methods


def ratio_cells(name: str, ratio: float, goal: float) -> str:
    """The ratio, goal and met? cells of a row (`jax.grad`, the reference, has no goal)."""
    if name == "jax.grad":
        return f"{ratio:.2f} |  | "
    return f"{ratio:.2f} | <= {goal:g} | {'yes' if ratio <= goal else 'no'}"


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f}"


def memory_table(problems: list[Problem]) -> list[str]:
    lines = [
        "| model | gradient | argument (MiB) | output (MiB) | temp (MiB) | peak (MiB) | ratio | "
        "goal | met? |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for problem in problems:
        results = {name: memory(fn, problem.args) for name, fn in memory_methods(problem).items()}
        reference = results["jax.grad"].peak
        for name, m in results.items():
            lines.append(
                f"| {problem.name} | {name} | {fmt_bytes(m.argument)} | {fmt_bytes(m.output)} | "
                f"{fmt_bytes(m.temp)} | {fmt_bytes(m.peak)} | "
                f"{ratio_cells(name, m.peak / reference, MEMORY_GOAL)} |"
            )
        print(f"  measured {problem.name}", file=sys.stderr)
    return lines


def train_step_memory(problem: Problem, donate: bool, grad_fn: Callable) -> Memory:
    """Peak memory of one Adam step with `grad_fn`, donating the parameters and optimiser
    state (`jax.jit(..., donate_argnums=(0, 1))`) or not."""
    optimizer = optax.adam(1e-3)
    params, *data = problem.args

    def step(params, opt_state, *data):
        updates, opt_state = optimizer.update(grad_fn(params, *data), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    donated = (0, 1) if donate else ()
    lowered = jax.jit(step, donate_argnums=donated).lower(params, optimizer.init(params), *data)
    return memory_of(lowered.compile())


def donation_table(problem: Problem) -> list[str]:
    lines = [
        "| model | training step | donated | argument | output | temp | alias | peak (MiB) | "
        "ratio |",
        "|---|---|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    gradients = {"jax.grad": jax.grad(problem.loss), "FPA": pcgraph.grad(problem.loss)}
    for donate in (False, True):
        results = {name: train_step_memory(problem, donate, g) for name, g in gradients.items()}
        reference = results["jax.grad"].peak
        for name, m in results.items():
            lines.append(
                f"| {problem.name} | {name} + Adam | {'yes' if donate else 'no'} | "
                f"{fmt_bytes(m.argument)} | {fmt_bytes(m.output)} | {fmt_bytes(m.temp)} | "
                f"{fmt_bytes(m.alias)} | {fmt_bytes(m.peak)} | {m.peak / reference:.2f} |"
            )
    return lines


class CompileTime(NamedTuple):
    trace: float
    compile: float

    @property
    def total(self) -> float:
        return self.trace + self.compile


def compile_time(make_grad: Callable[[], Callable], args: tuple) -> CompileTime:
    jax.clear_caches()
    grad_fn = make_grad()
    start = time.perf_counter()
    lowered = jax.jit(grad_fn).lower(*args)
    traced = time.perf_counter()
    lowered.compile()
    return CompileTime(traced - start, time.perf_counter() - traced)


def compile_methods(loss) -> dict[str, Callable[[], Callable]]:
    # Each call builds a fresh loss function object, so no cache keyed on it can hit.
    def fresh():
        return functools.partial(loss)

    return {
        "jax.grad": lambda: jax.grad(fresh()),
        "FPA": lambda: pcgraph.grad(fresh(), algorithm=pcgraph.FPA()),
        "FPA, wavefront schedule": lambda: pcgraph.grad(
            fresh(), algorithm=pcgraph.FPA(schedule=pcgraph.Wavefront())
        ),
        "Z-IL": lambda: pcgraph.grad(fresh(), algorithm=pcgraph.ZIL()),
        "IL": lambda: pcgraph.grad(fresh(), algorithm=il(100)),
    }


def compile_table(problems: list[Problem], repeats: int) -> list[str]:
    lines = [
        "| model | gradient | trace + lower (s) | compile (s) | total (s) | ratio | goal | met? |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for problem in problems:
        methods = compile_methods(problem.loss)
        best = {name: CompileTime(math.inf, math.inf) for name in methods}
        for _ in range(repeats):  # interleaved rounds: a change in load hits every method
            for name, make_grad in methods.items():
                t = compile_time(make_grad, problem.args)
                best[name] = min(best[name], t, key=lambda c: c.total)
        reference = best["jax.grad"].total
        for name, t in best.items():
            lines.append(
                f"| {problem.name} | {name} | {t.trace:.2f} | {t.compile:.2f} | {t.total:.2f} | "
                f"{ratio_cells(name, t.total / reference, COMPILE_GOAL)} |"
            )
        print(f"  timed {problem.name}", file=sys.stderr)
    return lines


def environment() -> str:
    devices = jax.devices()
    return (
        f"python {platform.python_version()}, jax {jax.__version__}, pcgraph "
        f"{pcgraph.__version__}; backend {jax.default_backend()}: {len(devices)} x "
        f"{devices[0].device_kind}; host {platform.machine()}, {os.cpu_count()} CPUs"
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and shallow")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies widths and batches")
    parser.add_argument("--repeats", type=int, default=3, help="compile-time rounds (min taken)")
    parser.add_argument("--memory-depth", type=int, default=64, help="MLP layers for memory")
    parser.add_argument("--compile-depth", type=int, default=128, help="layers for compile time")
    parser.add_argument("--skip-compile", action="store_true", help="only the memory table")
    options = parser.parse_args()
    if options.quick:
        options.memory_depth, options.compile_depth, options.repeats = 8, 16, 1
        options.scale = min(options.scale, 0.25)

    def scaled(n):
        return max(1, round(n * options.scale))

    print(environment())
    memory_problems = [
        mlp_problem(options.memory_depth, scaled(128), scaled(256)),
        cnn_problem(scaled(256), 8, (8, 16)),
    ]
    print("\n## Peak memory (argument + output + temp bytes of the compiled program)\n")
    for problem in memory_problems:
        print(f"- {problem.name}: {problem.description}")
    print()
    print("\n".join(memory_table(memory_problems)))
    print("\n## Training-step memory with and without buffer donation (MiB)\n")
    print("\n".join(donation_table(memory_problems[0])))
    if options.skip_compile:
        return
    depth, width, batch = options.compile_depth, scaled(64), scaled(64)
    compile_problems = [
        mlp_problem(depth, width, batch),
        mlp_problem(depth, width, batch, scanned=True),
    ]
    print(f"\n## Trace + compile time (min of {options.repeats} interleaved rounds)\n")
    for problem in compile_problems:
        print(f"- {problem.name}: {problem.description}")
    print()
    print("\n".join(compile_table(compile_problems, options.repeats)))


if __name__ == "__main__":
    main()
