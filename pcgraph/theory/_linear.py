"""The closed-form equilibrium of a deep linear predictive-coding network."""

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearEquilibrium(NamedTuple):
    """The exact inference equilibrium of a deep linear PC network.

    **Attributes:**

    - `energy`: the equilibrium energy `F*`, summed over the batch (pcgraph's convention;
        divide by the batch size for the batch-mean convention of other PC libraries).
    - `errors`: `[eps_1, ..., eps_{L-1}, eps_L]`: the hidden errors `z_l - mu_l` and, last, the
        output error `y - a_L W_L z_{L-1}`, each shaped like the layer (with the batch axis
        first when `x` has one).
    - `values`: the hidden activities `[z_1, ..., z_{L-1}]` at equilibrium.
    """

    energy: jax.Array
    errors: list[jax.Array]
    values: list[jax.Array]


def _positive_floats(name: str, values: Sequence[float]) -> list[float]:
    for value in values:
        if isinstance(value, bool) or not (
            isinstance(value, int | float) and math.isfinite(value) and value > 0
        ):
            raise ValueError(
                f"linear_equilibrium({name}=...): every entry must be a positive, finite Python "
                f"number, got {value!r}."
            )
    return [float(v) for v in values]


def linear_equilibrium(
    weights: Sequence[jax.Array],
    x: jax.Array,
    y: jax.Array,
    *,
    scalings: Sequence[float] | None = None,
    skip: bool = False,
    precisions: Sequence[float] | None = None,
    output_precision: float = 1.0,
) -> LinearEquilibrium:
    """The equilibrium energy, errors and activities of a deep linear PC network, in closed
    form.

    The network has `L` weight matrices `W_1, ..., W_L` (each shaped `(out, in)`, as in
    [`pcgraph.nn.ResidualMLP`][]), multipliers `a_l`, hidden activities `z_1, ..., z_{L-1}`
    and layer maps `M_1 = a_1 W_1`, `M_L = a_L W_L` and, for the hidden layers
    `2 <= l <= L - 1`, `M_l = a_l W_l` (plain chain) or `M_l = I + a_l W_l` (`skip=True`,
    the linear [`pcgraph.nn.ResidualMLP`][]). Its energy for one example is

        F(z) = sum_{l=1}^{L-1} p_l/2 ||z_l - M_l z_{l-1}||^2 + p_L/2 ||y - M_L z_{L-1}||^2,

    with `z_0 = x`, hidden precisions `p_l` and output precision `p_L`: the energy pcgraph
    relaxes for a function that marks each `z_l` with `pcgraph.node(z_l, precision=p_l)` and
    returns the loss `p_L/2 * sum ||y - M_L z_{L-1}||^2` (with `beta = 1`).

    **Derivation.** Write `eps_l` for the error of layer `l` (`eps_L = y - M_L z_{L-1}`) and
    `G_l = M_L M_{L-1} ... M_{l+1}` (`G_L = I`). Unrolling the layers gives
    `y = M_{L:1} x + sum_l G_l eps_l`, and the hidden activities are in one-to-one
    correspondence with the hidden errors, so inference minimises
    `sum_l p_l/2 ||eps_l||^2` subject to `sum_l G_l eps_l = r`, where `r = y - M_{L:1} x` is
    the feedforward residual. A Lagrange multiplier `lambda` gives `eps_l = G_l^T lambda / p_l`
    and the constraint gives `S lambda = r` with

        S = sum_{l=1}^{L} G_l G_l^T / p_l,

    hence, for each example `i`,

        eps_l* = G_l^T S^{-1} r_i / p_l,        F* = 1/2 r_i^T S^{-1} r_i,

    summed over the batch. With unit precisions `S = I + sum_{l=2}^{L} W_{L:l} W_{L:l}^T` in
    the notation of Innocenti et al. (2025) (`W_{L:l} = M_L ... M_l`). The activities follow
    forwards: `z_1 = M_1 x + eps_1`, `z_l = M_l z_{l-1} + eps_l`.

    **Arguments:**

    - `weights`: `[W_1, ..., W_L]`, at least two matrices.
    - `x`: the input, shape `(in,)` or `(batch, in)`.
    - `y`: the target, shape `(out,)` or `(batch, out)`.
    - `scalings`: the multipliers `[a_1, ..., a_L]`; all 1 when None.
    - `skip`: add the identity to the hidden-to-hidden maps (square `W_l`, `2 <= l <= L-1`).
    - `precisions`: the hidden precisions `[p_1, ..., p_{L-1}]`; all 1 when None.
    - `output_precision`: `p_L`.

    **Returns:**

    A [`pcgraph.theory.LinearEquilibrium`][].
    """
    weights = [jnp.asarray(w) for w in weights]
    num_layers = len(weights)
    if num_layers < 2 or any(w.ndim != 2 for w in weights):
        raise ValueError(
            f"linear_equilibrium(weights=...): needs a list of at least two 2-D weight matrices "
            f"[W_1, ..., W_L], got {num_layers} with shapes {[w.shape for w in weights]}."
        )
    scalings = [1.0] * num_layers if scalings is None else list(scalings)
    precisions = [1.0] * (num_layers - 1) if precisions is None else list(precisions)
    if len(scalings) != num_layers or len(precisions) != num_layers - 1:
        raise ValueError(
            f"linear_equilibrium: {num_layers} weight matrices need {num_layers} scalings and "
            f"{num_layers - 1} hidden precisions, got {len(scalings)} and {len(precisions)}."
        )
    precisions = _positive_floats("precisions", [*precisions, output_precision])
    for k, (w, nxt) in enumerate(zip(weights[:-1], weights[1:])):
        if nxt.shape[1] != w.shape[0]:
            raise ValueError(
                f"linear_equilibrium: W_{k + 2} has shape {nxt.shape} but W_{k + 1} outputs "
                f"{w.shape[0]} units."
            )
    for k, w in enumerate(weights[1:-1], start=2):
        if skip and w.shape[0] != w.shape[1]:
            raise ValueError(
                f"linear_equilibrium(skip=True): hidden weight W_{k} must be square, got "
                f"shape {w.shape}."
            )
    batched = jnp.ndim(x) == 2
    energy, errors, values = _solve(
        weights, jnp.atleast_2d(x), jnp.atleast_2d(y), tuple(scalings), skip, tuple(precisions)
    )
    if not batched:
        errors = [e[0] for e in errors]
        values = [v[0] for v in values]
    return LinearEquilibrium(energy, errors, values)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _solve(weights, x, y, scalings, skip, precisions):
    num_layers = len(weights)
    maps = [
        a * w + (jnp.eye(w.shape[0], dtype=w.dtype) if skip and 0 < k < num_layers - 1 else 0)
        for k, (a, w) in enumerate(zip(scalings, weights))
    ]
    # G_l = M_L ... M_{l+1}, built from the output backwards; `end_to_end` ends as M_{L:1}.
    end_to_end = jnp.eye(weights[-1].shape[0], dtype=maps[-1].dtype)
    tails = [None] * num_layers
    for k in reversed(range(num_layers)):
        tails[k] = end_to_end
        end_to_end = end_to_end @ maps[k]
    covariance = sum(g @ g.T / p for g, p in zip(tails, precisions))
    residual = y - x @ end_to_end.T
    multiplier = jnp.linalg.solve(covariance, residual.T).T  # one S^{-1} r_i per row
    energy = 0.5 * jnp.sum(residual * multiplier)
    errors = [multiplier @ g / p for g, p in zip(tails, precisions)]
    values = []
    z = x
    for m, eps in zip(maps[:-1], errors[:-1]):
        z = z @ m.T + eps
        values.append(z)
    return energy, errors, values
