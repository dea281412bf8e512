"""Cost of one predictive-coding relaxation step, relative to one `jax.grad` call.

For each model the script measures, in one process and on one device:

- the marginal cost of one relaxation step of `pcgraph.IL` and `pcgraph.FPA`. A jitted
  `pcgraph.relax` with a fixed number of steps (`rtol=None`) is timed at two step counts
  `n1 < n2`, and one step costs `(t(n2) - t(n1)) / (n2 - n1)`. Dispatch, the feedforward pass
  and the read-out of the gradients are the same at both step counts and cancel;
- one call of `jax.jit(jax.grad(loss))`, dispatch included (on a CPU the dispatch is a few
  microseconds, under 1% of these calls).

All compiled functions of a model are timed in interleaved rounds, so that a change in the
machine's load hits them alike; each time is the minimum (or median) over the rounds. The
script prints a markdown table of the ratios against the goals: an FPA step <= 0.3x one
`jax.grad` call, and an IL step of the marked MLP <= 1.15x its floor, the matmuls an IL step of
that network cannot avoid (`z_l @ W_{l+1}` and the pull-back `d_{l+1} @ W_{l+1}^T` for each of
its 5 nodes, timed alone in a loop in the same process). `--diagnostics` adds the number of
matmuls/convolutions per step in the compiled programs and the time each step spends in its
matmul, elementwise and copy kernels (from a `jax.profiler` trace), `jax.grad` timed inside a
compiled loop, and steps of the marked MLP written by hand in plain JAX: IL and FPA, IL's bare
arithmetic, and its elementwise work alone.

Run `python benchmarks/step_cost.py --help` for the options. It runs unchanged on a GPU.
"""

import argparse
import functools
import gzip
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import pcgraph

BATCH = 256
WIDTH = 128
NUM_LAYERS = 5  # hidden tanh layers of the MLP
NUM_CLASSES = 10
IMAGE = 8  # CNN inputs are IMAGE x IMAGE x 1 images, the shape of sklearn's digits
CHANNELS = (8, 16)

ALGORITHMS = ("IL", "FPA")
# FPA: at most this many `jax.grad` calls per step; IL: at most this many times its floor.
GOALS = {"IL": 1.15, "FPA": 0.3}
FLOOR = "IL's matmuls alone"


# -- models -------------------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy against one-hot `labels`."""
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))


def _dense_init(key, fan_in, fan_out, dtype):
    w = jax.random.normal(key, (fan_in, fan_out), dtype) / np.sqrt(fan_in)
    return {"w": w, "b": jnp.zeros((fan_out,), dtype)}


