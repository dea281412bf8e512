"""Energy-based models: an energy `E(state, params, inputs)` and a cost on the state.

The learning rules in `_eqprop.py` only ever call the methods of `AbstractEnergy`, so the same
relaxation and the same estimators run on the predictive-coding energy of a traced function
(`_PCEnergy`) and on a continuous Hopfield network (`HopfieldEnergy`).
"""

import abc
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._energy import node_energies, total
from ._graph import Graph

PyTree = Any


class AbstractEnergy(eqx.Module):
    """An energy-based model: an energy over a relaxed state and a cost (output loss).

    Subclass it and implement `energy`, `cost` and `init_state`; hand it to
    [`pcgraph.ebm_relax`][] or [`pcgraph.ebm_grad`][] with [`pcgraph.EqProp`][] or
    [`pcgraph.CHL`][]. The state is any pytree of floating arrays; `params` any pytree of
    floating arrays (the gradients come back with its structure); `inputs` and `targets`
    anything the methods read.

    The learning rules relax the *total energy* `F_beta = E + beta * C` with the parameters
    held fixed: the free phase at `beta = 0` gives the model's prediction, and the loss being
    learned is the cost at that free equilibrium, `L(params) = C(s*_0, params, targets)`.
    The energy must not read the targets.
    """

    @abc.abstractmethod
    def energy(self, state: PyTree, params: PyTree, inputs: Any) -> jax.Array:
        """The internal energy `E(state, params, inputs)`, a scalar."""

    @abc.abstractmethod
    def cost(self, state: PyTree, params: PyTree, targets: Any) -> jax.Array:
        """The cost `C(state, params, targets)` the nudge pulls on, a scalar; its value at the
        free equilibrium is the loss being learned."""

    @abc.abstractmethod
    def init_state(self, params: PyTree, inputs: Any) -> PyTree:
        """Where the free phase starts when no state is given."""

    def total(self, state, params, inputs, targets, beta) -> jax.Array:
        """The total energy `F_beta = E + beta * C` (a subclass may override this to share
        work between the two terms)."""
        return self.energy(state, params, inputs) + beta * self.cost(state, params, targets)

    def force(self, state, params, inputs, targets, beta) -> tuple[jax.Array, PyTree]:
        """`(F_beta, -dF_beta/dstate)`: what the relaxation steps along. A subclass whose state
        is constrained overrides this to return a force that vanishes exactly at the
        constrained equilibria (see [`pcgraph.HopfieldEnergy`][])."""
        value, grad = jax.value_and_grad(self.total)(state, params, inputs, targets, beta)
        return value, jax.tree.map(jnp.negative, grad)


class _PCEnergy(AbstractEnergy):
    """The predictive-coding energy of a traced function: the state is the list of node values,
    `E = sum_i E_i(v_i, mu_i)` (see `pcgraph.Gaussian`), and the cost is the function's loss
    computed from the values that feed it. `inputs` and `targets` are both the function's data
    leaves; `frozen` holds the feedforward values the predictions read but cannot change.

    Its parameter gradient `dF/dparams` is the vector-Jacobian product of the prediction pass
    with cotangents `dE_i/dmu_i` and `beta`, the local rule of predictive coding.
    """

    graph: Graph = eqx.field(static=True)
    frozen: list[jax.Array]

    def _terms(self, state, params, data):
        predictions = self.graph.predict(state, params, data, self.frozen)
        node_energy = total(node_energies(self.graph, state, predictions))
        return node_energy, predictions.loss

    def energy(self, state, params, inputs):
        return self._terms(state, params, inputs)[0]

    def cost(self, state, params, targets):
        return self._terms(state, params, targets)[1]

    def init_state(self, params, inputs):
        return self.graph.feedforward(params, inputs).values

    def total(self, state, params, inputs, targets, beta):
        # One prediction pass for both terms (the loss reads the same data as the nodes).
        node_energy, loss = self._terms(state, params, inputs)
        return node_energy + beta * loss


@jax.custom_jvp
def _hard_sigmoid(s):
    return jnp.clip(s, 0.0, 1.0)


