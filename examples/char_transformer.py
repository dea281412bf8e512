"""A character-level transformer language model on Tiny Shakespeare, trained with backprop and
with predictive coding.

The model is a standard decoder-only transformer written as an ordinary equinox module, with
no pcgraph marks: token and learned position embeddings, pre-LayerNorm blocks (causal
multi-head self-attention and a GELU MLP, each with a residual connection around it), a final
LayerNorm and a linear projection to the vocabulary. Its default size is that of FabricPC's
character-level PC transformer (embedding 64, 8 heads, MLP 256, 2 blocks, context 128):
116,673 parameters with a 65-character vocabulary. pcgraph places the value nodes itself
(`pcgraph.Layers()`, see docs/models.md); the output energy is the softmax cross-entropy of
the next character, a categorical energy (Pinchetti et al. 2022).

The text is split as TensorFlow Datasets' `tiny_shakespeare` (train = the first 1,003,854
characters, validation = the next 55,770, test = the last 55,770), read by
`pcgraph.datasets.read_text`. Every run starts from the same initialisation and sees the same
batches (windows of `--context` characters drawn uniformly from the training split), with the
same optimiser (Adam, gradients clipped to norm 1, the learning rate warmed up over 100 steps
and then decayed to 0 on a cosine schedule). Only the gradient differs:

- `backprop`: `eqx.filter_value_and_grad`;
- `fpa`: `pcgraph.filter_value_and_grad` with `pcgraph.FPA()` (equal to backprop);
- `il`: inference learning (Whittington & Bogacz 2017), each parameter's gradient read off
  its node's error at the end of the relaxation;
- `epc`: error optimisation (Goemaere et al. 2025), the same local read-out at IL's
  equilibrium;
- `ipc`: incremental PC (Salvatori et al. 2024), activities and parameters updated together.

Test perplexity and next-character accuracy are measured on the whole test split, cut into
non-overlapping windows of `--context` characters (each test character a target once).

Run:  python examples/char_transformer.py --algorithm backprop,epc --steps 5000
      python examples/char_transformer.py --quick          (a smoke test: small model, slice)
      python examples/char_transformer.py --cost           (time per step against backprop)
"""

import argparse
import dataclasses
import json
import math
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from tqdm import tqdm

import pcgraph

HERE = pathlib.Path(__file__).parent
DEFAULT_TEXT = HERE.parent.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt"
FIGURES = HERE / "figures"
FABRICPC_PARAMETERS = 108_353


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 64
    heads: int = 8
    mlp: int = 256
    blocks: int = 2
    context: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup: int = 100


QUICK = Config(width=32, heads=4, mlp=128, blocks=2, context=32, batch_size=16)
COST = Config(width=48, heads=8, mlp=192, blocks=2, context=32, batch_size=16)


# --------------------------------------------------------------------------------------------
# The model: an ordinary equinox transformer, nothing of pcgraph in it.


class Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, width: int, heads: int, mlp: int, *, key):
        k_attention, k_up, k_down = jax.random.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(width)
        self.attention = eqx.nn.MultiheadAttention(
            heads, width, use_query_bias=True, use_key_bias=True, use_value_bias=True,
            use_output_bias=True, key=k_attention,
        )  # fmt: skip
        self.norm2 = eqx.nn.LayerNorm(width)
        self.up = eqx.nn.Linear(width, mlp, key=k_up)
        self.down = eqx.nn.Linear(mlp, width, key=k_down)

    def __call__(self, x):
        """`x`: the residual stream of one sequence, `(context, width)`."""
        causal = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), dtype=bool))
        h = jax.vmap(self.norm1)(x)
        x = x + self.attention(h, h, h, mask=causal)
        h = jax.vmap(self.norm2)(x)
        return x + jax.vmap(self.down)(jax.nn.gelu(jax.vmap(self.up)(h)))


