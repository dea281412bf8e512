"""Every bad input listed in docs/robustness.md ("Bad input, solvers, precision") gets a clear
error that names the problem and the fix."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tanh_mlp

import pcgraph


@pytest.fixture
def mlp():
    return tanh_mlp(jax.random.PRNGKey(0), jnp.float32)[:2]


def test_vector_output(mlp):
    fn, args = mlp
    with pytest.raises(TypeError, match=r"scalar loss.*shape \(6,\).*loss\.sum\(\)"):
        pcgraph.grad(lambda p, x, y: jnp.sum(fn(p, x, y) * x, axis=1))(*args)


def test_shape_one_output(mlp):
    fn, args = mlp
    with pytest.raises(TypeError, match=r"shape \(1,\).*loss\.squeeze\(\)"):
        pcgraph.grad(lambda *a: fn(*a)[None])(*args)


def test_integer_output():
    with pytest.raises(TypeError, match="real floating-point loss.*int32"):
        pcgraph.grad(lambda w: jnp.argmax(w))(jnp.ones(3))


def test_complex_output():
    with pytest.raises(TypeError, match="real floating-point loss.*complex64"):
        pcgraph.grad(lambda w: jnp.sum(w * 1j))(jnp.ones(3))


def test_non_array_output():
    with pytest.raises(TypeError, match="returned a tuple.*has_aux=True"):
        pcgraph.grad(lambda w: (jnp.sum(w), 1.0))(jnp.ones(3))


def test_has_aux_without_pair():
    with pytest.raises(TypeError, match=r"has_aux=True.*pair \(loss, aux\)"):
        pcgraph.grad(lambda w: jnp.sum(w), has_aux=True)(jnp.ones(3))


@pytest.mark.parametrize(
    "leaf, dtype_name",
    [(jnp.arange(3), "int32"), (jnp.array([True, False]), "bool"), (3, "int32")],
)
def test_non_float_parameter_leaf(leaf, dtype_name):
    with pytest.raises(
        TypeError, match=rf"argument 0, leaf `\['b'\]` has dtype {dtype_name}.*astype"
    ):
        pcgraph.grad(lambda p: jnp.sum(p["a"]))({"a": jnp.ones(3), "b": leaf})


def test_python_bool_parameter_leaf():
    with pytest.raises(TypeError, match="argument 0, leaf `<root>` is a bool"):
        pcgraph.grad(lambda flag: 1.0)(True)


def test_non_array_parameter_leaf():
    with pytest.raises(TypeError, match=r"leaf `\['name'\]` is a str.*argnums"):
        pcgraph.grad(lambda p: jnp.sum(p["w"]))({"w": jnp.ones(2), "name": "layer"})


def test_complex_parameter_leaf():
    with pytest.raises(TypeError, match="real floating-point leaves.*complex64"):
        pcgraph.grad(lambda w: jnp.sum(jnp.abs(w)))(jnp.ones(2, jnp.complex64))


@pytest.mark.parametrize("argnums", [2, (0, 5), -3])
def test_argnums_out_of_range(argnums):
    with pytest.raises(ValueError, match=r"out of range.*2 positional argument\(s\)"):
        pcgraph.grad(lambda a, b: jnp.sum(a * b), argnums=argnums)(jnp.ones(2), jnp.ones(2))


def test_argnums_repeated():
    with pytest.raises(ValueError, match="repeats an argument"):
        pcgraph.grad(lambda a, b: jnp.sum(a * b), argnums=(0, 0))(jnp.ones(2), jnp.ones(2))


def test_argnums_not_int():
    with pytest.raises(TypeError, match="must be a Python int"):
        pcgraph.grad(lambda a: jnp.sum(a), argnums="0")(jnp.ones(2))


def test_while_loop_on_the_gradient_path():
    def fn(w):
        return jnp.sum(
            jax.lax.while_loop(lambda v: jnp.sum(v) < 10.0, lambda v: v * w, jnp.ones(2))
        )

    with pytest.raises(ValueError, match=r"goes through `while`.*lax\.scan"):
        pcgraph.grad(fn)(jnp.full(2, 2.0))
    with pytest.raises(ValueError, match="Reverse-mode differentiation"):
        jax.grad(fn)(jnp.full(2, 2.0))


@pytest.mark.parametrize(
    "effect",
    [
        lambda v: jax.debug.print("value {}", v),
        lambda v: jax.debug.callback(lambda a: None, v),
        lambda v: jax.experimental.io_callback(
            lambda a: a, jax.ShapeDtypeStruct(v.shape, v.dtype), v
        ),
    ],
    # `pure_callback` is pure by contract, so it is allowed (see tests/test_effects.py).
    ids=["debug_print", "debug_callback", "io_callback"],
)
def test_side_effects(effect):
    def fn(w):
        h = jnp.tanh(w)
        effect(h)
        return jnp.sum(h**2)

    with pytest.raises(
        ValueError, match="side effects: found `.*callback|side effects: found `debug_print`"
    ):
        pcgraph.grad(fn)(jnp.ones(3))


def test_side_effect_inside_nested_jit_and_cond():
    def fn(w):
        inner = jax.jit(
            lambda v: jax.lax.cond(v[0] > 0, lambda: jax.debug.print("x") or v, lambda: v)
        )
        return jnp.sum(inner(w) ** 2)

    with pytest.raises(ValueError, match="side effects.*Move it out"):
        pcgraph.grad(fn)(jnp.ones(3))


def test_diverging_relaxation_raises_with_the_numbers():
    fn, args = tanh_mlp(jax.random.PRNGKey(1), jnp.float32, mark=True)[:2]
    # A fixed number of steps checks the energy at the end: it has overflowed by then. With a
    # tolerance the check runs at every step and catches the growth first.
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(5.0), max_steps=50, settle=None)
    pattern = (
        r"Relaxation failed: the energy became inf at step 50 \(it started at [0-9.e-]+\)\. "
        r".*Lower the stepper's `step_size`"
    )
    with pytest.raises(pcgraph.RelaxationError, match=pattern):
        pcgraph.grad(fn, algorithm=algorithm)(*args)
    pattern = (
        r"Relaxation failed: the energy increased from [0-9.e-]+ to [0-9.e+]+ at step \d+\. "
        r".*Lower the stepper's `step_size`"
    )
    with pytest.raises(pcgraph.RelaxationError, match=pattern):
        pcgraph.grad(fn, algorithm=pcgraph.IL(stepper=pcgraph.Euler(5.0), max_steps=50, rtol=1e-6))(
            *args
        )
    # The settling rule checks the energy after every few steps, and so catches the growth
    # before it overflows too.
    settling = pcgraph.IL(stepper=pcgraph.Euler(5.0), max_steps=50, settle=1e-4)
    with pytest.raises(pcgraph.RelaxationError, match=pattern):
        pcgraph.grad(fn, algorithm=settling)(*args)


def test_diverging_relaxation_raises_under_jit():
    """Traced statistics cannot be quoted: the check runs inside the compiled program."""
    fn, args = tanh_mlp(jax.random.PRNGKey(1), jnp.float32, mark=True)[:2]
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(5.0), max_steps=50, settle=None)
    with pytest.raises(eqx.EquinoxRuntimeError, match="relaxation produced NaN or Inf"):
        eqx.filter_jit(pcgraph.grad(fn, algorithm=algorithm))(*args)
    with pytest.raises(jax.errors.JaxRuntimeError, match="relaxation produced NaN or Inf"):
        jax.jit(pcgraph.grad(fn, algorithm=algorithm))(*args)


def test_nonfinite_relaxation_raises():
    def fn(w):
        return jnp.sum(jnp.log(w))

    # The loss is already infinite at the feedforward pass: that is reported, not the solver.
    with pytest.raises(pcgraph.NonFiniteError, match=r"The loss is NaN or Inf at the feedforward"):
        pcgraph.grad(fn)(jnp.array([1.0, 0.0]))


def test_nonfinite_input_without_throw_is_reported_not_checked(mlp):
    """With `throw=False` nothing raises, so the inputs' check is not computed (it is not
    reported as passed either); the relaxation's status shows the failure."""
    fn, (params, x, y) = mlp
    x = x.at[0, 0].set(jnp.nan)
    algorithm = pcgraph.IL(max_steps=5, throw=False)
    solution = pcgraph.relax(fn, params, x, y, algorithm=algorithm)
    assert solution.stats.result == pcgraph.RESULTS.nonfinite
    assert solution.input_check is None
    throwing = eqx.tree_at(lambda a: a.throw, algorithm, True)
    with pytest.raises(pcgraph.NonFiniteError, match=r"The input .* holds NaN or Inf"):
        pcgraph.relax(fn, params, x, y, algorithm=throwing)


