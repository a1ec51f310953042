"""Tests for jaxscratch.landscapes: the textbook's 2-D paths against float64 NumPy
transcriptions of its formulas, documented minima, the trajectory contract, convergence."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import landscapes, optim

# ---------------------------------------------------------------- the book's formulas, float64
# Each rule updates W in place, as common/optimizer.py does; `s` holds the optimizer's state.


def book_sgd(lr):
    def step(W, g, s):
        W -= lr * g
    return step


def book_momentum(lr, m=0.9):
    def step(W, g, s):
        s["v"] = m * s.get("v", 0.0) - lr * g
        W += s["v"]
    return step


def book_nesterov(lr, m=0.9):
    def step(W, g, s):
        v = s.get("v", 0.0)
        W += m * m * v
        W -= (1 + m) * lr * g
        s["v"] = m * v - lr * g
    return step


def book_adagrad(lr):
    def step(W, g, s):
        s["h"] = s.get("h", 0.0) + g * g
        W -= lr * g / (np.sqrt(s["h"]) + 1e-7)
    return step


def book_rmsprop(lr, d=0.99):
    def step(W, g, s):
        s["h"] = d * s.get("h", 0.0) + (1 - d) * g * g
        W -= lr * g / (np.sqrt(s["h"]) + 1e-7)
    return step


def book_adam(lr, b1=0.9, b2=0.999):
    def step(W, g, s):
        s["t"] = t = s.get("t", 0) + 1
        lr_t = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        s["m"] = m = s.get("m", 0.0) + (1 - b1) * (g - s.get("m", 0.0))
        s["v"] = v = s.get("v", 0.0) + (1 - b2) * (g * g - s.get("v", 0.0))
        W -= lr_t * m / (np.sqrt(v) + 1e-7)
    return step


def book_path(rule, grad, x0, steps):
    W, s = np.array(x0, np.float64), {}
    path = [W.copy()]
    for _ in range(steps):
        rule(W, grad(W), s)
        path.append(W.copy())
    return np.stack(path)  # (steps + 1, 2)


def textbook_grad(W):  # the book's df(x, y) for f = x^2/20 + y^2
    return np.array([W[0] / 10.0, 2.0 * W[1]])


START, STEPS = (-7.0, 2.0), 30
# (name, ours, the book's rule): chapter 6's four learning rates, plus Nesterov and RMSprop at 0.1.
PATHS = [
    ("sgd", optim.sgd(0.95), book_sgd(0.95)),
    ("momentum", optim.momentum(0.1), book_momentum(0.1)),
    ("adagrad", optim.adagrad(1.5), book_adagrad(1.5)),
    ("adam", optim.adam(0.3, fold_bias_correction=True), book_adam(0.3)),
    ("nesterov", optim.nesterov(0.1), book_nesterov(0.1)),
    ("rmsprop", optim.rmsprop(0.1), book_rmsprop(0.1)),
]


@pytest.mark.parametrize("name, opt, rule", PATHS, ids=[p[0] for p in PATHS])
def test_textbook_path_float32(name, opt, rule):
    path = landscapes.trajectory(opt, landscapes.textbook, np.array(START, np.float32), STEPS)
    assert path.shape == (STEPS + 1, 2) and path.dtype == jnp.float32
    # float32 rounding over 30 steps: measured worst absolute error 2.5e-6 (Adam), 8e-7 or less
    # for the rest. Coordinates pass near 0, so the absolute tolerance carries the check.
    np.testing.assert_allclose(path, book_path(rule, textbook_grad, START, STEPS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, opt, rule", PATHS, ids=[p[0] for p in PATHS])
def test_textbook_path_float64_is_exact(name, opt, rule, x64):
    path = landscapes.trajectory(opt, landscapes.textbook, np.array(START), STEPS)
    assert path.dtype == jnp.float64
    np.testing.assert_allclose(path, book_path(rule, textbook_grad, START, STEPS), rtol=1e-12, atol=1e-12)


def test_textbook_paths_tell_the_books_story():
    """Figure 6-8's shapes, measured: SGD zig-zags in y, Momentum rolls past x = 0 like a ball,
    AdaGrad damps y at once and ends closest to the minimum."""
    x0 = np.array(START, np.float32)
    paths = {name: np.asarray(landscapes.trajectory(opt, landscapes.textbook, x0, STEPS))
             for name, opt, _ in PATHS[:4]}
    sgd_y = paths["sgd"][:, 1]
    assert np.all(np.sign(sgd_y[1:]) == -np.sign(sgd_y[:-1]))  # y <- -0.9 y every step
    assert np.all(paths["sgd"][:, 0] < 0) and paths["momentum"][:, 0].max() > 0.5
    assert abs(paths["adagrad"][-1, 1]) < 1e-10
    dist = {name: np.linalg.norm(path[-1]) for name, path in paths.items()}
    assert min(dist, key=dist.get) == "adagrad"


# ---------------------------------------------------------------- chapter 4
def test_gradient_descent_chapter4():
    path = landscapes.gradient_descent(landscapes.sphere, jnp.array([-3.0, 4.0]), 0.1, 20)
    expected = book_path(book_sgd(0.1), lambda W: 2 * W, (-3.0, 4.0), 20)
    np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path[-1], np.array([-3.0, 4.0]) * 0.8**20, rtol=1e-5)
    np.testing.assert_allclose(path[-1], [-0.0346, 0.0461], atol=1e-4)


def test_gradient_descent_learning_rate_too_large_diverges():
    # lr = 10 multiplies x by 1 - 2*10 = -19 each step. (The book prints ~1e13 instead because
    # its numerical gradient loses precision; the exact gradient gives (-3, 4) * 19^20.)
    x0 = np.array([-3.0, 4.0], np.float32)
    path = np.asarray(landscapes.gradient_descent(landscapes.sphere, x0, 10.0, 20))
    assert np.all(np.isfinite(path))  # 1.5e26 still fits in float32
    np.testing.assert_allclose(path[-1], np.array([-3.0, 4.0]) * 19.0**20, rtol=1e-4)
    assert np.abs(path[-1]).max() > 1e25


def test_gradient_descent_learning_rate_too_small_barely_moves(x64):
    x0 = np.array([-3.0, 4.0])
    with jax.enable_x64(False):  # in float32 a step of 1e-9 is below half an ulp of 3: no move
        path32 = landscapes.gradient_descent(landscapes.sphere, x0.astype(np.float32), 1e-10, 20)
        assert np.all(np.asarray(path32) == x0.astype(np.float32))
    path64 = np.asarray(landscapes.gradient_descent(landscapes.sphere, x0, 1e-10, 20))
    # float64 moves by the book's tiny amount: x * (1 - 2e-10)^20, i.e. (-2.99999999, 3.99999998).
    np.testing.assert_allclose(path64[-1], x0 * (1 - 2e-10) ** 20, rtol=1e-14)
    assert 0 < np.max(np.abs(path64[-1] - x0)) < 1e-7


# ---------------------------------------------------------------- documented minima
@functools.partial(jax.jit, static_argnums=0)  # one compile per function instead of op-by-op
def at_points_and_on_grid(f, points):  # points (k, 2)
    _, _, Z = landscapes.grid(f, (-6.0, 6.0), (-6.0, 6.0), 241)  # (241, 241), step 0.05
    return jax.vmap(f)(points), jax.vmap(jax.grad(f))(points), jnp.min(Z)


@pytest.mark.parametrize("name", sorted(landscapes.FUNCTIONS))
def test_documented_minima(name, x64):
    points, value = landscapes.MINIMA[name]
    values, grads, grid_min = at_points_and_on_grid(
        landscapes.FUNCTIONS[name], jnp.array(points, jnp.float64))
    np.testing.assert_allclose(values, value, atol=1e-12)
    np.testing.assert_allclose(grads, np.zeros((len(points), 2)), atol=1e-9)
    assert float(grid_min) >= value  # a minimum, not a saddle: nothing on a grid over [-6, 6]^2 is lower


def test_polynomial_and_grid_match_the_formula():
    X, Y, Z = map(np.asarray, landscapes.grid(landscapes.polynomial, (-2.0, 1.0), (-3.0, 3.0), 7))
    assert X.shape == Y.shape == Z.shape == (7, 7)
    assert X[0, 0] == -2.0 and X[0, -1] == 1.0 and Y[-1, 0] == 3.0
    x, y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    expected = (0.4 * x**2 * y**2 + 0.3 * x**2 * y + 0.3 * x**2 + 0.3 * y**2
                - 0.25 * x * y**2 + 0.31 * x * y - 0.2 * x + 2.1 * y)  # DESIGN.md's formula
    np.testing.assert_allclose(Z, expected, rtol=1e-5, atol=1e-5)


def test_trajectory_vmaps_over_learning_rate():
    """A learning rate may be traced: one compiled program serves a whole sweep."""
    x0, rates = jnp.array([-3.0, 4.0]), jnp.array([0.01, 0.1, 0.4])
    paths = jax.vmap(lambda lr: landscapes.gradient_descent(landscapes.sphere, x0, lr, 20))(rates)
    assert paths.shape == (3, 21, 2)
    for lr, path in zip([0.01, 0.1, 0.4], paths):
        np.testing.assert_allclose(path[-1], np.array([-3.0, 4.0]) * (1 - 2 * lr) ** 20, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- trajectory contract
def test_trajectory_shape_and_start():
    x0 = np.array([0.5, -1.5], np.float32)
    path = landscapes.trajectory(optim.adam(0.1), landscapes.beale, x0, 7)
    assert path.shape == (8, 2)
    assert np.all(np.asarray(path)[0] == x0)
    assert landscapes.trajectory(optim.adam(0.1), landscapes.beale, x0, 0).shape == (1, 2)


def test_trajectory_integer_start_becomes_float():
    path = landscapes.trajectory(optim.sgd(0.1), landscapes.sphere, jnp.array([-3, 4]), 2)
    assert path.dtype == jnp.float32
    np.testing.assert_allclose(path[-1], [-1.92, 2.56], rtol=1e-6)


def test_trajectory_jit_equals_eager():
    opt = optim.momentum(0.05)
    x0 = jnp.array([-1.0, 2.0])
    eager = landscapes.trajectory(opt, landscapes.himmelblau, x0, 25)
    jitted = jax.jit(landscapes.trajectory, static_argnums=(0, 1, 3))(opt, landscapes.himmelblau, x0, 25)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x0", [jnp.zeros(3), jnp.zeros((1, 2)), jnp.zeros(())])
def test_trajectory_rejects_bad_start(x0):
    with pytest.raises(ValueError, match=r"x0 must be .* shape \(2,\); got shape"):
        landscapes.trajectory(optim.sgd(0.1), landscapes.sphere, x0, 3)


def test_trajectory_rejects_bad_steps():
    x0 = jnp.zeros(2)
    with pytest.raises(ValueError, match="steps must be a non-negative int; got -1"):
        landscapes.trajectory(optim.sgd(0.1), landscapes.sphere, x0, -1)
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="steps must be a non-negative Python int"):
            landscapes.trajectory(optim.sgd(0.1), landscapes.sphere, x0, bad)
    traced_steps = jax.jit(lambda n: landscapes.trajectory(optim.sgd(0.1), landscapes.sphere, x0, n))
    with pytest.raises(TypeError, match="steps must be a non-negative Python int .*fixes the output shape"):
        traced_steps(3)


# ---------------------------------------------------------------- convergence on Rosenbrock
# From the classic start (-1.2, 1); settings measured: Adam 0.1 ends ~1e-6 from (1, 1) after
# 2000 steps, Momentum 2e-3 ~1.5e-6; plain SGD at the same rate is still 0.2 away.
SGD_SAME_RATE = optim.sgd(2e-3)  # one object, so its trajectory compiles once for both cases


@pytest.mark.parametrize("opt", [optim.adam(0.1), optim.momentum(2e-3)], ids=["adam", "momentum"])
def test_converges_on_rosenbrock(opt):
    x0 = np.array([-1.2, 1.0], np.float32)
    end = np.asarray(landscapes.trajectory(opt, landscapes.rosenbrock, x0, 2000))[-1]
    assert np.linalg.norm(end - 1.0) < 1e-3
    sgd_end = np.asarray(landscapes.trajectory(SGD_SAME_RATE, landscapes.rosenbrock, x0, 2000))[-1]
    assert np.linalg.norm(sgd_end - 1.0) > 1e-2
