"""`fit`, checkpoints and sweeps on models that are not the book's MLP: flax, equinox, hand-written.

References: a hand-written `lax.scan` loop that calls flax's / equinox's own forward pass with
optax's Adam on the very batches and dropout keys `fit` documents; exact trajectories for resumption.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import checkpoint, data, nn, optim, sweep, train

flax_nn = pytest.importorskip("flax.linen")
eqx = pytest.importorskip("equinox")

EPOCHS, BATCH = 2, 50


@pytest.fixture(scope="module")
def images():
    """Digits as (n, 8, 8, 1) images (NHWC, flax's convention), a train/validation split."""
    ds = data.load_digits(flatten=False)
    x = np.transpose(ds.x_train, (0, 2, 3, 1))[:400]
    xt, yt, xv, yv = data.train_val_split(x, ds.y_train[:400], 0.25, seed=0)
    return (xt, yt), (xv, yv)


class FlaxCNN(flax_nn.Module):
    rate: float = 0.2        # flax's Dropout branches on it in Python: a constant
    bn_momentum: float = 0.9  # flax's BatchNorm only computes with it: may be traced (swept)

    @flax_nn.compact
    def __call__(self, x, train: bool):
        x = flax_nn.Conv(4, (3, 3), use_bias=False)(x)  # a bias before batch norm gets only rounding noise,
        # which Adam would normalise into steps of its learning rate: no reference could follow that
        x = flax_nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
        x = flax_nn.relu(x).reshape(x.shape[0], -1)
        x = flax_nn.Dropout(self.rate, deterministic=not train)(x)
        return flax_nn.Dense(10)(x)


def _batches(key, n, e):
    return data.epoch_indices(jax.random.fold_in(jax.random.fold_in(key, 0), e), n, BATCH)


def _step_key(key, t):
    return jax.random.fold_in(jax.random.fold_in(key, 1), t)


def _reference_run(loss_fn, params, state, xt, yt, key):
    """``EPOCHS`` epochs of optax's Adam (eps 1e-7 outside the root, the book's) on fit's batches and
    dropout keys; ``loss_fn(params, state, xb, yb, key) -> (loss, state)`` is the library's own forward."""
    tx = optax.adam(1e-2, eps=1e-7)
    xj, yj = jnp.asarray(xt), jnp.asarray(yt)

    @jax.jit
    def epoch(carry, idx):
        def body(carry, batch_idx):
            params, state, opt_state, t = carry
            (_, state), g = jax.value_and_grad(loss_fn, has_aux=True)(params, state, xj[batch_idx], yj[batch_idx],
                                                                       _step_key(key, t))
            updates, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), state, opt_state, t + 1), None
        return jax.lax.scan(body, carry, idx)[0]

    carry = (params, state, tx.init(params), jnp.int32(0))
    with jax.numpy_dtype_promotion("standard"):  # optax relies on implicit promotion
        for e in range(EPOCHS):
            carry = epoch(carry, _batches(key, len(xt), e))
    return carry[:2]


