"""Learning-rate schedules: pure functions ``count -> value``, with optax's names and arguments.

Contract: each factory returns ``schedule(count)`` where ``count`` is the optimizer's step
counter (an int scalar or array, traced or not, 0 for the first update). The result is a float
array of ``count``'s shape (float32; float64 under x64). Schedules are jit-, vmap- and grad-safe
and hold their constants in a closure; pass one wherever an optimizer takes ``learning_rate``.

Each factory has the name, the positional arguments (in the same order) and the meaning of
the optax schedule of that name, and its values equal optax's for the same arguments (tested
in float32 at many counts). The optional arguments are keyword-only, so a positional call that
optax would read differently fails here instead of meaning something else.

Values (``init_value``, ``decay_rate``, ``alpha``, ...) may be JAX scalars, traced ones
included; step counts (``transition_steps``, ``decay_steps``, boundaries, ...) are Python ints.
Where optax silently turns a bad argument into a constant schedule (``transition_steps <= 0``,
``decay_rate == 0``) or clips it (a negative ``transition_begin``), these raise ``ValueError``
instead; range checks on values run only when the value is concrete.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "piecewise_constant_schedule",
    "warmup_cosine_decay_schedule",
]

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _step_count(name: str, value, *, lo: int = 1) -> int:
    """A step count: a Python (or NumPy) int >= ``lo``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {lo}; got {value!r}") from None
    if number < lo:
        raise ValueError(f"{name} must be an int >= {lo}; got {value!r}")
    return number


