"""MLP init and forward, losses and metrics, against float64 NumPy transcriptions of the book."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import losses, nn


# ----------------------------------------------------------- NumPy references (the book's code)
def np_softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def np_cross_entropy_error(y, t, delta=1e-7):
    """The book's cross_entropy_error: integer labels, ``delta`` inside the log, mean over batch."""
    batch = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch), t] + delta)) / batch


def np_forward(params, x, act):
    h = x
    for i, layer in enumerate(params):
        h = h @ np.asarray(layer["w"]) + np.asarray(layer["b"])
        if i < len(params) - 1:
            h = {"relu": lambda a: np.maximum(0, a), "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "tanh": np.tanh}[act](h)
    return h


# ----------------------------------------------------------- init
def test_init_shapes_dtypes_and_zero_biases(key):
    params = nn.init_mlp(key, (784, 100, 100, 10))
    assert [p["w"].shape for p in params] == [(784, 100), (100, 100), (100, 10)]
    assert [p["b"].shape for p in params] == [(100,), (100,), (10,)]
    assert all(p["w"].dtype == jnp.float32 for p in params)
    assert all(float(jnp.abs(p["b"]).max()) == 0 for p in params)


@pytest.mark.parametrize("weight_init, expected", [("he", np.sqrt(2 / 400)), ("xavier", np.sqrt(1 / 400)),
                                                   ("relu", np.sqrt(2 / 400)), (0.01, 0.01), (1, 1.0)])
def test_init_scale_is_the_books(key, weight_init, expected):
    w = nn.init_mlp(key, (400, 300), weight_init=weight_init)[0]["w"]
    # 120,000 normal draws: the sample std is within 1% of the true std with overwhelming odds
    assert float(jnp.std(w)) == pytest.approx(expected, rel=0.01)
    assert abs(float(jnp.mean(w))) < 0.01 * expected


def test_init_is_deterministic_and_uses_distinct_keys(key):
    a = nn.init_mlp(key, (5, 5, 5))
    b = nn.init_mlp(key, (5, 5, 5))
    assert all(jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not jnp.allclose(a[0]["w"], a[1]["w"])  # one key per layer, never reused


def test_init_works_eagerly_inside_jit_and_under_vmap(key):
    """Eagerly init_mlp is one compiled program; inside someone else's trace it is part of theirs
    (with a traced key, or a concrete key closed over), with the same values to float rounding."""
    eager = nn.init_mlp(key, (5, 4, 3), batchnorm=True)
    closed = jax.jit(lambda: nn.init_mlp(key, (5, 4, 3), batchnorm=True))()
    traced = jax.jit(lambda k: nn.init_mlp(k, (5, 4, 3), batchnorm=True))(key)
    mapped = jax.vmap(lambda k: nn.init_mlp(k, (5, 4, 3), batchnorm=True))(jnp.stack([key, key]))
    for other in (closed, traced, jax.tree.map(lambda a: a[1], mapped)):
        assert jax.tree.structure(other) == jax.tree.structure(eager)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "sizes, kwargs, err, match",
    [
        ((5,), {}, ValueError, "at least an input and an output"),
        ((5, 0, 3), {}, ValueError, "positive int"),
        ((5, 3), {"weight_init": "lecun"}, ValueError, "'he', 'xavier' or a positive number; got 'lecun'"),
        ((5, 3), {"weight_init": -0.1}, ValueError, "finite and > 0; got -0.1"),
        ((5, 3), {"weight_init": None}, TypeError, "got NoneType"),
        ((5, 3), {"dtype": jnp.int32}, TypeError, "floating dtype"),
    ],
)
def test_init_bad_arguments(key, sizes, kwargs, err, match):
    with pytest.raises(err, match=match):
        nn.init_mlp(key, sizes, **kwargs)


# ----------------------------------------------------------- forward
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_forward_matches_numpy_float64(key, x64, activation):
    params = nn.init_mlp(key, (6, 5, 4, 3), dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases
    x = np.random.default_rng(0).standard_normal((7, 6))
    out = nn.mlp(params, jnp.asarray(x), activation=activation)
    assert out.shape == (7, 3) and out.dtype == jnp.float64
    np.testing.assert_allclose(out, np_forward(params, x, activation), rtol=1e-12)


def test_forward_accepts_extra_leading_axes_and_jits(key):
    params = nn.init_mlp(key, (4, 3, 2))
    x = jax.random.normal(key, (2, 5, 4))
    out = jax.jit(nn.mlp, static_argnames="activation")(params, x, activation="tanh")
    assert out.shape == (2, 5, 2)
    np.testing.assert_allclose(out[1], nn.mlp(params, x[1], activation="tanh"), rtol=1e-5, atol=1e-6)


def test_forward_bad_inputs(key):
    params = nn.init_mlp(key, (4, 3, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\) to match the first layer; got \(5, 3\)"):
        nn.mlp(params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"activation must be one of \['relu', 'sigmoid', 'tanh'\]; got 'gelu'"):
        nn.mlp(params, jnp.ones((5, 4)), activation="gelu")


def test_weights_mask_selects_weights_only(key):
    mask = nn.weights_mask(nn.init_mlp(key, (4, 3, 2)))
    assert mask == [{"w": True, "b": False}, {"w": True, "b": False}]


# ----------------------------------------------------------- losses
def test_cross_entropy_matches_book_and_optax(key):
    logits = 3 * jax.random.normal(key, (16, 10))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (16,), 0, 10)
    ours_int = losses.softmax_cross_entropy(logits, labels)
    ours_onehot = losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 10))
    with jax.numpy_dtype_promotion("standard"):
        ref = jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))
    probs = np_softmax(np.asarray(logits, np.float64))
    exact = np_cross_entropy_error(probs, np.asarray(labels), delta=0.0)
    book = np_cross_entropy_error(probs, np.asarray(labels))
    np.testing.assert_allclose(ours_int, ref, rtol=1e-6)
    np.testing.assert_allclose(ours_onehot, ref, rtol=1e-6)
    np.testing.assert_allclose(ours_int, exact, rtol=1e-6)
    # the book's 1e-7 inside the log lowers each term by about 1e-7 / p (log(p + d) ~ log p + d / p)
    p_true = probs[np.arange(16), np.asarray(labels)]
    assert 0 < exact - book <= 1.01 * np.mean(1e-7 / p_true)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[1000.0, 0.0], [-1000.0, 1000.0]])
    loss = losses.softmax_cross_entropy(logits, jnp.array([1, 0]))
    assert bool(jnp.isfinite(loss)) and float(loss) == pytest.approx(1500.0)
    assert bool(jnp.all(jnp.isfinite(jax.grad(losses.softmax_cross_entropy)(logits, jnp.array([1, 0])))))


