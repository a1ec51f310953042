"""Test configuration: strict dtype promotion and rank promotion that raises, as equinox does.

Float64 checks never flip a global switch: they run inside ``with jax.enable_x64(True):``
scoped to one test, so results do not depend on test order.
"""
import os

import jax
import pytest

# `jaxscratch` processes started by the tests keep no compiled programs in the user's cache;
# test_compile_cache.py and test_reliability.py turn it on in folders of their own.
os.environ["JAXSCRATCH_COMPILE_CACHE"] = "off"

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# Full float32 matmuls everywhere: on GPUs JAX's default lets float32 matmuls run in TF32
# (~1e-3 relative error), which would make the float tolerances below device-dependent.
# (The tests check the maths; speed is the benchmarks' business.)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled, and only the test body."""
    with jax.enable_x64(True):
        yield