class CharTransformer(eqx.Module):
    embedding: eqx.nn.Embedding
    positions: jax.Array
    blocks: tuple[Block, ...]
    norm: eqx.nn.LayerNorm
    readout: eqx.nn.Linear

    def __init__(self, vocab_size: int, config: Config, *, key):
        k_embed, k_positions, k_readout, *k_blocks = jax.random.split(key, 3 + config.blocks)
        self.embedding = eqx.nn.Embedding(vocab_size, config.width, key=k_embed)
        self.positions = 0.02 * jax.random.normal(k_positions, (config.context, config.width))
        self.blocks = tuple(Block(config.width, config.heads, config.mlp, key=k) for k in k_blocks)
        self.norm = eqx.nn.LayerNorm(config.width)
        self.readout = eqx.nn.Linear(config.width, vocab_size, key=k_readout)

    def __call__(self, tokens):
        """Next-character logits `(length, vocab)` of one sequence of token ids `(length,)`,
        `length <= context`."""
        x = jax.vmap(self.embedding)(tokens) + self.positions[: tokens.shape[0]]
        for block in self.blocks:
            x = block(x)
        return jax.vmap(self.readout)(jax.vmap(self.norm)(x))


def loss_fn(model, inputs, targets):
    """Mean next-character cross-entropy (nats) over a batch of windows."""
    logits = jax.vmap(model)(inputs)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, targets[..., None], axis=-1))


def count_parameters(model) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


# --------------------------------------------------------------------------------------------
# The algorithms.


def il_stepper(step_size: float, momentum: float, clip: float):
    """IL's relaxation stepper: heavy-ball steps on the values, each force clipped elementwise
    to `clip` (0: no clipping). The forces at equilibrium are a few 1e-4 here (the loss is a
    mean over the batch's characters), so the clip never touches a relaxation that
    converges; it bounds the one that does not. After about 150 training steps the attention
    of the second block makes IL's energy stiff enough for steps of 0.1 (with or without
    momentum) to diverge within 12 steps, the energy rising 13-fold; clipped, the same
    relaxation stays at its initial energy and its gradient keeps a cosine of 0.80 with
    backprop's, so the run does not crash. It does not make IL train, though: IL's
    perplexity then stalls near 21, most likely because the bounded oscillation outweighs
    the true errors (docs/language-models.md)."""
    if clip <= 0:
        return pcgraph.Momentum(step_size, momentum)
    return pcgraph.OptaxStepper(
        optax.chain(optax.clip(clip), optax.sgd(step_size, momentum=momentum))
    )


def algorithms(args) -> dict:
    """Each algorithm's pcgraph configuration (None: backprop)."""
    return {
        "backprop": None,
        "fpa": pcgraph.FPA(),
        "il": pcgraph.IL(
            beta=args.beta,
            stepper=il_stepper(args.il_step_size, args.il_momentum, args.il_clip),
            max_steps=args.il_steps,
        ),
        "epc": pcgraph.EPC(
            beta=args.beta,
            stepper=pcgraph.Momentum(args.epc_step_size, args.epc_momentum),
            max_steps=args.epc_steps,
        ),
        "ipc": pcgraph.IPC(
            beta=args.beta, stepper=pcgraph.Euler(args.ipc_step_size), num_steps=args.ipc_steps
        ),
    }