def mlp_params(key, dtype):
    sizes = [WIDTH] * (NUM_LAYERS + 1) + [NUM_CLASSES]
    keys = jax.random.split(key, len(sizes) - 1)
    return [_dense_init(k, a, b, dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_loss(params, x, labels, *, marked: bool):
    """`NUM_LAYERS` dense tanh layers of width `WIDTH`, then a dense softmax head."""
    h = x
    for i, layer in enumerate(params[:-1], start=1):
        h = jnp.tanh(h @ layer["w"] + layer["b"])
        if marked:
            h = pcgraph.node(h, name=f"layer{i}")
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return cross_entropy(logits, labels)


def _conv_init(key, c_in, c_out, dtype):
    w = jax.random.normal(key, (3, 3, c_in, c_out), dtype) / np.sqrt(9 * c_in)
    return {"w": w, "b": jnp.zeros((c_out,), dtype)}


def cnn_params(key, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    return [
        _conv_init(k1, 1, CHANNELS[0], dtype),
        _conv_init(k2, CHANNELS[0], CHANNELS[1], dtype),
        _dense_init(k3, IMAGE * IMAGE * CHANNELS[1], NUM_CLASSES, dtype),
    ]


def cnn_loss(params, x, labels):
    """Two 3x3 'SAME' convolutions with relu (NHWC), flatten, dense softmax head."""
    h = x
    for i, layer in enumerate(params[:2], start=1):
        h = jax.lax.conv_general_dilated(
            h, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = pcgraph.node(jax.nn.relu(h + layer["b"]), name=f"layer{i}")
    logits = h.reshape(h.shape[0], -1) @ params[2]["w"] + params[2]["b"]
    return cross_entropy(logits, labels)


class Model(NamedTuple):
    name: str
    shapes: str
    loss: Callable
    args: tuple
    il_step_size: float = 0.1  # IL's Euler step; the cost of a step does not depend on it
    placement: pcgraph.AbstractPlacement | None = None


def make_models(dtype) -> dict[str, Model]:
    kp, kx, ky, kc, ki = jax.random.split(jax.random.key(0), 5)
    classes = jax.random.randint(ky, (BATCH,), 0, NUM_CLASSES)
    labels = jax.nn.one_hot(classes, NUM_CLASSES, dtype=dtype)
    x_mlp = jax.random.normal(kx, (BATCH, WIDTH), dtype)
    x_img = jax.random.uniform(ki, (BATCH, IMAGE, IMAGE, 1), dtype)
    mlp_args = (mlp_params(kp, dtype), x_mlp, labels)
    mlp_shapes = (
        f"x[{BATCH},{WIDTH}] -> {NUM_LAYERS} x (dense {WIDTH}->{WIDTH}, tanh) -> "
        f"dense {WIDTH}->{NUM_CLASSES} -> softmax CE"
    )
    c1, c2 = CHANNELS
    flat = IMAGE * IMAGE * c2
    cnn_shapes = (
        f"x[{BATCH},{IMAGE},{IMAGE},1] -> conv3x3 1->{c1}, relu -> conv3x3 {c1}->{c2}, relu "
        f"-> flatten {flat} -> dense {flat}->{NUM_CLASSES} -> softmax CE"
    )
    return {
        "mlp": Model(
            "mlp (marked)",
            f"{mlp_shapes}; nodes at the {NUM_LAYERS} tanh outputs",
            functools.partial(mlp_loss, marked=True),
            mlp_args,
        ),
        "mlp-unmarked": Model(
            "mlp (unmarked)",
            f"{mlp_shapes}; no marks, every primitive result is a node",
            functools.partial(mlp_loss, marked=False),
            mlp_args,
            placement=pcgraph.Primitives(),
            # The loss's reduce_sum nodes have Jacobians with hundreds of ones, so Euler(0.1)
            # diverges on this graph; 0.005 is stable.
            il_step_size=0.005,
        ),
        "cnn": Model(
            "cnn (marked)",
            f"{cnn_shapes}; nodes at the 2 relu outputs",
            cnn_loss,
            (cnn_params(kc, dtype), x_img, labels),
        ),
    }


# -- what is timed ------------------------------------------------------------------------------


def pc_algorithm(model: Model, algorithm: str, num_steps: int) -> pcgraph.AbstractAlgorithm:
    """Exactly `num_steps` steps (`rtol=None`). `throw=False` keeps runtime checks out of the
    timed program; the status is printed instead."""
    if algorithm == "IL":
        stepper = pcgraph.Euler(model.il_step_size)
        return pcgraph.IL(stepper=stepper, max_steps=num_steps, rtol=None, throw=False)
    return pcgraph.FPA(max_steps=num_steps, rtol=None, throw=False)


def pc_solve(model: Model, algorithm: str, num_steps: int) -> Callable:
    alg = pc_algorithm(model, algorithm, num_steps)
    return jax.jit(
        lambda *args: pcgraph.relax(model.loss, *args, algorithm=alg, placement=model.placement)
    )


def grad_loop(loss: Callable, k: int, lr: float = 1e-6) -> Callable:
    """`k` gradient evaluations in one compiled loop (a diagnostic). Each takes a tiny SGD step
    so that the next gradient depends on it and XLA cannot hoist it out of the loop."""

    def run(params, *data):
        def body(_, p):
            g = jax.grad(loss)(p, *data)
            return jax.tree.map(lambda a, b: a - lr * b, p, g)

        return jax.lax.fori_loop(0, k, body, params)

    return jax.jit(run)


def reference_steps(params, x, labels) -> dict[str, Callable[[int], Callable]]:
    """The marked MLP's relaxation written out by hand, as loops of `n` steps (a diagnostic).

    IL: Euler steps (size 0.1) on `F(z) = sum_l 1/2 ||z_l - tanh(z_{l-1} W_l + b_l)||^2 + CE`
    with `jax.value_and_grad` in the node values `z`. FPA: Euler steps (size 1) on the errors,
    `eps <- J^T eps + dCE/dz`, with the transpose `J^T` of the prediction pass linearised once
    at the feedforward values (one `jax.vjp` before the loop). IL's arithmetic: the same IL
    steps with nothing but the arithmetic they need, written out (each node's tanh prediction,
    its error, the error scaled by tanh's derivative, its pull-back, the update): nothing an IL
    step of this network could leave out. IL's elementwise work: that arithmetic with every
    product replaced by the identity embedding `[I; 0]` of its shape, so that no matmul
    separates its parts: the elementwise work of an IL step compiled alone. IL's matmuls: only
    the products an IL step cannot avoid, `z_l @ W_{l+1}` and `d_{l+1} @ W_{l+1}^T` for every
    free node (the floor of an IL step when matmuls run one at a time, as XLA:CPU runs them).
    """

    def predict(zs, params):
        inputs = [x, *zs]
        mus = [jnp.tanh(h @ p["w"] + p["b"]) for h, p in zip(inputs[:-1], params[:-1])]
        logits = inputs[-1] @ params[-1]["w"] + params[-1]["b"]
        return mus, cross_entropy(logits, labels)

    def feedforward(params):
        h, zs = x, []
        for p in params[:-1]:
            h = jnp.tanh(h @ p["w"] + p["b"])
            zs.append(h)
        return zs

    def energy(zs, params):
        mus, loss = predict(zs, params)
        return loss + sum(0.5 * jnp.sum((z - m) ** 2) for z, m in zip(zs, mus))

    zero = jnp.zeros((), x.dtype)

    def il(n: int) -> Callable:
        def run(params):
            def body(_, carry):
                zs, _ = carry
                e, g = jax.value_and_grad(energy)(zs, params)
                return [z - 0.1 * gz for z, gz in zip(zs, g)], e.astype(zero.dtype)

            return jax.lax.fori_loop(0, n, body, (feedforward(params), zero))

        return jax.jit(run)

    def fpa(n: int) -> Callable:
        def run(params):
            zs = feedforward(params)
            (_, loss), vjp_fn = jax.vjp(lambda v: predict(v, params), zs)

            def body(_, carry):
                errors, _ = carry
                (pulled,) = vjp_fn(([-e for e in errors], jnp.ones((), loss.dtype)))
                e = loss + sum(0.5 * jnp.sum(err**2) for err in errors)
                return [-b for b in pulled], e.astype(zero.dtype)

            return jax.lax.fori_loop(0, n, body, ([jnp.zeros_like(z) for z in zs], zero))

        return jax.jit(run)

    def il_arithmetic_loop(n: int, product, pull_back) -> Callable:
        def run(params):
            ws, bs = [p["w"] for p in params], [p["b"] for p in params]
            zs = feedforward(params)
            first = zs[0]  # the first node's prediction: its input x is clamped

            def body(_, zs):
                mus = [first]
                mus += [jnp.tanh(product(z, w) + b) for z, w, b in zip(zs, ws[1:-1], bs[1:-1])]
                errors = [z - mu for z, mu in zip(zs, mus)]
                scaled = [e * (1 - mu * mu) for e, mu in zip(errors[1:], mus[1:])]
                probs = jax.nn.softmax(product(zs[-1], ws[-1]) + bs[-1])
                scaled.append((labels - probs) / labels.shape[0])  # -dCE/dlogits
                pulled = [pull_back(d, w) for d, w in zip(scaled, ws[1:])]
                return [z - 0.1 * (e - p) for z, e, p in zip(zs, errors, pulled)]

            return jax.lax.fori_loop(0, n, body, zs)

        return jax.jit(run)

    def il_arithmetic(n: int) -> Callable:
        return il_arithmetic_loop(n, lambda z, w: z @ w, lambda d, w: d @ w.T)

    def il_elementwise(n: int) -> Callable:
        # Each product `z @ W` replaced by what it gives for `W = [I; 0]` of W's shape (the
        # layers' widths never grow): the same arithmetic, with no matmul between its parts.
        def embed(z, w):
            return z[:, : w.shape[1]]

        def pad(d, w):
            return jnp.pad(d, ((0, 0), (0, w.shape[0] - d.shape[1])))

        return il_arithmetic_loop(n, embed, pad)

    def il_matmuls(n: int) -> Callable:
        def run(params):
            weights = [p["w"] for p in params[1:]]

            def body(_, zs):
                forward = [z @ w for z, w in zip(zs, weights)]
                backward = [f @ w.T for f, w in zip(forward, weights)]
                # The tiny step keeps each product dependent on the last, so none is hoisted.
                return [z + 1e-3 * b for z, b in zip(zs, backward)]

            return jax.lax.fori_loop(0, n, body, feedforward(params))

        return jax.jit(run)

    return {
        "IL written by hand": il,
        "FPA written by hand": fpa,
        "IL's arithmetic alone": il_arithmetic,
        "IL's elementwise work alone": il_elementwise,
        "IL's matmuls alone": il_matmuls,
    }


# -- timing -------------------------------------------------------------------------------------


class Bench:
    """One compiled function, called `number` times per timing sample."""

    def __init__(self, fn: Callable, args: tuple, min_time: float):
        self.fn, self.args = fn, args
        self.output = jax.block_until_ready(fn(*args))  # compile and warm up
        self.timer = timeit.Timer(lambda: jax.block_until_ready(fn(*args)))
        self.number = 1
        while True:  # calibrate: one sample takes at least min_time
            elapsed = self.timer.timeit(self.number)
            if elapsed >= min_time or self.number >= 1 << 20:
                break
            grow = int(self.number * 1.2 * min_time / max(elapsed, 1e-9))
            self.number = max(self.number * 2, grow)
        self.samples: list[float] = []

    def sample(self):
        self.samples.append(self.timer.timeit(self.number) / self.number)

    def seconds(self, stat: str) -> float:
        return min(self.samples) if stat == "min" else statistics.median(self.samples)


def per_step(benches: dict, label: str, steps: tuple[int, int], stat: str) -> tuple[float, float]:
    """Seconds per step of `label` from its benches at two step counts, and the fixed part of a
    call (everything that does not repeat per step: dispatch, feedforward, read-out)."""
    (n1, n2), (t1, t2) = steps, (benches[label, n].seconds(stat) for n in steps)
    step = (t2 - t1) / (n2 - n1)
    return step, t1 - n1 * step


def run_rounds(benches: dict[str, Bench], repeats: int):
    """Time every bench once per round, for `repeats` rounds."""
    for _ in range(repeats):
        for bench in benches.values():
            bench.sample()


def _computations(text: str) -> dict[str, list[str]]:
    """The lines of each computation in XLA's HLO text, by name (the entry one as "ENTRY")."""
    computations: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            lines = computations.setdefault("ENTRY" if header.group(1) else header.group(2), [])
        else:
            lines.append(line)
    return computations


def _products(computations: dict[str, list[str]]) -> Callable[[str], tuple[int, int]]:
    """`name -> (matmuls, convolutions)` in a computation and those it calls."""

    @functools.cache
    def count(name: str) -> tuple[int, int]:
        dots = convs = 0
        for line in computations.get(name, ()):
            # CPU: dot / convolution ops; GPU: cuBLAS / cuDNN custom calls.
            dots += bool(re.search(r"= \S+ dot\(|custom_call_target=\"[^\"]*(gemm|matmul)", line))
            convs += bool(re.search(r"= \S+ convolution\(|custom_call_target=\"[^\"]*conv", line))
            for callee in re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", line):
                d, c = count(callee)
                dots, convs = dots + d, convs + c
        return dots, convs

    return count


def _compiled_text(fn: Callable, args: tuple) -> str:
    return fn.lower(*args).compile().as_text()


def ops_per_loop_iteration(fn: Callable, args: tuple) -> str:
    """Matmuls and convolutions in the body of the compiled program's (outermost) while loop,
    read from XLA's HLO text: what one relaxation step computes. A diagnostic only: the text
    format is XLA's and may change."""
    try:
        text = _compiled_text(fn, args)
    except Exception as error:  # noqa: BLE001 - a diagnostic must not stop the benchmark
        return f"n/a ({type(error).__name__})"
    return _products_per_loop_iteration(text)


def _products_per_loop_iteration(text: str) -> str:
    bodies = re.findall(r"while\(.*?body=%([\w.\-]+)", text)
    dots, convs = _products(_computations(text))(bodies[0] if bodies else "ENTRY")
    where = "per loop iteration" if bodies else "in the program"
    return f"{dots} matmuls, {convs} convolutions {where}"


KERNEL_KINDS = ("matmuls", "elementwise", "copies")
# Instructions that run no kernel of their own.
_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while"}


def kernel_times(fn: Callable, args: tuple, text: str, calls: int = 3) -> str:
    """Where one iteration of the compiled program's relaxation loop spends its time, by kind
    of kernel: matmuls and convolutions, copies, and the rest (elementwise work and
    reductions). The loop body's instructions are read from XLA's HLO text and matched by name
    to the kernel events of a `jax.profiler` trace of `calls` calls of `fn` (on a CPU, each
    instruction of the compiled program runs as one kernel); each kernel counts with the
    median of its runs. `text` is the compiled program's HLO text. A diagnostic only: the
    profiler adds a little to every kernel, and the trace format is XLA's."""
    try:
        computations = _computations(text)
        body = re.findall(r"while\(.*?body=%([\w.\-]+)", text)[0]
        products = _products(computations)
        kinds = {}
        for line in computations[body]:
            match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
            if match is None or match.group(2) in _NOT_KERNELS:
                continue
            name, opcode = match.groups()
            called = re.findall(r"calls=%([\w.\-]+)", line)
            if opcode in ("dot", "convolution") or any(sum(products(c)) for c in called):
                kinds[name] = "matmuls"
            else:
                kinds[name] = "copies" if opcode == "copy" else "elementwise"
        with tempfile.TemporaryDirectory() as directory:
            with jax.profiler.trace(directory, create_perfetto_trace=True):
                for _ in range(calls):
                    jax.block_until_ready(fn(*args))
            (trace,) = pathlib.Path(directory).rglob("*.trace.json.gz")
            events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    except Exception as error:  # noqa: BLE001 - a diagnostic must not stop the benchmark
        return f"kernel times n/a ({type(error).__name__})"
    durations: dict[str, list[float]] = {name: [] for name in kinds}
    for event in events:
        if event.get("ph") == "X" and event.get("name") in durations:
            durations[event["name"]].append(event["dur"])
    if not any(durations.values()):
        return "kernel times n/a (no kernel of the loop in the trace)"
    # Each kernel's median over its runs (one per call and step): a disturbed run does not
    # count.
    micros = dict.fromkeys(KERNEL_KINDS, 0.0)
    for name, runs in durations.items():
        micros[kinds[name]] += statistics.median(runs) if runs else 0.0
    counts = {kind: list(kinds.values()).count(kind) for kind in KERNEL_KINDS}
    parts = [f"{kind} {micros[kind]:.1f} us ({counts[kind]} kernels)" for kind in KERNEL_KINDS]
    return "per step, profiled: " + ", ".join(parts)


def loop_diagnostics(fn: Callable, args: tuple) -> list[str]:
    """The products per iteration of the compiled program's loop and its kernel times, from
    one compilation."""
    try:
        text = _compiled_text(fn, args)
    except Exception as error:  # noqa: BLE001 - a diagnostic must not stop the benchmark
        return [f"n/a ({type(error).__name__})"]
    return [_products_per_loop_iteration(text), kernel_times(fn, args, text)]


# -- main ---------------------------------------------------------------------------------------


def header(dtype) -> str:
    devices = jax.devices()
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "pcgraph relaxation step cost",
        f"  python {platform.python_version()}, jax {jax.__version__}, jaxlib "
        f"{jax.lib.__version__}, pcgraph {pcgraph.__version__}",
        f"  backend {jax.default_backend()}: {len(devices)} x {kinds}; host {cpu}, "
        f"{os.cpu_count()} CPUs",
        f"  dtype {jnp.dtype(dtype).name}, batch {BATCH}",
    ]
    if os.environ.get("XLA_FLAGS"):
        lines.append(f"  XLA_FLAGS={os.environ['XLA_FLAGS']}")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time one pcgraph relaxation step against one jax.grad call."
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the number of timing rounds (default 1: 7 rounds, about 1.5 minutes "
        "on 2 CPU cores, most of it compiling; 0.5 for a quick look, 4 for a careful run)",
    )
    parser.add_argument("--repeats", type=int, help="timing rounds (overrides --scale)")
    parser.add_argument(
        "--min-time", type=float, default=0.1, help="seconds per timing sample (default 0.1)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs=2,
        default=(10, 60),
        metavar=("N1", "N2"),
        help="the two step counts that are differenced (default 10 60)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"]
    )
    parser.add_argument(
        "--stat",
        default="min",
        choices=["min", "median"],
        help="statistic over the rounds (default min: the least disturbed by other load)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["mlp", "mlp-unmarked", "cnn"],
        choices=["mlp", "mlp-unmarked", "cnn"],
    )
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="also count matmuls/convolutions per step, profile each step's kernels, time "
        "jax.grad inside a compiled loop, and time steps of the marked MLP written by hand",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.steps[0] < args.steps[1]:
        parser.error("--steps N1 N2 needs 0 <= N1 < N2")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)
    n1, n2 = args.steps
    repeats = args.repeats or max(3, round(7 * args.scale))
    start = time.perf_counter()

    print(header(dtype))
    print(
        f"  one step = (t({n2} steps) - t({n1} steps)) / {n2 - n1}; {args.stat} of {repeats} "
        f"interleaved rounds of >= {args.min_time:g} s samples",
        flush=True,
    )
    models = make_models(dtype)
    rows = []
    for key in args.models:
        model = models[key]
        graph = pcgraph.trace(model.loss, *model.args, placement=model.placement)
        print(f"\n{model.name}: {model.shapes}")
        print(f"  graph: {len(graph.nodes)} value nodes, depth {graph.depth}", flush=True)

        grad_fn = jax.jit(jax.grad(model.loss))
        solvers = {(alg, n): pc_solve(model, alg, n) for alg in ALGORITHMS for n in (n1, n2)}
        extra, references = {}, {}
        if args.diagnostics:
            extra = {("jax.grad loop", n): grad_loop(model.loss, n) for n in (n1, n2)}
        if key == "mlp":
            references = reference_steps(*model.args)
            if not args.diagnostics:
                references = {FLOOR: references[FLOOR]}
            for label, make in references.items():
                extra.update({(label, n): make(n) for n in (n1, n2)})
        benches = {"grad": Bench(grad_fn, model.args, args.min_time)}
        for name, fn in {**solvers, **extra}.items():
            fn_args = model.args[:1] if name[0] in references else model.args
            benches[name] = Bench(fn, fn_args, args.min_time)
        run_rounds(benches, repeats)
        marginal = functools.partial(per_step, benches, steps=(n1, n2), stat=args.stat)
        grad_time = benches["grad"].seconds(args.stat)
        print(f"  jax.grad: {grad_time * 1e6:.1f} us per jitted call", flush=True)
        if args.diagnostics:
            print(f"    {ops_per_loop_iteration(grad_fn, model.args)}")
            loop_step, _ = marginal("jax.grad loop")
            print(f"    {loop_step * 1e6:.1f} us per evaluation inside a compiled loop")
        for alg in ALGORITHMS:
            step, fixed = marginal(alg)
            stats = benches[alg, n2].output.stats
            status = pcgraph.RESULTS[stats.result] or "successful"
            print(
                f"  {alg}: {step * 1e6:.1f} us per step ({step / grad_time:.2f}x jax.grad), "
                f"{fixed * 1e6:.0f} us fixed per call ({fixed / grad_time:.1f}x)\n"
                f"    relaxation of {int(stats.num_steps)} steps: energy "
                f"{float(stats.initial_energy):.4g} -> {float(stats.energy):.4g}, {status}",
                flush=True,
            )
            if args.diagnostics:
                for line in loop_diagnostics(solvers[alg, n2], model.args):
                    print(f"    {line}", flush=True)
        floor = marginal(FLOOR)[0] if FLOOR in references else None
        for alg in ALGORITHMS:
            rows.append((model.name, alg, marginal(alg)[0], grad_time, floor))
        for label in references:
            step, _ = marginal(label)
            print(f"  {label}: {step * 1e6:.1f} us per step, {step / grad_time:.2f}x jax.grad")
            if args.diagnostics:
                kernels = loop_diagnostics(extra[label, n2], model.args[:1])[-1]
                print(f"    {kernels}", flush=True)
            rows.append((model.name, label, step, grad_time, floor))

    print(
        "\n| model | algorithm | step time (µs) | jax.grad time (µs) | / jax.grad | / floor "
        "| goal | met? |"
    )
    print("|---|---|---:|---:|---:|---:|---:|:---:|")
    for name, alg, step, grad_time, floor in rows:
        to_grad = step / grad_time
        to_floor = "" if floor is None else f"{step / floor:.2f}"
        goal, ratio, unit = GOALS.get(alg), to_grad, "jax.grad"
        if alg == "IL":
            goal, ratio, unit = (GOALS["IL"], step / floor, "floor") if floor else (None,) * 3
        verdict = "|" if goal is None else f"<= {goal}x {unit} | {'yes' if ratio <= goal else 'no'}"
        print(
            f"| {name} | {alg} | {step * 1e6:.1f} | {grad_time * 1e6:.1f} | {to_grad:.2f} "
            f"| {to_floor} | {verdict} |"
        )
    print(f"\n(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
