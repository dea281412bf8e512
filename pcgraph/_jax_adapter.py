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

# Private import: JAX exposes no public handle on the callback primitives.
from jax._src import callback as _jax_callback, debugging as _jax_debugging
from jax.interpreters import ad, batching, mlir

Primitive = jex_core.Primitive
Jaxpr = jex_core.Jaxpr
ClosedJaxpr = jex_core.ClosedJaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
DropVar = jex_core.DropVar


# -- the node-marker primitive ------------------------------------------------------------------

node_p = Primitive("pcgraph_node")
node_p.def_impl(lambda x, *, name, precision: x)
node_p.def_abstract_eval(lambda aval, *, name, precision: aval)
# An identity: tangents pass through unchanged, so transposition never meets the primitive.
ad.defjvp(node_p, lambda tangent, x, *, name, precision: tangent)
batching.primitive_batchers[node_p] = lambda args, dims, **params: (
    node_p.bind(args[0], **params),
    dims[0],
)
mlir.register_lowering(node_p, lambda ctx, x, *, name, precision: [x])


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
    }
)

#: Calls kept whole as one node; their local derivative is ``jax.vjp`` of the call.
OPAQUE = frozenset(
    {
        jex_prims.custom_jvp_call_p,
        jex_prims.custom_vjp_call_p,
        jex_prims.cond_p,
        jex_prims.scan_p,
    }
)

#: Outputs carry no gradient.
STOP_GRADIENT = frozenset({jex_prims.stop_gradient_p})

#: Loops that reverse-mode differentiation cannot handle (data-dependent trip count).
NOT_REVERSE_DIFFERENTIABLE = frozenset({jex_prims.while_p})

#: Calls into Python; relaxation would run them an unpredictable number of times.
CALLBACKS = frozenset(
    {
        _jax_callback.pure_callback_p,
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


def marker_params(params: dict[str, Any]) -> tuple[str | None, float]:
    return params["name"], params["precision"]


def has_side_effects(eqn: JaxprEqn) -> bool:
    """True when the eqn, or any program nested in it, calls back into Python or has effects."""
    if eqn.primitive in CALLBACKS or eqn.effects:
        return True
    return any(
        has_side_effects(inner)
        for sub in jex_core.jaxprs_in_params(eqn.params)
        for inner in sub.eqns
    )


def bind(primitive: Primitive, params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    """Apply one equation to values; always returns a list of outputs."""
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
    """`bind`, with derivative rules that run faster inside relaxation loops where needed."""
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


def is_float_aval(aval: Any) -> bool:
    # jnp's check, not numpy's: bfloat16 is not a numpy floating type.
    return jnp.issubdtype(aval.dtype, jnp.floating)