def make_step(name: str, algorithm, optimizer, static):
    """`step(params, opt_state, inputs, targets) -> (params, opt_state, loss)`, jit-compiled;
    `params` are the model's floating arrays, `static` the rest."""

    def loss(params, inputs, targets):
        return loss_fn(eqx.combine(params, static), inputs, targets)

    if name == "backprop":
        value_and_grad = jax.value_and_grad(loss)
    elif name == "ipc":
        pc_step = pcgraph.train_step(loss, optimizer, algorithm=algorithm)

        def step(params, opt_state, inputs, targets):
            params, opt_state, info = pc_step(params, opt_state, inputs, targets)
            return params, opt_state, loss(params, inputs, targets)

        return step
    else:
        value_and_grad = pcgraph.value_and_grad(loss, algorithm=algorithm)

    @jax.jit
    def step(params, opt_state, inputs, targets):
        value, grads = value_and_grad(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def make_optimizer(config: Config, steps: int):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup, max(steps // 10, 1)), max(steps, 2)
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


# --------------------------------------------------------------------------------------------
# Evaluation and sampling.


@eqx.filter_jit
def _eval_batch(model, inputs, targets):
    log_p = jax.nn.log_softmax(jax.vmap(model)(inputs))
    nll = -jnp.sum(jnp.take_along_axis(log_p, targets[..., None], axis=-1))
    correct = jnp.sum(jnp.argmax(log_p, axis=-1) == targets)
    return nll, correct


def evaluate(model, inputs, targets, batch_size: int = 64):
    """(perplexity, next-character accuracy) over all windows given."""
    nll, correct = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        n, c = _eval_batch(
            model, inputs[start : start + batch_size], targets[start : start + batch_size]
        )
        nll, correct = nll + float(n), correct + int(c)
    return math.exp(nll / targets.size), correct / targets.size


def sample(model, data, prompt: np.ndarray, length: int, key) -> str:
    """`length` characters generated after `prompt` (token ids), each drawn from the model's
    softmax over the last `context` characters."""
    context = model.positions.shape[0]

    @eqx.filter_jit
    def next_token(model, window, position, key):
        logits = model(window)[position]
        return jax.random.categorical(key, logits)

    tokens = list(np.asarray(prompt)[-context:])
    for k in jax.random.split(key, length):
        window = np.zeros(context, np.int32)
        recent = tokens[-context:]
        window[: len(recent)] = recent
        tokens.append(int(next_token(model, jnp.asarray(window), len(recent) - 1, k)))
    return data.decode(np.asarray(tokens[len(prompt) :]))


# --------------------------------------------------------------------------------------------
# Training.


def train(name, algorithm, model, data, config, steps, args, eval_sets):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = make_optimizer(config, steps)
    opt_state = optimizer.init(params)
    step = make_step(name, algorithm, optimizer, static)
    batches = pcgraph.datasets.windows(
        data.train, config.context, config.batch_size, seed=args.seed
    )
    history = {"loss": [], "eval_step": [], "val_ppl": [], "step_seconds": []}
    inputs, targets = next(batches)
    compile_start = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, inputs, targets))  # compile, not counted
    history["compile_seconds"] = time.perf_counter() - compile_start
    batches = pcgraph.datasets.windows(
        data.train, config.context, config.batch_size, seed=args.seed
    )
    running = None
    start = time.perf_counter()
    eval_seconds = 0.0
    with tqdm(range(steps), desc=f"{name:<8}", unit="step", mininterval=2.0) as bar:
        for i in bar:
            inputs, targets = next(batches)
            t0 = time.perf_counter()
            params, opt_state, loss = step(params, opt_state, inputs, targets)
            loss = float(loss)
            history["step_seconds"].append(time.perf_counter() - t0)
            if not math.isfinite(loss):
                print(f"{name}: the training loss is {loss} at step {i + 1}; stopping.")
                break
            history["loss"].append(loss)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.set_postfix(ppl=f"{math.exp(running):.2f}")
            if (i + 1) % args.eval_every == 0 or i + 1 == steps:
                t0 = time.perf_counter()
                ppl, _ = evaluate(eqx.combine(params, static), *eval_sets["validation"])
                eval_seconds += time.perf_counter() - t0
                history["eval_step"].append(i + 1)
                history["val_ppl"].append(ppl)
                bar.write(f"{name} step {i + 1}: validation perplexity {ppl:.3f}")
    history["train_seconds"] = time.perf_counter() - start - eval_seconds
    history["steps"] = len(history["loss"])
    model = eqx.combine(params, static)
    history["test_ppl"], history["test_accuracy"] = evaluate(model, *eval_sets["test"])
    prompt = data.test[: config.context // 2]
    history["prompt"] = data.decode(prompt)
    history["sample"] = sample(model, data, prompt, args.sample_length, jax.random.key(args.seed))
    return model, history


def plot(results: dict, path: pathlib.Path, title: str):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, h in results.items():
        loss = np.asarray(h["loss"])
        window = max(1, min(100, len(loss) // 20))
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        left.plot(np.arange(window, len(loss) + 1), np.exp(smooth), label=name, lw=1)
        right.plot(h["eval_step"], h["val_ppl"], "o-", ms=3, label=name)
    left.set(xlabel="training step", ylabel="training perplexity (running mean)", yscale="log")
    right.set(xlabel="training step", ylabel="validation perplexity", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3, which="both")
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------------
# Cost per step against backprop.


def measure_cost(data, args, names, repeats: int = 20):
    """Median seconds per training step of each algorithm (through
    `pcgraph.filter_value_and_grad`; IL and ePC both with their defaults and with the settings
    this script trains with) on the COST model, against backprop's, interleaved so that the
    machine's load hits every algorithm alike."""
    config = COST
    model = CharTransformer(data.vocab_size, config, key=jax.random.key(args.seed))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    inputs, targets = next(pcgraph.datasets.windows(data.train, config.context, 16))
    configured = algorithms(args)
    settings = {"backprop": None, "fpa": pcgraph.FPA()}
    for name in names:
        if name in ("il", "epc"):
            settings[f"{name} (defaults)"] = {"il": pcgraph.IL(), "epc": pcgraph.EPC()}[name]
            settings[f"{name} (as trained)"] = configured[name]
    steps = {}
    for name, algorithm in settings.items():
        grad = (
            eqx.filter_value_and_grad(loss_fn)
            if name == "backprop"
            else pcgraph.filter_value_and_grad(loss_fn, algorithm=algorithm)
        )

        @eqx.filter_jit
        def step(model, opt_state, inputs, targets, grad=grad):
            loss, grads = grad(model, inputs, targets)
            updates, opt_state = optimizer.update(grads, opt_state, model)
            return eqx.apply_updates(model, updates), opt_state, loss

        jax.block_until_ready(step(model, opt_state, inputs, targets))
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(model, opt_state, inputs, targets))
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["backprop"]))
    print(
        f"\ncost per training step, width {config.width}, context {config.context}, batch "
        f"{config.batch_size}, {count_parameters(model)} parameters, each algorithm's "
        f"defaults ({repeats} interleaved repeats, median):"
    )
    print(f"{'algorithm':<18} {'ms/step':>9} {'vs backprop':>12}")
    for name, t in times.items():
        print(f"{name:<18} {1e3 * np.median(t):>9.2f} {np.median(t) / base:>11.2f}x")
    print("(as trained: " + ", ".join(f"{n} {configured[n]!r}" for n in ("il", "epc")) + ")")
    return {name: float(np.median(t)) for name, t in times.items()}


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--text", type=pathlib.Path, default=DEFAULT_TEXT, help="the corpus")
    parser.add_argument(
        "--algorithm", default="backprop,fpa,il,epc",
        help="comma-separated, from backprop, fpa, il, epc, ipc",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=5000, help="training steps per algorithm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", type=int, default=Config.context)
    parser.add_argument("--width", type=int, default=Config.width)
    parser.add_argument("--batch-size", type=int, default=Config.batch_size)
    parser.add_argument("--learning-rate", type=float, default=Config.learning_rate)
    parser.add_argument("--beta", type=float, default=1.0, help="IL / ePC / iPC output weight")
    parser.add_argument("--il-steps", type=int, default=12)
    parser.add_argument("--il-step-size", type=float, default=0.1)
    parser.add_argument("--il-momentum", type=float, default=0.8)
    parser.add_argument("--il-clip", type=float, default=1e-3, help="0: no clipping")
    parser.add_argument("--epc-steps", type=int, default=12)
    parser.add_argument("--epc-step-size", type=float, default=0.3)
    parser.add_argument("--epc-momentum", type=float, default=0.5)
    parser.add_argument("--ipc-steps", type=int, default=12)
    parser.add_argument("--ipc-step-size", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--val-windows", type=int, default=64, help="validation windows")
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results JSON")
    parser.add_argument("--figure", type=pathlib.Path, default=None)
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke test: a smaller model on the first 60,000 characters, 300 steps",
    )  # fmt: skip
    parser.add_argument(
        "--cost", action="store_true", help="only time one training step of each algorithm"
    )
    parser.add_argument(
        "--combine", type=pathlib.Path, nargs="+", default=None,
        help="only draw the figure and print the table of results JSONs written by --out",
    )  # fmt: skip
    return parser.parse_args(argv)


