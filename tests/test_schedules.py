"""Schedules against optax's schedules of the same name, and against their formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import schedules

COUNTS = np.arange(0, 400, 7)


def values(schedule, counts=COUNTS):
    return np.array([float(schedule(jnp.int32(c))) for c in counts])


def optax_values(schedule, counts=COUNTS):
    with jax.numpy_dtype_promotion("standard"):
        return np.array([float(schedule(c)) for c in counts])


@pytest.mark.parametrize(
    "ours, ref",
    [
        (lambda: schedules.constant(0.3), lambda: optax.constant_schedule(0.3)),
        (lambda: schedules.exponential_decay(0.1, 50, 0.5), lambda: optax.exponential_decay(0.1, 50, 0.5)),
        (lambda: schedules.exponential_decay(0.1, 50, 0.5, staircase=True),
         lambda: optax.exponential_decay(0.1, 50, 0.5, staircase=True)),
        (lambda: schedules.exponential_decay(0.1, 20, 0.5, end_value=0.01),
         lambda: optax.exponential_decay(0.1, 20, 0.5, end_value=0.01)),
        (lambda: schedules.cosine_decay(0.2, 300), lambda: optax.cosine_decay_schedule(0.2, 300)),
        (lambda: schedules.cosine_decay(0.2, 300, alpha=0.1, exponent=2.0),
         lambda: optax.cosine_decay_schedule(0.2, 300, alpha=0.1, exponent=2.0)),
        (lambda: schedules.warmup_cosine_decay(0.0, 1.0, 50, 300, end_value=0.05),
         lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 50, 300, end_value=0.05)),
        (lambda: schedules.warmup_cosine_decay(0.1, 1.0, 0, 300),
         lambda: optax.warmup_cosine_decay_schedule(0.1, 1.0, 0, 300)),
    ],
)
def test_matches_optax(ours, ref):
    np.testing.assert_allclose(values(ours()), optax_values(ref()), rtol=1e-6, atol=1e-7)


def test_piecewise_constant_matches_optax_and_formula():
    ours = schedules.piecewise_constant([100, 250], [0.1, 0.05, 0.01])
    ref = optax.piecewise_constant_schedule(0.1, {100: 0.5, 250: 0.2})
    np.testing.assert_allclose(values(ours), optax_values(ref), rtol=1e-6)
    expected = np.where(COUNTS < 100, 0.1, np.where(COUNTS < 250, 0.05, 0.01))
    np.testing.assert_allclose(values(ours), expected, rtol=1e-6)


def test_schedules_jit_and_vmap():
    s = schedules.warmup_cosine_decay(0.0, 1.0, 10, 100)
    batched = jax.jit(jax.vmap(s))(jnp.arange(100, dtype=jnp.int32))
    np.testing.assert_allclose(batched, values(s, range(100)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: schedules.exponential_decay(0.1, 0, 0.5), "transition_steps must be a positive int; got 0"),
        (lambda: schedules.cosine_decay(0.1, -5), "decay_steps must be a positive int; got -5"),
        (lambda: schedules.piecewise_constant([10], [0.1]), r"len\(values\) == len\(boundaries\) \+ 1"),
        (lambda: schedules.piecewise_constant([10, 5], [1, 2, 3]), "strictly increasing"),
        (lambda: schedules.warmup_cosine_decay(0, 1, 100, 100), r"warmup_steps must be an int in \[0, decay_steps=100\)"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
