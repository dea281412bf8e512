"""Residual MLPs in the muPC, standard and neural-tangent parameterisations."""

import abc
import inspect
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._node import node


class AbstractParameterisation(eqx.Module):
    """How a [`pcgraph.nn.ResidualMLP`][] scales its weights: the multipliers `a_l` that
    multiply each weight matrix in the forward pass, and the standard deviation its entries are
    drawn from at initialisation.

    Concrete parameterisations are `pcgraph.nn.MuPC()` (the default), `pcgraph.nn.Standard()`
    and `pcgraph.nn.NeuralTangent()`. They are frozen `eqx.Module`s without fields, so they
    are hashable, compare equal when they are the same parameterisation, and can sit in the
    static fields of a model. The three are final: a new parameterisation subclasses this
    class, not them, and implements both methods.
    """

    @abc.abstractmethod
    def scalings(self, depth: int, width: int, in_size: int) -> tuple[float, ...]:
        """The multipliers `(a_1, ..., a_L)` of the `L = depth + 1` weight matrices of a
        network with `depth` hidden layers of `width` units and inputs of size `in_size`."""

    @abc.abstractmethod
    def init_std(self, fan_in: int) -> float:
        """The standard deviation of the (normal, zero-mean) initial entries of a weight
        matrix with `fan_in` inputs."""


class MuPC(AbstractParameterisation):
    """muPC, Depth-muP for predictive coding (Innocenti, Achour & Buckley 2025, "μPC: Scaling
    predictive coding to 100+ layer networks").

    Weights are drawn from `N(0, 1)`, and with `D = in_size`, `N = width` and `L = depth + 1`
    the multipliers are `a_1 = 1/sqrt(D)`, `a_l = 1/sqrt(N L)` on the residual branches
    (the Depth-muP branch scaling of Yang et al. 2023, "Tensor Programs VI", and Bordelon et
    al. 2023) and `a_L = 1/N` on the readout (the muP readout of Yang & Hu 2021, "Tensor
    Programs IV"). Each residual branch adds a variance of order `1/L`, so every hidden
    activity stays `O(1)` at any depth.
    """

    def scalings(self, depth: int, width: int, in_size: int) -> tuple[float, ...]:
        hidden = 1 / math.sqrt(width * (depth + 1))
        return (1 / math.sqrt(in_size), *([hidden] * (depth - 1)), 1 / width)

    def init_std(self, fan_in: int) -> float:
        return 1.0


class NeuralTangent(AbstractParameterisation):
    """The neural tangent parameterisation (NTP) of Jacot, Gabriel & Hongler 2018 ("Neural
    tangent kernel: convergence and generalization in neural networks").

    Weights are drawn from `N(0, 1)` and each matrix is multiplied by `1/sqrt(fan_in)`:
    `a_1 = 1/sqrt(in_size)` and `a_l = 1/sqrt(width)` for every later layer. It computes the
    same function at initialisation as `pcgraph.nn.Standard()` from the same draws; the two
    differ in how a gradient step moves it.
    """

    def scalings(self, depth: int, width: int, in_size: int) -> tuple[float, ...]:
        return (1 / math.sqrt(in_size), *([1 / math.sqrt(width)] * depth))

    def init_std(self, fan_in: int) -> float:
        return 1.0


class Standard(AbstractParameterisation):
    """The standard parameterisation (SP): weights drawn from `N(0, 1/fan_in)`, the LeCun
    normal initialisation (LeCun et al. 1998, "Efficient BackProp"), and every multiplier
    `a_l = 1`.

    It folds the `1/sqrt(fan_in)` of `pcgraph.nn.NeuralTangent()` into the weights, so the
    two compute the same function at initialisation from the same draws (Jacot, Gabriel &
    Hongler 2018). In a deep residual network its hidden activities grow exponentially with
    depth (Innocenti, Achour & Buckley 2025).
    """

    def scalings(self, depth: int, width: int, in_size: int) -> tuple[float, ...]:
        return (1.0,) * (depth + 1)

    def init_std(self, fan_in: int) -> float:
        return 1 / math.sqrt(fan_in)