@_hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    # Slope 1 on the closed interval: at a saturated unit (s exactly 0 or 1) the force is the
    # one-sided force of the box-constrained energy, not jnp.clip's averaged slope of 1/2.
    inside = (s >= 0) & (s <= 1)
    return _hard_sigmoid(s), jnp.where(inside, ds, jnp.zeros_like(ds))


class HopfieldEnergy(AbstractEnergy):
    """The continuous Hopfield energy of a layered network with symmetric weights, the setting
    of equilibrium propagation (Scellier & Bengio 2017).

    With the input `x` clamped as layer 0 and free layers `s_1 ... s_L` (the last one is the
    output),

    `E(s) = 1/2 sum_l ||s_l||^2 - sum_l rho(s_{l-1}) W_l rho(s_l) - sum_l b_l . rho(s_l)`,

    with the hard sigmoid `rho(s) = clip(s, 0, 1)`, and the cost `C = 1/2 ||s_L - y||^2`.
    Both are summed over the leading batch axis: every example is its own network, nudged
    with strength `beta`, and the gradients are those of the summed loss (divide by the batch
    size for the mean).

    A unit's dynamics `ds/dt = rho'(s) (drive) - s` stop at a kink of `rho` when it saturates,
    so the state is kept in the box `[0, 1]` where `rho(s) = s`, as in Scellier & Bengio: the
    force is the projected-gradient map `clip(s + f, 0, 1) - s` of the raw force `f`, which is
    `f` inside the box and vanishes exactly at a saturated unit pushed outwards. An Euler step
    of at most 1 moves to a convex combination of two points of the box, so the state never
    leaves it.

    `params` is a list with one `{"w": W_l, "b": b_l}` per layer, `W_l` of shape
    `(n_{l-1}, n_l)`; make one with `init_params`. The state is the list of free layers, each
    of shape `(batch, n_l)`; `inputs` is `x` of shape `(batch, n_0)` (not passed through
    `rho`), `targets` is `y` of shape `(batch, n_L)` (e.g. one-hot labels).
    """

    def energy(self, state, params, inputs):
        below = [inputs, *(_hard_sigmoid(s) for s in state[:-1])]
        total = sum(0.5 * jnp.sum(s**2) for s in state)
        for s, h, layer in zip(state, below, params, strict=True):
            r = _hard_sigmoid(s)
            total = total - jnp.sum((h @ layer["w"]) * r) - jnp.sum(r @ layer["b"])
        return total

    def cost(self, state, params, targets):
        return 0.5 * jnp.sum((state[-1] - targets) ** 2)

    def init_state(self, params, inputs):
        """All units at 0, the common starting point of the free phase."""
        batch = jnp.shape(inputs)[:-1]
        return [jnp.zeros((*batch, *layer["b"].shape), layer["b"].dtype) for layer in params]

    def force(self, state, params, inputs, targets, beta):
        value, grad = jax.value_and_grad(self.total)(state, params, inputs, targets, beta)
        projected = [jnp.clip(s - g, 0.0, 1.0) - s for s, g in zip(state, grad, strict=True)]
        return value, projected

    @staticmethod
    def init_params(key: jax.Array, sizes: Sequence[int], dtype=jnp.float32) -> list[dict]:
        """Glorot-uniform weights and zero biases for layer sizes `(n_0, n_1, ..., n_L)`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `sizes`: the input size followed by the size of each free layer.
        - `dtype`: the parameters' floating dtype.
        """
        if len(sizes) < 2:
            raise ValueError(
                f"HopfieldEnergy.init_params(sizes={sizes!r}): give the input size and at least "
                "one layer size, e.g. `sizes=(64, 256, 10)`."
            )
        keys = jax.random.split(key, len(sizes) - 1)
        params = []
        for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
            limit = math.sqrt(6 / (fan_in + fan_out))
            w = jax.random.uniform(k, (fan_in, fan_out), dtype, -limit, limit)
            params.append({"w": w, "b": jnp.zeros((fan_out,), dtype)})
        return params
