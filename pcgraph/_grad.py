"""The drop-in entry points: `grad`, `value_and_grad` and `relax`."""

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ._algorithms import FPA, IL, AbstractAlgorithm, Options, Start
from ._closure import CONCRETE_ERRORS, as_pytree, concrete_numpy
from ._energy import State
from ._graph import Feedforward
from ._jit import filter_jit
from ._latents import Observed
from ._placement import AbstractPlacement, check_placement
from ._relax import RelaxationStats, SaveAt
from ._trace import Traced, trace_flat


class NonFiniteError(ValueError):
    """An input or the feedforward pass holds NaN or Inf, so there is nothing to relax."""


class _InputCheck(eqx.Module):
    """Which input leaf, feedforward node value or loss is the first to hold NaN or Inf
    (`index`, -1 when all are finite), with a message for each."""

    index: jax.Array
    messages: tuple[str, ...] = eqx.field(static=True)

    def raise_if_failed(self, token):
        failed = self.index >= 0
        if isinstance(failed, jax.core.Tracer):
            return eqx.branched_error_if(token, failed, self.index, self.messages)
        if failed:
            raise NonFiniteError(self.messages[int(self.index)])
        return token


def _check_inputs(
    traced: Traced, feedforward: Feedforward, algorithm: AbstractAlgorithm, init=None
) -> _InputCheck | None:
    """Find the first non-finite input, then warm-start value (`init`), then node, then loss:
    reported before the relaxation is blamed for a NaN that was there from the start. Not
    computed for an algorithm that does not raise (`throw=False`): nothing would read it, and
    its reductions over every input and node value are several dozen small kernels per
    call."""
    if not algorithm.throw:
        return None
    graph = traced.graph
    checked = [
        *(
            (leaf, f"The differentiated argument's leaf `{name}` holds NaN or Inf, so there is "
             "no gradient to compute. Check the parameters (a diverged update? lower the "
             "learning rate).")
            for name, leaf in zip(graph.param_names, traced.params, strict=True)
        ),
        *(
            (leaf, f"The input {name} holds NaN or Inf. Clean the data (e.g. "
             "`jnp.nan_to_num`) or mask the bad entries before calling pcgraph.")
            for name, leaf in zip(traced.data_names, traced.data, strict=True)
        ),
        *(
            (init[name], f"The warm start init[{name!r}] holds NaN or Inf, so the relaxation "
             "would start from it. Pass the values of a relaxation that succeeded, or drop "
             "`init=` to start from the feedforward pass.")
            for name in graph.node_names
            if init and name in init
        ),
        *(
            (value, f"The feedforward value of node `{name}` is NaN or Inf although every "
             "input is finite: the function overflows or divides by zero there. Check that "
             "computation (a log or division of zero, or a value beyond the dtype's range).")
            for name, value in zip(graph.node_names, feedforward.values, strict=True)
        ),
        (feedforward.loss, "The loss is NaN or Inf at the feedforward pass although every "
         "input and node value is finite. Check the loss for log(0), division by zero or "
         "overflow."),
    ]  # fmt: skip
    checked = [
        (~jnp.all(jnp.isfinite(x)), m)
        for x, m in checked
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    # A node's non-finite entries are blamed only when they reach the loss: a buffer that a
    # loop fills with inf as "not written yet", or masked-out entries, leave it finite.
    loss_bad = checked[-1][0]
    checked = [
        (bad & loss_bad if m.startswith("The feedforward value of node") else bad, m)
        for bad, m in checked
    ]
    checked += [
        (
            ~jnp.all(jnp.isfinite(p) & (p > 0)),
            f"The precision of node `{name}` is not positive and finite at the feedforward "
            "pass. Keep a learned precision positive, e.g. "
            "`pcgraph.Gaussian(precision=jnp.exp(params['log_precision']))`.",
        )
        for name, p in zip(graph.node_names, feedforward.precisions, strict=True)
        if p is not None
    ]
    bad = jnp.stack([b for b, _ in checked])
    index = jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32)
    return _InputCheck(index, tuple(m for _, m in checked))