def test_missed_tolerance_raises_when_asked_for():
    fn, args = tanh_mlp(jax.random.PRNGKey(2), jnp.float32, mark=True)[:2]
    algorithm = pcgraph.IL(max_steps=3, rtol=1e-6)
    with pytest.raises(
        pcgraph.RelaxationError,
        match=r"after 3 steps the largest force is still .*within `max_steps` steps\. Increase",
    ):
        pcgraph.grad(fn, algorithm=algorithm)(*args)


@pytest.mark.slow
def test_failures_are_reported_without_throw():
    fn, args = tanh_mlp(jax.random.PRNGKey(3), jnp.float32, mark=True)[:2]
    algorithm = pcgraph.IL(stepper=pcgraph.Euler(5.0), max_steps=50, throw=False)
    # Fixed steps, nothing recorded: all steps taken, the failure found at the end.
    stats = pcgraph.relax(fn, *args, algorithm=algorithm).stats
    assert stats.result == pcgraph.RESULTS.nonfinite
    assert not bool(stats.converged) and int(stats.num_steps) == 50
    # Recording the energy checks it at every step: the relaxation stops where it grew.
    stats = pcgraph.relax(fn, *args, algorithm=algorithm, save_energy=True).stats
    assert stats.result == pcgraph.RESULTS.energy_increased
    assert not bool(stats.converged) and int(stats.num_steps) < 50