def test_cross_entropy_with_an_integer_label_out_of_range_is_nan():
    logits = jnp.zeros((3, 4))
    for bad in (4, -1):
        labels = jnp.array([0, bad, 2])
        assert bool(jnp.isnan(losses.softmax_cross_entropy(logits, labels)))
        assert bool(jnp.isnan(jax.jit(losses.softmax_cross_entropy)(logits, labels)))  # traced too
    assert float(losses.softmax_cross_entropy(logits, jnp.array([0, 3, 2]))) == pytest.approx(np.log(4))


def test_mse_and_sum_squared_error():
    y, t = jnp.array([[0.1, 0.6, 0.3]]), jnp.array([[0.0, 1.0, 0.0]])
    assert float(losses.sum_squared_error(y, t)) == pytest.approx(0.5 * (0.01 + 0.16 + 0.09))
    assert float(losses.mse(y, t)) == pytest.approx((0.01 + 0.16 + 0.09) / 3)
    with pytest.raises(ValueError, match="same shape"):
        losses.mse(y, t[0])


def test_l2_penalty_weights_only_and_its_gradient(key):
    params = jax.tree.map(lambda p: p + 1.0, nn.init_mlp(key, (4, 3, 2)))
    wd = 0.1
    expected = 0.5 * wd * sum(float(jnp.sum(p["w"] ** 2)) for p in params)
    assert float(losses.l2_penalty(params, wd)) == pytest.approx(expected, rel=1e-6)
    grads = jax.grad(losses.l2_penalty)(params, wd)
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g["w"], wd * p["w"], rtol=1e-6)
        assert float(jnp.abs(g["b"]).max()) == 0
    everything = losses.l2_penalty(params, wd, mask=lambda p: jax.tree.map(lambda _: True, p))
    assert float(everything) > float(losses.l2_penalty(params, wd))


def test_accuracy_integer_and_one_hot():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = jnp.array([1, 0, 0, 0])
    assert float(losses.accuracy(logits, labels)) == pytest.approx(0.75)
    assert float(losses.accuracy(logits, jax.nn.one_hot(labels, 2))) == pytest.approx(0.75)


@pytest.mark.parametrize("labels, match", [(jnp.zeros((3,), jnp.int32), r"integer labels must have shape \(4,\)"),
                                            (jnp.zeros((4, 3)), r"one-hot labels must have the shape of logits \(4, 2\)")])
def test_label_shape_errors(labels, match):
    with pytest.raises(ValueError, match=match):
        losses.softmax_cross_entropy(jnp.zeros((4, 2)), labels)


def test_ten_line_training_script_learns(key):
    """The README's promise: a functional training loop in ten lines reaches low loss."""
    from jaxscratch import optim

    x = jax.random.normal(key, (64, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)  # XOR-like quadrants: needs the hidden layer
    params = nn.init_mlp(key, (2, 32, 2))
    opt = optim.adam(0.01)
    state = opt.init(params)
    loss = lambda p: losses.softmax_cross_entropy(nn.mlp(p, x), y)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optim.apply_updates(params, updates), state

    for _ in range(500):
        params, state = step(params, state)
    assert float(losses.accuracy(nn.mlp(params, x), y)) >= 0.95
