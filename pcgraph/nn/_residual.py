"""Residual MLPs in the standard, neural-tangent and muPC parameterisations."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._node import node

_PARAMETERISATIONS = ("mupc", "sp", "ntp")


def _scalings(parameterisation: str, depth: int, width: int, in_size: int) -> tuple[float, ...]:
    """The multipliers `a_1, ..., a_L` of the `L = depth + 1` weight matrices."""
    num_layers = depth + 1
    if parameterisation == "mupc":
        hidden = 1 / math.sqrt(width * num_layers)
        return (1 / math.sqrt(in_size), *([hidden] * (depth - 1)), 1 / width)
    if parameterisation == "ntp":
        return (1 / math.sqrt(in_size), *([1 / math.sqrt(width)] * depth))
    return (1.0,) * num_layers


def _init_std(parameterisation: str, fan_in: int) -> float:
    # SP folds the 1/sqrt(fan_in) of NTP into the weights; muPC and NTP draw them from N(0, 1).
    return 1 / math.sqrt(fan_in) if parameterisation == "sp" else 1.0


class ResidualMLP(eqx.Module):
    """A bias-free residual MLP with `depth` hidden layers of `width` units (the network of
    Innocenti et al. 2025, "μPC"), in one of three parameterisations.

    With `L = depth + 1` weight matrices `W_1` (`width x in_size`), `W_2, ..., W_{L-1}`
    (`width x width`) and `W_L` (`out_size x width`), multipliers `a_l` and activation `phi`:

        z_1 = a_1 W_1 x
        z_l = z_{l-1} + a_l W_l phi(z_{l-1})      for l = 2, ..., L - 1
        y   = a_L W_L phi(z_{L-1})

    The first and last layers have no skip connection. The parameterisations (`D = in_size`,
    `N = width`):

    | `parameterisation` | `W_l` drawn from | `a_1` | `a_l`, `2 <= l <= L-1` | `a_L` |
    |---|---|---|---|---|
    | `"mupc"` (Depth-muP for PC) | `N(0, 1)` | `1/sqrt(D)` | `1/sqrt(N L)` | `1/N` |
    | `"ntp"` (neural tangent) | `N(0, 1)` | `1/sqrt(D)` | `1/sqrt(N)` | `1/sqrt(N)` |
    | `"sp"` (standard) | `N(0, 1/fan_in)` (LeCun normal) | `1` | `1` | `1` |

    SP and NTP compute the same function at initialisation (the same draws give the same
    outputs); they differ in how a gradient step moves it. muPC keeps every hidden activity
    `O(1)` at any depth, since each residual branch adds a variance of order `1/L`; under SP and
    NTP the variance of `z_l` grows by a factor of about `1 + E[phi(u)^2]/Var(u)` per layer
    (`3/2` for ReLU), so exponentially with depth.

    The multipliers are static fields, constants of the model; the weights are its only array
    leaves, so the model itself can be the differentiated argument of [`pcgraph.grad`][] or
    `jax.grad` (and of `optax` updates), with no `eqx.filter` needed.

    With `mark_nodes=True` every hidden state is marked with
    `pcgraph.node(z_l, name=f"z{l}")`, so pcgraph's traced graph is the layered PC network of
    the literature: `depth` value nodes, each predicted from the one before, and the output
    computed directly from `z_{L-1}` inside the loss.

    **Arguments:**

    - `depth`: the number of hidden layers `L - 1` (at least 1; with 1 there is no residual
        block).
    - `width`: the hidden width `N`.
    - `in_size`, `out_size`: the input dimension `D` and the output dimension.
    - `parameterisation`: `"mupc"` (the default), `"sp"` or `"ntp"`.
    - `activation`: the elementwise nonlinearity `phi`; `jax.nn.relu` by default.
    - `key`: a `jax.random` key for the weights.
    - `mark_nodes`: mark the hidden states as predictive-coding value nodes.
    - `dtype`: the weights' dtype; the default floating dtype when None.

    **Attributes:**

    - `weights`: the tuple `(W_1, ..., W_L)`, the trainable leaves.
    - `scalings`: the tuple `(a_1, ..., a_L)` of Python floats (static).
    """

    weights: tuple[jax.Array, ...]
    scalings: tuple[float, ...] = eqx.field(static=True)
    parameterisation: str = eqx.field(static=True)
    activation: Callable[[jax.Array], jax.Array] = eqx.field(static=True)
    mark_nodes: bool = eqx.field(static=True)

    def __init__(
        self,
        depth: int,
        width: int,
        in_size: int,
        out_size: int,
        *,
        parameterisation: str = "mupc",
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        key: jax.Array,
        mark_nodes: bool = True,
        dtype=None,
    ):
        for name, value in (
            ("depth", depth),
            ("width", width),
            ("in_size", in_size),
            ("out_size", out_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ResidualMLP({name}={value!r}): must be a positive int, e.g. "
                    f"`ResidualMLP(depth=8, width=128, in_size=64, out_size=10, key=key)`."
                )
        if parameterisation not in _PARAMETERISATIONS:
            raise ValueError(
                f"ResidualMLP(parameterisation={parameterisation!r}) is not known; pass one of "
                + ", ".join(repr(p) for p in _PARAMETERISATIONS)
                + "."
            )
        if not callable(activation):
            raise TypeError(
                f"ResidualMLP(activation={activation!r}): must be a callable such as `jax.nn.relu`."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        shapes = [(width, in_size), *[(width, width)] * (depth - 1), (out_size, width)]
        keys = jax.random.split(key, len(shapes))
        self.weights = tuple(
            _init_std(parameterisation, shape[1]) * jax.random.normal(k, shape, dtype)
            for k, shape in zip(keys, shapes, strict=True)
        )
        self.scalings = _scalings(parameterisation, depth, width, in_size)
        self.parameterisation = parameterisation
        self.activation = activation
        self.mark_nodes = mark_nodes

    @property
    def depth(self) -> int:
        """The number of hidden layers `L - 1`."""
        return len(self.weights) - 1

    def hidden_states(self, x: jax.Array) -> list[jax.Array]:
        """The hidden states `[z_1, ..., z_{L-1}]` for an input `x` of shape `(in_size,)` or
        `(batch, in_size)`, each marked as a value node when `mark_nodes` is set."""
        a, weights = self.scalings, self.weights
        z = self._mark(a[0] * (x @ weights[0].T), 1)
        states = [z]
        for k in range(1, self.depth):
            z = self._mark(z + a[k] * (self.activation(z) @ weights[k].T), k + 1)
            states.append(z)
        return states

    def __call__(self, x: jax.Array) -> jax.Array:
        """The output `y = a_L W_L phi(z_{L-1})`, of shape `(out_size,)` or
        `(batch, out_size)` for an input of shape `(in_size,)` or `(batch, in_size)`."""
        z = self.hidden_states(x)[-1]
        return self.scalings[-1] * (self.activation(z) @ self.weights[-1].T)

    def _mark(self, z: jax.Array, layer: int) -> jax.Array:
        return node(z, name=f"z{layer}") if self.mark_nodes else z
