"""2-D test functions and optimizer trajectories over them (chapters 4 and 6).

Contract:
  * Every test function takes ONE array ``p`` of shape ``(2,)`` (the point ``(x, y)``) and
    returns a scalar of ``p``'s dtype; all are differentiable with ``jax.grad``.
    :data:`FUNCTIONS` maps each name to its function, and :data:`MINIMA` maps the same names
    to ``(points, value)``: the documented global minimisers (a tuple of ``(x, y)`` pairs,
    several for Himmelblau) and the minimum value.
  * ``trajectory(optimizer, f, x0, steps)`` runs ``steps`` updates of an
    :class:`jaxscratch.optim.Optimizer` on ``f`` from ``x0`` inside ``jax.lax.scan`` and
    returns the positions, shape ``(steps + 1, 2)``, the start first (``path[0] == x0``).
    ``steps`` must be a Python int (it fixes the output shape), so under ``jit`` it is static;
    ``x0`` may be traced. Integer starts are converted to the default float dtype.
  * ``gradient_descent(f, x0, learning_rate, steps)`` is chapter 4's loop
    ``x -= learning_rate * grad(f)(x)``, i.e. ``trajectory(optim.sgd(learning_rate), ...)``.
  * ``grid(f, xlim, ylim, n)`` evaluates ``f`` on an ``n x n`` meshgrid for contour plots and
    returns ``X, Y, Z``, each of shape ``(n, n)`` with ``Z[i, j] == f([X[i, j], Y[i, j]])``.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxscratch import optim

__all__ = [
    "textbook", "polynomial", "sphere", "rosenbrock", "beale", "himmelblau", "booth",
    "rastrigin", "FUNCTIONS", "MINIMA", "trajectory", "gradient_descent", "grid",
]


# ---------------------------------------------------------------- test functions
def textbook(p: jax.Array) -> jax.Array:
    r"""Chapter 6's elongated bowl :math:`f(x, y) = x^2/20 + y^2`; minimum 0 at (0, 0)."""
    x, y = p[0], p[1]
    return x**2 / 20 + y**2


def polynomial(p: jax.Array) -> jax.Array:
    r"""A skewed quartic from blog posts on chapter 6:
    :math:`0.4x^2y^2 + 0.3x^2y + 0.3x^2 + 0.3y^2 - 0.25xy^2 + 0.31xy - 0.2x + 2.1y`.

    Global minimum -4.9622032 at (0.4823842, -4.2559683), found by Newton's method in float64
    and checked against a dense grid on [-20, 20]^2.
    """
    x, y = p[0], p[1]
    return (0.4 * x**2 * y**2 + 0.3 * x**2 * y + 0.3 * x**2 + 0.3 * y**2
            - 0.25 * x * y**2 + 0.31 * x * y - 0.2 * x + 2.1 * y)


def sphere(p: jax.Array) -> jax.Array:
    r"""Chapter 4's ``function_2``, :math:`x_0^2 + x_1^2`; minimum 0 at (0, 0)."""
    return p[0] ** 2 + p[1] ** 2


