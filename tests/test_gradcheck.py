"""Tests for jaxscratch.gradcheck: against known gradients, the textbook's NumPy loop and jax.grad."""
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import losses, nn
from jaxscratch.gradcheck import LeafCheck, gradient_check, max_relative_error, numerical_gradient


def textbook_numerical_gradient(f, x, h=1e-4):
    """Float64 NumPy transcription of the book's ``numerical_gradient`` (chapter 4, np.nditer)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = tmp_val + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


def _nested_params():
    """A dict of a list of arrays, a scalar leaf and a 3-D leaf, in float64."""
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    return {
        "layers": [jax.random.normal(k1, (3, 2), jnp.float64), jax.random.normal(k2, (4,), jnp.float64)],
        "scale": jnp.asarray(0.7, jnp.float64),
        "cube": jax.random.normal(k3, (2, 3, 2), jnp.float64),
    }


def _nested_loss(p):
    a, b = p["layers"]
    return (jnp.sum(jnp.sin(a) * a) + p["scale"] * jnp.sum(b**3)
            + jnp.sum(jnp.tanh(p["cube"])) * p["scale"] ** 2)


@pytest.mark.parametrize("x, expected", [((3.0, 4.0), (6.0, 8.0)), ((0.0, 2.0), (0.0, 4.0)),
                                         ((3.0, 0.0), (6.0, 0.0))])
def test_textbook_function_2(x64, x, expected):
    # Chapter 4: f(x) = x0^2 + x1^2; the central difference is exact for a quadratic up to rounding.
    grad = numerical_gradient(lambda v: jnp.sum(v**2), jnp.array(x, jnp.float64))
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-9)


def test_nested_pytree_matches_jax_grad(x64):
    params = _nested_params()
    numeric = numerical_gradient(_nested_loss, params)
    analytic = jax.grad(_nested_loss)(params)
    assert jax.tree.structure(numeric) == jax.tree.structure(params)
    for n, a, p in zip(jax.tree.leaves(numeric), jax.tree.leaves(analytic), jax.tree.leaves(params)):
        assert n.shape == p.shape and n.dtype == p.dtype
        # Central differences carry truncation error h**2 * f''' / 6 ~ 7e-9 for b**3 here.
        np.testing.assert_allclose(n, a, rtol=1e-7, atol=1e-7)


def test_float32_dtype_kept():
    params = {"w": jnp.ones((2, 2), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    grads = numerical_gradient(lambda p: jnp.sum(p["w"]) + p["b"], params)
    assert [g.dtype for g in jax.tree.leaves(grads)] == [jnp.float32, jnp.float32]
    np.testing.assert_allclose(grads["w"], np.ones((2, 2)), atol=1e-2)


def test_agrees_with_textbook_numpy_loop(x64):
    x = np.array([[0.3, -1.2, 2.0], [0.5, 1.1, -0.4]])

    def f_np(v):
        return np.sum(np.sin(v) * v**2) + np.prod(v[0]) + 0.5 * np.sum(v) ** 2

    def f_jnp(v):
        return jnp.sum(jnp.sin(v) * v**2) + jnp.prod(v[0]) + 0.5 * jnp.sum(v) ** 2

    ours = numerical_gradient(f_jnp, jnp.asarray(x, jnp.float64))
    np.testing.assert_allclose(ours, textbook_numerical_gradient(f_np, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 7])
def test_chunk_size_does_not_change_result(x64, chunk_size):
    params = _nested_params()
    reference = numerical_gradient(_nested_loss, params)  # default chunk: one batch per leaf here
    chunked = numerical_gradient(_nested_loss, params, chunk_size=chunk_size)
    for c, r in zip(jax.tree.leaves(chunked), jax.tree.leaves(reference)):
        np.testing.assert_allclose(c, r, rtol=0, atol=1e-12)


def test_large_leaf_with_small_chunk(x64):
    # A 784x100 leaf (the book's first layer) in chunks of 8: every one of the 78,400 entries is
    # evaluated. f reads one row so the test stays cheap: the copies, not f, dominate (~3 s on
    # 2 CPU cores); entries outside row 3 must come out exactly 0.
    w = jax.random.normal(jax.random.key(2), (784, 100), jnp.float64)

    def f(w):
        return 0.5 * jnp.sum(w[3] ** 2) + jnp.sum(jnp.sin(w[3]))

    grad = numerical_gradient(f, w, chunk_size=8)
    np.testing.assert_allclose(grad, jax.grad(f)(w), rtol=0, atol=1e-8)
    assert float(jnp.max(jnp.abs(grad.at[3].set(0.0)))) == 0.0


def test_large_leaf_memory_is_bounded(x64):
    # Compile only: the default chunk keeps scratch memory near chunk * leaf.size elements
    # (2**22 float64 ~ 32 MiB per copy), where one unchunked vmap would need ~150 GB.
    w = jax.ShapeDtypeStruct((784, 100), jnp.float64)

    def f(w):
        return 0.5 * jnp.sum(w**2) + jnp.sum(jnp.sin(w))

    def temp_bytes(chunk_size):
        lowered = jax.jit(lambda p: numerical_gradient(f, p, chunk_size=chunk_size)).lower(w)
        stats = lowered.compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend reports no memory analysis")
        return stats.temp_size_in_bytes

    assert temp_bytes(None) < 256 * 2**20
    assert temp_bytes(784 * 100) > 1000 * temp_bytes(None)


def test_same_f_compiles_once():
    traces = []

    def f(w):
        traces.append(1)  # runs only while JAX traces f
        return jnp.sum(jnp.sin(w))

    w = jnp.linspace(0.0, 1.0, 6).reshape(2, 3)
    first = numerical_gradient(f, w)
    n_traces = len(traces)
    second = numerical_gradient(f, w + 1.0)
    assert len(traces) == n_traces  # the second call reuses the compiled evaluator
    assert not np.allclose(first, second)  # ...yet sees its new argument


def test_closed_over_data_is_freed():
    # The evaluator cache holds f weakly: a batch that f closes over dies with f.
    def run():
        data = jnp.arange(1000.0)
        f = lambda w: jnp.sum(w * data[:3])
        np.testing.assert_allclose(numerical_gradient(f, jnp.ones(3)), [0.0, 1.0, 2.0], atol=1e-2)
        return weakref.ref(data)

    data_ref = run()
    gc.collect()
    assert data_ref() is None


def _mlp_problem(batch):
    params = nn.init_mlp(jax.random.key(0), (5, 10, 3), dtype=jnp.float64)
    rng = np.random.default_rng(0)  # NumPy data: no per-shape compile of jax.random ops
    x = jnp.asarray(rng.normal(size=(batch, 5)), jnp.float64)  # (batch, 5)
    y = jnp.asarray(rng.integers(0, 3, size=batch))

    def loss(p, activation):
        logits = nn.mlp(p, x, activation=activation)  # (batch, 3)
        return losses.softmax_cross_entropy(logits, y) + losses.l2_penalty(p, 0.1)

    return params, x, loss


def test_gradient_check_tanh_mlp(x64):
    params, _, loss = _mlp_problem(batch=8)
    checks = gradient_check(lambda p: loss(p, "tanh"), params)
    assert [c.path for c in checks] == ["[0]['b']", "[0]['w']", "[1]['b']", "[1]['w']"]
    assert all(isinstance(c, LeafCheck) for c in checks)
    for c in checks:
        assert c.rel < 1e-6, c  # measured ~1e-9: smooth loss, float64
    assert max_relative_error(checks) == max(c.rel for c in checks)


def test_gradient_check_relu_kink(x64):
    """ReLU has a kink at 0. If a pre-activation lies within h of 0, x - h and x + h fall on
    different sides and the central difference averages two slopes: an error of the order of
    that sample's contribution to the gradient, which no amount of float64 can fix. Here unit
    0's pre-activation for sample 0 is set to exactly 1e-5 (inside h = 1e-4) through its bias.

    Measured (batch 32): the entry b[0] has elementwise relative error ~2e-2. The norm-relative
    error of the leaf [0]['b'] is smaller (~1e-2: the other 9 entries agree and dilute it) but
    still ~7 orders of magnitude above the smooth level of ~1e-9, so it flags the leaf. With one
    kink among many samples and entries the dilution is stronger; with batch 1 it is weaker.
    Layer 1's leaves are unaffected (perturbing them does not move the kink), and with h = 1e-6,
    below the distance to the kink, the check passes again: the kink, not backprop, was at fault.
    """
    params, x, loss = _mlp_problem(batch=32)
    relu_loss = lambda p: loss(p, "relu")
    assert max_relative_error(gradient_check(relu_loss, params)) < 1e-6  # no kink straddled

    pre = x[0] @ params[0]["w"][:, 0]
    params[0]["b"] = params[0]["b"].at[0].set(1e-5 - pre)
    np.testing.assert_allclose((x @ params[0]["w"] + params[0]["b"].reshape(1, -1))[0, 0], 1e-5, rtol=1e-6)

    num_b = numerical_gradient(relu_loss, params)[0]["b"][0]
    ana_b = jax.jit(jax.grad(relu_loss))(params)[0]["b"][0]
    elementwise = float(jnp.abs(num_b - ana_b) / (jnp.abs(num_b) + jnp.abs(ana_b)))
    checks = {c.path: c for c in gradient_check(relu_loss, params)}
    assert elementwise > 1e-3
    assert 1e-6 < checks["[0]['b']"].rel < elementwise  # diluted over the leaf, not hidden
    assert checks["[1]['w']"].rel < 1e-6 and checks["[1]['b']"].rel < 1e-6
    assert max_relative_error(gradient_check(relu_loss, params, h=1e-6)) < 1e-6


def test_zero_gradient_leaf_has_zero_error(x64):
    params = {"used": jnp.ones((3,), jnp.float64), "unused": jnp.ones((2,), jnp.float64)}
    checks = gradient_check(lambda p: jnp.sum(p["used"] ** 2), params)
    assert [c.path for c in checks] == ["['unused']", "['used']"]  # dict keys in sorted order
    assert checks[0] == LeafCheck("['unused']", 0.0, 0.0)
    assert checks[1].rel < 1e-9


@pytest.mark.parametrize("h", [0.0, -1e-4, float("nan"), float("inf"), "0.1", None])
def test_bad_h_raises(h):
    with pytest.raises(ValueError, match="h must be a positive finite number"):
        numerical_gradient(lambda v: jnp.sum(v), jnp.ones(2), h=h)


def test_non_scalar_f_raises():
    with pytest.raises(ValueError, match=r"f must return a scalar.*got \(2,\)"):
        numerical_gradient(lambda v: v**2, jnp.ones(2))
    with pytest.raises(ValueError, match="f must return a scalar"):
        gradient_check(lambda v: v**2, jnp.ones(2))


def test_integer_leaf_raises():
    params = {"w": jnp.ones(2), "steps": jnp.arange(3)}
    with pytest.raises(TypeError, match=r"leaf \['steps'\] has dtype int32"):
        numerical_gradient(lambda p: jnp.sum(p["w"]), params)


def test_bad_chunk_size_raises():
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        numerical_gradient(lambda v: jnp.sum(v), jnp.ones(2), chunk_size=0)
