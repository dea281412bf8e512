"""What users will try: odd pytrees, random keys, low precision, other ODE solvers, and
bit-for-bit determinism."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, small_cnn, tanh_mlp, tree_allclose

import pcgraph


def test_empty_parameter_pytree():
    def fn(params, x):
        return jnp.sum(x**2)

    assert pcgraph.grad(fn)({}, jnp.ones(2)) == jax.grad(fn)({}, jnp.ones(2)) == {}


def test_none_leaves_are_kept():
    def fn(params):
        return jnp.sum(jnp.sin(params["a"]))

    params = {"a": jnp.ones(2), "b": None}
    grads = pcgraph.grad(fn)(params)
    assert jax.tree.structure(grads) == jax.tree.structure(jax.grad(fn)(params))
    assert grads["b"] is None


def test_random_keys_inside_the_function(x64):
    def noisy(w, key):
        return jnp.sum(jnp.tanh(w + jax.random.normal(key, w.shape)) ** 2)

    def fixed_noise(w):
        return noisy(w, jax.random.key(7))

    w = jnp.linspace(-1.0, 1.0, 4)
    key = jax.random.key(3)
    assert_grads_close(pcgraph.grad(noisy)(w, key), jax.grad(noisy)(w, key), 1e-10)
    assert_grads_close(pcgraph.grad(fixed_noise)(w), jax.grad(fixed_noise)(w), 1e-10)
    with pytest.raises(TypeError, match="argument 1, leaf `<root>` has dtype key<fry>"):
        pcgraph.grad(noisy, argnums=1)(w, key)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("model", [tanh_mlp, small_cnn])
def test_low_precision_matches_jax_grad_at_that_precision(model, dtype):
    """Documented tolerance: FPA in bfloat16/float16 agrees with jax.grad run in the same
    precision to within 2% (bfloat16) or 0.5% (float16) of the largest gradient entry."""
    fn, args, _ = model(jax.random.PRNGKey(0), jnp.float32)
    args = jax.tree.map(lambda a: a.astype(dtype), args)
    pc = pcgraph.grad(fn)(*args)
    reference = jax.grad(fn)(*args)
    tolerance = 2e-2 if dtype == jnp.bfloat16 else 5e-3
    for a, b in zip(jax.tree.leaves(pc), jax.tree.leaves(reference), strict=True):
        assert a.dtype == b.dtype == dtype
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= tolerance * np.max(np.abs(b))
        assert np.max(np.abs(b)) > 0


@pytest.mark.parametrize("algorithm", [pcgraph.FPA(), pcgraph.IL(max_steps=30)])
def test_bitwise_deterministic(algorithm):
    fn, args, _ = small_cnn(jax.random.PRNGKey(1), jnp.float32, mark=True)
    grad_fn = pcgraph.grad(fn, algorithm=algorithm)
    first = grad_fn(*args)
    for _ in range(3):
        again = grad_fn(*args)
        assert all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again))
        )
    # A freshly built gradient function compiles the same program.
    fresh = pcgraph.grad(fn, algorithm=algorithm)(*args)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(fresh)))


@pytest.fixture
def equilibrium(x64):
    fn, args, _ = tanh_mlp(jax.random.PRNGKey(0), jnp.float64, mark=True)
    reference = pcgraph.relax(
        fn, *args, algorithm=pcgraph.IL(beta=0.1, max_steps=20000, rtol=1e-10)
    )
    return fn, args, reference


@pytest.mark.parametrize(
    "stepper, rtol",
    [
        (pcgraph.DiffraxStepper(diffrax.Euler(), dt0=0.1), 1e-5),
        (pcgraph.DiffraxStepper(diffrax.Heun(), dt0=0.2), 1e-5),
        (
            pcgraph.DiffraxStepper(
                diffrax.Tsit5(),
                dt0=0.1,
                stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-11),
            ),
            1e-5,
        ),
    ],
    ids=["euler", "heun", "tsit5-pid"],
)
def test_diffrax_steppers_reach_the_il_equilibrium(stepper, rtol, equilibrium):
    fn, args, reference = equilibrium
    algorithm = pcgraph.IL(beta=0.1, stepper=stepper, max_steps=20000, rtol=1e-6)
    solution = pcgraph.relax(fn, *args, algorithm=algorithm)
    assert bool(solution.stats.converged)
    assert_grads_close(solution.grads, reference.grads, rtol)


def test_diffrax_euler_is_pcgraph_euler(equilibrium):
    fn, args, _ = equilibrium
    ours = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(stepper=pcgraph.Euler(0.1), max_steps=25))
    theirs = pcgraph.relax(
        fn,
        *args,
        algorithm=pcgraph.IL(stepper=pcgraph.DiffraxStepper(diffrax.Euler(), 0.1), max_steps=25),
    )
    assert tree_allclose(ours.values, theirs.values, rtol=1e-12)


def test_adaptive_diffrax_needs_fewer_steps(equilibrium):
    fn, args, _ = equilibrium
    controller = diffrax.PIDController(rtol=1e-9, atol=1e-11)
    tsit5 = pcgraph.DiffraxStepper(diffrax.Tsit5(), dt0=0.1, stepsize_controller=controller)
    settings = dict(beta=0.1, max_steps=20000, rtol=1e-6)
    euler = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(stepper=pcgraph.Euler(0.1), **settings))
    adaptive = pcgraph.relax(fn, *args, algorithm=pcgraph.IL(stepper=tsit5, **settings))
    assert int(adaptive.stats.num_steps) < int(euler.stats.num_steps) / 3


def test_integer_indexing_with_traced_indices(dtype):
    """Gathers with data-dependent integer indices, and scatter-adds into a parameter."""

    def fn(table, idx, weights):
        rows = table[idx]  # gather with traced indices
        pooled = (
            jnp.zeros((3, table.shape[1]), table.dtype).at[idx % 3].add(rows * weights[:, None])
        )
        return jnp.sum(jnp.tanh(pooled) ** 2)

    table = jax.random.normal(jax.random.PRNGKey(3), (5, 4)).astype(dtype)
    idx = jnp.array([4, 0, 2, 2, 1])
    weights = jnp.linspace(0.5, 1.5, 5, dtype=dtype)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-10
    pc = pcgraph.grad(fn, argnums=(0, 2))(table, idx, weights)
    assert_grads_close(pc, jax.grad(fn, argnums=(0, 2))(table, idx, weights), rtol)