class Solution(eqx.Module):
    """Everything one predictive-coding solve produced.

    **Attributes:**

    - `value`: the loss at the feedforward pass (the function's own value).
    - `aux`: the auxiliary output with `has_aux=True`, else None.
    - `grads`: the PC gradients, structured exactly as `jax.grad`'s.
    - `values`, `errors`: each value node's value `v_i` and error `eps_i = v_i - mean(mu_i)`
        at the end of the relaxation, keyed by node name (see `Graph.summary()`).
    - `stats`: a [`pcgraph.RelaxationStats`][].
    - `latents`: with `latents=`, the inferred latent arguments, structured as the arguments
        (a tuple when `latents` was a tuple); else None.
    """

    value: jax.Array
    aux: Any
    grads: Any
    values: dict[str, jax.Array]
    errors: dict[str, jax.Array]
    stats: RelaxationStats
    input_check: _InputCheck | None
    latents: Any = None


def _check_algorithm(algorithm, latents=None) -> AbstractAlgorithm:
    if algorithm is None:
        # Latents are inferred on the energy, which only a relaxation of values does.
        return FPA() if latents is None else IL()
    if isinstance(algorithm, type) and issubclass(algorithm, AbstractAlgorithm):
        raise TypeError(
            f"algorithm={algorithm.__name__} is a class; pass an instance, e.g. "
            f"`algorithm=pcgraph.{algorithm.__name__}()`."
        )
    if not isinstance(algorithm, AbstractAlgorithm):
        raise TypeError(
            f"algorithm={algorithm!r} is not a pcgraph algorithm; pass one of pcgraph.IL(), "
            "pcgraph.FPA(), ..."
        )
    return algorithm


class _Setup(eqx.Module):
    """The static choices of one solve: what is differentiated, inferred and recorded."""

    argnums: Any
    has_aux: bool
    algorithm: AbstractAlgorithm
    placement: AbstractPlacement | None
    latents: Any = None
    options: Options = Options()
    #: Differentiate only the floating-point arrays of the arguments at `argnums`, holding
    #: their other leaves fixed (`equinox.filter_grad`'s rule), as `relax` and `train_step` do.
    filtered: bool = False


def _start(traced: Traced, feedforward: Feedforward, init) -> Start:
    """The relaxation's start: the feedforward pass, with the node values in `init` (a dict
    keyed by node name) in place of theirs."""
    graph = traced.graph
    latents = [traced.data[p] for p in graph.latent_positions]
    values = list(feedforward.values)
    if init:
        unknown = sorted(set(init) - set(graph.node_names))
        if unknown:
            raise ValueError(
                f"init= names {unknown}, which are not nodes of this graph (its nodes are "
                f"{list(graph.node_names)}). Pass a previous `Solution` or its `.values`."
            )
        for k, info in enumerate(graph.nodes):
            if info.name in init:
                value = init[info.name]
                if jnp.shape(value) != info.shape:
                    raise ValueError(
                        f"init[{info.name!r}] has shape {jnp.shape(value)}, but the node has "
                        f"shape {info.shape}."
                    )
                values[k] = jnp.asarray(value, info.dtype)
    return Start(State(values, latents), traced.latent_masks, warm=bool(init))


def _warn_no_nodes(graph, fn):
    """A graph without value nodes has nothing to relax: every algorithm returns backprop's
    gradient. Warned once per compilation (when the function is traced)."""
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None) or "the function"
    warnings.warn(
        f"The graph of `{name}` has no value nodes (placement=pcgraph."
        f"{type(graph.placement).__name__}()), so every algorithm returns backprop's gradient: "
        "there is nothing to relax. To get nodes, mark hidden values with `pcgraph.node(...)` "
        "(placement=pcgraph.Marks()), let pcgraph put one after every hidden layer "
        "(placement=pcgraph.Layers(); a model with a single layer has none, its layer folds "
        "into the loss) or one at every primitive (placement=pcgraph.Primitives()). "
        "Complex-valued intermediates are never nodes.",
        stacklevel=2,
    )