def test_algorithm_class_instead_of_instance(mlp):
    fn, args = mlp
    with pytest.raises(TypeError, match=r"pass an instance, e\.g\. `algorithm=pcgraph\.IL\(\)`"):
        pcgraph.grad(fn, algorithm=pcgraph.IL)(*args)


def test_not_an_algorithm(mlp):
    fn, args = mlp
    with pytest.raises(TypeError, match="is not a pcgraph algorithm"):
        pcgraph.grad(fn, algorithm="IL")(*args)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match=r"IL\(beta\)=.*positive, finite"):
        pcgraph.IL(beta=beta)


@pytest.mark.parametrize("precision", [0.0, -2.0, float("inf")])
def test_bad_node_precision(precision):
    with pytest.raises(ValueError, match="the precision must be positive and finite"):
        pcgraph.node(jnp.ones(2), precision=precision)
    with pytest.raises(ValueError, match="the precision must be positive and finite"):
        pcgraph.node(jnp.ones(2), energy=pcgraph.Gaussian(precision))


@pytest.mark.parametrize("precision", ["high", True])
def test_node_precision_shorthand_takes_a_number_or_an_array(precision):
    with pytest.raises(TypeError, match="the precision must be a number or an array, not"):
        pcgraph.node(jnp.ones(2), precision=precision)


def test_bad_node_name():
    with pytest.raises(TypeError, match="`name` must be a string or None"):
        pcgraph.node(jnp.ones(2), name=3)


def test_python_control_flow_on_traced_values_is_jax_error():
    def fn(w):
        return jnp.sum(w) if jnp.sum(w) > 0 else -jnp.sum(w)

    with pytest.raises(jax.errors.TracerBoolConversionError):
        pcgraph.grad(fn)(np.ones(2, np.float32))
