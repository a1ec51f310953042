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


@pytest.mark.parametrize("sizes", [(4, 3, 2), (1, 1), (3, 1000, 7), (784, 100, 100, 10), (784,) + (100,) * 6 + (10,)])
@pytest.mark.parametrize("raw", [False, True])
def test_unit_normals_are_jax_random_normal_bit_for_bit(sizes, raw):
    """unit_normals draws every layer in one hash call: exactly normal(split(key, L)[i]) per layer,
    eagerly, jitted and vmapped over keys, typed or raw keys; float64 takes jax.random.normal."""
    key = jax.random.PRNGKey(5) if raw else jax.random.key(5)

    def reference(k, dtype=jnp.float32):
        keys = jax.random.split(k, len(sizes) - 1)
        return [jax.random.normal(kk, s, dtype) for kk, s in zip(keys, zip(sizes[:-1], sizes[1:]))]

    want = reference(key)
    for got in (nn.unit_normals(key, sizes), jax.jit(lambda k: nn.unit_normals(k, sizes))(key)):
        assert [g.shape for g in got] == [w.shape for w in want]
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(3))
    mapped = jax.vmap(lambda k: nn.unit_normals(k, sizes))(keys)
    assert all(np.array_equal(g, w) for g, w in zip(mapped, jax.vmap(reference)(keys)))
    with jax.enable_x64(True):
        got = nn.unit_normals(key, sizes[:3], jnp.float64)
        assert all(g.dtype == jnp.float64 and np.array_equal(g, w)
                   for g, w in zip(got, reference(key, jnp.float64)[:2]))


def test_unit_normals_with_other_generators_are_jax_random_normal():
    """The other threefry and another generator take jax.random.normal itself (shapes used nowhere
    else: JAX's eager caches are not keyed on the threefry setting)."""
    def reference(k, sizes):
        keys = jax.random.split(k, len(sizes) - 1)
        return [jax.random.normal(kk, s) for kk, s in zip(keys, zip(sizes[:-1], sizes[1:]))]

    with jax.threefry_partitionable(False):
        key = jax.random.key(7)
        assert all(np.array_equal(g, w) for g, w in zip(nn.unit_normals(key, (13, 11, 9)), reference(key, (13, 11, 9))))
    other = jax.random.key(5, impl="rbg")
    assert all(np.array_equal(g, w) for g, w in zip(nn.unit_normals(other, (12, 10, 8)), reference(other, (12, 10, 8))))


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


# ----------------------------------------------------------- nn.mlp_model
def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_mlp_model_equals_init_mlp_and_apply(key, batchnorm):
    sizes = (6, 5, 4, 3)
    model = nn.mlp_model(sizes, activation="tanh", weight_init="xavier", batchnorm=batchnorm)
    params, state = model.init(key)
    ref_params = nn.init_mlp(key, sizes, weight_init="xavier", batchnorm=batchnorm)
    _assert_trees_equal(params, ref_params)
    _assert_trees_equal(state, nn.init_bn_state(ref_params))
    x = jax.random.normal(jax.random.fold_in(key, 1), (7, 6))
    for train in (False, True):  # batch statistics (and their update) in training, running ones otherwise
        out, new_state = model.apply(params, state, x, train=train)
        ref_out, ref_state = nn.apply(ref_params, x, state=nn.init_bn_state(ref_params), train=train,
                                      activation="tanh")
        assert out.shape == (7, 3)
        np.testing.assert_array_equal(out, ref_out)
        _assert_trees_equal(new_state, ref_state)
    if batchnorm:  # training really updated the statistics
        assert not np.array_equal(new_state[0]["mean"], state[0]["mean"])


@pytest.mark.parametrize("mode", nn.DROPOUT_MODES)
def test_mlp_model_dropout_equals_apply_with_the_same_key(key, mode):
    sizes = (6, 8, 8, 3)
    model = nn.mlp_model(sizes, drop_rate=0.3, dropout_mode=mode)
    params, state = model.init(key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (5, 6))
    k = jax.random.fold_in(key, 2)
    for train in (True, False):
        out, _ = model.apply(params, state, x, train=train, key=k)
        ref, _ = nn.apply(params, x, state=state, train=train, key=k if train else None, drop_rate=0.3,
                          dropout_mode=mode)
        np.testing.assert_array_equal(out, ref)
    no_dropout = nn.mlp_model(sizes).apply(params, state, x, train=True, key=k)[0]
    assert not np.allclose(model.apply(params, state, x, train=True, key=k)[0], no_dropout)  # dropout acts
    other_key = model.apply(params, state, x, train=True, key=jax.random.fold_in(key, 3))[0]
    assert not np.array_equal(other_key, model.apply(params, state, x, train=True, key=k)[0])


