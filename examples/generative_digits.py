"""A generative predictive-coding network on digits: classify, complete and generate by
inference.

The model runs top-down, label -> hidden -> image (Rao & Ballard 1999; Bogacz 2017). Its energy
is a negative log joint: a Gaussian prior on the label, a Gaussian hidden node around its
prediction from the label, and Gaussian (or, with `--pixels bernoulli`, Bernoulli) pixels around
their prediction from the hidden layer. The label and the image are both *latent arguments* of
one function (`latents=(1, 2)`), observed or inferred by the relaxation as each task needs:

- training (`pcgraph.train_step` with IL, Whittington & Bogacz 2017): both observed, the
  hidden layer relaxes, and the weights learn from the local errors;
- classification by inference: the image observed, the label inferred, read off as its argmax;
- completion: the top half of the image observed (`pcgraph.Observed` with a mask), the
  bottom half and the label inferred;
- generation: each one-hot label decoded top-down.

It prints, on the held-out 20% of scikit-learn's digits, `classification by inference:
accuracy 0.xx` and `completion of the bottom half: mse ratio 0.xx` (the completion's mean
squared error over that of the training-set mean image), and saves a figure of completions and
generated images.

Run:  pip install -e ".[examples]" && python examples/generative_digits.py
      (--quick: fewer epochs, under 3 minutes on 2 cores; --pixels bernoulli: binarised
      digits with Bernoulli pixels)
"""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import batch_order, command_line, digits, save
from tqdm import tqdm

import pcgraph

#: 30 hidden units per class.
HIDDEN = 300
#: Pixel precision: the inverse variance of the pixels around their prediction.
PIXEL_PRECISION = 20.0
#: The label's prior: Gaussian around every class at 0.1 (where an inferred label starts), with
#: this precision.
LABEL_START = 0.1
LABEL_PRECISION = 3.0
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
#: Heavy-ball steps of the relaxation (the energy is summed over the batch, so each example's
#: values move independently of the batch size). Inference from a label that knows nothing
#: takes long: the label's curvature is large (about 560, from the hidden layer's weights), so
#: the steps are small.
TRAIN = pcgraph.IL(stepper=pcgraph.Momentum(0.01, 0.8), max_steps=50)
INFER = pcgraph.IL(stepper=pcgraph.Momentum(0.004, 0.95), max_steps=2000)
#: Bernoulli pixels make the label stiffer still.
INFER_BERNOULLI = pcgraph.IL(stepper=pcgraph.Momentum(0.0015, 0.95), max_steps=2000)


def decode(params, label):
    """The top-down prediction of the image (its mean, or its logits) from a label."""
    hidden = pcgraph.node(label @ params["w1"] + params["b1"], name="hidden")
    return jax.nn.softplus(hidden) @ params["w2"] + params["b2"]


def make_neg_log_joint(pixels: str):
    pixel_energy = pcgraph.Gaussian(PIXEL_PRECISION) if pixels == "gaussian" else None

    def neg_log_joint(params, label, image):
        prediction = decode(params, label)
        prior = LABEL_PRECISION / 2 * jnp.sum((label - LABEL_START) ** 2)
        if pixel_energy is None:
            return prior + pcgraph.Bernoulli()(image, prediction)
        return prior + pixel_energy(image, prediction)

    return neg_log_joint


def init_params(key):
    """Each hidden unit starts tuned to one class (unit j to class j mod 10): a one-hot label
    predicts -1.5 for its class's units and -4.5 for the others, which the softplus nearly
    switches off. The image weights are random. With a random label-to-hidden layer instead,
    the inferred label settles on a blend of classes and the completion stays near the best
    linear predictor's error."""
    owner = np.arange(HIDDEN)[None, :] % 10 == np.arange(10)[:, None]
    return {
        "w1": jnp.asarray(3.0 * owner, jnp.float32),
        "b1": jnp.full((HIDDEN,), -4.5),
        "w2": jax.random.normal(key, (HIDDEN, 64)) / np.sqrt(HIDDEN),
        "b2": jnp.zeros((64,)),
    }


def load_data(pixels: str, seed: int):
    """The digits in [0, 1] (binarised for Bernoulli pixels), one-hot labels, 80/20 split."""
    x_train, x_test, y_train, y_test = digits(seed, one_hot=True)
    if pixels == "bernoulli":
        x_train, x_test = ((x > 0.5).astype(np.float32) for x in (x_train, x_test))
    return x_train, x_test, y_train, y_test


