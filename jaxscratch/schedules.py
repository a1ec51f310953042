"""Learning-rate schedules: pure functions ``count -> value``.

Contract: each factory returns ``schedule(count)`` where ``count`` is the optimizer's step
counter (an int scalar, traced or not, starting at 0 for the first update). The result is a
float32 scalar array (float64 under x64). Schedules are jit-, vmap- and grad-safe and hold
their constants in a closure; pass one wherever an optimizer takes ``learning_rate``.

Their values agree with the optax schedules of the same name (tested).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

__all__ = [
    "Schedule",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "piecewise_constant",
    "warmup_cosine_decay",
]

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _float_count(count):
    return jnp.asarray(count).astype(jnp.result_type(float))


def constant(value) -> Schedule:
    """``value`` at every step."""
    return lambda count: jnp.full_like(_float_count(count), value)


def exponential_decay(
    init_value, transition_steps: int, decay_rate, *, staircase: bool = False, end_value=None
) -> Schedule:
    r"""``init_value * decay_rate ** (count / transition_steps)``.

    With ``staircase`` the exponent is floored, so the value drops every
    ``transition_steps``; ``end_value`` bounds the decay (a floor for ``decay_rate < 1``).
    """
    _positive_int("transition_steps", transition_steps)

    def schedule(count):
        p = _float_count(count) / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = init_value * jnp.power(decay_rate, p)
        if end_value is not None:
            bound = jnp.maximum if decay_rate < 1 else jnp.minimum
            value = bound(value, end_value)
        return value

    return schedule


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[i]`` for ``boundaries[i-1] <= count < boundaries[i]``.

    Args:
      boundaries: increasing step counts, ``len(values) - 1`` of them.
      values: the value before the first boundary, then after each one.

    >>> s = piecewise_constant([10, 20], [0.1, 0.01, 0.001])
    >>> [round(float(s(c)), 4) for c in (0, 10, 25)]
    [0.1, 0.01, 0.001]
    """
    boundaries, values = list(boundaries), list(values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"piecewise_constant needs len(values) == len(boundaries) + 1; got "
            f"{len(values)} values and {len(boundaries)} boundaries"
        )
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must be strictly increasing; got {boundaries}")
    b = jnp.asarray(boundaries, dtype=jnp.int32)
    v = jnp.asarray(values, dtype=jnp.result_type(float))

    def schedule(count):
        index = jnp.sum(jnp.asarray(count) >= b)
        return v[index]

    return schedule


def cosine_decay(init_value, decay_steps: int, *, alpha=0.0, exponent=1.0) -> Schedule:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math:: v(t) = v_0 \left((1-\alpha) \left(\tfrac{1 + \cos(\pi \min(t, T)/T)}{2}\right)^{p} + \alpha\right)
    """
    _positive_int("decay_steps", decay_steps)

    def schedule(count):
        t = jnp.minimum(_float_count(count), decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def warmup_cosine_decay(
    init_value, peak_value, warmup_steps: int, decay_steps: int, *, end_value=0.0, exponent=1.0
) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value``; ``decay_steps`` counts the whole schedule, warm-up included."""
    _positive_int("decay_steps", decay_steps)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps < decay_steps:
        raise ValueError(
            f"warmup_steps must be an int in [0, decay_steps={decay_steps}); got {warmup_steps!r}"
        )

    def schedule(count):
        t = _float_count(count)
        if warmup_steps > 0:
            warm = init_value + (peak_value - init_value) * jnp.minimum(t, warmup_steps) / warmup_steps
        else:
            warm = jnp.full_like(t, peak_value)
        span = decay_steps - warmup_steps
        u = jnp.clip(t - warmup_steps, 0, span)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * u / span))
        cos = end_value + (peak_value - end_value) * cosine**exponent
        return jnp.where(t < warmup_steps, warm, cos)

    return schedule