# The string options that `parameterisation=` took before it took objects.
_FORMER_NAMES = {"mupc": MuPC, "sp": Standard, "ntp": NeuralTangent}


def _public_name(cls: type) -> str:
    return f"pcgraph.nn.{cls.__name__}" if cls.__module__ == __name__ else cls.__qualname__


def _check_parameterisation(parameterisation) -> None:
    if isinstance(parameterisation, AbstractParameterisation):
        return
    where = f"ResidualMLP(parameterisation={parameterisation!r})"
    if isinstance(parameterisation, type) and issubclass(
        parameterisation, AbstractParameterisation
    ):
        where = f"ResidualMLP(parameterisation={_public_name(parameterisation)})"
        if inspect.isabstract(parameterisation):
            raise TypeError(
                f"{where}: that is an abstract class; pass an instance of one of its "
                "subclasses, e.g. `parameterisation=pcgraph.nn.MuPC()`."
            )
        raise TypeError(
            f"{where}: that is the class, not an instance; instantiate it: "
            f"`parameterisation={_public_name(parameterisation)}()`."
        )
    if isinstance(parameterisation, str) and parameterisation.lower() in _FORMER_NAMES:
        name = _public_name(_FORMER_NAMES[parameterisation.lower()])
        raise TypeError(
            f"{where}: a parameterisation is an object, not a string; pass {name}() instead."
        )
    raise TypeError(
        f"{where}: must be an instance of pcgraph.nn.AbstractParameterisation: "
        "pcgraph.nn.MuPC() (the default), pcgraph.nn.Standard() or pcgraph.nn.NeuralTangent()."
    )


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
    | `MuPC()` (Depth-muP for PC) | `N(0, 1)` | `1/sqrt(D)` | `1/sqrt(N L)` | `1/N` |
    | `NeuralTangent()` (NTP) | `N(0, 1)` | `1/sqrt(D)` | `1/sqrt(N)` | `1/sqrt(N)` |
    | `Standard()` (SP) | `N(0, 1/fan_in)` (LeCun normal) | `1` | `1` | `1` |

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
    - `parameterisation`: a `pcgraph.nn.AbstractParameterisation` instance:
        `pcgraph.nn.MuPC()` (the default), `pcgraph.nn.Standard()` or
        `pcgraph.nn.NeuralTangent()`.
    - `activation`: the elementwise nonlinearity `phi`; `jax.nn.relu` by default.
    - `key`: a `jax.random` key for the weights.
    - `mark_nodes`: mark the hidden states as predictive-coding value nodes.
    - `dtype`: the weights' dtype; the default floating dtype when None.

    **Attributes:**

    - `weights`: the tuple `(W_1, ..., W_L)`, the trainable leaves.
    - `scalings`: the tuple `(a_1, ..., a_L)` of Python floats (static).
    - `parameterisation`: the parameterisation it was built with (static).
    """

    weights: tuple[jax.Array, ...]
    scalings: tuple[float, ...] = eqx.field(static=True)
    parameterisation: AbstractParameterisation = eqx.field(static=True)
    activation: Callable[[jax.Array], jax.Array] = eqx.field(static=True)
    mark_nodes: bool = eqx.field(static=True)

    def __init__(
        self,
        depth: int,
        width: int,
        in_size: int,
        out_size: int,
        *,
        parameterisation: AbstractParameterisation = MuPC(),  # noqa: B008 (frozen, immutable)
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
        _check_parameterisation(parameterisation)
        if not callable(activation):
            raise TypeError(
                f"ResidualMLP(activation={activation!r}): must be a callable such as `jax.nn.relu`."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        shapes = [(width, in_size), *[(width, width)] * (depth - 1), (out_size, width)]
        keys = jax.random.split(key, len(shapes))
        self.weights = tuple(
            parameterisation.init_std(shape[1]) * jax.random.normal(k, shape, dtype)
            for k, shape in zip(keys, shapes, strict=True)
        )
        self.scalings = parameterisation.scalings(depth, width, in_size)
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
