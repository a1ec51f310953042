"""JAX's threefry draws computed with NumPy (``_hostrandom``) are JAX's bit for bit, and ``fit`` and
``init_mlp``, which use them to compile less, give exactly what the in-program draws gave."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import _hostrandom as hr
from jaxscratch import data, nn, optim, train

KEYS = [jax.random.key(0), jax.random.key(7), jax.random.key(2**31 + 5), jax.random.PRNGKey(123)]


@pytest.mark.parametrize("key", KEYS, ids=["k0", "k7", "k2^31+5", "raw"])
def test_hash_split_fold_in_and_bits_are_jax(key):
    kd = hr.key_data(key)
    data_of = lambda k: np.asarray(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k)
    np.testing.assert_array_equal(hr.fold_in(kd, 5), data_of(jax.random.fold_in(key, 5)))
    np.testing.assert_array_equal(hr.fold_in(kd, 2**32 - 1), data_of(jax.random.fold_in(key, np.uint32(2**32 - 1))))
    np.testing.assert_array_equal(hr.split(kd, 3), data_of(jax.random.split(key, 3)))
    for size in (1, 2, 9, 1000):
        np.testing.assert_array_equal(hr.bits32(kd, size), np.asarray(jax.random.bits(key, (size,), jnp.uint32)))


@pytest.mark.parametrize("n", [1, 2, 7, 1625, 1626, 54_000, 2_700_000])  # 1, 2 and 3 rounds of sorting
def test_permutation_is_jax(n):
    for key in KEYS[:2] if n < 100_000 else KEYS[:1]:
        np.testing.assert_array_equal(hr.permutation(hr.key_data(key), n), np.asarray(jax.random.permutation(key, n)))


@pytest.mark.parametrize("n", [1, 7, 1000, 65_536, 65_537, 70_001, 2**31 - 1])  # the multiplier wraps above 2**16
def test_randint_is_jax(n):
    for key in KEYS[:2]:
        got = hr.randint(hr.key_data(key), 333, n)
        np.testing.assert_array_equal(got, np.asarray(jax.random.randint(key, (333,), 0, n)))
        assert got.dtype == np.int32


@pytest.mark.parametrize("replace", [False, True])
def test_fit_epoch_indices_are_make_epochs(replace):
    key = jax.random.key(3)
    for epoch in (0, 1, 41):
        want = data.epoch_indices(jax.random.fold_in(jax.random.fold_in(key, 0), epoch), 1000, 64, replace=replace)
        got = hr.fit_epoch_indices(hr.key_data(key), epoch, 1000, 64, replace)
        np.testing.assert_array_equal(got, np.asarray(want))
        assert got.dtype == np.int32 and got.shape == (15, 64)


@pytest.mark.parametrize("replace,n", [(False, 400), (False, 1700), (True, 1000)])  # 1700: two rounds of sorting
def test_a_batch_of_keys_draws_what_each_key_draws(replace, n):
    """The sweeps draw a group of trials' batch orders at once: a batch of keys (and of epochs)
    gives each key's own draws, which are the trials' programs' (train._epoch_order, vmapped)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(9), i))(jnp.arange(6))
    kd = np.asarray(jax.random.key_data(keys))
    epochs = np.array([0, 1, 2, 7, 7, 40], np.uint32)
    got = hr.fit_epoch_indices(kd, epochs, n, 100, replace)
    assert got.shape == (6, n // 100, 100) and got.dtype == np.int32
    for i in range(6):
        np.testing.assert_array_equal(got[i], hr.fit_epoch_indices(kd[i], int(epochs[i]), n, 100, replace))
    steps = jnp.asarray(epochs.astype(np.int32) * (n // 100))
    sampling = "replacement" if replace else "epoch"
    want = jax.vmap(lambda k, s: train._epoch_order(k, s, n, 100, sampling))(keys, steps)
    np.testing.assert_array_equal(got, np.asarray(want))
    np.testing.assert_array_equal(hr.split(kd, 3), np.asarray(jax.random.key_data(jax.vmap(
        lambda k: jax.random.split(k, 3))(keys))))


def test_supported_keys_only():
    assert hr.supported(jax.random.key(0)) and hr.supported(jax.random.PRNGKey(0))
    assert not hr.supported(jax.random.key(0, impl="rbg"))
    assert not hr.supported(jax.random.split(jax.random.key(0), 2))  # a batch of keys
    assert not hr.supported(np.zeros(2, np.int32)) and not hr.supported(0)
    seen = []
    jax.jit(lambda k: seen.append(hr.supported(k)) or 0)(jax.random.key(0))
    assert seen == [False]  # traced: the caller's program draws
    with jax.threefry_partitionable(False):
        assert not hr.supported(jax.random.key(0))


@pytest.mark.parametrize("sampling,chunk", [("epoch", None), ("replacement", None), ("epoch", 3)])
def test_fit_with_host_order_equals_fit_with_the_order_in_the_program(monkeypatch, sampling, chunk):
    ds = data.load_digits()
    x, y = ds.x_train[:700], ds.y_train[:700]
    model = nn.mlp_model((64, 16, 10))
    run = lambda: train.fit(jax.random.key(5), model, optim.adam(1e-2), (x, y), validation=(x[:100], y[:100]),
                            epochs=3, batch_size=64, sampling=sampling, chunk_steps=chunk, verbose=False)
    assert train._HostOrder.usable(jax.random.key(5), len(x))
    host = run()
    monkeypatch.setattr(train._HostOrder, "MAX_ROWS", 0)  # the epoch program computes its order
    assert not train._HostOrder.usable(jax.random.key(5), len(x))
    inside = run()
    assert host.history.keys() == inside.history.keys()
    for name in host.history:
        if name != "time":  # wall-clock seconds
            np.testing.assert_array_equal(host.history[name], inside.history[name], err_msg=name)
    for a, b in zip(jax.tree.leaves(host.state.params), jax.tree.leaves(inside.state.params)):
        np.testing.assert_array_equal(a, b)


def test_init_mlp_hash_on_the_host_equals_the_hash_in_the_program(monkeypatch):
    key, sizes = jax.random.key(11), (64, 32, 16, 10)
    for weight_init, batchnorm in (("he", False), ("xavier", True), (0.05, False)):
        host = nn.init_mlp(key, sizes, weight_init=weight_init, batchnorm=batchnorm)
        monkeypatch.setattr(nn, "_HOST_HASH_MAX", 0)
        inside = nn.init_mlp(key, sizes, weight_init=weight_init, batchnorm=batchnorm)
        monkeypatch.undo()
        assert jax.tree.structure(host) == jax.tree.structure(inside)
        for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(inside)):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype == jnp.float32


def test_comparison_batches_are_jax_randint_on_the_host_or_not():
    from jaxscratch import sweep
    for key in (jax.random.key(4), jax.random.key(4, impl="rbg")):  # the host's draw; the device's fallback
        got = sweep._draw_batches(key, 20, 30, 500)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.random.randint(key, (20, 30), 0, 500)))
    assert isinstance(sweep._draw_batches(jax.random.key(4), 20, 30, 500), np.ndarray)