def report(results: dict, targets: int, context: int):
    """Print the results table."""
    base = results.get("backprop")
    print(
        f"\n{'algorithm':<9} {'steps':>6} {'ms/step':>8} {'wall (s)':>9} {'test ppl':>9} "
        f"{'accuracy':>9} {'vs backprop':>11}"
    )
    for name, h in results.items():
        rel = f"{h['test_ppl'] / base['test_ppl'] - 1:+.1%}" if base and name != "backprop" else ""
        print(
            f"{name:<9} {h['steps']:>6} {1e3 * np.median(h['step_seconds']):>8.1f} "
            f"{h['train_seconds']:>9.0f} {h['test_ppl']:>9.3f} {h['test_accuracy']:>9.2%} "
            f"{rel:>11}"
        )
    print(
        f"(test: all {targets:,} targets of the test split in windows of {context}; "
        "FabricPC: PC 9.12, backprop 6.60)"
    )


def main(argv=None):
    args = parse_args(argv)
    names = [n.strip() for n in args.algorithm.split(",") if n.strip()]
    unknown = set(names) - {"backprop", "fpa", "il", "epc", "ipc"}
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {sorted(unknown)}; use backprop, fpa, il, epc, ipc")
    if args.combine:
        results = {}
        for path in args.combine:
            results.update(json.loads(path.read_text()))
        first = next(iter(results.values()))
        report(results, first.get("test_targets", 0), first.get("context", 0))
        figure = args.figure or FIGURES / "char_transformer.png"
        plot(results, figure, f"character transformer, {first.get('parameters', 0):,} parameters")
        print(f"saved {figure}")
        return results
    if args.quick:
        text = pathlib.Path(args.text).read_text(encoding="utf-8")[:60_000]
        data = pcgraph.datasets.text_dataset(text, name=f"{args.text} (first 60,000)")
        config = dataclasses.replace(QUICK, learning_rate=args.learning_rate)
        steps = 300 if args.steps == 5000 else args.steps
        args.eval_every = min(args.eval_every, 100)
        args.sample_length = min(args.sample_length, 100)
    else:
        data = pcgraph.datasets.read_text(args.text)
        config = Config(
            width=args.width, context=args.context, batch_size=args.batch_size,
            learning_rate=args.learning_rate,
        )  # fmt: skip
        steps = args.steps
    print(
        f"{data.name}: {len(data.train):,} / {len(data.validation):,} / {len(data.test):,} "
        f"characters (train / validation / test), vocabulary {data.vocab_size}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {jax.devices()[0]}")
    if args.cost:
        return measure_cost(data, args, ["backprop", *[n for n in names if n != "backprop"]])

    model = CharTransformer(data.vocab_size, config, key=jax.random.key(args.seed))
    print(
        f"model: {count_parameters(model):,} parameters ({FABRICPC_PARAMETERS:,} in FabricPC's), "
        f"{config}"
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    inputs, targets = next(pcgraph.datasets.windows(data.train, config.context, 2))
    graph = pcgraph.trace(lambda p: loss_fn(eqx.combine(p, static), inputs, targets), params)
    print(f"graph: {len(graph.nodes)} value nodes, depth {graph.depth}, {graph.placement}")
    val = pcgraph.datasets.eval_windows(data.validation, config.context)
    eval_sets = {
        "validation": (val[0][: args.val_windows], val[1][: args.val_windows]),
        "test": pcgraph.datasets.eval_windows(data.test, config.context),
    }
    settings = algorithms(args)
    results = {}
    for name in names:
        _, history = train(name, settings[name], model, data, config, steps, args, eval_sets)
        history["algorithm"] = repr(settings[name]) if settings[name] else "backprop"
        history["context"] = config.context
        history["parameters"] = count_parameters(model)
        history["test_targets"] = int(eval_sets["test"][1].size)
        results[name] = history
        print(
            f"{name}: {history['steps']} steps, test perplexity {history['test_ppl']:.3f}, "
            f"accuracy {history['test_accuracy']:.2%}, "
            f"{1e3 * np.median(history['step_seconds']):.1f} ms/step (median), "
            f"{history['train_seconds']:.0f} s training"
        )
        print(f"--- {name} sample (after {history['prompt']!r}) ---\n{history['sample']}\n---")
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results))

    report(results, eval_sets["test"][1].size, config.context)
    figure = args.figure or FIGURES / (
        "char_transformer_quick.png" if args.quick else "char_transformer.png"
    )
    plot(results, figure, f"character transformer, {count_parameters(model):,} parameters")
    print(f"saved {figure}")
    return results


if __name__ == "__main__":
    main()
