"""Hybrid (amortised) predictive coding on digits (Tschantz et al. 2023).

The generative network of `generative_digits.py` (label -> hidden -> image) classifies by
inference: it relaxes the label that best explains an image, from a start that knows nothing
(every class at 0.1). Here an encoder, a small feedforward network image -> label, learns to
propose that label at once: its guess starts the relaxation, the relaxation refines it, and the
encoder is trained to predict where the relaxation ends, while the generative network keeps
learning from labelled images with IL. The encoder's guess is passed as the latent argument's
value, which is where a relaxation of latents starts.

It prints, on the held-out 20% of digits, the energy at the start of inference from the cold
start and from the encoder's guess, how many relaxation steps the amortised start needs to reach
the cold start's final energy, and both accuracies; and saves a figure of the two energy
trajectories.

Run:  pip install -e ".[examples]" && python examples/amortised_digits.py  (--quick: fewer
      epochs, about 3 minutes on 2 cores)
"""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import batch_order, command_line, save
from generative_digits import (
    BATCH_SIZE,
    INFER,
    LABEL_START,
    everywhere,
    init_params,
    load_data,
    make_neg_log_joint,
    train,
)
from tqdm import tqdm

import pcgraph

ENCODER_HIDDEN = 64
#: The inference budget compared: the generative example's steps, 400 of them (the cold start
#: classifies about as well after 400 as after 2000).
BUDGET = eqx.tree_at(lambda il: il.max_steps, INFER, 400)


def encode(encoder, images):
    """The encoder's guess of the label latent: a linear read-out, free to match wherever the
    relaxation puts the label (which need not be a probability vector)."""
    hidden = jnp.tanh(images @ encoder["w1"] + encoder["b1"])
    return hidden @ encoder["w2"] + encoder["b2"]


def encoder_loss(encoder, images, target):
    return jnp.sum((encode(encoder, images) - target) ** 2) / len(images)


def init_encoder(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, ENCODER_HIDDEN)) / 8.0,
        "b1": jnp.zeros((ENCODER_HIDDEN,)),
        "w2": jax.random.normal(k2, (ENCODER_HIDDEN, 10)) / np.sqrt(ENCODER_HIDDEN),
        "b2": jnp.zeros((10,)),
    }


def infer(neg_log_joint, params, start, images, save_energy=False):
    """Relax the label from `start` with the images observed."""
    return pcgraph.relax(
        neg_log_joint,
        params,
        start,
        pcgraph.Observed(images, everywhere(images)),
        latents=(1, 2),
        algorithm=BUDGET,
        save_energy=save_energy,
    )


def train_encoder(neg_log_joint, params, encoder, x_train, epochs, seed):
    """Amortise: regress the encoder's guess onto the label the relaxation settles on from
    that guess (FPA's gradient of the regression, which equals backprop's)."""
    optimizer = optax.adam(3e-3)
    step = pcgraph.train_step(encoder_loss, optimizer)
    opt_state = optimizer.init(encoder)
    refine = jax.jit(lambda params, start, images: infer(
        neg_log_joint, params, start, images).latents[0])  # fmt: skip
    order = batch_order(len(x_train), epochs, seed, BATCH_SIZE)
    for epoch in tqdm(order, desc="training the encoder", unit="epoch"):
        for index in epoch:
            images = jnp.asarray(x_train[index])
            target = refine(params, encode(encoder, images), images)
            encoder, opt_state, _ = step(encoder, opt_state, images, target)
    return encoder


def steps_to_reach(trajectory, level) -> int | None:
    below = np.flatnonzero(np.asarray(trajectory) <= level)
    return int(below[0]) if below.size else None


def save_figure(path, cold, warm):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(cold, label="cold start (every class 0.1)")
    ax.plot(warm, label="amortised start (encoder's guess)")
    ax.set_xlabel("relaxation step")
    ax.set_ylabel("energy (held-out set)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Classification by inference: cold vs amortised start")
    save(fig, path, dpi=100)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", default="docs/figures/amortised_digits.png")
    args = parser.parse_args()
    epochs = 12 if args.quick else args.epochs

    x_train, x_test, y_train, y_test = load_data("gaussian", args.seed)
    neg_log_joint = make_neg_log_joint("gaussian")
    key = jax.random.key(args.seed)
    params = train(neg_log_joint, init_params(key), x_train, y_train, epochs, args.seed)
    encoder = train_encoder(
        neg_log_joint, params, init_encoder(jax.random.fold_in(key, 1)), x_train,
        epochs, args.seed,
    )  # fmt: skip

    images = jnp.asarray(x_test)
    cold = infer(neg_log_joint, params, jnp.full((len(images), 10), LABEL_START), images, True)
    warm = infer(neg_log_joint, params, encode(encoder, images), images, True)
    cold_energy = np.asarray(cold.stats.energy_trajectory)
    warm_energy = np.asarray(warm.stats.energy_trajectory)
    total = len(cold_energy) - 1
    needed = steps_to_reach(warm_energy, cold_energy[-1])
    labels = np.argmax(y_test, axis=-1)
    print(
        f"energy at the start of inference: cold {cold_energy[0]:.1f}, "
        f"amortised {warm_energy[0]:.1f}"
    )
    print(
        f"cold start's final energy after {total} steps: {cold_energy[-1]:.1f}; the amortised "
        f"start reaches it after {needed if needed is not None else 'more than ' + str(total)} "
        "steps"
    )
    for name, solution in (("cold", cold), ("amortised", warm)):
        accuracy = float(np.mean(np.argmax(solution.latents[0], axis=-1) == labels))
        print(f"classification by inference, {name} start: accuracy {accuracy:.2f}")
    guess = float(np.mean(np.argmax(encode(encoder, images), axis=-1) == labels))
    print(f"the encoder's guess alone: accuracy {guess:.2f}")
    save_figure(pathlib.Path(args.figure), cold_energy, warm_energy)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
