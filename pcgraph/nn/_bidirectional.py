"""Bidirectional predictive coding: one network that classifies bottom-up and generates
top-down (Oliviers, Tang & Bogacz 2025)."""

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from .._algorithms import IL
from .._grad import relax
from .._latents import Observed
from .._node import node
from .._node_energy import Gaussian


def _check_precision(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"Bidirectional({name}={value!r}): must be a positive, finite Python number, e.g. "
            f"`{name}=1.0`."
        )
    return float(value)


def _check_layers(up_layers, down_layers) -> tuple[tuple, tuple]:
    for name, layers in (("up_layers", up_layers), ("down_layers", down_layers)):
        if not isinstance(layers, Sequence) or isinstance(layers, str):
            raise TypeError(
                f"Bidirectional({name}=...): give a list or tuple of layers (callables such as "
                f"`eqx.nn.Linear`), not a {type(layers).__name__}. A network such as "
                "`eqx.nn.MLP` gives its layers as `.layers`."
            )
        if not layers:
            raise ValueError(f"Bidirectional({name}=[]): give at least one layer.")
        for k, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(
                    f"Bidirectional({name}[{k}]={layer!r}): every layer must be callable, "
                    "mapping one example's state to the next."
                )
    if len(up_layers) != len(down_layers):
        raise ValueError(
            f"Bidirectional: {len(up_layers)} bottom-up layers and {len(down_layers)} top-down "
            "layers. bPC pairs each bottom-up layer f_l (z_{l-1} -> z_l) with a top-down layer "
            "g_l (z_l -> z_{l-1}), so give as many of each, both ordered from the input up."
        )
    return tuple(up_layers), tuple(down_layers)


def _batched(layer: Callable, z: jax.Array) -> jax.Array:
    """Apply a layer written for one example to every example of a batch."""
    return jax.vmap(layer)(z)


def _shape_of(layer: Callable, shape, dtype, what: str):
    try:
        out = jax.eval_shape(layer, jax.ShapeDtypeStruct(shape, dtype))
    except Exception as error:  # the layer's own message says what it expected
        raise ValueError(
            f"Bidirectional: {what} cannot take one example of shape {shape}: {error}"
        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"Bidirectional: {what} must return one array, but it returned {out!r}.")
    return out.shape


