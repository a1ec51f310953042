"""fit and the scan-fused epoch: accuracy on real data, resumption, no recompilation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import data, losses, nn, optim, train


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    return ds, (xt, yt), (xv, yv)


def test_fit_on_digits_reaches_95_percent(digits):
    ds, tr, va = digits
    key = jax.random.key(0)
    params = nn.init_mlp(key, (64, 100, 100, 10))
    model = nn.mlp_model((64, 100, 100, 10))
    result = train.fit(key, model, optim.adam(), tr, epochs=20, batch_size=100, validation=va,
                       test=(ds.x_test, ds.y_test), params=params, verbose=False)
    h = result.history
    assert h["test_acc"][-1] >= 0.95
    steps_per_epoch = len(tr[0]) // 100
    assert h["step_loss"].shape == (20 * steps_per_epoch,) and int(result.state.step) == 20 * steps_per_epoch
    assert list(h["epoch"]) == list(range(1, 21))
    assert h["step_loss"][-10:].mean() < h["step_loss"][:10].mean() / 5
    # the best state is the one with the best validation accuracy
    best_acc = float(train.evaluate(model, result.best.params, result.best.model_state, *map(jnp.asarray, va))["acc"])
    assert best_acc == pytest.approx(h["val_acc"].max(), abs=1e-6)
    # params given to fit are untouched (state buffers are donated inside fit)
    assert jnp.array_equal(params[0]["w"], nn.init_mlp(key, (64, 100, 100, 10))[0]["w"])
    state = train.init_state(key, params, optim.adam(), nn.init_bn_state(params))
    train.fit(key, model, optim.adam(), tr, epochs=1, batch_size=100, state=state, verbose=False)
    assert not any(a.is_deleted() for a in jax.tree.leaves(state)) and not key.is_deleted()  # nor a state given


def _run(epochs, state=None, best=None, history=None, tr=None, va=None, **kw):
    key = jax.random.key(3)  # model.init(key): the weights of nn.init_mlp(key, ..., batchnorm=True)
    model = nn.mlp_model((64, 32, 32, 10), batchnorm=True, drop_rate=0.2)
    return train.fit(key, model, optim.momentum(0.05), tr, epochs=epochs, batch_size=64, validation=va,
                     weight_decay=1e-3, state=state, best=best, history=history, verbose=False, **kw)


@pytest.mark.parametrize("split", [1, 3])
def test_resume_is_bit_identical(digits, split):
    """Batch norm, dropout and weight decay on: stop after `split` epochs, resume, compare bits."""
    _, tr, va = digits
    full = _run(5, tr=tr, va=va)
    first = _run(split, tr=tr, va=va)
    resumed = _run(5, state=first.state, best=first.best, history=first.history, tr=tr, va=va)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert jnp.array_equal(a, b)
    np.testing.assert_array_equal(full.history["step_loss"], resumed.history["step_loss"])
    np.testing.assert_array_equal(full.history["val_acc"], resumed.history["val_acc"])


def test_epoch_compiles_once_and_sampling_with_replacement(digits):
    _, (x, y), _ = digits
    key = jax.random.key(0)
    model = nn.mlp_model((64, 20, 10))
    params, model_state = model.init(key)
    for sampling in train.SAMPLINGS:
        epoch = jax.jit(train.make_epoch(model, optim.sgd(0.1), batch_size=50, sampling=sampling))
        state = train.init_state(key, params, optim.sgd(0.1), model_state)
        losses_seen = []
        for _ in range(3):
            state, step_losses = epoch(state, jnp.asarray(x), jnp.asarray(y), train.Hyper())
            losses_seen.append(float(step_losses.mean()))
        assert epoch._cache_size() == 1
        assert int(state.step) == 3 * (len(x) // 50)
        assert losses_seen[-1] < losses_seen[0]


def test_weight_decay_and_dropout_values_do_not_recompile(digits):
    """Weight decay is traced in ``Hyper``; the drop rate is the model's, traced when the model is
    built inside the compiled function (as a sweep's model factory does)."""
    _, (x, y), _ = digits
    key = jax.random.key(0)
    sizes = (64, 20, 10)
    params, model_state = nn.mlp_model(sizes).init(key)
    state = train.init_state(key, params, optim.sgd(0.1), model_state)

    @jax.jit
    def epoch(state, x, y, hyper, drop_rate):
        model = nn.mlp_model(sizes, drop_rate=drop_rate)
        return train.make_epoch(model, optim.sgd(0.1), batch_size=50)(state, x, y, hyper)

    outs = {}
    for wd, rate in ((0.0, 0.1), (0.1, 0.1), (0.0, 0.5)):
        _, step_losses = epoch(state, jnp.asarray(x), jnp.asarray(y), train.Hyper(jnp.float32(wd)), jnp.float32(rate))
        outs[wd, rate] = step_losses
    assert epoch._cache_size() == 1
    assert not jnp.allclose(outs[0.0, 0.1], outs[0.1, 0.1])  # the weight decay acts
    assert not jnp.allclose(outs[0.0, 0.1], outs[0.0, 0.5])  # the drop rate acts


def test_evaluate_in_chunks_equals_direct(monkeypatch, key):
    params = nn.init_mlp(key, (8, 16, 4))
    x = jax.random.normal(key, (1000, 8))
    y = jax.random.randint(key, (1000,), 0, 4)
    model = nn.mlp_model((8, 16, 4))
    direct = (losses.softmax_cross_entropy(nn.mlp(params, x), y), losses.accuracy(nn.mlp(params, x), y))
    monkeypatch.setattr(train, "EVAL_CHUNK", 300)  # 1000 = 3 * 300 + 100: exercises the padding
    chunked = train.evaluate(model, params, nn.init_bn_state(params), x, y)
    assert set(chunked) == {"loss", "acc"}
    np.testing.assert_allclose(chunked["loss"], direct[0], rtol=1e-5)
    assert float(chunked["acc"]) == pytest.approx(float(direct[1]))
    onehot = train.evaluate(model, params, nn.init_bn_state(params), x, jax.nn.one_hot(y, 4))
    np.testing.assert_allclose(onehot["loss"], direct[0], rtol=1e-5)


def test_fit_bad_arguments(digits, key):
    _, (x, y), _ = digits
    model = nn.mlp_model((64, 10))
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, \d+\]"):
        train.fit(key, model, optim.sgd(), (x, y), epochs=1, batch_size=10**6)
    with pytest.raises(ValueError, match="same number of rows"):
        train.fit(key, model, optim.sgd(), (x, y[:-1]), epochs=1)
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\)"):
        train.fit(key, model, optim.sgd(), (x, y), epochs=1, weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"drop_rate \(probability of dropping\) must be in \[0, 1\)"):
        nn.mlp_model((64, 10), drop_rate=1.5)  # the model's setting now: refused when it is built
    with pytest.raises(ValueError, match="sampling must be one of"):
        train.fit(key, model, optim.sgd(), (x, y), epochs=1, sampling="bootstrap")
    with pytest.raises(TypeError, match=r"model must be an nn.Model\(init, apply\).*params="):
        train.fit(key, nn.init_mlp(key, (64, 10)), optim.sgd(), (x, y), epochs=1)  # the 0.4 call