def test_mlp_model_traced_weight_init_and_drop_rate(key):
    """A sweep's factory builds the model inside the trace: a traced weight_init is the weights'
    std (equal to the concrete float to rounding), a traced drop_rate equals the concrete one."""
    sizes = (6, 5, 3)
    traced = jax.jit(lambda s: nn.mlp_model(sizes, weight_init=s).init(key)[0])(jnp.float32(0.05))
    concrete = nn.init_mlp(key, sizes, weight_init=0.05)
    assert jax.tree.structure(traced) == jax.tree.structure(concrete)
    for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(concrete)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    params, state = nn.mlp_model(sizes).init(key)
    x, k = jax.random.normal(jax.random.fold_in(key, 1), (5, 6)), jax.random.fold_in(key, 2)
    run = jax.jit(lambda rate: nn.mlp_model(sizes, drop_rate=rate).apply(params, state, x, train=True, key=k)[0])
    np.testing.assert_allclose(run(jnp.float32(0.4)), nn.mlp_model(sizes, drop_rate=0.4).apply(
        params, state, x, train=True, key=k)[0], rtol=1e-6)
    run(jnp.float32(0.1))
    assert run._cache_size() == 1  # one program for every rate


def test_mlp_model_is_cached_and_checks_its_arguments():
    assert nn.mlp_model((4, 3, 2), drop_rate=0.1) is nn.mlp_model([4, 3, 2], drop_rate=0.1)
    assert nn.mlp_model((4, 3, 2), drop_rate=0.1) is not nn.mlp_model((4, 3, 2), drop_rate=0.2)
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'gelu'"):
        nn.mlp_model((4, 3, 2), activation="gelu")
    with pytest.raises(ValueError, match=r"dropout_mode must be one of \['inverted', 'textbook'\]; got 'keep'"):
        nn.mlp_model((4, 3, 2), dropout_mode="keep")
    with pytest.raises(ValueError, match=r"drop_rate \(probability of dropping\) must be in \[0, 1\); got 1.0"):
        nn.mlp_model((4, 3, 2), drop_rate=1.0)


# ----------------------------------------------------------- tasks
def test_task_resolution():
    ce, mse = losses.task("cross_entropy"), losses.task("mse")
    assert ce.name == "cross_entropy" and ce.metric == "acc" and ce is losses.LOSSES["cross_entropy"]
    assert mse.name == "mse" and mse.metric == "rmse"
    assert losses.task(ce) is ce  # a Task is returned as is

    def huber(outputs, y):
        d = jnp.abs(outputs - y)
        return jnp.mean(jnp.where(d < 1, 0.5 * d * d, d - 0.5))

    custom = losses.task(huber)
    assert custom.name == "huber" and custom.metric is None and custom.loss is huber
    assert losses.task(huber) is custom  # cached: the same Task keys the same compiled programs
    out, y = jnp.array([[0.0, 3.0], [1.0, 1.5]]), jnp.array([[0.5, 0.0], [1.0, 1.0]])
    per, correct = custom.per_example(out, y)
    assert correct is None
    np.testing.assert_allclose(per, [huber(out[:1], y[:1]), huber(out[1:], y[1:])], rtol=1e-6)
    np.testing.assert_allclose(jnp.mean(per), huber(out, y), rtol=1e-6)  # a mean of per-example terms
    with pytest.raises(ValueError, match=r"loss must be one of \['cross_entropy', 'mse'\] or a callable.*'hinge'"):
        losses.task("hinge")
    with pytest.raises(TypeError, match=r"loss must be one of \['cross_entropy', 'mse'\] or a callable.*got int"):
        losses.task(3)


