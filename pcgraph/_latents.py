"""Latent arguments: inputs that the relaxation infers instead of holding them clamped."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


class Observed(eqx.Module):
    """A latent argument observed in part: the entries where `mask` is True stay clamped at
    `value`, the others are inferred by the relaxation, starting at `value`.

    Pass it in place of a latent argument, e.g. to complete an image from its top half:

    ```python
    solution = pcgraph.relax(
        neg_log_joint, params, pcgraph.Observed(image, mask=top_half), label,
        latents=(1, 2), algorithm=pcgraph.IL(),
    )
    completed = solution.latents[0]
    ```

    **Arguments:**

    - `value`: the argument: an array or a pytree of floating arrays.
    - `mask`: booleans of the same structure, each leaf broadcastable to its value's leaf.
    """

    value: Any
    mask: Any


def check_not_differentiated(latents, nums: Sequence[int], argnums: Sequence[int]):
    """Refuse a latent that is also a differentiated argument."""
    both = sorted(set(nums) & set(argnums))
    if both:
        raise ValueError(
            f"latents={latents!r} names argument {both[0]}, which is also differentiated "
            f"(argnums={tuple(argnums)!r}). A latent is inferred by the relaxation, a "
            "differentiated argument (a parameter) is learned from it; an argument is one or "
            "the other. Move the latent to its own argument."
        )


def unwrap(args: list[Any], nums: tuple[int, ...]) -> dict[int, Any]:
    """Replace each `Observed` latent in `args` by its value; return the masks by position,
    checked against the values."""
    masks = {}
    for n in nums:
        arg = args[n]
        if isinstance(arg, Observed):
            _check_mask(n, arg.value, arg.mask)
            masks[n] = arg.mask
            arg = args[n] = arg.value
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            where = f"latent argument {n}, leaf `{jax.tree_util.keystr(path) or '<root>'}`"
            if not eqx.is_array(leaf) or not jnp.issubdtype(leaf.dtype, jnp.floating):
                kind = type(leaf).__name__ if not eqx.is_array(leaf) else f"dtype {leaf.dtype}"
                raise TypeError(
                    f"pcgraph relaxes latents as floating arrays, but {where} is a {kind}. Pass "
                    "it as a floating JAX array, e.g. `jnp.asarray(x, jnp.float32)`."
                )
    return masks


def _check_mask(n: int, value, mask):
    call = f"pcgraph.Observed(value, mask) for latent argument {n}"
    if jax.tree.structure(mask) != jax.tree.structure(value):
        raise ValueError(
            f"{call}: the mask must have the value's structure, {jax.tree.structure(value)}, but "
            f"it has {jax.tree.structure(mask)}. Give one boolean array per leaf of the value."
        )

    def check(path, m, v):
        where = jax.tree_util.keystr(path) or "<root>"
        if jnp.result_type(m) != jnp.bool_:
            raise TypeError(
                f"{call}: the mask's leaf `{where}` has dtype {jnp.result_type(m)}; give "
                "booleans (True where the entry is observed), e.g. `mask = pixels >= 0`."
            )
        try:
            fits = jnp.broadcast_shapes(jnp.shape(m), jnp.shape(v)) == jnp.shape(v)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{call}: the mask's leaf `{where}` has shape {jnp.shape(m)}, which does not "
                f"broadcast to the value's shape {jnp.shape(v)}."
            )

    jax.tree_util.tree_map_with_path(check, mask, value)