def _with_node_count(stats: RelaxationStats, graph) -> RelaxationStats:
    return dataclasses.replace(stats, num_nodes=len(graph.nodes))


def _traced_solution(fn, args, kwargs, setup: _Setup, init):
    algorithm = setup.algorithm
    traced = trace_flat(
        fn, args, setup.argnums, setup.has_aux, algorithm.lifts_scans, setup.placement, kwargs,
        setup.latents, setup.filtered,
    )  # fmt: skip
    graph = traced.graph
    if not graph.nodes and not graph.latent_positions:
        _warn_no_nodes(graph, fn)
    feedforward = graph.feedforward(traced.params, traced.data)
    start = _start(traced, feedforward, init)
    algorithm.check_supported(graph, start, setup.options)
    return traced, feedforward, start


@filter_jit(reuse_argnums=(0, 3))
def _solve_jit(fn, args, kwargs, setup: _Setup, init) -> Solution:
    traced, feedforward, start = _traced_solution(fn, args, kwargs, setup, init)
    graph = traced.graph
    equilibrium = setup.algorithm.solve(
        graph, traced.params, traced.data, feedforward, start, setup.options
    )
    names = graph.node_names
    return Solution(
        value=feedforward.loss,
        aux=traced.unflatten_aux(feedforward.aux) if setup.has_aux else None,
        grads=traced.unflatten_grads(equilibrium.grads),
        values=dict(zip(names, equilibrium.values, strict=True)),
        errors=dict(zip(names, equilibrium.errors, strict=True)),
        stats=_with_node_count(equilibrium.stats, graph),
        input_check=_check_inputs(traced, feedforward, setup.algorithm, init),
        latents=None if setup.latents is None else traced.unflatten_latents(equilibrium.latents),
    )


def _solve(fn, args, kwargs, setup: _Setup, init=None) -> Solution:
    # The function as a pytree of the arrays it closes over: a fresh closure over new arrays
    # reuses the compiled solve.
    try:
        return _solve_jit(as_pytree(fn), args, kwargs, setup, init)
    except CONCRETE_ERRORS:
        if not concrete_numpy(fn):
            raise
    # It needs a NumPy array's values while tracing: read them as constants, as jax.grad does.
    return _solve_jit(as_pytree(fn), args, kwargs, setup, init)


def _checked(result: "Solution | TrainInfo", algorithm: AbstractAlgorithm, outputs):
    """`outputs`, once the inputs are known to be finite and the relaxation to have
    succeeded (with `throw=True`).

    Checked outside the compiled solve, so that a concrete failure can quote its numbers;
    under an outer `jit` the check guards only `outputs`, so that what it does not return
    (node values and errors, sharded over a batch) is not gathered for it."""
    if not algorithm.throw:
        return outputs
    outputs = result.input_check.raise_if_failed(outputs)
    return result.stats.raise_if_failed(outputs)


def _as_static(argnums):
    return tuple(argnums) if isinstance(argnums, list) else argnums


