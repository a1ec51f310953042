"""Test configuration: strict dtype promotion and rank promotion that raises, as equinox does.

Float64 checks never flip a global switch: they run inside ``with jax.enable_x64(True):``
scoped to one test, so results do not depend on test order.
"""
import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled, and only the test body."""
    with jax.enable_x64(True):
        yield
