"""A value node's term in the energy: how its value is scored against its prediction.

Each term is a negative log-density up to a constant (Rao & Ballard 1999; Friston 2005; Bogacz
2017): a Gaussian with a precision (a number, a per-unit array or a value computed from the
parameters), a Bernoulli or a categorical over logits. These records know nothing of graphs,
so the tracer, the node marks and the graph all use them from below.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class AbstractNodeEnergy(eqx.Module):
    """How a value node's value is scored against its prediction: the node's term in the
    energy, a negative log-density up to a constant. Pass one to
    [`pcgraph.node`][]`(x, energy=...)`."""

    @abc.abstractmethod
    def __call__(self, value: jax.Array, prediction: jax.Array, precision=None) -> jax.Array:
        """The energy term `E(value, prediction)`, a scalar summed over every entry. Use it in a
        loss to score what the function observes with the same term, e.g.
        `pcgraph.Gaussian(10.0)(image, mean)`. `precision` is a precision computed for the node,
        which replaces the energy's own (pcgraph passes it for a computed precision)."""

    @abc.abstractmethod
    def mean(self, prediction: jax.Array) -> jax.Array:
        """The node's expected value given its prediction: where its value starts, and the
        value the plain function computes."""

    def error(self, value: jax.Array, prediction: jax.Array) -> jax.Array:
        """The prediction error `value - mean(prediction)`."""
        return value - self.mean(prediction)

    def in_support(self, value: jax.Array) -> jax.Array:
        """Whether every entry of `value` lies where the density is defined."""
        return jnp.asarray(True)

    @property
    def describe(self) -> str:
        return type(self).__name__.lower()


class Gaussian(AbstractNodeEnergy):
    """A Gaussian node: `E = p/2 ||v - mu||^2`, with the prediction `mu` as the mean.

    **Arguments:**

    - `precision`: the inverse variance `p`: a positive Python number, an array broadcastable
        to the node (one precision per unit), or a value computed from the differentiated
        arguments, e.g. `jnp.exp(params["log_precision"])`: a *learnable* precision. With an
        array the term is the full negative log-density up to a constant,
        `1/2 sum p (v - mu)^2 - 1/2 sum log p`, so its local gradient
        `1/2 (eps^2 - 1/p)` vanishes where `p` is the inverse error variance (Friston 2005;
        Bogacz 2017). With a Python number `-1/2 log p` is a constant and is left out.
    """

    precision: float | jax.Array = 1.0

    def __check_init__(self):
        if _is_number(self.precision) and not (
            math.isfinite(self.precision) and self.precision > 0
        ):
            raise ValueError(
                f"pcgraph.Gaussian(precision={self.precision!r}): the precision must be "
                "positive and finite, e.g. `precision=2.0`; a learnable one can be kept "
                "positive as `jnp.exp(log_precision)`."
            )

    def __call__(self, value, prediction, precision=None):
        errors = value - prediction
        precision = self.precision if precision is None else precision
        if _is_number(precision):
            # One expression for a constant precision, so that results do not move by round-off.
            return jnp.sum(errors**2) * (precision / 2)
        precision = jnp.broadcast_to(precision, errors.shape)
        return (jnp.sum(precision * errors**2) - jnp.sum(jnp.log(precision))) / 2

    def mean(self, prediction):
        return prediction


class Bernoulli(AbstractNodeEnergy):
    """A Bernoulli node for values in `[0, 1]`, with the prediction as logits `mu`:
    `E = sum softplus(mu) - v mu`, the binary cross-entropy of `v` against `sigmoid(mu)`.
    The node's value starts at `sigmoid(mu)`, which is also what `pcgraph.node` returns.
    A relaxation that moves the value out of `[0, 1]` fails with a message saying so."""

    def __call__(self, value, prediction, precision=None):
        return jnp.sum(jax.nn.softplus(prediction) - value * prediction)

    def mean(self, prediction):
        return jax.nn.sigmoid(prediction)

    def in_support(self, value):
        return jnp.all((value >= 0) & (value <= 1))


class Categorical(AbstractNodeEnergy):
    """A categorical node over the last axis, with the prediction as logits `mu`:
    `E = -sum v log softmax(mu)`, the cross-entropy of the probabilities `v` against
    `softmax(mu)`. The node's value starts at `softmax(mu)`, which is also what `pcgraph.node`
    returns; a relaxation that moves an entry out of `[0, 1]` fails with a message saying
    so."""

    def __call__(self, value, prediction, precision=None):
        return -jnp.sum(value * jax.nn.log_softmax(prediction, axis=-1))

    def mean(self, prediction):
        return jax.nn.softmax(prediction, axis=-1)

    def in_support(self, value):
        return jnp.all((value >= 0) & (value <= 1))


def precision_value(energy: AbstractNodeEnergy, precision):
    """A Gaussian node's precision: its Python number, or the array computed for it."""
    return energy.precision if precision is None else precision


def error_energy(energy: AbstractNodeEnergy, error, precision) -> jax.Array:
    """A Gaussian node's term from its error alone (for the algorithms that hold errors
    rather than values)."""
    return energy(error, jnp.zeros_like(error), precision)
