"""Every detail of JAX's jaxpr representation that pcgraph relies on lives here.

JAX renames primitives, reshapes equation parameters and moves helpers between releases; the
rest of pcgraph only talks to the functions and primitive sets below, which match primitives by
identity. Supported range: the one pinned in ``pyproject.toml``.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.extend.core.primitives as jex_prims
import numpy as np

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


def is_literal(atom: Any) -> bool:
    return isinstance(atom, Literal)


def literal_value(atom: Literal) -> Any:
    return atom.val


def is_drop_var(atom: Any) -> bool:
    return isinstance(atom, DropVar)


def is_float_aval(aval: Any) -> bool:
    return np.issubdtype(aval.dtype, np.floating)