def _concrete(value):
    """``value`` as a Python float when it is known now, None when it is traced."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return float(value)
    except jax.errors.ConcretizationTypeError:
        return None
    except (TypeError, ValueError):
        raise TypeError(f"expected a number or a JAX scalar; got {type(value).__name__} {value!r}") from None


def _float_count(count):
    return jnp.asarray(count).astype(jnp.result_type(float))


def constant_schedule(value) -> Schedule:
    """``value`` at every step.

    Args:
      value: the value to hold.

    Returns:
      A schedule ``count -> value``.

    >>> s = constant_schedule(0.1)
    >>> [round(float(s(c)), 6) for c in (0, 1000)]
    [0.1, 0.1]
    """
    return lambda count: jnp.full_like(_float_count(count), value)


def exponential_decay(init_value, transition_steps: int, decay_rate, *, transition_begin: int = 0,
                      staircase: bool = False, end_value=None) -> Schedule:
    r"""Exponential decay, held at ``init_value`` until ``transition_begin``.

    .. math:: v(t) = v_0 \, r^{(t - B)/T} \text{ for } t > B, \qquad v(t) = v_0 \text{ otherwise}

    (:math:`v_0` = ``init_value``, :math:`r` = ``decay_rate``, :math:`T` = ``transition_steps``,
    :math:`B` = ``transition_begin``.)

    Args:
      init_value: the value up to ``transition_begin``.
      transition_steps: steps per factor of ``decay_rate``; a positive int.
      decay_rate: the factor per ``transition_steps``; positive (above 1 grows).
      transition_begin: steps to hold ``init_value`` before decaying; an int >= 0.
      staircase: floor the exponent, so the value drops once every ``transition_steps``.
      end_value: a bound on the result: a floor when ``decay_rate < 1``, a ceiling otherwise.

    Returns:
      A schedule ``count -> value``.

    >>> s = exponential_decay(0.1, 10, 0.5, transition_begin=5, staircase=True)
    >>> [round(float(s(c)), 6) for c in (0, 5, 14, 15, 25)]
    [0.1, 0.1, 0.1, 0.05, 0.025]
    """
    _step_count("transition_steps", transition_steps)
    _step_count("transition_begin", transition_begin, lo=0)
    rate = _concrete(decay_rate)
    if rate is not None and not rate > 0:
        raise ValueError(f"decay_rate must be > 0; got {decay_rate!r} (for a constant value use constant_schedule)")
    if not isinstance(staircase, bool):
        raise TypeError(f"staircase must be True or False; got {staircase!r}")

    def schedule(count):
        since = jnp.asarray(count) - transition_begin
        p = _float_count(since) / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = jnp.where(since <= 0, init_value, init_value * jnp.power(decay_rate, p))
        if end_value is None:
            return value
        if rate is not None:
            return (jnp.maximum if rate < 1 else jnp.minimum)(value, end_value)
        return jnp.where(decay_rate < 1, jnp.maximum(value, end_value), jnp.minimum(value, end_value))

    return schedule


def piecewise_constant_schedule(init_value, boundaries_and_scales: Mapping[int, float] | None = None) -> Schedule:
    """``init_value`` times every ``scale`` whose ``step`` the count has reached.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: a dict ``{step: scale}``; from ``count >= step`` on, the value is
        multiplied by ``scale`` (>= 0). Steps are ints >= 0, in any order. None: constant.

    Returns:
      A schedule ``count -> value``.

    >>> s = piecewise_constant_schedule(0.1, {10: 0.1, 20: 0.5})
    >>> [round(float(s(c)), 6) for c in (0, 9, 10, 25)]
    [0.1, 0.1, 0.01, 0.005]
    """
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"boundaries_and_scales must be a dict {{step: scale}}, e.g. {{100: 0.1, 200: 0.1}}; got "
            f"{type(boundaries_and_scales).__name__} {boundaries_and_scales!r}"
        )
    steps_scales = []
    for step, scale in boundaries_and_scales.items():
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"boundaries_and_scales: each step must be an int >= 0; got {step!r}")
        s = _concrete(scale)
        if s is not None and not s >= 0:
            raise ValueError(f"boundaries_and_scales: the scale at step {step} must be >= 0; got {scale!r}")
        steps_scales.append((step, scale))
    steps_scales.sort(key=lambda pair: pair[0])

    def schedule(count):
        count = jnp.asarray(count)
        value = jnp.full_like(_float_count(count), init_value)
        for step, scale in steps_scales:  # multiplied in order of step, as optax does
            value = jnp.where(count >= step, value * scale, value)
        return value

    return schedule


def cosine_decay_schedule(init_value, decay_steps: int, *, alpha=0.0, exponent=1.0) -> Schedule:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``, then flat.

    .. math:: v(t) = v_0 \left((1-\alpha) \left(\tfrac{1 + \cos(\pi \min(t, T)/T)}{2}\right)^{p} + \alpha\right)

    Args:
      init_value: the value at count 0.
      decay_steps: :math:`T`, the length of the decay; a positive int.
      alpha: the final value as a fraction of ``init_value``.
      exponent: :math:`p`, applied to the cosine factor.

    Returns:
      A schedule ``count -> value``.

    >>> s = cosine_decay_schedule(1.0, 100, alpha=0.1)
    >>> [round(float(s(c)), 6) for c in (0, 50, 100, 200)]
    [1.0, 0.55, 0.1, 0.1]
    """
    _step_count("decay_steps", decay_steps)

    def schedule(count):
        t = jnp.minimum(_float_count(count), decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps: int, decay_steps: int, *, end_value=0.0,
                                 exponent=1.0) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    Args:
      init_value: the value at count 0.
      peak_value: the value at ``count == warmup_steps``.
      warmup_steps: the length of the warm-up; an int in ``[0, decay_steps)``.
      decay_steps: the length of the whole schedule, warm-up included (the cosine part lasts
        ``decay_steps - warmup_steps``); a positive int.
      end_value: the value from ``count == decay_steps`` on.
      exponent: applied to the cosine factor, as in :func:`cosine_decay_schedule`.

    Returns:
      A schedule ``count -> value``.

    >>> s = warmup_cosine_decay_schedule(0.0, 1.0, 10, 110, end_value=0.1)
    >>> [round(float(s(c)), 6) for c in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.55, 0.1]
    """
    _step_count("decay_steps", decay_steps)
    if _step_count("warmup_steps", warmup_steps, lo=0) >= decay_steps:
        raise ValueError(f"warmup_steps must be an int in [0, decay_steps={decay_steps}); got {warmup_steps!r}")
    peak, end = _concrete(peak_value), _concrete(end_value)
    if peak == 0 and end is not None and end != 0:  # optax's decay is then 0 throughout, not a rise to end_value
        raise ValueError(f"peak_value 0 with end_value {end_value!r}: the decay has no direction; "
                         f"pass end_value=0.0 or a nonzero peak_value")

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
