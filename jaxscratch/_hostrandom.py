"""JAX's threefry random numbers computed with NumPy on the host, bit for bit: draws that then
need no compiled program (``fit``'s and the sweeps' batch orders, ``init_mlp``'s hash, the
optimizer comparison's batches, a search's hyperparameters' hashes).

Inside ``fit``'s epoch program the permutation was ~0.28 s of its 0.97 s of XLA compiling (the
hash's loop and the sort; 784-100-100-10, Adam, level 1, 2-core CPU), and as a program of its own
it compiled no faster. Here the same numbers cost ~10 ms of NumPy per epoch of 54,000 rows, while
the previous epoch runs. Only JAX's default generator is covered: threefry with
``jax_threefry_partitionable`` (JAX's default since 0.5), arrays under 2**32 elements;
:func:`supported` says whether a key qualifies, and callers fall back to JAX otherwise.
Tested against ``jax.random`` itself (``tests/test_hostrandom.py``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def partitionable_threefry(keys) -> bool:
    """Whether ``keys`` (typed, or raw data of the default generator; any batch shape, traced or
    not) belong to threefry with ``jax_threefry_partitionable``: the draws this module, and
    ``nn.unit_normals``' single hash, reproduce."""
    impl = (str(jax.random.key_impl(keys)) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
            else jax.config.jax_default_prng_impl)
    return impl == "threefry2x32" and bool(jax.config.jax_threefry_partitionable)


def supported(key) -> bool:
    """Whether ``key`` (typed, or raw ``uint32[2]`` data of the default generator) is a single
    concrete threefry key whose draws this module reproduces."""
    if not isinstance(key, (jax.Array, np.ndarray)) or isinstance(key, jax.core.Tracer):
        return False
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    shape_ok = key.shape == () if typed else (key.shape == (2,) and key.dtype == np.uint32)
    return shape_ok and partitionable_threefry(key)


def key_data(key) -> np.ndarray:
    """The key's two words as a NumPy ``uint32[2]`` (one small transfer)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        with jax.ensure_compile_time_eval():  # a concrete key inside someone's trace: read it now
            key = jax.random.key_data(key)
    return np.asarray(key, np.uint32)


def _rotl(v, d):
    return (v << np.uint32(d)) | (v >> np.uint32(32 - d))


def threefry2x32(key: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash (20 rounds) of the word pairs ``(x0, x1)`` under ``key`` ``(..., 2)``
    (a batch of keys hashes rows of ``x``: ``(..., size)``)."""
    k0, k1 = key[..., 0, None], key[..., 1, None]
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    with np.errstate(over="ignore"):
        a, b = x0 + ks[0], x1 + ks[1]
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                a = a + b
                b = _rotl(b, r) ^ a
            a = a + ks[(i + 1) % 3]
            b = b + ks[(i + 2) % 3] + np.uint32(i + 1)
    return a, b


# Every function below takes one key (``uint32[2]``) or a batch of keys ``(..., 2)``, whose
# results stack along the leading axes (the sweeps draw a group of trials' orders at once).
def fold_in(key: np.ndarray, data) -> np.ndarray:
    """``jax.random.fold_in(key, data)`` for ``0 <= data < 2**32`` (an int, or one per key)."""
    words = np.asarray(data, np.uint32)[..., None]
    a, b = threefry2x32(key, np.zeros_like(words), words)
    return np.concatenate([a, b], axis=-1)


def split(key: np.ndarray, num: int = 2) -> np.ndarray:
    """``jax.random.split(key, num)`` as raw ``(..., num, 2)`` data."""
    a, b = threefry2x32(key, np.zeros(num, np.uint32), np.arange(num, dtype=np.uint32))
    return np.stack([a, b], axis=-1)


def bits32(key: np.ndarray, size: int) -> np.ndarray:
    """``jax.random.bits(key, (size,), uint32)``."""
    a, b = threefry2x32(key, np.zeros(size, np.uint32), np.arange(size, dtype=np.uint32))
    return a ^ b


def _halves(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pair = split(key)
    return pair[..., 0, :], pair[..., 1, :]


def permutation(key: np.ndarray, n: int) -> np.ndarray:
    """``jax.random.permutation(key, n)``: JAX's rounds of stable sorts by fresh 32-bit keys."""
    x = np.broadcast_to(np.arange(n, dtype=np.int32), key.shape[:-1] + (n,))
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    for _ in range(rounds):
        key, sub = _halves(key)
        x = np.take_along_axis(x, np.argsort(bits32(sub, n), axis=-1, kind="stable"), axis=-1)
    return x


def randint(key: np.ndarray, size: int, n: int) -> np.ndarray:
    """``jax.random.randint(key, (size,), 0, n, int32)`` for ``1 <= n < 2**31``: JAX's two words
    per draw, combined modulo ``n`` in uint32 arithmetic (wrapping as XLA's does)."""
    k1, k2 = _halves(key)
    span = np.uint32(n)
    m = 2 ** 16 % n
    multiplier = np.uint32((m * m % 2 ** 32) % n)  # the square wraps in uint32 (to 0 for n > 2**16)
    with np.errstate(over="ignore"):
        offset = (bits32(k1, size) % span) * multiplier + bits32(k2, size) % span
    return (offset % span).astype(np.int32)


def epoch_indices(key: np.ndarray, n: int, batch_size: int, replace: bool) -> np.ndarray:
    """``data.epoch_indices`` of a raw key, on the host: ``(..., n // batch_size, batch_size)`` int32."""
    steps = n // batch_size
    shape = key.shape[:-1] + (steps, batch_size)
    if replace:
        return randint(key, steps * batch_size, n).reshape(shape)
    return permutation(key, n)[..., : steps * batch_size].reshape(shape)


def fit_epoch_indices(key: np.ndarray, epoch, n: int, batch_size: int, replace: bool) -> np.ndarray:
    """The batch order of epoch ``epoch`` (an int, or one per key) of ``train.make_epoch`` for a
    state key ``key``: ``epoch_indices(fold_in(fold_in(key, 0), epoch), ...)``."""
    if not np.all((0 <= np.asarray(epoch)) & (np.asarray(epoch) < 2 ** 32)):
        raise ValueError(f"epoch must be in [0, 2**32); got {epoch}")
    return epoch_indices(fold_in(fold_in(key, 0), epoch), n, batch_size, replace)