def _outputs(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_check_targets_accepts_what_fits():
    ce, mse = losses.task("cross_entropy"), losses.task("mse")
    losses.check_targets(ce, "train", np.array([0, 9, 3]), _outputs(8, 10))
    losses.check_targets(ce, "train", np.eye(10, dtype=np.float32)[[0, 9, 3]], _outputs(8, 10))
    losses.check_targets(mse, "train", np.zeros((3, 2), np.float32), _outputs(8, 2))
    losses.check_targets(mse, "train", np.zeros(3, np.float32), _outputs(8, 1))  # (n,) targets, one output


@pytest.mark.parametrize("loss, y, outputs, match", [
    # regression targets given to cross-entropy: the message names both losses
    ("cross_entropy", np.linspace(-2, 5, 30, dtype=np.float32).reshape(3, 10), (8, 10),
     r"cross_entropy needs val float targets to be one-hot or probability rows .*use loss='mse'"),
    ("cross_entropy", np.array([0.5, 1.5, 2.5], np.float32), (8, 10),
     r"cross_entropy needs val targets as integer labels \(n,\) or one-hot rows \(n, 10\) for the model's 10 "
     r"outputs; got float32 of shape \(3,\)"),
    ("cross_entropy", np.array([0, 1], np.int32), (8, 1), r"at least 2 classes.*use loss='mse'"),
    ("cross_entropy", np.array([0, 10, 3]), (8, 10),
     r"val labels must be in \[0, 10\) for the model's 10 outputs; found 0\.\.10"),
    ("cross_entropy", np.array([-1, 2]), (8, 10), r"val labels must be in \[0, 10\).*found -1\.\.2"),
    ("cross_entropy", np.zeros((3, 2), np.int32), (8, 10), r"val integer labels must have shape \(n,\); got \(3, 2\)"),
    ("mse", np.array([0, 1, 2]), (8, 1), r"mse needs float val targets; got int64 \(class labels: use "
                                        r"loss='cross_entropy'"),
    ("mse", np.zeros((3, 2), np.float32), (8, 3),
     r"mse needs model outputs of the val targets' row shape \(2,\) .*gives outputs \(8, 3\) for targets \(3, 2\)"),
    ("mse", np.zeros(3, np.float32), (8, 2), r"mse needs model outputs of the val targets' row shape \(\)"),
])
def test_check_targets_errors(loss, y, outputs, match):
    with pytest.raises(ValueError, match=match):
        losses.check_targets(losses.task(loss), "val", y, _outputs(*outputs))


# ----------------------------------------------------------- weight decay mask
@pytest.mark.parametrize("batchnorm", [False, True])
def test_l2_penalty_default_mask_is_the_books_weights_only(key, batchnorm):
    params = jax.tree.map(lambda p: p + 0.5, nn.init_mlp(key, (4, 3, 3, 2), batchnorm=batchnorm))
    assert jax.tree.map(losses.is_weight, params) == nn.weights_mask(params)
    np.testing.assert_allclose(losses.l2_penalty(params, 0.1), losses.l2_penalty(params, 0.1, mask=nn.weights_mask),
                               rtol=1e-7)
    expected = 0.05 * sum(float(jnp.sum(layer["w"] ** 2)) for layer in params)
    assert float(losses.l2_penalty(params, 0.1)) == pytest.approx(expected, rel=1e-6)


def test_l2_penalty_complex_kernels_and_integer_leaves():
    w = jnp.array([[1 + 2j, -1j], [3 + 0j, 0.5 - 0.5j]], jnp.complex64)
    params = {"w": w, "kernel": jnp.ones((2, 2, 1, 3)), "b": jnp.full(3, 5.0), "count": jnp.ones((2, 2), jnp.int32)}
    assert jax.tree.map(losses.is_weight, params) == {"w": True, "kernel": True, "b": False, "count": False}
    penalty = losses.l2_penalty(params, 0.1)
    assert penalty.dtype == jnp.float32 and not jnp.iscomplexobj(penalty)  # |w| ** 2, real
    abs2 = (1 + 4) + 1 + 9 + (0.25 + 0.25)
    assert float(penalty) == pytest.approx(0.05 * (abs2 + 12), rel=1e-6)


# ----------------------------------------------------------- MSE through the train step
@pytest.mark.parametrize("n_out", [1, 2])
def test_mse_gradient_through_the_train_step_equals_finite_differences(key, x64, n_out):
    """One SGD step with learning rate 1 moves the parameters by minus the gradient of MSE plus
    weight decay; it must equal a float64 central difference of a NumPy transcription."""
    from jaxscratch import optim, train

    sizes, wd = (3, 4, n_out), 0.3
    model = nn.mlp_model(sizes, activation="tanh", dtype=jnp.float64)
    params, state = model.init(key)
    params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    y = rng.standard_normal((6,) if n_out == 1 else (6, n_out))  # (n,) targets against outputs (batch, 1)
    step = jax.jit(train.make_train_step(model, optim.sgd(1.0), loss="mse"))
    ts = train.init_state(key, params, optim.sgd(1.0), state)
    new, loss = step(ts, jnp.asarray(x), jnp.asarray(y), train.Hyper(jnp.float64(wd)))

    def f(p):  # NumPy: mean squared error over every element, plus the book's L2 on weights
        out = np_forward(p, x, "tanh")
        out = out[:, 0] if y.ndim == 1 else out
        return np.mean((out - y) ** 2) + 0.5 * wd * sum(np.sum(np.asarray(layer["w"]) ** 2) for layer in p)

    p_np = jax.tree.map(np.asarray, params)
    assert float(loss) == pytest.approx(f(p_np), rel=1e-12)
    h = 1e-6
    for layer, (p_layer, new_layer) in enumerate(zip(params, new.params)):
        for name in ("w", "b"):
            grad = np.asarray(p_layer[name]) - np.asarray(new_layer[name])  # sgd(1.0): p - g
            fd = np.zeros_like(grad)
            for idx in np.ndindex(grad.shape):
                plus, minus = (jax.tree.map(np.copy, p_np) for _ in range(2))
                plus[layer][name][idx] += h
                minus[layer][name][idx] -= h
                fd[idx] = (f(plus) - f(minus)) / (2 * h)
            np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    metrics = train.evaluate(model, params, state, x, y, loss="mse")
    assert set(metrics) == {"loss", "rmse"}
    assert float(metrics["rmse"]) == pytest.approx(float(np.sqrt(metrics["loss"])), rel=1e-12)