class Bidirectional(eqx.Module):
    """A bidirectional predictive-coding network (bPC; Oliviers, Tang & Bogacz 2025,
    "Bidirectional predictive coding").

    Every layer of a chain `z_0 = x` (the input, e.g. an image), `z_1, ..., z_{L-1}` (hidden
    states), `z_L = y` (the target, e.g. a one-hot label) is predicted twice: bottom-up from
    the layer below by `f_l` and top-down from the layer above by `g_l`. The energy is

        E = sum_{l=1..L} up_precision/2 ||z_l - f_l(phi(z_{l-1}))||^2
          + sum_{l=1..L} down_precision/2 ||z_{l-1} - g_l(phi(z_l))||^2

    with the activation `phi` applied to the hidden states only (the input and the target
    enter the layers as they are). Relaxing the hidden states on `E` combines both
    predictions; learning lowers `E` at the relaxed states, so that the bottom-up sweep
    `z_l = f_l(phi(z_{l-1}))` classifies like a discriminative network and the top-down
    sweep `z_{l-1} = g_l(phi(z_l))` generates like a generative one.

    In pcgraph the hidden states are value nodes: `energy` marks each bottom-up prediction
    with `pcgraph.node(..., precision=up_precision)`, so the bottom-up errors are node
    energies, and returns the target's bottom-up term plus every top-down term as its loss,
    computed with [`pcgraph.Gaussian`][]`(down_precision)` from the marked values. A
    relaxation moves the hidden states on the whole of `E`, and with IL's `beta=1` (its
    default) each weight reads its gradient `dE/dtheta` locally: a bottom-up weight from the
    error of the layer it predicts, a top-down weight from the error of the layer below.

    **Arguments:**

    - `up_layers`: the bottom-up layers `[f_1, ..., f_L]`, each a callable on one example
        (e.g. `eqx.nn.Linear`, or the `.layers` of an `eqx.nn.MLP`): `f_l` maps `phi(z_{l-1})`
        to the prediction of `z_l`.
    - `down_layers`: the top-down layers `[g_1, ..., g_L]`, also ordered from the input up:
        `g_l` maps `phi(z_l)` to the prediction of `z_{l-1}`, so `g_1` predicts the input and
        `g_L` takes the target.
    - `activation`: the elementwise nonlinearity `phi` of the hidden states.
    - `up_precision`, `down_precision`: the precisions (inverse variances) of the bottom-up
        and top-down errors, positive Python numbers.

    The layers are the model's only leaves besides static fields, so a model built from
    `eqx.nn.Linear` layers can be the differentiated argument of
    [`pcgraph.train_step`][] directly; with layers that hold non-array leaves, split the
    model with `eqx.partition` first. Every method takes a batch: a leading axis of examples,
    over which the layers are vmapped.

    !!! example

        ```python
        model = pcgraph.nn.Bidirectional.from_sizes([64, 256, 10], key=jax.random.key(0))
        step = pcgraph.train_step(
            lambda m, x, y: m.energy(x, y), optax.adam(1e-3), algorithm=pcgraph.IL()
        )
        model, opt_state, info = step(model, opt_state, images, one_hot_labels)
        predicted = jnp.argmax(model.bottom_up(images), axis=-1)
        generated = model.top_down(jnp.eye(10))
        ```
    """

    up_layers: tuple[Callable, ...]
    down_layers: tuple[Callable, ...]
    activation: Callable[[jax.Array], jax.Array] = eqx.field(static=True)
    up_precision: float = eqx.field(static=True)
    down_precision: float = eqx.field(static=True)

    def __init__(
        self,
        up_layers: Sequence[Callable],
        down_layers: Sequence[Callable],
        activation: Callable[[jax.Array], jax.Array] = jax.nn.tanh,
        *,
        up_precision: float = 1.0,
        down_precision: float = 1.0,
    ):
        self.up_layers, self.down_layers = _check_layers(up_layers, down_layers)
        if not callable(activation):
            raise TypeError(
                f"Bidirectional(activation={activation!r}): must be a callable such as "
                "`jax.nn.tanh`."
            )
        self.activation = activation
        self.up_precision = _check_precision("up_precision", up_precision)
        self.down_precision = _check_precision("down_precision", down_precision)

    @classmethod
    def from_sizes(
        cls,
        sizes: Sequence[int],
        *,
        key: jax.Array,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.tanh,
        up_precision: float = 1.0,
        down_precision: float = 1.0,
    ) -> "Bidirectional":
        """A bPC network of `eqx.nn.Linear` layers (with biases) between vector layers of the
        given sizes.

        **Arguments:**

        - `sizes`: the layer sizes from the input to the target, e.g. `[64, 256, 256, 10]`
            (at least two).
        - `key`: a `jax.random` key for the weights.
        - `activation`, `up_precision`, `down_precision`: as for `Bidirectional`.

        **Returns:**

        A `Bidirectional` whose bottom-up layer `l` is `eqx.nn.Linear(sizes[l-1], sizes[l])`
        and whose top-down layer `l` is `eqx.nn.Linear(sizes[l], sizes[l-1])`.
        """
        sizes = list(sizes)
        if len(sizes) < 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
        ):
            raise ValueError(
                f"Bidirectional.from_sizes(sizes={sizes!r}): give at least two positive ints, "
                "the input's size first and the target's last, e.g. `[64, 256, 10]`."
            )
        up_keys, down_keys = jax.random.split(key, (2, len(sizes) - 1))
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        up = [eqx.nn.Linear(a, b, key=k) for (a, b), k in zip(pairs, up_keys, strict=True)]
        down = [eqx.nn.Linear(b, a, key=k) for (a, b), k in zip(pairs, down_keys, strict=True)]
        return cls(up, down, activation, up_precision=up_precision, down_precision=down_precision)

    @property
    def depth(self) -> int:
        """The number of layer pairs `L`; the network has `L - 1` hidden states."""
        return len(self.up_layers)

    def energy(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The bPC energy of a batch, summed over its examples.

        Each hidden state `z_l` is a value node (named `hidden{l}`) marked at its bottom-up
        prediction. Relaxed by pcgraph, the function is the whole energy `E`: the node
        energies hold the hidden states' bottom-up errors and the returned value the rest
        (the target's bottom-up error and every top-down error). In plain JAX each hidden
        state is its bottom-up prediction, where its bottom-up error is zero, so the value
        returned is `E` at the bottom-up sweep.

        **Arguments:**

        - `x`: the inputs, shape `(batch, *input_shape)`.
        - `y`: the targets, shape `(batch, *target_shape)`, e.g. one-hot labels.

        **Returns:**

        A scalar. Train with
        `pcgraph.train_step(lambda m, x, y: m.energy(x, y), optimizer, algorithm=pcgraph.IL())`;
        infer the input or target by passing it as a latent (see `infer`).
        """
        self._check_shapes(x, y)
        states = [x]
        for layer_index in range(1, self.depth):
            prediction = self._up_prediction(states, layer_index)
            states.append(
                node(prediction, name=f"hidden{layer_index}", precision=self.up_precision)
            )
        states.append(y)
        loss = Gaussian(self.up_precision)(y, self._up_prediction(states, self.depth))
        down_energy = Gaussian(self.down_precision)
        for layer_index in range(1, self.depth + 1):
            prediction = self._down_prediction(states, layer_index)
            loss = loss + down_energy(states[layer_index - 1], prediction)
        return loss

    def example_energies(
        self, x: jax.Array, hidden: Sequence[jax.Array], y: jax.Array
    ) -> jax.Array:
        """The bPC energy `E` of each example at given hidden states, e.g. those returned by
        `infer`: to compare how well different targets explain an input.

        **Arguments:**

        - `x`: the inputs, shape `(batch, *input_shape)`.
        - `hidden`: the hidden states `[z_1, ..., z_{L-1}]`, each of shape
            `(batch, *state_shape)`.
        - `y`: the targets, shape `(batch, *target_shape)`.

        **Returns:**

        The energies, shape `(batch,)`.
        """
        shapes = self._check_shapes(x, y)
        hidden = list(hidden)
        expected = [(x.shape[0], *shape) for shape in shapes[1:-1]]
        if [jnp.shape(h) for h in hidden] != expected:
            raise ValueError(
                f"Bidirectional.example_energies: `hidden` holds states of shapes "
                f"{[jnp.shape(h) for h in hidden]}, but this network's hidden states for this "
                f"batch have shapes {expected}. Pass the hidden states that `infer` returns."
            )
        states = [x, *hidden, y]

        def per_example(precision, value, prediction):
            return jax.vmap(Gaussian(precision))(value, prediction)

        total = jnp.zeros(x.shape[0], jnp.result_type(x))
        for layer_index in range(1, self.depth + 1):
            up = self._up_prediction(states, layer_index)
            down = self._down_prediction(states, layer_index)
            total = total + per_example(self.up_precision, states[layer_index], up)
            total = total + per_example(self.down_precision, states[layer_index - 1], down)
        return total

    def bottom_up(self, x: jax.Array) -> jax.Array:
        """The bottom-up sweep `z_l = f_l(phi(z_{l-1}))` from the input: the discriminative
        prediction of the target (classification logits).

        **Arguments:**

        - `x`: the inputs, shape `(batch, *input_shape)`.

        **Returns:**

        The predicted targets, shape `(batch, *target_shape)`.
        """
        self._check_batch("x", x)
        z = x
        for layer_index, layer in enumerate(self.up_layers):
            z = _batched(layer, self._activate(z, layer_index))
        return z

    def top_down(self, y: jax.Array) -> jax.Array:
        """The top-down sweep `z_{l-1} = g_l(phi(z_l))` from the target: the generative
        prediction of the input (e.g. an image from a one-hot label).

        **Arguments:**

        - `y`: the targets, shape `(batch, *target_shape)`.

        **Returns:**

        The predicted inputs, shape `(batch, *input_shape)`.
        """
        return self._top_down_states(y)[0]

    def infer(
        self,
        x: "jax.Array | Observed | None",
        y: "jax.Array | Observed | None",
        *,
        algorithm=None,
    ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
        """Infer what is not observed of the input and the target by relaxing the energy with
        [`pcgraph.relax`][] (the hidden states relax with them).

        Pass an array to clamp it, a [`pcgraph.Observed`][] to clamp some of its entries
        (those where the mask is True) and infer the others from the values given, or None to
        infer it whole from the sweep of the other: `infer(None, labels)` generates inputs
        starting at the top-down sweep (hidden states too); `infer(Observed(images, mask),
        None)` completes images and infers their targets starting at the bottom-up sweep;
        `infer(images, None)` classifies by inference.

        **Arguments:**

        - `x`: the inputs, shape `(batch, *input_shape)`: an array, a `pcgraph.Observed`, or
            None.
        - `y`: the targets, shape `(batch, *target_shape)`: likewise; at most one of `x`, `y`
            is None.
        - `algorithm`: the relaxation, a value-relaxing algorithm such as
            [`pcgraph.IL`][]; `pcgraph.IL()` when None. Keep its `beta=1`, which weighs the
            top-down terms as the energy does.

        **Returns:**

        The triple `(x, y, hidden)` after the relaxation: `x` and `y` inferred where free and
        as given where clamped, and the relaxed hidden states `[z_1, ..., z_{L-1}]` (pass all
        three to `example_energies` to score the result).
        Raises [`pcgraph.RelaxationError`][] when the relaxation fails (with the algorithm's
        `throw=True`).
        """
        if x is None and y is None:
            raise ValueError(
                "Bidirectional.infer(None, None): give the input or the target (an array, or "
                "a pcgraph.Observed for a partly observed one); the other may be None."
            )
        latents = tuple(
            position
            for position, value in ((1, x), (2, y))
            if value is None or isinstance(value, Observed)
        )
        if not latents:
            raise ValueError(
                "Bidirectional.infer(x, y): both are clamped arrays, so there is nothing to "
                "infer. Pass None for the one to infer, or a pcgraph.Observed(value, mask) for "
                "one observed in part."
            )
        init = None
        if x is None:
            images, *hidden = self._top_down_states(y.value if isinstance(y, Observed) else y)
            x = images
            init = {f"hidden{k}": h for k, h in enumerate(hidden, start=1)}
        elif y is None:
            y = self.bottom_up(x.value if isinstance(x, Observed) else x)
        params, structure = eqx.partition(self, eqx.is_inexact_array)
        solution = relax(
            _energy_of_parts,
            params,
            x,
            y,
            structure=structure,
            latents=latents,
            init=init,
            algorithm=IL() if algorithm is None else algorithm,
        )
        inferred = dict(zip(latents, solution.latents, strict=True))
        hidden = [solution.values[f"hidden{k}"] for k in range(1, self.depth)]
        return inferred.get(1, x), inferred.get(2, y), hidden

    def _up_prediction(self, states: list[jax.Array], layer_index: int) -> jax.Array:
        """`f_l(phi(z_{l-1}))` for `l = layer_index`, from `states = [z_0, z_1, ...]`."""
        below = states[layer_index - 1]
        return _batched(self.up_layers[layer_index - 1], self._activate(below, layer_index - 1))

    def _down_prediction(self, states: list[jax.Array], layer_index: int) -> jax.Array:
        """`g_l(phi(z_l))` for `l = layer_index`, from `states = [z_0, ..., z_l, ...]`."""
        above = states[layer_index]
        return _batched(self.down_layers[layer_index - 1], self._activate(above, layer_index))

    def _activate(self, z: jax.Array, layer_index: int) -> jax.Array:
        """`phi` on hidden states; the input (index 0) and the target (index L) as they are."""
        return z if layer_index in (0, self.depth) else self.activation(z)

    def _top_down_states(self, y: jax.Array) -> list[jax.Array]:
        """`[z_0, ..., z_{L-1}]` of the top-down sweep from `y`."""
        self._check_batch("y", y)
        states = [y]
        for layer_index in range(self.depth, 0, -1):
            layer = self.down_layers[layer_index - 1]
            states.insert(0, _batched(layer, self._activate(states[0], layer_index)))
        return states[:-1]

    @staticmethod
    def _check_batch(name: str, value) -> None:
        if not eqx.is_array(value) or not jnp.issubdtype(value.dtype, jnp.floating):
            kind = f"dtype {value.dtype}" if eqx.is_array(value) else type(value).__name__
            raise TypeError(
                f"Bidirectional: `{name}` must be a floating JAX array, but it is a {kind}. "
                f"Convert it, e.g. `jnp.asarray({name}, jnp.float32)`."
            )
        if value.ndim < 2:
            raise ValueError(
                f"Bidirectional: `{name}` has shape {value.shape}, but every method takes a "
                f"batch, shape (batch, *example_shape). For one example pass `{name}[None]`."
            )

    def _check_shapes(self, x: jax.Array, y: jax.Array) -> list[tuple[int, ...]]:
        """Refuse inputs and targets that the layers do not chain between; return the shapes
        of one example's states `[z_0, ..., z_L]`."""
        self._check_batch("x", x)
        self._check_batch("y", y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Bidirectional: `x` holds {x.shape[0]} examples but `y` holds {y.shape[0]}; "
                "give one target per input."
            )
        shapes = [x.shape[1:]]
        for layer_index, layer in enumerate(self.up_layers, start=1):
            below = "the input" if layer_index == 1 else f"hidden state {layer_index - 1}"
            shapes.append(
                _shape_of(
                    layer, shapes[-1], x.dtype, f"bottom-up layer {layer_index} (from {below})"
                )
            )
        if shapes[-1] != y.shape[1:]:
            raise ValueError(
                f"Bidirectional: the bottom-up layers map an input of shape {x.shape[1:]} to a "
                f"target of shape {shapes[-1]}, but `y` has shape {y.shape[1:]} per example. "
                "Give targets of that shape, or a last bottom-up layer that outputs theirs."
            )
        for layer_index, layer in enumerate(self.down_layers, start=1):
            above = "the target" if layer_index == self.depth else f"hidden state {layer_index}"
            predicted = _shape_of(
                layer, shapes[layer_index], x.dtype, f"top-down layer {layer_index} (from {above})"
            )
            if predicted != shapes[layer_index - 1]:
                below = "the input" if layer_index == 1 else f"hidden state {layer_index - 1}"
                raise ValueError(
                    f"Bidirectional: top-down layer {layer_index} maps {above} (shape "
                    f"{shapes[layer_index]}) to shape {predicted}, but it predicts {below}, of "
                    f"shape {shapes[layer_index - 1]}. Give it that output shape."
                )
        return shapes


def _energy_of_parts(params, x, y, *, structure: Bidirectional) -> jax.Array:
    """The energy of the model split by `eqx.partition`, with its arrays differentiated."""
    return eqx.combine(params, structure).energy(x, y)