def everywhere(x):
    return jnp.ones(x.shape, bool)


def train(neg_log_joint, params, x_train, y_train, epochs: int, seed: int):
    optimizer = optax.adam(LEARNING_RATE)
    step = jax.jit(pcgraph.train_step(neg_log_joint, optimizer, algorithm=TRAIN, latents=(1, 2)))
    opt_state = optimizer.init(params)
    order = batch_order(len(x_train), epochs, seed, BATCH_SIZE)
    with tqdm(order, desc="training (IL)", unit="epoch") as bar:
        for epoch in bar:
            energy = 0.0
            for index in epoch:
                image, label = jnp.asarray(x_train[index]), jnp.asarray(y_train[index])
                observed = (pcgraph.Observed(label, everywhere(label)),
                            pcgraph.Observed(image, everywhere(image)))  # fmt: skip
                params, opt_state, info = step(params, opt_state, *observed)
                energy += float(info.stats.energy) / BATCH_SIZE
            bar.set_postfix(energy=f"{energy / len(epoch):.3f}")
    return params


def classify(neg_log_joint, params, images, algorithm):
    start = jnp.full((len(images), 10), LABEL_START)
    observed = pcgraph.Observed(images, everywhere(images))
    solution = pcgraph.relax(
        neg_log_joint, params, start, observed, latents=(1, 2), algorithm=algorithm
    )
    return jnp.argmax(solution.latents[0], axis=-1)


def complete(neg_log_joint, params, images, mean_image):
    top = jnp.arange(64) < 32
    start = jnp.where(top, images, mean_image)
    label = jnp.full((len(images), 10), LABEL_START)
    solution = pcgraph.relax(
        neg_log_joint,
        params,
        label,
        pcgraph.Observed(start, jnp.broadcast_to(top, images.shape)),
        latents=(1, 2),
        algorithm=INFER,
    )
    return solution.latents[1]


def save_figure(
    path,
    images,
    completed,
    generated,
    title="Generative PC on digits: completion of the bottom half, and generation per label",
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 10, figsize=(10, 4.4))
    top = np.where(np.arange(64) < 32, images[:10], np.nan)
    rows = [(images[:10], "held-out"), (top, "observed"), (completed[:10], "completed"),
            (generated, "generated")]  # fmt: skip
    for r, (row, label) in enumerate(rows):
        for k in range(10):
            ax = axes[r, k]
            ax.imshow(np.asarray(row[k]).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    for k in range(10):
        axes[3, k].set_xlabel(str(k), fontsize=9)
    fig.suptitle(title)
    save(fig, path, dpi=100)


def main():
    parser = command_line(__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--pixels", choices=["gaussian", "bernoulli"], default="gaussian")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", default="docs/figures/generative_digits.png")
    args = parser.parse_args()
    epochs = 20 if args.quick else args.epochs

    x_train, x_test, y_train, y_test = load_data(args.pixels, args.seed)
    neg_log_joint = make_neg_log_joint(args.pixels)
    example = (init_params(jax.random.key(0)), y_train[:4], x_train[:4])
    print(pcgraph.trace(neg_log_joint, *example, latents=(1, 2)))
    start = time.perf_counter()
    params = train(
        neg_log_joint, init_params(jax.random.key(args.seed)), x_train, y_train, epochs, args.seed
    )
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.0f} s")

    algorithm = INFER if args.pixels == "gaussian" else INFER_BERNOULLI
    predicted = classify(neg_log_joint, params, jnp.asarray(x_test), algorithm)
    accuracy = float(jnp.mean(predicted == jnp.argmax(y_test, axis=-1)))
    print(f"classification by inference: accuracy {accuracy:.2f}")
    if args.pixels == "bernoulli":
        return  # free binary pixels have no gradient flow inside [0, 1] to complete them
    mean_image = jnp.asarray(x_train.mean(axis=0))
    completed = complete(neg_log_joint, params, jnp.asarray(x_test), mean_image)
    bottom = slice(32, 64)
    mse = float(jnp.mean((completed[:, bottom] - x_test[:, bottom]) ** 2))
    baseline = float(jnp.mean((mean_image[bottom] - x_test[:, bottom]) ** 2))
    print(f"completion of the bottom half: mse ratio {mse / baseline:.2f}")
    generated = jax.nn.relu(decode(params, jnp.eye(10)))
    save_figure(pathlib.Path(args.figure), x_test, np.asarray(completed), np.asarray(generated))
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
