"""fit's chunked epochs (progress within a long epoch): bit-identical to whole epochs, one
compiled program whatever the last chunk's length, one read per chunk."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import data, nn, optim, train

from helpers import COMPILES

OPT = optim.adam(1e-2)  # one object: fit's programs are keyed by its update function


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    return (xt, yt), (xv, yv)


def _fit(digits, epochs=3, sampling="epoch", key=None, **kw):
    tr, va = digits  # batch norm, dropout, weight decay: every source of state and randomness
    return train.fit(jax.random.key(1) if key is None else key, nn.mlp_model((64, 32, 10), batchnorm=True, drop_rate=0.1), OPT, tr,
                     epochs=epochs, batch_size=50, validation=va, weight_decay=1e-3, sampling=sampling,
                     verbose=False, **kw)


def _assert_same(a, b):
    for u, v in zip(jax.tree.leaves((a.state, a.best)), jax.tree.leaves((b.state, b.best)), strict=True):
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        assert u.dtype == v.dtype and np.asarray(u).tobytes() == np.asarray(v).tobytes()
    assert a.history.keys() == b.history.keys()
    for k in a.history:
        if k != "time":
            np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)


@pytest.mark.parametrize("sampling", ["epoch", "replacement"])
def test_chunked_epochs_equal_whole_epochs_bit_for_bit(digits, sampling):
    whole = _fit(digits, sampling=sampling)
    steps = len(digits[0][0]) // 50
    assert steps == 25  # chunks of 7 leave a last chunk of 4
    seen = []
    chunked = _fit(digits, sampling=sampling, chunk_steps=7, on_steps=lambda *a: seen.append(a))
    _assert_same(whole, chunked)
    assert [s[:3] for s in seen[:4]] == [(1, 7, 25), (1, 14, 25), (1, 21, 25), (1, 25, 25)]
    assert len(seen) == 3 * 4 and [s[:2] for s in seen[-4:]] == [(3, 7), (3, 14), (3, 21), (3, 25)]
    # the loss shown after a chunk is that chunk's last step's loss
    step_loss = whole.history["step_loss"]
    assert [s[3] for s in seen[:4]] == [float(step_loss[i - 1]) for i in (7, 14, 21, 25)]


def test_chunked_resume_is_bit_identical_and_compiles_one_chunk_program(digits):
    with COMPILES as c:
        first = _fit(digits, epochs=2, chunk_steps=5)
    assert c.names.count("jit(chunk_fn)") == 1  # one program for chunks of 5 and the last one of 2
    with COMPILES as c:
        resumed = _fit(digits, epochs=4, chunk_steps=5, state=first.state, best=first.best, history=first.history)
    assert c.count == 0
    _assert_same(_fit(digits, epochs=4), resumed)


def test_chunk_steps_larger_than_an_epoch_and_bad_values(digits):
    _assert_same(_fit(digits, epochs=1), _fit(digits, epochs=1, chunk_steps=1000))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_steps must be None or a positive int"):
            _fit(digits, epochs=1, chunk_steps=bad)


def test_chunked_fit_makes_no_implicit_host_transfer(digits):
    _fit(digits, epochs=1, chunk_steps=8)  # compiled outside the guard
    key = jax.random.key(1)  # the key and the initial state are made outside: not part of the loop
    params, model_state = nn.mlp_model((64, 32, 10), batchnorm=True, drop_rate=0.1).init(key)
    state = train.init_state(key, params, OPT, model_state)
    with jax.transfer_guard("disallow"):
        r = _fit(digits, epochs=2, chunk_steps=8, key=key, state=state)
    assert len(r.history["epoch"]) == 2
