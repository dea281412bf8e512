import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(params=[jnp.float32, jnp.float64], ids=["float32", "float64"])
def dtype(request):
    """Run the test in float32 (JAX's default) and in float64 (inside `jax.enable_x64`)."""
    if request.param is jnp.float64:
        with jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
