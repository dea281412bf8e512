"""The derivative rules the adapter swaps in for relaxation loops equal JAX's own."""

import itertools

import jax
import jax.extend.core.primitives as prims
import jax.numpy as jnp
import pytest

from pcgraph import _jax_adapter as adapter

LAYOUTS = {
    "NHWC": (("NHWC", "HWIO", "NHWC"), (2, 9, 8, 3), (3, 2, 3, 4)),
    "NCHW": (("NCHW", "OIHW", "NCHW"), (2, 3, 9, 8), (4, 3, 3, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout, strides, padding, rhs_dilation",
    list(
        itertools.product(
            LAYOUTS, [(1, 1), (2, 1)], ["SAME", "VALID", ((1, 2), (0, 1))], [(1, 1), (2, 1)]
        )
    ),
)
def test_conv_rule_matches_jax_vjp(layout, strides, padding, rhs_dilation, x64):
    dimension_numbers, x_shape, w_shape = LAYOUTS[layout]
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    w = jax.random.normal(jax.random.PRNGKey(1), w_shape)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, strides, padding, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers
        )

    params = jax.make_jaxpr(conv)(x, w).eqns[0].params

    def relaxation_conv(x, w):
        return adapter.bind_for_relaxation(prims.conv_general_dilated_p, params, [x, w])[0]

    out, reference_vjp = jax.vjp(conv, x, w)
    relaxed_out, relaxed_vjp = jax.vjp(relaxation_conv, x, w)
    cotangent = jax.random.normal(jax.random.PRNGKey(2), out.shape)
    assert jnp.allclose(out, relaxed_out, rtol=1e-12)
    for a, b in zip(reference_vjp(cotangent), relaxed_vjp(cotangent), strict=True):
        assert jnp.allclose(a, b, rtol=1e-12, atol=1e-12)