def relax(
    fn: Callable,
    *args,
    argnums=0,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    latents=None,
    init: "Solution | dict[str, jax.Array] | None" = None,
    save_energy: bool = False,
    saveat: SaveAt | None = None,
    **kwargs,
) -> Solution:
    """Trace `fn`, relax its predictive-coding graph and return the whole
    [`Solution`][pcgraph.Solution].

    Use this when the gradient alone is not enough: it also returns node values and errors at
    equilibrium and the relaxation statistics (steps, energies, result, and the energy
    trajectory with `save_energy=True`). The computation is jit-compiled and cached per
    function, argument shapes and algorithm.

    **Arguments:**

    - `fn`, `*args`, `argnums`, `has_aux`: as for `jax.grad(fn, argnums, has_aux)(*args)`,
        except that an argument at `argnums` may be an equinox Module or any pytree: its
        floating-point arrays are differentiated and its other leaves held fixed, as
        `equinox.filter_grad` does (`Solution.grads` holds None at those).
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which is exact,
        and to [`pcgraph.IL`][]`()` with `latents`.
    - `placement`: where the value nodes go (see [`pcgraph.trace`][]).
    - `latents`: an int or a tuple of ints: positional arguments that are not clamped data
        but free values inferred by the relaxation, starting at the values passed; the
        function's loss is their negative log joint. Pass a [`pcgraph.Observed`][] in such a
        position to keep some entries clamped. `Solution.latents` holds the inferred values.
    - `init`: start the relaxation from a previous [`pcgraph.Solution`][] (its node values
        and latents) or from a dict of node values keyed by node name (the nodes it leaves
        out start at the feedforward pass).
    - `save_energy`: record the energy at every step in `Solution.stats.energy_trajectory`.
    - `saveat`: a [`pcgraph.SaveAt`][]: record each node's energy (and optionally its value
        and error) at chosen steps in `Solution.stats.nodes`.
    - `**kwargs`: keyword arguments of `fn`, held fixed, as under `jax.grad`.

    Raises `pcgraph.NonFiniteError` naming the argument or node when an input or the
    feedforward pass holds NaN or Inf, and [`pcgraph.RelaxationError`][] when the relaxation
    fails (with the algorithm's `throw=True`).
    """
    latents = _as_static(latents)
    algorithm = _check_algorithm(algorithm, latents)
    placement = check_placement(placement)
    setup = _Setup(
        _as_static(argnums),
        has_aux,
        algorithm,
        placement,
        latents,
        Options(save_energy, saveat),
        filtered=True,
    )
    if isinstance(init, Solution):
        if init.latents is not None and latents is not None:
            args = _with_latents(args, latents, init.latents)
        init = init.values
    solution = _solve(fn, args, kwargs, setup, init)
    return _checked(solution, algorithm, solution)


def _with_latents(args, latents, values) -> tuple:
    """`args` with the latent arguments replaced by `values` (keeping `Observed` masks)."""
    args = list(args)
    many = isinstance(latents, tuple)
    for n, value in zip(latents if many else (latents,), values if many else (values,)):
        arg = args[n]
        args[n] = Observed(value, arg.mask) if isinstance(arg, Observed) else value
    return tuple(args)


def value_and_grad(
    fn: Callable,
    argnums=0,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    latents=None,
) -> Callable:
    """Like `jax.value_and_grad`, with the gradient computed by predictive coding.

    **Arguments:**

    - `fn`: a pure JAX function returning a scalar float loss (or `(loss, aux)`).
    - `argnums`: an int or a tuple of ints: which positional arguments to differentiate.
    - `has_aux`: whether `fn` returns `(loss, aux)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which equals
        `jax.grad` up to round-off.
    - `placement`: where the value nodes go (see [`pcgraph.trace`][]): by default at the
        `pcgraph.node` marks when there are any, one per layer otherwise.
    - `latents`: positional arguments inferred by the relaxation rather than clamped (see
        [`pcgraph.relax`][]); the gradients are read at the inferred values.

    **Returns:**

    A function with `fn`'s signature (keyword arguments pass through, held fixed) returning
    `(value, grads)`, or `((value, aux), grads)` with `has_aux=True`; `grads` has the
    structure `jax.grad` would give. It can be called under `jax.jit` and `jax.vmap`, and
    does not retrace for repeated calls with the same shapes, nor for a fresh closure over
    arrays of the same shapes (`pcgraph.grad(lambda p: loss(p, x, y))` built at every step).
    """
    latents = _as_static(latents)
    algorithm = _check_algorithm(algorithm, latents)
    setup = _Setup(_as_static(argnums), has_aux, algorithm, check_placement(placement), latents)

    @functools.wraps(fn)
    def value_and_grad_fn(*args, **kwargs):
        solution = _solve(fn, args, kwargs, setup)
        value = (solution.value, solution.aux) if has_aux else solution.value
        return _checked(solution, algorithm, (value, solution.grads))

    return value_and_grad_fn


