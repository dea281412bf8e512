"""Every detail of JAX's jaxpr representation that pcgraph relies on lives here.

JAX renames primitives, reshapes equation parameters and moves helpers between releases; the
rest of pcgraph only talks to the functions and primitive sets below, which match primitives by
identity. Supported range: the one pinned in ``pyproject.toml``.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex_core
import jax.extend.core.primitives as jex_prims
import jax.numpy as jnp

# Private import: JAX exposes no public handle on the callback and shard_map primitives.
from jax._src import (
    callback as _jax_callback,
    debugging as _jax_debugging,
    shard_map as _jax_shard_map,
)
from jax.interpreters import ad, batching, mlir

Primitive = jex_core.Primitive
Jaxpr = jex_core.Jaxpr
ClosedJaxpr = jex_core.ClosedJaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
DropVar = jex_core.DropVar


# -- reading jaxprs and equations ---------------------------------------------------------------


def jaxpr_inputs(jaxpr: Jaxpr) -> list[Any]:
    """The input variables of `jaxpr`."""
    return jaxpr.invars


def jaxpr_outputs(jaxpr: Jaxpr) -> list[Any]:
    """The output atoms (variables or literals) of `jaxpr`."""
    return jaxpr.outvars


def jaxpr_constants(jaxpr: Jaxpr) -> list[Any]:
    """The variables that stand for the constants of `jaxpr`."""
    return jaxpr.constvars


def jaxpr_eqns(jaxpr: Jaxpr) -> list[JaxprEqn]:
    """The equations of `jaxpr`, in order."""
    return jaxpr.eqns


def eqn_primitive(eqn: JaxprEqn) -> Primitive:
    """The primitive that `eqn` binds."""
    return eqn.primitive


def eqn_params(eqn: JaxprEqn) -> dict[str, Any]:
    """The parameters that `eqn` binds its primitive with."""
    return eqn.params


def eqn_inputs(eqn: JaxprEqn) -> list[Any]:
    """The input atoms (variables or literals) of `eqn`."""
    return eqn.invars


def eqn_outputs(eqn: JaxprEqn) -> list[Any]:
    """The output variables of `eqn`, dropped ones included (see `is_drop_var`)."""
    return eqn.outvars


def aval_of(atom: Any) -> Any:
    """The abstract value (shape and dtype) of a variable or literal."""
    return atom.aval


def primitive_name(primitive: Primitive) -> str:
    """The name of `primitive`, for labels and messages."""
    return primitive.name


# -- the node-marker primitive ------------------------------------------------------------------

node_p = Primitive("pcgraph_node")


def _node_mean(x, *precision, name, energy):
    return energy.mean(x)


def _node_jvp(primals, tangents, *, name, energy):
    # The precision operand does not change the value: only `x`'s tangent passes on.
    return jax.jvp(energy.mean, primals[:1], tangents[:1])


def _node_batch(args, dims, *, name, energy):
    (x, *precision), (x_dim, *precision_dim) = args, dims
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    x = jnp.broadcast_to(x, (size, *x.shape)) if x_dim is None else jnp.moveaxis(x, x_dim, 0)
    if precision and precision_dim[0] is not None:
        p = jnp.moveaxis(precision[0], precision_dim[0], 0)
        # Unbatched axes align from the right: pad between the batch axis and the rest.
        precision = [p.reshape(size, *(1,) * (x.ndim - p.ndim), *p.shape[1:])]
    return node_p.bind(x, *precision, name=name, energy=energy), 0


node_p.def_impl(_node_mean)
node_p.def_abstract_eval(lambda aval, *precision, name, energy: aval)
ad.primitive_jvps[node_p] = _node_jvp
batching.primitive_batchers[node_p] = _node_batch
mlir.register_lowering(node_p, mlir.lower_fun(_node_mean, multiple_results=False))

#: Stands in for a runtime check (see `check_positions`) among pcgraph's equations: `bind` runs
#: the check, `bind_for_relaxation` passes the checked operands through. Never bound itself.
check_p = Primitive("pcgraph_check")
check_p.multiple_results = True


# -- primitive classes ----------------------------------------------------------------------------

#: Calls whose body is spliced into the surrounding program.
_INLINE_JAXPR_PARAM: dict[Primitive, str] = {
    jex_prims.jit_p: "jaxpr",
    jex_prims.closed_call_p: "call_jaxpr",
    jex_prims.call_p: "call_jaxpr",
    jex_prims.remat_p: "jaxpr",
}

#: Ops that only move or relabel data; in the default granularity they fold into their consumer.
STRUCTURAL = frozenset(
    {
        jex_prims.reshape_p,
        jex_prims.broadcast_in_dim_p,
        jex_prims.transpose_p,
        jex_prims.convert_element_type_p,
        jex_prims.squeeze_p,
        jex_prims.copy_p,
        jex_prims.name_p,
        check_p,
    }
)

#: Calls kept whole as one node; their local derivative is ``jax.vjp`` of the call.
OPAQUE = frozenset(
    {
        jex_prims.custom_jvp_call_p,
        jex_prims.custom_vjp_call_p,
        jex_prims.cond_p,
        jex_prims.scan_p,
        # Not inlined: its body sees one shard of each operand and binds the mesh's axis names.
        _jax_shard_map.shard_map_p,
    }
)

#: Elementwise primitives: each output element is computed from the same element of each
#: (broadcast) operand. Automatic layer nodes extend a layer through them.
ELEMENTWISE = frozenset(
    getattr(jex_prims, f"{name}_p")
    for name in (
        "abs acos acosh add asin asinh atan atan2 atanh cbrt ceil clamp cos cosh digamma div "
        "erf erf_inv erfc exp exp2 expm1 floor integer_pow lgamma log log1p logistic max min "
        "mul neg nextafter pow reduce_precision rem round rsqrt select_n sign sin sinh sqrt "
        "square sub tan tanh convert_element_type eq ne lt le gt ge and or not is_finite"
    ).split()
)

_CUSTOM_CALLS = (jex_prims.custom_jvp_call_p, jex_prims.custom_vjp_call_p)

#: Pooling: a reduction over local windows. Automatic layer nodes extend a layer through it,
#: so that a max over free node values (whose energy has a kink wherever two of them tie, and
#: whose relaxation chatters there) is never part of a prediction.
POOLING = frozenset(
    {
        jex_prims.reduce_window_max_p,
        jex_prims.reduce_window_min_p,
        jex_prims.reduce_window_sum_p,
        jex_prims.reduce_window_p,
    }
)

#: Outputs carry no gradient.
STOP_GRADIENT = frozenset({jex_prims.stop_gradient_p})


def _jaxpr_reaching_inputs(jaxpr: Jaxpr, reaching: Sequence[bool]) -> set[int]:
    """The input positions of `jaxpr` that its outputs flagged in `reaching` are computed
    from."""
    needed = {a for a, on in zip(jaxpr.outvars, reaching, strict=True) if on and not is_literal(a)}
    for eqn in reversed(jaxpr.eqns):
        if needed.intersection(eqn.outvars):
            needed.update(a for a in eqn.invars if not is_literal(a))
    return {p for p, var in enumerate(jaxpr.invars) if var in needed}


def reaching_inputs(
    primitive: Primitive,
    params: dict[str, Any],
    shapes: Sequence[tuple[int, ...]],
    constants: Sequence[Any],
    reaching: Sequence[bool],
) -> set[int] | None:
    """The positions of the inputs whose values the outputs flagged in `reaching` depend on,
    where that is fewer than all of them; None for all. `constants` holds each input's value
    where it is a constant, else None.

    A runtime check passes each output's own input through (its predicate is boolean). A
    `dynamic_update_slice` whose update is as large as the operand overwrites the operand
    entirely: how diffrax and optimistix write a buffer that starts filled with inf ("not
    written yet"). A `cond` whose branch index is a constant runs that branch alone, and a
    nested `jit` whose body returns inputs unchanged passes each through."""
    if primitive is check_p:
        return {p for p, on in zip(params["passthrough"], reaching, strict=True) if on}
    if primitive is jex_prims.dynamic_update_slice_p and shapes[0] == shapes[1]:
        return set(range(1, len(shapes)))
    key = _INLINE_JAXPR_PARAM.get(primitive)
    if key is not None:
        # A nested call whose body only selects among its inputs: each output is the input it
        # selects. (Not a `custom_jvp`: its derivative is its rule's, which need not follow
        # the selection; equinox wraps a loop's final state in one whose rule routes the
        # tangents of other inputs.)
        body = params[key]
        positions = _identity_positions(body.jaxpr if isinstance(body, ClosedJaxpr) else body)
        if positions is not None:
            return {p for p, on in zip(positions, reaching, strict=True) if on}
    if primitive is jex_prims.cond_p and constants and constants[0] is not None:
        branches = params["branches"]
        index = min(max(int(constants[0]), 0), len(branches) - 1)
        return {1 + p for p in _jaxpr_reaching_inputs(jaxpr_of(branches[index]), reaching)}
    return None


#: Loops that reverse-mode differentiation cannot handle (data-dependent trip count).
NOT_REVERSE_DIFFERENTIABLE = frozenset({jex_prims.while_p})

#: Calls into Python with effects; relaxation would run them an unpredictable number of times.
#: `pure_callback` is not one: it is pure by contract, so JAX may run it any number of times.
CALLBACKS = frozenset(
    {
        _jax_callback.io_callback_p,
        _jax_debugging.debug_callback_p,
        _jax_debugging.debug_print_p,
    }
)


# -- scans --------------------------------------------------------------------------------------


class ScanParams(NamedTuple):
    """The parts of a `scan` equation pcgraph reads. The inputs are `consts, init, xs` and the
    outputs `final carry, ys`; `body` maps `consts, carry, x` to `new carry, y`."""

    body: ClosedJaxpr
    length: int
    reverse: bool
    num_consts: int
    num_carry: int
    unroll: Any


def is_scan(primitive: Primitive) -> bool:
    return primitive is jex_prims.scan_p


def scan_params(params: dict[str, Any]) -> ScanParams:
    # `linear` and `_split_transpose` (in some JAX versions) only steer JAX's own transpose of
    # the loop; pcgraph re-expresses the loop with `lax.scan` and `vmap`, so it ignores them.
    return ScanParams(
        body=params["jaxpr"],
        length=params["length"],
        reverse=params["reverse"],
        num_consts=params["num_consts"],
        num_carry=params["num_carry"],
        unroll=params["unroll"],
    )


def call_closed(body: ClosedJaxpr, *args) -> list[Any]:
    """Evaluate a closed jaxpr on values (or tracers)."""
    return list(jex_core.jaxpr_as_fun(body)(*args))


def jaxpr_of(body: ClosedJaxpr) -> Jaxpr:
    return body.jaxpr


def contains_primitive(jaxpr: Jaxpr, primitive: Primitive) -> bool:
    """Whether `primitive` is bound anywhere in `jaxpr`, nested programs included."""
    return any(
        eqn.primitive is primitive
        or any(contains_primitive(sub, primitive) for sub in jex_core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def make_jaxpr(flat_fn: Callable, flat_args: Sequence[Any]) -> tuple[Jaxpr, list[Any]]:
    """Trace ``flat_fn`` and return its open jaxpr and the values of its constants."""
    closed = jax.make_jaxpr(flat_fn)(*flat_args)
    return closed.jaxpr, list(closed.consts)


def inline_body(eqn: JaxprEqn) -> tuple[Jaxpr, list[Any]] | None:
    """The body and constants of a call that should be inlined, or None for any other eqn."""
    key = _INLINE_JAXPR_PARAM.get(eqn.primitive)
    if key is None:
        return None
    body = eqn.params[key]
    if isinstance(body, ClosedJaxpr):
        return body.jaxpr, list(body.consts)
    return body, []


def is_node_marker(primitive: Primitive) -> bool:
    return primitive is node_p


def marker_params(params: dict[str, Any]) -> tuple[str | None, Any]:
    """A `pcgraph.node` mark's name and energy (its precision, when computed, is the mark's
    second operand)."""
    return params["name"], params["energy"]


def has_side_effects(eqn: JaxprEqn) -> bool:
    """True when the eqn has effects, or binds one of `CALLBACKS` anywhere in it. Effects of
    nested programs reach `eqn.effects` unless the call discharges them, as `shard_map` does
    the named axes of the collectives in its body: those are no side effects."""
    return bool(eqn.effects) or _binds_callback(eqn)


def _binds_callback(eqn: JaxprEqn) -> bool:
    return eqn.primitive in CALLBACKS or any(
        _binds_callback(inner)
        for sub in jex_core.jaxprs_in_params(eqn.params)
        for inner in sub.eqns
    )


# -- runtime checks -------------------------------------------------------------------------------
#
# A runtime check, such as `equinox.error_if`, returns its operands unchanged or calls back into
# Python to raise. It is recognised by structure, not by name: a `cond` one branch of which
# returns operands unchanged while every other branch computes all its outputs with
# `pure_callback`; or a `custom_jvp` call (or a nested call) whose every output is one of its
# inputs passed through such checks. Its derivative is taken to be the identity, as it is for
# `equinox.error_if`.

#: Calls whose body a check may be wrapped in.
_CHECK_BODY_PARAM = {jex_prims.custom_jvp_call_p: "call_jaxpr", **_INLINE_JAXPR_PARAM}


def _identity_positions(jaxpr: Jaxpr) -> tuple[int, ...] | None:
    """The input position of each output, when `jaxpr` returns inputs unchanged."""
    if any(is_literal(atom) or atom not in jaxpr.invars for atom in jaxpr.outvars):
        return None
    return tuple(jaxpr.invars.index(atom) for atom in jaxpr.outvars)


def _calls_back(jaxpr: Jaxpr) -> bool:
    """Whether every output of `jaxpr` is computed by a `pure_callback`."""
    from_python = {
        var
        for eqn in jaxpr.eqns
        if eqn.primitive is _jax_callback.pure_callback_p
        for var in eqn.outvars
    }
    return bool(from_python) and all(
        not is_literal(atom) and atom in from_python for atom in jaxpr.outvars
    )


def _checked_positions(jaxpr: Jaxpr) -> tuple[int, ...] | None:
    """The input position of each output, when each output is an input passed through at
    least one check."""
    # var -> (input position, whether it passed a check on the way)
    source: dict[Any, tuple[int, bool]] = {var: (p, False) for p, var in enumerate(jaxpr.invars)}
    for eqn in jaxpr.eqns:
        positions = check_positions(eqn)
        for var, p in zip(eqn.outvars, positions or (), strict=positions is not None):
            atom = eqn.invars[p]
            if not is_literal(atom) and atom in source:
                source[var] = (source[atom][0], True)
    found = [None if is_literal(atom) else source.get(atom) for atom in jaxpr.outvars]
    if not all(f is not None and f[1] for f in found):
        return None
    return tuple(p for p, _ in found)


def check_positions(eqn: JaxprEqn) -> tuple[int, ...] | None:
    """For a runtime check, the input each output passes through; None for any other eqn."""
    if eqn.primitive is jex_prims.cond_p:
        branches = [jaxpr_of(branch) for branch in eqn.params["branches"]]
        identities = [_identity_positions(branch) for branch in branches]
        calls_back = [p is None and _calls_back(b) for p, b in zip(identities, branches)]
        passed = set(identities) - {None}
        if len(passed) != 1 or not any(calls_back):
            return None
        if not all(p is not None or c for p, c in zip(identities, calls_back, strict=True)):
            return None
        # The cond's first input is the branch index.
        return tuple(1 + p for p in passed.pop())
    key = _CHECK_BODY_PARAM.get(eqn.primitive)
    if key is None:
        return None
    body = eqn.params[key]
    return _checked_positions(body.jaxpr if isinstance(body, ClosedJaxpr) else body)


def recorded(eqn: JaxprEqn) -> tuple[Primitive, dict[str, Any]]:
    """The primitive and parameters pcgraph records for `eqn`: a runtime check becomes
    `check_p`."""
    positions = check_positions(eqn)
    if positions is None:
        return eqn.primitive, eqn.params
    return check_p, {"check": eqn, "passthrough": positions}


def relaxation_params(primitive: Primitive, params: dict[str, Any]) -> tuple[Any, ...]:
    """The parameters `bind_for_relaxation` reads, as sorted `(key, value)` pairs. A mark (the
    identity) and a check (which passes operands through) keep nothing else, so layers that
    differ only in their marks' names or in what they check compare equal."""
    if primitive is node_p:
        return ()
    if primitive is check_p:
        return (("passthrough", params["passthrough"]),)
    return tuple(sorted(params.items()))