def test_fit_on_flax_equals_a_hand_written_loop_with_flax_and_optax(images, key):
    (xt, yt), _ = images
    module = FlaxCNN()
    result = train.fit(key, nn.from_flax(module, xt[:1]), optim.adam(1e-2), (xt, yt), epochs=EPOCHS,
                       batch_size=BATCH, verbose=False)
    # the reference: flax's own init and apply
    init_keys = jax.random.split(key, 2)
    variables = module.init({"params": init_keys[0], "dropout": init_keys[1]}, jnp.zeros_like(xt[:1]), train=False)

    def loss_fn(params, stats, xb, yb, k):
        logits, upd = module.apply({"params": params, "batch_stats": stats}, xb, train=True,
                                   rngs={"dropout": jax.random.split(k, 1)[0]}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd["batch_stats"]

    params, stats = _reference_run(loss_fn, variables["params"], variables["batch_stats"], xt, yt, key)
    got = (result.state.params, result.state.model_state["batch_stats"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves((params, stats))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class EqxCNN(eqx.Module):
    conv: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, 3, padding=1, use_bias=False, key=k1)  # as in FlaxCNN
        self.norm = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")
        self.drop = eqx.nn.Dropout(0.2)
        self.head = eqx.nn.Linear(4 * 8 * 8, 10, key=k2)

    def __call__(self, x, state, *, key):  # one example (8, 8, 1) -> logits (10,)
        h = self.conv(jnp.transpose(x, (2, 0, 1)))
        h, state = self.norm(h, state)
        h = self.drop(jax.nn.relu(h).reshape(-1), key=key)
        return self.head(h), state


def test_fit_on_equinox_equals_a_hand_written_loop_with_equinox_and_optax(images, key):
    (xt, yt), _ = images
    factory = lambda k: eqx.nn.make_with_state(EqxCNN)(k)
    result = train.fit(key, nn.from_equinox(factory), optim.adam(1e-2), (xt, yt), epochs=EPOCHS,
                       batch_size=BATCH, verbose=False)
    model, state = factory(key)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(params, state, xb, yb, k):
        m = eqx.combine(params, static)
        logits, state = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            xb, state, key=jax.random.split(k, xb.shape[0]))
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), state

    params, state = _reference_run(loss_fn, params, state, xt, yt, key)
    for a, b in zip(jax.tree.leaves((result.state.params, result.state.model_state)), jax.tree.leaves((params, state))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_flax_with_batchnorm_and_dropout_resumes_bit_identically_through_a_checkpoint(images, key, tmp_path):
    (xt, yt), (xv, yv) = images
    model = nn.from_flax(FlaxCNN(), xt[:1])
    kw = dict(batch_size=BATCH, validation=(xv, yv), verbose=False)
    whole = train.fit(key, model, optim.momentum(0.05), (xt, yt), epochs=3, **kw)
    first = train.fit(key, model, optim.momentum(0.05), (xt, yt), epochs=1, **kw)
    checkpoint.save(tmp_path / "ckpt.npz", {"state": first.state, "best": first.best})
    restored = checkpoint.restore(tmp_path / "ckpt.npz", {"state": first.state, "best": first.best})
    rest = train.fit(key, model, optim.momentum(0.05), (xt, yt), epochs=3, state=restored["state"],
                     best=restored["best"], history=first.history, **kw)
    for k in ("step_loss", "val_acc", "val_eval_loss", "train_eval_loss"):
        np.testing.assert_array_equal(rest.history[k], whole.history[k])
    for a, b in zip(jax.tree.leaves(rest.state), jax.tree.leaves(whole.state)):
        np.testing.assert_array_equal(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
                                      jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b)


def test_callable_loss_and_weight_decay_mask(key):
    """A user's loss trains and is evaluated per example; weight decay follows the given mask."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 2.0], np.float32))[:, None]
    model = nn.mlp_model((3, 1))
    huber = lambda out, t: jnp.mean(optax.huber_loss(out, t))
    r = train.fit(key, model, optim.sgd(0.1), (x, y), loss=huber, epochs=10, batch_size=20, validation=(x, y),
                  verbose=False)
    assert r.history["train_loss"][-1] < 0.1 * r.history["train_loss"][0]
    params = r.state.params
    want = float(huber(x @ params[0]["w"] + params[0]["b"][None], y))
    assert r.history["val_eval_loss"][-1] == pytest.approx(want, rel=1e-5)
    assert "val_acc" not in r.history and "val_rmse" not in r.history
    # decay on the bias only: the weights end where plain SGD leaves them, the bias does not
    plain = train.fit(key, model, optim.sgd(0.1), (x, y), loss="mse", epochs=3, batch_size=20, verbose=False)
    mask = [{"w": False, "b": True}]
    decayed = train.fit(key, model, optim.sgd(0.1), (x, y), loss="mse", epochs=3, batch_size=20, verbose=False,
                        weight_decay=0.5, weight_decay_mask=mask)
    assert not np.allclose(plain.state.params[0]["b"], decayed.state.params[0]["b"])
    with pytest.raises(ValueError, match="weight_decay_mask must have the structure of params"):
        train.fit(key, model, optim.sgd(0.1), (x, y), loss="mse", epochs=1, weight_decay=0.5,
                  weight_decay_mask={"w": True})


def test_sweep_over_a_flax_factory_traces_its_hyperparameter_and_equals_fit(images, key):
    (xt, yt), (xv, yv) = images
    spec = sweep.Spec(model=lambda bn_momentum: nn.from_flax(FlaxCNN(bn_momentum=bn_momentum), xt[:1]),
                      optimizer="momentum", batch_size=BATCH)
    hp = {"learning_rate": [0.05, 0.02], "bn_momentum": [0.5, 0.9]}
    trials = sweep.run_trials(key, spec, hp, (xt, yt), epochs=2, validation=(xv, yv), seeds=[3, 4])
    for i, seed in enumerate((3, 4)):
        alone = train.fit(jax.random.fold_in(key, seed), nn.from_flax(FlaxCNN(bn_momentum=hp["bn_momentum"][i]), xt[:1]),
                          optim.momentum(hp["learning_rate"][i]), (xt, yt), epochs=2, batch_size=BATCH,
                          validation=(xv, yv), verbose=False)
        np.testing.assert_allclose(trials.history["val_eval_loss"][i], alone.history["val_eval_loss"], rtol=2e-4)
    with pytest.raises(ValueError, match="cannot sweep 'rate'"):
        sweep.run_trials(key, spec, {"rate": [0.1]}, (xt, yt), epochs=1)


def test_model_errors_name_what_was_expected(images, key):
    (xt, yt), _ = images
    with pytest.raises(TypeError, match="wrap a flax linen module with nn.from_flax"):
        train.fit(key, FlaxCNN(), optim.sgd(), (xt, yt), epochs=1)
    with pytest.raises(TypeError, match=r"model must be an nn.Model.*got dict"):
        train.fit(key, {"w": jnp.ones(3)}, optim.sgd(), (xt, yt), epochs=1)
    flat = xt.reshape(len(xt), -1)
    with pytest.raises(ValueError, match=r"train x of shape \(n, 64\).*does not fit the model"):
        train.fit(key, nn.from_flax(FlaxCNN(), xt[:1]), optim.sgd(), (flat, yt), epochs=1)
    with pytest.raises(ValueError, match="cross_entropy needs train float targets to be one-hot or probability rows"):
        train.fit(key, nn.mlp_model((64, 10)), optim.sgd(), (flat, np.random.rand(len(flat), 10)), epochs=1)


def test_equinox_state_checkpoints_and_resumes_bit_identically(images, key, tmp_path):
    (xt, yt), _ = images
    model = nn.from_equinox(lambda k: eqx.nn.make_with_state(EqxCNN)(k))
    kw = dict(batch_size=BATCH, verbose=False)
    whole = train.fit(key, model, optim.adam(1e-2), (xt, yt), epochs=2, **kw)
    first = train.fit(key, model, optim.adam(1e-2), (xt, yt), epochs=1, **kw)
    checkpoint.save(tmp_path / "eqx.npz", first.state)
    restored = checkpoint.restore(tmp_path / "eqx.npz", first.state)  # eqx.nn.State and None leaves included
    assert jax.tree.structure(restored) == jax.tree.structure(first.state)
    # equinox's batch-mode BatchNorm computes momentum ** counter in inference; the counter comes back
    # from the file as a strongly typed int32 (a checkpoint keeps dtypes, not JAX's weak types), which
    # strict promotion refuses with a Python float
    with jax.numpy_dtype_promotion("standard"):
        rest = train.fit(key, model, optim.adam(1e-2), (xt, yt), epochs=2, state=restored, history=first.history, **kw)
    np.testing.assert_array_equal(rest.history["step_loss"], whole.history["step_loss"])
    for a, b in zip(jax.tree.leaves(rest.state.params), jax.tree.leaves(whole.state.params)):
        np.testing.assert_array_equal(a, b)