def grad(
    fn: Callable,
    argnums=0,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    latents=None,
) -> Callable:
    """A drop-in replacement for `jax.grad` that computes the gradient by predictive coding.

    The function is traced into a graph of value nodes (see [`pcgraph.trace`][]), relaxed
    with `algorithm` from its feedforward pass, and each parameter's gradient is read off the
    prediction errors of the nodes that use it, never by differentiating `fn` end to end.

    **Arguments:**

    - `fn`: a pure JAX function returning a scalar float loss (or `(loss, aux)`).
    - `argnums`: an int or a tuple of ints: which positional arguments to differentiate.
    - `has_aux`: whether `fn` returns `(loss, aux)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`, which equals
        `jax.grad` up to round-off. [`pcgraph.IL`][] is standard (approximate) inference
        learning.
    - `placement`: where the value nodes go (see [`pcgraph.trace`][]): by default at the
        `pcgraph.node` marks when there are any, one per layer otherwise.
    - `latents`: positional arguments inferred by the relaxation rather than clamped (see
        [`pcgraph.relax`][]).

    **Returns:**

    A function with `fn`'s signature (keyword arguments pass through, held fixed) returning
    the gradients (and `aux` with `has_aux=True`), structured as
    `jax.grad(fn, argnums, has_aux=has_aux)` would return them.

    !!! example

        ```python
        grads = pcgraph.grad(loss)(params, x, y)
        grads_il = pcgraph.grad(loss, algorithm=pcgraph.IL(beta=0.1))(params, x, y)
        ```
    """
    value_and_grad_fn = value_and_grad(
        fn, argnums, has_aux=has_aux, algorithm=algorithm, placement=placement, latents=latents
    )

    @functools.wraps(fn)
    def grad_fn(*args, **kwargs):
        value, grads = value_and_grad_fn(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return grad_fn


class TrainInfo(eqx.Module):
    """What one [`pcgraph.train_step`][] call did.

    **Attributes:**

    - `loss`: the loss at the feedforward pass, before the update.
    - `aux`: the auxiliary output with `has_aux=True`, else None.
    - `stats`: the relaxation's [`pcgraph.RelaxationStats`][] (with `save_energy=True`, its
        `energy_trajectory`).
    - `latents`: with `latents=`, the inferred latent arguments; else None.
    """

    loss: jax.Array
    aux: Any
    stats: RelaxationStats
    input_check: _InputCheck | None
    latents: Any = None


def _train_impl(fn, optimizer, params, opt_state, args, kwargs, setup: _Setup):
    traced, feedforward, start = _traced_solution(fn, (params, *args), kwargs, setup, None)
    new_params, opt_state, equilibrium = setup.algorithm.train(
        traced.graph,
        traced.params,
        traced.data,
        feedforward,
        start,
        setup.options,
        optimizer,
        opt_state,
        traced.unflatten_grads,
    )
    info = TrainInfo(
        loss=feedforward.loss,
        aux=traced.unflatten_aux(feedforward.aux) if setup.has_aux else None,
        stats=_with_node_count(equilibrium.stats, traced.graph),
        input_check=_check_inputs(traced, feedforward, setup.algorithm),
        latents=None if setup.latents is None else traced.unflatten_latents(equilibrium.latents),
    )
    # The updated floating-point arrays, with the leaves held fixed (an equinox Module's
    # functions and flags) put back.
    fixed = eqx.filter(params, eqx.is_inexact_array, inverse=True)
    return eqx.combine(traced.unflatten_grads(new_params), fixed), opt_state, info


# The function (as a pytree) and the setup are the same objects at every step of a loop.
_train = filter_jit(_train_impl, reuse_argnums=(0, 6))
_train_donated = filter_jit(_train_impl, donate_argnums=(2, 3), reuse_argnums=(0, 6))


def train_step(
    fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    algorithm: AbstractAlgorithm | None = None,
    placement: AbstractPlacement | None = None,
    latents=None,
    save_energy: bool = False,
    saveat: SaveAt | None = None,
    donate: bool = False,
) -> Callable:
    """A jit-compiled training step that updates the parameters (the first argument of `fn`)
    with predictive coding and an optax optimiser.

    For an algorithm that reads a gradient (FPA, IL, Z-IL) the step relaxes, reads the
    gradient and applies `optimizer` once. Z-IL's layer-timed updates are applied this way
    too: each parameter reads its error once, at its node's step, and a parameter updated at
    step `t` only affects predictions read after it, so applying every read in one update is
    the same as applying each at its step. [`pcgraph.IPC`][] updates the parameters with
    `optimizer` at every relaxation step.

    **Arguments:**

    - `fn`: a pure JAX function `fn(params, *args)` returning a scalar loss (or `(loss, aux)`).
        `params` may be an equinox Module or any pytree: its floating-point arrays are
        trained and its other leaves (functions, integer arrays, flags) held fixed, as
        `equinox.filter_grad` does.
    - `optimizer`: an `optax.GradientTransformation`; its state is
        `optimizer.init(eqx.filter(params, eqx.is_array))` (for a pytree of arrays, just
        `optimizer.init(params)`).
    - `has_aux`: whether `fn` returns `(loss, aux)`.
    - `algorithm`: a `pcgraph` algorithm; defaults to [`pcgraph.FPA`][]`()`.
    - `placement`: where the value nodes go (see [`pcgraph.trace`][]).
    - `latents`: positional arguments of `fn` (counting `params` as 0) inferred by the
        relaxation rather than clamped (see [`pcgraph.relax`][]); `info.latents` holds the
        inferred values. A partly observed latent is passed as [`pcgraph.Observed`][].
    - `save_energy`: record the energy at every step in `info.stats.energy_trajectory`.
    - `saveat`: a [`pcgraph.SaveAt`][]: record per-node trajectories in `info.stats.nodes`.
    - `donate`: donate the `params` and `opt_state` passed to the step to the computation,
        which writes the new ones in their memory: the step then needs no second copy of
        either (what counts on an accelerator with large models). The arrays passed in cannot
        be used afterwards, so keep only what the step returns (as a training loop does). On
        a CPU it is not a speed-up: in the peer benchmark's runs it saved nothing on an MLP
        and a CNN and made a 32-layer network's step up to 1.8x slower with `throw=False`.

    **Returns:**

    A function `step(params, opt_state, *args, **kwargs) -> (params, opt_state, info)`
    (keyword arguments pass through to `fn`, held fixed), with `info` a
    [`pcgraph.TrainInfo`][]. It raises [`pcgraph.RelaxationError`][] if the relaxation fails
    (with the algorithm's `throw=True`).

    !!! example

        ```python
        optimizer = optax.sgd(0.1)
        step = pcgraph.train_step(loss, optimizer, algorithm=pcgraph.IPC(num_steps=20))
        opt_state = optimizer.init(params)
        params, opt_state, info = step(params, opt_state, x, y)
        ```
    """
    latents = _as_static(latents)
    algorithm = _check_algorithm(algorithm, latents)
    setup = _Setup(
        0, has_aux, algorithm, check_placement(placement), latents,
        Options(save_energy, saveat), filtered=True,
    )  # fmt: skip

    train = _train_donated if donate else _train

    # Not `functools.wraps(fn)`: `step` has its own signature, which `inspect.signature` (and so
    # `equinox.filter_jit` around the step) would otherwise take from `fn`.
    def step(params, opt_state, *args, **kwargs):
        try:
            params, opt_state, info = train(
                as_pytree(fn), optimizer, params, opt_state, args, kwargs, setup
            )
        except CONCRETE_ERRORS:
            if not concrete_numpy(fn):
                raise
            params, opt_state, info = train(
                as_pytree(fn), optimizer, params, opt_state, args, kwargs, setup
            )
        return _checked(info, algorithm, (params, opt_state, info))

    return step
