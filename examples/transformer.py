"""Train a small transformer to sort sequences, with backprop and with predictive coding.

The task is generated here: a sequence of LENGTH tokens drawn from VOCAB symbols (the
integers 0 to VOCAB - 1); the target at each position is the sorted sequence. The model is an
encoder-only transformer written with equinox: token and learned position embeddings, LAYERS
pre-norm blocks (multi-head self-attention and an MLP, each with a layer norm before it and a
residual connection around it), a final layer norm and a linear readout of each position.
The blocks are stacked (one pytree with a leading layer axis, built with `eqx.filter_vmap`)
and applied with `jax.lax.scan` over the layers, the usual way to keep compile time flat in
depth.

pcgraph lifts that scan: the residual stream becomes one value node stacked over the layers,
each layer's slice predicted from the previous one by the whole block, for all layers at once.
Everything else is traced at the level of JAX primitives (no marks).

Two runs from the same initialisation, the same batches and the same optimiser (Adam,
its learning rate decaying from LEARNING_RATE to 0 on a cosine schedule), differing only in
the gradient function: `eqx.filter_value_and_grad` (backprop) and
`pcgraph.filter_value_and_grad` (PC under the fixed-prediction assumption, exact after
`graph.depth` steps). The PC run also records, every step, how far its gradient is from
`jax.grad`'s at the same parameters.

Run:  pip install -e ".[examples]" && python examples/transformer.py [--steps 800]
      (--quick: 100 steps, for a smoke test)
"""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import command_line, save, train_each

import pcgraph

LENGTH = 10
VOCAB = 20
WIDTH = 32
HEADS = 4
LAYERS = 2
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
EVAL_EVERY = 50
FIGURE = pathlib.Path(__file__).parent / "figures" / "transformer.png"


def sorting_task(key, num_sequences: int):
    tokens = jax.random.randint(key, (num_sequences, LENGTH), 0, VOCAB)
    return tokens, jnp.sort(tokens, axis=-1)


class Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, key):
        k_attention, k_mlp = jax.random.split(key)
        self.norm1 = eqx.nn.LayerNorm(WIDTH)
        self.attention = eqx.nn.MultiheadAttention(
            HEADS, WIDTH, use_query_bias=True, use_output_bias=True, key=k_attention
        )
        self.norm2 = eqx.nn.LayerNorm(WIDTH)
        self.mlp = eqx.nn.MLP(WIDTH, WIDTH, 4 * WIDTH, 1, activation=jax.nn.gelu, key=k_mlp)

    def __call__(self, x):
        h = jax.vmap(self.norm1)(x)
        x = x + self.attention(h, h, h)
        return x + jax.vmap(self.mlp)(jax.vmap(self.norm2)(x))


class Transformer(eqx.Module):
    embedding: eqx.nn.Embedding
    positions: jax.Array
    blocks: Block  # stacked: every array leaf has a leading axis of length LAYERS
    norm: eqx.nn.LayerNorm
    readout: eqx.nn.Linear

    def __init__(self, key):
        k_embed, k_positions, k_blocks, k_readout = jax.random.split(key, 4)
        self.embedding = eqx.nn.Embedding(VOCAB, WIDTH, key=k_embed)
        self.positions = 0.1 * jax.random.normal(k_positions, (LENGTH, WIDTH))
        self.blocks = eqx.filter_vmap(Block)(jax.random.split(k_blocks, LAYERS))
        self.norm = eqx.nn.LayerNorm(WIDTH)
        self.readout = eqx.nn.Linear(WIDTH, VOCAB, key=k_readout)

    def __call__(self, tokens):
        x = jax.vmap(self.embedding)(tokens) + self.positions
        layers, static = eqx.partition(self.blocks, eqx.is_array)

        def apply_layer(x, layer):
            return eqx.combine(layer, static)(x), None

        x, _ = jax.lax.scan(apply_layer, x, layers)
        return jax.vmap(self.readout)(jax.vmap(self.norm)(x))