def rosenbrock(p: jax.Array, a: float = 1.0, b: float = 100.0) -> jax.Array:
    r"""Rosenbrock's banana :math:`(a - x)^2 + b (y - x^2)^2`; minimum 0 at :math:`(a, a^2)`."""
    x, y = p[0], p[1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def beale(p: jax.Array) -> jax.Array:
    r"""Beale's function :math:`\sum_{i=1}^3 (c_i - x + x y^i)^2`, :math:`c = (1.5, 2.25, 2.625)`;
    minimum 0 at (3, 0.5)."""
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def himmelblau(p: jax.Array) -> jax.Array:
    r"""Himmelblau's function :math:`(x^2 + y - 11)^2 + (x + y^2 - 7)^2`; four minima, all 0."""
    x, y = p[0], p[1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def booth(p: jax.Array) -> jax.Array:
    r"""Booth's function :math:`(x + 2y - 7)^2 + (2x + y - 5)^2`; minimum 0 at (1, 3)."""
    x, y = p[0], p[1]
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def rastrigin(p: jax.Array) -> jax.Array:
    r"""Rastrigin's function :math:`20 + \sum_i (x_i^2 - 10 \cos 2\pi x_i)`: a bowl covered in
    local minima near the integer points; global minimum 0 at (0, 0)."""
    return 20 + jnp.sum(p**2 - 10 * jnp.cos(2 * jnp.pi * p))


#: Every test function by name, for command lines and plots.
FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "textbook": textbook, "polynomial": polynomial, "sphere": sphere, "rosenbrock": rosenbrock,
    "beale": beale, "himmelblau": himmelblau, "booth": booth, "rastrigin": rastrigin,
}

#: name -> (global minimisers as (x, y) pairs, minimum value).
MINIMA: dict[str, tuple[tuple[tuple[float, float], ...], float]] = {
    "textbook": (((0.0, 0.0),), 0.0),
    "polynomial": (((0.4823842471373432, -4.255968289210563),), -4.962203155151476),
    "sphere": (((0.0, 0.0),), 0.0),
    "rosenbrock": (((1.0, 1.0),), 0.0),
    "beale": (((3.0, 0.5),), 0.0),
    "himmelblau": (((3.0, 2.0), (-2.805118086952745, 3.131312518250573),
                    (-3.779310253377747, -3.283185991286170),
                    (3.584428340330492, -1.848126526964404)), 0.0),
    "booth": (((1.0, 3.0),), 0.0),
    "rastrigin": (((0.0, 0.0),), 0.0),
}


# ---------------------------------------------------------------- trajectories
def _check_start(x0) -> jax.Array:
    x0 = jnp.asarray(x0)
    if x0.shape != (2,):
        raise ValueError(f"x0 must be one 2-D point of shape (2,); got shape {x0.shape}. "
                         "Pass e.g. jnp.array([-7.0, 2.0]).")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(float)  # the default float dtype: float32, or float64 under x64
    return x0


def _check_steps(steps) -> int:
    try:
        if isinstance(steps, bool):
            raise TypeError
        n = operator.index(steps)
    except TypeError:
        raise TypeError(f"steps must be a non-negative Python int (it fixes the output shape); "
                        f"got {steps!r} of type {type(steps).__name__}") from None
    if n < 0:
        raise ValueError(f"steps must be a non-negative int; got {n}")
    return n


def trajectory(optimizer: optim.Optimizer, f: Callable[[jax.Array], jax.Array], x0, steps: int) -> jax.Array:
    """Positions of ``optimizer`` minimising ``f`` from ``x0``, one row per step.

    Args:
      optimizer: an :class:`~jaxscratch.optim.Optimizer`, e.g. ``optim.adam(0.3)``.
      f: a function of one ``(2,)`` array returning a scalar.
      x0: the start, shape ``(2,)``.
      steps: number of updates, a non-negative Python int.

    Returns:
      An array of shape ``(steps + 1, 2)``: ``x0`` then the point after each update.

    >>> path = trajectory(optim.sgd(0.1), sphere, jnp.array([-3.0, 4.0]), 2)
    >>> path.shape, [round(v, 4) for v in path[-1].tolist()]
    ((3, 2), [-1.92, 2.56])
    """
    return _trajectory(optimizer, f, _check_start(x0), _check_steps(steps))


# Compiled once per (optimizer, f, steps): calling again with the same objects skips tracing.
@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _trajectory(optimizer, f, x0: jax.Array, steps: int) -> jax.Array:
    grad = jax.grad(f)

    def step(carry, _):
        x, state = carry
        updates, state = optimizer.update(grad(x), state, x)
        x = optim.apply_updates(x, updates)
        return (x, state), x

    _, path = jax.lax.scan(step, (x0, optimizer.init(x0)), length=steps)  # (steps, 2)
    return jnp.concatenate([x0[None], path])


def gradient_descent(f: Callable[[jax.Array], jax.Array], x0, learning_rate, steps: int) -> jax.Array:
    """Chapter 4's gradient descent ``x -= learning_rate * grad(f)(x)``, ``steps`` times.

    Returns the ``(steps + 1, 2)`` path, the start first (see :func:`trajectory`).

    >>> path = gradient_descent(sphere, jnp.array([-3.0, 4.0]), 0.1, 20)
    >>> [round(v, 4) for v in path[-1].tolist()]  # (-3, 4) * 0.8**20
    [-0.0346, 0.0461]
    """
    return trajectory(optim.sgd(learning_rate), f, x0, steps)


def grid(f: Callable[[jax.Array], jax.Array], xlim: tuple[float, float], ylim: tuple[float, float],
         n: int = 100) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``f`` on an ``n x n`` grid over ``xlim x ylim``, for ``plt.contour(X, Y, Z)``.

    Returns:
      ``X, Y, Z``, each ``(n, n)`` (rows follow y, columns x, as ``np.meshgrid``).
    """
    X, Y = jnp.meshgrid(jnp.linspace(*xlim, n), jnp.linspace(*ylim, n))  # (n, n) each
    return X, Y, _on_points(f, jnp.stack([X, Y], axis=-1))  # (n, n, 2) -> (n, n)


@functools.partial(jax.jit, static_argnums=0)  # compiled once per f, not dispatched op by op
def _on_points(f, points: jax.Array) -> jax.Array:
    return jax.vmap(jax.vmap(f))(points)