def test_progress_line(digits, capsys, key):
    _, tr, va = digits
    train.fit(key, nn.mlp_model((64, 10)), optim.sgd(0.1), tr, epochs=2, validation=va)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2  loss ") and " train " in lines[1] and " val " in lines[1]


def test_fashion_mnist_textbook_protocol_reaches_86_percent():
    """784-100x4-10, ReLU, He, Adam 1e-3, batch 128, 5 epochs of the 60,000 images (2,340
    iterations): JAX + optax reach about 87% with this protocol; we must reach 86%."""
    from helpers import FASHION_MNIST_DIR, FASHION_MNIST_FILES, require_files

    require_files(FASHION_MNIST_FILES)
    ds = data.load_fashion_mnist(FASHION_MNIST_DIR)
    key = jax.random.key(0)
    model = nn.mlp_model((784, 100, 100, 100, 100, 10), weight_init="he")  # init: nn.init_mlp(key, ...)
    result = train.fit(key, model, optim.adam(1e-3), (ds.x_train, ds.y_train), epochs=5, batch_size=128,
                       test=(ds.x_test, ds.y_test), verbose=False)
    assert int(result.state.step) == 5 * (60000 // 128)
    assert result.history["test_acc"][-1] >= 0.86


def test_divergence_stops_with_the_step_named(digits, key):
    _, tr, _ = digits
    seen = []
    with pytest.raises(FloatingPointError, match=r"training diverged: loss (nan|inf) at step \d+ \(epoch 1\)"):
        train.fit(key, nn.mlp_model((64, 32, 10)), optim.sgd(1e12), tr, epochs=3, verbose=False,
                  on_epoch=lambda e, r: seen.append(e))
    assert seen == []  # nothing diverged was handed to the checkpoint callback


@pytest.mark.parametrize("chunk_steps", [None, 4])
def test_parameters_gone_non_finite_stop_the_run_when_every_loss_was_finite(digits, key, chunk_steps):
    """The last step of epoch 2 writes an Inf into one weight: every loss of the epoch was
    computed before it, so only the epoch program's check of the parameters can tell."""
    _, (x, y), _ = digits
    steps = len(x) // 100

    def update(grads, count, params=None):
        bad = count == 2 * steps - 1  # the last step of epoch 2
        updates = jax.tree.map(lambda g: -0.01 * g, grads)
        updates[0]["w"] = updates[0]["w"].at[3, 5].set(jnp.where(bad, jnp.inf, updates[0]["w"][3, 5]))
        return updates, count + 1

    opt = optim.Optimizer(lambda params: jnp.zeros((), jnp.int32), update)
    seen = []
    with pytest.raises(FloatingPointError, match=r"the parameters after epoch 2 \(step \d+\) hold a NaN or Inf"):
        train.fit(key, nn.mlp_model((64, 32, 10)), opt, (x, y), epochs=3, batch_size=100, chunk_steps=chunk_steps,
                  verbose=False, on_epoch=lambda e, r: seen.append(e))
    assert seen == [1]


@pytest.mark.parametrize("concat_max", [1 << 24, 100])  # the leaves concatenated, or summed one by one
def test_all_finite_checks_every_inexact_leaf_at_every_position(monkeypatch, concat_max):
    monkeypatch.setattr(train, "_FINITE_CONCAT_MAX", concat_max)
    tree = {"w": jnp.ones((30, 20)), "b": jnp.zeros(20), "h": jnp.ones(7, jnp.bfloat16),
            "c": jnp.ones(3, jnp.complex64), "n": jnp.arange(3), "big": jnp.full(4, 3e38)}
    check = jax.jit(train._all_finite)
    assert bool(check(tree)) and bool(check({"n": jnp.arange(3)})) and bool(check({}))
    for name in ("w", "b", "h", "c", "big"):
        for at in (0, 2, -1):
            for bad in (np.nan, np.inf, -np.inf):
                leaf = np.array(tree[name])
                leaf.reshape(-1)[at] = bad
                assert not bool(check({**tree, name: jnp.asarray(leaf)})), (name, at, bad)


def test_sets_with_mixed_label_formats_evaluate_as_their_labels_say(digits):
    """fit lays every set out in one array of chunks; one-hot validation labels beside integer
    training labels are evaluated exactly as integer ones (and the training is unchanged)."""
    ds, tr, va = digits
    key = jax.random.key(2)
    model = nn.mlp_model((64, 32, 10))
    as_int = train.fit(key, model, optim.adam(), tr, epochs=2, validation=va, test=(ds.x_test, ds.y_test),
                       verbose=False)
    va_hot = (va[0], np.asarray(data.one_hot(va[1], 10)))
    mixed = train.fit(key, model, optim.adam(), tr, epochs=2, validation=va_hot, test=(ds.x_test, ds.y_test),
                      verbose=False)
    for k in ("step_loss", "train_acc", "val_acc", "test_acc"):
        np.testing.assert_allclose(mixed.history[k], as_int.history[k], rtol=1e-6)
    np.testing.assert_allclose(mixed.history["val_eval_loss"], as_int.history["val_eval_loss"], rtol=1e-5)
    direct = train.evaluate(model, mixed.state.params, mixed.state.model_state, *map(jnp.asarray, va))
    assert float(direct["acc"]) == pytest.approx(mixed.history["val_acc"][-1], abs=1e-6)