def loss_fn(model, tokens, targets):
    logits = jax.vmap(model)(tokens)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(targets, VOCAB), -1))


@eqx.filter_jit
def evaluate(model, tokens, targets):
    """Token accuracy and whole-sequence accuracy."""
    correct = jnp.argmax(jax.vmap(model)(tokens), axis=-1) == targets
    return jnp.mean(correct), jnp.mean(jnp.all(correct, axis=-1))


def plot(results, path: pathlib.Path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, history), color in zip(results.items(), ("C0", "C1"), strict=True):
        left.plot(history["step"], history["token"], "-", color=color, label=f"{name}: tokens")
        left.plot(
            history["step"], history["sequence"], "--", color=color, label=f"{name}: sequences"
        )
    left.set(
        xlabel="training step",
        ylabel="test accuracy",
        title=f"{LAYERS}-layer transformer sorting {LENGTH} tokens of {VOCAB}",
        ylim=(0.0, 1.0),
    )
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    right.semilogy(results["PC (FPA)"]["rel_error"], lw=0.8, color="C1")
    right.set(
        xlabel="training step",
        ylabel="||g_PC - g_backprop|| / ||g_backprop||",
        title="PC (FPA) gradient vs backprop's, at PC's own parameters",
    )
    right.grid(alpha=0.3, which="both")
    save(figure, path)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--steps", type=int, default=800, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and batches")
    parser.add_argument("--quick", action="store_true", help="100 steps: a smoke test")
    args = parser.parse_args()
    steps = 100 if args.quick else args.steps

    k_model, k_train, k_test = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    tokens, targets = sorting_task(k_train, steps * BATCH_SIZE)
    batches = list(
        zip(
            np.asarray(tokens).reshape(steps, BATCH_SIZE, LENGTH),
            np.asarray(targets).reshape(steps, BATCH_SIZE, LENGTH),
        )
    )
    test = sorting_task(k_test, 2000)
    model = Transformer(k_model)
    diff, rest = eqx.partition(model, eqx.is_inexact_array)
    graph = pcgraph.trace(lambda d: loss_fn(eqx.combine(d, rest), *batches[0]), diff)
    stacked = [info for info in graph.nodes if info.iterations is not None]
    print(
        f"graph: {len(graph.nodes)} value nodes, depth {graph.depth}; stacked over the layers: "
        + ", ".join(f"{info.name} {list(info.shape)}" for info in stacked)
    )

    # Adam, its learning rate decaying from LEARNING_RATE to 0 over the run.
    optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, steps))
    runs = {
        "backprop": (eqx.filter_value_and_grad(loss_fn), False),
        "PC (FPA)": (pcgraph.filter_value_and_grad(loss_fn), True),
    }

    def accuracies(model):
        token, sequence = evaluate(model, *test)
        return {"token": token, "sequence": sequence}

    results = train_each(
        runs, loss_fn, model, optimizer, batches, evaluate=accuracies, every=EVAL_EVERY, first=True
    )
    plot(results, FIGURE)

    print(
        f"\n{'method':<9}  {'token acc':>9}  {'sequence acc':>12}  {'final loss':>10}  "
        f"{'rel. error (max)':>16}  {'time (s)':>8}"
    )
    for name, h in results.items():
        rel = f"{max(h['rel_error']):.2e}" if name != "backprop" else "-"
        print(
            f"{name:<9}  {h['token'][-1]:>9.2%}  {h['sequence'][-1]:>12.2%}  "
            f"{np.mean(h['loss'][-EVAL_EVERY:]):>10.4f}  {rel:>16}  {h['seconds']:>8.1f}"
        )
    print("(test set: 2000 fresh sequences; final loss: mean over the last 50 steps)")
    print(f"saved {FIGURE}")


if __name__ == "__main__":
    main()