def bind(primitive: Primitive, params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    """Apply one equation to values; always returns a list of outputs. A check runs, and raises
    where it fails, as it would under `jax.grad`."""
    if primitive is check_p:
        return bind(params["check"].primitive, params["check"].params, invals)
    out = primitive.bind(*invals, **primitive.get_bind_params(params))
    return list(out) if primitive.multiple_results else [out]


def _conv_input_transpose(cotangent, flipped_kernel, params, input_shape):
    """The cotangent of a convolution's input, as a forward convolution of the output cotangent
    with the spatially flipped kernel whose feature axes were swapped in memory. XLA's CPU
    backend runs the equivalent transposed convolution (with relabelled kernel axes) several
    times slower inside loops."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    padding = []
    for k, (lo, _), stride, dilation, n_in, n_out in zip(
        (flipped_kernel.shape[a] for a in rhs_spec[2:]),
        params["padding"],
        params["window_strides"],
        params["rhs_dilation"],
        (input_shape[a] for a in lhs_spec[2:]),
        (cotangent.shape[a] for a in out_spec[2:]),
        strict=True,
    ):
        dilated_kernel = (k - 1) * dilation + 1
        before = dilated_kernel - lo - 1
        padding.append((before, n_in + dilated_kernel - 1 - ((n_out - 1) * stride + 1) - before))
    return jax.lax.conv_general_dilated(
        cotangent,
        flipped_kernel,
        window_strides=(1,) * len(padding),
        padding=padding,
        lhs_dilation=params["window_strides"],
        rhs_dilation=params["rhs_dilation"],
        dimension_numbers=jax.lax.ConvDimensionNumbers(out_spec, rhs_spec, lhs_spec),
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
    )


def _conv_with_forward_transpose(params: dict[str, Any]) -> Callable:
    conv_p = jex_prims.conv_general_dilated_p
    rhs_spec = params["dimension_numbers"].rhs_spec

    @jax.custom_vjp
    def conv(lhs, rhs):
        return conv_p.bind(lhs, rhs, **params)

    def forward(lhs, rhs):
        # Flipped here, once per linearisation, so a relaxation loop reuses it.
        flipped = jnp.swapaxes(jnp.flip(rhs, rhs_spec[2:]), rhs_spec[0], rhs_spec[1])
        return conv(lhs, rhs), (lhs, rhs, flipped)

    def backward(residuals, cotangent):
        lhs, rhs, flipped = residuals
        _, kernel_vjp = jax.vjp(lambda r: conv_p.bind(lhs, r, **params), rhs)
        lhs_cotangent = _conv_input_transpose(cotangent, flipped, params, lhs.shape)
        return lhs_cotangent, kernel_vjp(cotangent)[0]

    conv.defvjp(forward, backward)
    return conv


def bind_for_relaxation(
    primitive: Primitive, params: dict[str, Any], invals: Sequence[Any]
) -> list[Any]:
    """`bind`, with derivative rules that run faster inside relaxation loops where needed. A
    check passes its operands through: relaxed values are not the function's values, so a check
    on them could fail where the function does not."""
    if primitive is check_p:
        return [invals[p] for p in params["passthrough"]]
    if (
        primitive is jex_prims.conv_general_dilated_p
        and params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and all(d == 1 for d in params["lhs_dilation"])
    ):
        return [_conv_with_forward_transpose(params)(*invals)]
    return bind(primitive, params, invals)


def is_literal(atom: Any) -> bool:
    return isinstance(atom, Literal)


def literal_value(atom: Literal) -> Any:
    return atom.val


def is_drop_var(atom: Any) -> bool:
    return isinstance(atom, DropVar)


def is_elementwise(primitive: Primitive, params: dict[str, Any]) -> bool:
    """Whether an equation maps its operands element by element: an elementwise primitive, or
    a call (such as `jax.nn.relu`, a custom-derivative function) whose body only holds such
    equations."""
    key = _INLINE_JAXPR_PARAM.get(primitive)
    if primitive in _CUSTOM_CALLS:
        key = "call_jaxpr"
    if key is None:
        return primitive in ELEMENTWISE or primitive is node_p
    body = params[key]
    body = body.jaxpr if isinstance(body, ClosedJaxpr) else body
    return all(is_elementwise(eqn.primitive, eqn.params) for eqn in body.eqns)


def is_inexact_aval(aval: Any) -> bool:
    """Floating or complex: a value that can carry a gradient."""
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def is_float_aval(aval: Any) -> bool:
    # jnp's check, not numpy's: bfloat16 is not a numpy floating type.
    return jnp.issubdtype(aval.dtype, jnp.floating)
