"""Data sets as NumPy arrays, splits on the host, and batch indices on the device.

Contract:
  * Every loader returns a :class:`Dataset` ``(x_train, y_train, x_test, y_test, name,
    num_classes)`` of NumPy arrays. With the defaults (the book's ``load_mnist(normalize=True,
    flatten=True, one_hot_label=False)``) images are float32 in [0, 1] of shape
    ``(n, features)`` and labels int32 ``(n,)``. ``normalize=False`` keeps the stored
    integers (uint8: 0..255 for MNIST, 0..16 for digits); ``flatten=False`` gives
    ``(n, 1, H, W)``; ``one_hot=True`` gives float32 labels ``(n, num_classes)``.
  * ``load_digits`` reads the 8x8 digits shipped inside the package (works offline).
  * ``load_mnist`` / ``load_fashion_mnist`` look for the four IDX files, in order, in
    ``path`` (and nowhere else when given), the cache (``cache_dir``, else
    ``$JAXSCRATCH_DATA/<name>``, else ``$XDG_CACHE_HOME`` or ``~/.cache``
    ``/jaxscratch/<name>``), the system folders (:data:`FASHION_MNIST_SYSTEM_DIRS`), and
    finally download each missing file from the mirrors in turn. A download lands in a
    unique temporary file in the cache folder, is checked against the official MD5 and the
    IDX structure, and only then is renamed into place (``os.replace``), so the cache never
    holds a partial or wrong file, even with two processes loading at once.
  * ``read_idx`` and every loader raise :class:`DataError` (a ``ValueError``) naming the
    file, what was expected and what was found; nothing ever unpickles (``allow_pickle=False``).
  * Splits (``train_val_split``, ``kfold_indices``, the digits split) are NumPy and
    deterministic for a given ``seed``. ``epoch_indices`` is JAX: a pure, jitted function of
    ``key`` giving the batch indices for one epoch, so batches are gathered on the device.

Layout: the IDX reader and the search-then-download machinery live in the private ``_idx``
module; the sources (MD5 tables, mirrors, system folders) stay here.
"""
from __future__ import annotations

import functools
import importlib.resources
import math
import numbers
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import _idx, _npz
from jaxscratch._idx import IDX_FILES, DataError, read_idx  # part of this module's API (__all__)

__all__ = [
    "DataError", "Dataset", "FASHION_MNIST_MD5", "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SYSTEM_DIRS", "IDX_FILES", "MNIST_MD5", "MNIST_MIRRORS", "MNIST_SYSTEM_DIRS",
    "epoch_indices", "kfold_indices", "load_dataset", "load_digits", "load_fashion_mnist",
    "load_mnist", "load_npz", "one_hot", "read_idx", "train_val_split",
]


class Dataset(NamedTuple):
    """Train and test arrays (NumPy), the data set's name and its number of classes."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int


# ---------------------------------------------------------------------------- formatting
def one_hot(labels, num_classes: int):
    """One-hot float32 encoding: ``(...,)`` integer labels -> ``(..., num_classes)``.

    NumPy arrays are checked to lie in ``0..num_classes-1``; JAX arrays (possibly traced)
    go through ``jax.nn.one_hot``, which maps out-of-range labels to all-zero rows.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
    if isinstance(labels, jax.Array):
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}"
        )
    return (labels[..., None] == np.arange(num_classes)).astype(np.float32)


def _format(x_train, y_train, x_test, y_test, *, name, num_classes, scale,
            normalize, flatten, one_hot_labels) -> Dataset:
    """Images (n, H, W) of integers 0..scale and int labels -> the Dataset the caller asked for."""
    def images(x):
        x = x.astype(np.float32) / np.float32(scale) if normalize else x
        return x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, *x.shape[1:])

    return Dataset(images(x_train), _labels(y_train, num_classes, one_hot_labels), images(x_test),
                   _labels(y_test, num_classes, one_hot_labels), name, num_classes)


def _labels(y, num_classes: int, one_hot_labels: bool) -> np.ndarray:
    return one_hot(y, num_classes) if one_hot_labels else y.astype(np.int32)


# ---------------------------------------------------------------------------- digits
def _check_fraction(name: str, value, *, allow_zero: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}")
    return float(value)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), each shuffled; every class gives round(fraction * size) to test."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        is_test[members[: round(test_fraction * len(members))]] = True
    return rng.permutation(np.flatnonzero(~is_test)), rng.permutation(np.flatnonzero(is_test))


def load_digits(*, normalize=True, flatten=True, one_hot=False, test_fraction=0.2, seed=0) -> Dataset:
    """The 8x8 handwritten digits (1,797 images, 10 classes) shipped inside the package.

    The split is stratified: each class gives ``round(test_fraction * class size)`` images
    to the test set, chosen by ``np.random.default_rng(seed)``; both sets are then shuffled.
    The same ``seed`` always gives the same split.

    Args:
      normalize: divide pixels (0..16) by 16 into float32; False keeps uint8 0..16.
      flatten: ``(n, 64)`` images; False gives ``(n, 1, 8, 8)``.
      one_hot: float32 ``(n, 10)`` labels instead of int32 ``(n,)``.
      test_fraction: share of each class held out for testing, in (0, 1).
      seed: seed of the split.

    Returns:
      A :class:`Dataset` named ``"digits"``.
    """
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    resource = importlib.resources.files("jaxscratch") / "datasets" / "digits.npz"
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if images.shape != (1797, 8, 8) or labels.shape != (1797,):
        raise DataError(
            f"{resource}: expected images (1797, 8, 8) and labels (1797,); found "
            f"{images.shape} and {labels.shape}; reinstall jaxscratch or run tools/make_digits.py"
        )
    train, test = _stratified_split(labels, test_fraction, seed)
    return _format(images[train], labels[train], images[test], labels[test], name="digits",
                   num_classes=10, scale=16, normalize=normalize, flatten=flatten,
                   one_hot_labels=one_hot)


# ---------------------------------------------------------------------------- MNIST sources
MNIST_MD5 = {  # MD5 of the official .gz files
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# The original yann.lecun.com host refuses downloads; these are the mirrors people use now.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's; what the book's repo uses
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Fashion-MNIST's own S3 website is http only, so only its GitHub copy is used.
FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
MNIST_SYSTEM_DIRS: tuple[str, ...] = ()
FASHION_MNIST_SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)  # Debian


def _source(name: str):
    """(md5 table, mirrors, system dirs, mirrors env var), read at call time so tests can patch."""
    if name == "mnist":
        return MNIST_MD5, MNIST_MIRRORS, MNIST_SYSTEM_DIRS, "JAXSCRATCH_MNIST_MIRRORS"
    return (FASHION_MNIST_MD5, FASHION_MNIST_MIRRORS, FASHION_MNIST_SYSTEM_DIRS,
            "JAXSCRATCH_FASHION_MNIST_MIRRORS")


def _load_idx_dataset(name, path, *, normalize, flatten, one_hot, mirrors, cache_dir, timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    if path is not None and not Path(path).is_dir():
        raise DataError(f"path must be a directory holding the four {name} files; got {path}")
    arrays = {field: _idx._fetch(filename, name, path, cache_dir, mirrors, timeout, _source(name))
              for field, filename in IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        xname, yname = IDX_FILES[f"x_{split}"], IDX_FILES[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{xname}: expected uint8 images (n, 28, 28); found {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype != np.uint8:
            raise DataError(f"{yname}: expected uint8 labels (n,); found {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{xname} holds {len(x)} images but {yname} holds {len(y)} labels")
        if y.size and y.max() > 9:
            raise DataError(f"{yname}: expected labels 0..9; found a label {y.max()}")
    return _format(*arrays.values(), name=name, num_classes=10, scale=255,
                   normalize=normalize, flatten=flatten, one_hot_labels=one_hot)


def load_mnist(path=None, *, normalize=True, flatten=True, one_hot=False, mirrors=None,
               cache_dir=None, timeout=30.0) -> Dataset:
    """MNIST (60,000 train and 10,000 test 28x28 digits), found locally or downloaded.

    Args:
      path: a directory holding the four files (``.gz`` or not); when given, nowhere else
        is looked at and nothing is downloaded.
      normalize, flatten, one_hot: as in the module docstring (the book's options).
      mirrors: base URLs to try in turn; default ``$JAXSCRATCH_MNIST_MIRRORS``
        (comma-separated) or :data:`MNIST_MIRRORS`.
      cache_dir: where downloads go; default ``$JAXSCRATCH_DATA/mnist`` or
        ``~/.cache/jaxscratch/mnist`` (``$XDG_CACHE_HOME`` respected).
      timeout: seconds a download may wait for a connection or for data (each read)
        before giving up on a mirror.

    Returns:
      A :class:`Dataset` named ``"mnist"`` with 10 classes.
    """
    return _load_idx_dataset("mnist", path, normalize=normalize, flatten=flatten, one_hot=one_hot,
                             mirrors=mirrors, cache_dir=cache_dir, timeout=timeout)


def load_fashion_mnist(path=None, *, normalize=True, flatten=True, one_hot=False, mirrors=None,
                       cache_dir=None, timeout=30.0) -> Dataset:
    """Fashion-MNIST (same shapes and files as MNIST), found locally or downloaded.

    As :func:`load_mnist`, with ``$JAXSCRATCH_FASHION_MNIST_MIRRORS`` /
    :data:`FASHION_MNIST_MIRRORS`, the cache ``.../fashion-mnist``, and Debian's
    ``dataset-fashion-mnist`` folder (:data:`FASHION_MNIST_SYSTEM_DIRS`) searched after the
    cache. Local copies are checked by IDX structure, not MD5 (Debian re-gzips them).
    """
    return _load_idx_dataset("fashion-mnist", path, normalize=normalize, flatten=flatten,
                             one_hot=one_hot, mirrors=mirrors, cache_dir=cache_dir, timeout=timeout)


# ---------------------------------------------------------------------------- user .npz
def _npz_labels(y, key, path) -> tuple[np.ndarray, int]:
    """Integer labels (n,) from integer labels or one-hot rows (n, c)."""
    if y.ndim == 2 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        return y.argmax(axis=1), y.shape[1]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        hint = "; regression targets: load with targets='values' (jaxscratch train --loss mse)" \
            if np.issubdtype(y.dtype, np.floating) else ""
        raise DataError(f"{path}: {key} must be integer labels (n,) or one-hot rows (n, classes); "
                        f"found {y.dtype} {y.shape}{hint}")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: {key} must be non-negative; found a label {y.min()}")
    return y, int(y.max()) + 1 if y.size else 0


def _check_classes(y_train, y_test, num_classes, path, *, declared: bool) -> int:
    """``num_classes``, once training holds two classes or more, every test label is one of them,
    and (unless one-hot rows ``declared`` the count) every class 0..C-1 occurs in training:
    anything else would train outputs that no example teaches."""
    seen = np.unique(y_train)
    if len(seen) < 2:
        raise DataError(f"{path}: y_train must hold at least two classes for a classifier; found only "
                        f"{seen.tolist()} (every loss would be 0 and every accuracy 100%)")
    if len(seen) < num_classes and not declared:
        absent = np.setdiff1d(np.arange(min(num_classes, len(seen) + 6)), seen)[:5].tolist()
        raise DataError(f"{path}: y_train must hold every class 0..{num_classes - 1} ({num_classes} outputs); "
                        f"found {len(seen)} distinct labels, so classes such as {absent} never occur: number "
                        f"the classes 0..{len(seen) - 1}")
    unknown = np.setdiff1d(np.unique(y_test), seen)
    if unknown.size:
        raise DataError(f"{path}: y_test holds labels {unknown[:5].tolist()} that y_train never has (its classes are "
                        f"0..{num_classes - 1}); a model cannot learn them")
    return num_classes


def _npz_values(y, key, path) -> tuple[np.ndarray, int]:
    """Regression targets as float32 ``(n,)`` or ``(n, k)``, finite; and their number of columns."""
    if y.ndim not in (1, 2) or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{path}: {key} must be numeric targets (n,) or (n, k) for regression; found {y.dtype} {y.shape}")
    with np.errstate(over="ignore"):
        y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise DataError(f"{path}: {key} must hold finite numbers (within float32's range); found NaN or Inf at "
                        f"index {int(np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0])}")
    return y, 1 if y.ndim == 1 else y.shape[1]


def _read_npz(path) -> dict[str, np.ndarray]:
    """The four arrays of a user's .npz, each verified whole (``_npz``), never unpickled."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read {path} as an .npz file: {e}") from None
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: expected an .npz archive of named arrays; found a single array (.npy)")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a zip, an empty zip
        # (np.load would take any other file for a pickle and say so: never suggest unpickling)
        raise DataError(f"{path}: not an .npz archive: expected a zip of .npy arrays; "
                        f"found a file starting with {head!r}")
    return _npz.read_arrays(path, keys)


def _npz_images(x, key, path, *, normalize, flatten) -> np.ndarray:
    """float32 images; integer ones (0..255) divided by 255 when normalize."""
    if x.ndim < 2 or 0 in x.shape[1:] or not (np.issubdtype(x.dtype, np.integer)
                                              or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: {key} must be numeric (n, ...) with at least 2 dims and a value "
                        f"per sample; found {x.dtype} {x.shape}")
    if normalize and np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: integer images must lie in 0..255 to normalize; found "
                            f"{x.min()}..{x.max()} in {key}; store them as floats, or pass normalize=False")
        x = x.astype(np.float32) / np.float32(255)
    with np.errstate(over="ignore"):  # values beyond float32's range become Inf, refused below
        x = x.astype(np.float32)
    flat = x.reshape(len(x), math.prod(x.shape[1:]))  # (-1 cannot be inferred for 0 samples)
    if not np.isfinite(flat).all():  # NaN, Inf, or beyond float32's range
        rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        raise DataError(f"{path}: {key} must hold finite numbers (within float32's range); "
                        f"found NaN or Inf in {len(rows)} samples, the first at index {rows[0]}")
    return flat if flatten else x


def load_npz(path, *, normalize=True, flatten=True, one_hot=False, targets="labels") -> Dataset:
    """A data set of your own: an ``.npz`` holding ``x_train, y_train, x_test, y_test``.

    ``targets="values"`` reads regression targets instead of labels: numbers ``(n,)`` or ``(n, k)``
    as float32 (finite), and ``num_classes`` is then the number of target columns (1 for ``(n,)``).

    Images (at least 2-D) become float32. Integer images must hold 0..255 and are divided
    by 255 when ``normalize`` (pass False for other ranges: they are only cast); float
    images are cast unchanged; all must be finite, and ``x_train`` must hold a sample. Labels
    are integers ``(n,)`` >= 0 or one-hot rows; ``num_classes`` is the one-hot width or the
    largest label + 1; ``y_train`` must hold two classes or more (every class, for integer
    labels) and every test label. Each member is read whole and checked (its header against
    its size, the zip's CRC-32) before it is trusted; nothing is unpickled.

    Returns:
      A :class:`Dataset` named after the file (``"mine"`` for ``mine.npz``).
    """
    arrays = _read_npz(path)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train and x_test samples differ in shape: "
                        f"{arrays['x_train'].shape[1:]} vs {arrays['x_test'].shape[1:]}")
    if targets not in ("labels", "values"):
        raise ValueError(f"targets must be 'labels' or 'values'; got {targets!r}")
    read_targets = _npz_labels if targets == "labels" else _npz_values
    out, classes = {}, []
    for split in ("train", "test"):
        x = _npz_images(arrays[f"x_{split}"], f"x_{split}", path, normalize=normalize, flatten=flatten)
        y, c = read_targets(arrays[f"y_{split}"], f"y_{split}", path)
        if len(x) != len(y):
            raise DataError(f"{path}: x_{split} holds {len(x)} samples but y_{split} {len(y)}")
        if split == "train" and not len(x):
            raise DataError(f"{path}: x_train holds no samples; expected at least one")
        out[split], classes = (x, y), classes + [c]
    (x_train, y_train), (x_test, y_test) = out["train"], out["test"]
    if targets == "values":
        if y_train.shape[1:] != y_test.shape[1:]:
            raise DataError(f"{path}: y_train and y_test rows differ in shape: {y_train.shape[1:]} vs {y_test.shape[1:]}")
        return Dataset(x_train, y_train, x_test, y_test, Path(path).stem, classes[0])
    num_classes = _check_classes(y_train, y_test, classes[0], path, declared=arrays["y_train"].ndim == 2)
    return Dataset(x_train, _labels(y_train, num_classes, one_hot), x_test,
                   _labels(y_test, num_classes, one_hot), Path(path).stem, num_classes)


# ---------------------------------------------------------------------------- dispatch
_LOADERS = {"digits": load_digits, "mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


def load_dataset(name_or_path, **kwargs) -> Dataset:
    """Load ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or a path to an ``.npz`` file.

    Keyword arguments go to the loader (e.g. ``path=`` for MNIST, ``seed=`` for digits).
    """
    text = os.fspath(name_or_path)
    if text.lower().endswith(".npz"):
        return load_npz(text, **kwargs)
    loader = _LOADERS.get(text.lower().replace("_", "-"))
    if loader is None:
        raise DataError(f"unknown data set {text!r}; expected one of {sorted(_LOADERS)} "
                        "or a path ending in .npz")
    return loader(**kwargs)


# ---------------------------------------------------------------------------- splits
def train_val_split(x, y, validation_fraction, *, seed=0):
    """Shuffle with ``seed`` and hold out ``round(validation_fraction * n)`` samples.

    Works on NumPy or JAX arrays (they are indexed by a NumPy permutation).

    Returns:
      ``(x_train, y_train, x_val, y_val)``; the validation arrays are empty when the
      fraction is 0.
    """
    validation_fraction = _check_fraction("validation_fraction", validation_fraction, allow_zero=True)
    if np.ndim(x) < 1 or np.ndim(y) < 1 or len(x) != len(y):
        raise ValueError(f"x and y need the same number of samples; got shapes "
                         f"{np.shape(x)} and {np.shape(y)}")
    n = len(x)
    n_val = round(validation_fraction * n)
    if n - n_val < 1:
        raise ValueError(f"validation_fraction={validation_fraction} of {n} samples leaves "
                         "no training sample")
    perm = np.random.default_rng(seed).permutation(n)
    train, val = perm[n_val:], perm[:n_val]
    return x[train], y[train], x[val], y[val]


def kfold_indices(n: int, k: int, *, seed=0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, val_idx) pairs of sorted indices, of equal sizes (so folds can be vmapped).

    A permutation seeded by ``seed`` is cut into ``k`` validation folds of ``n // k`` samples; the
    ``n % k`` samples left over are in every fold's training set: trained on, never validated.
    Every other sample is validated exactly once, and no fold trains on its validation samples.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n:
        raise ValueError(f"k must be an int in [2, n={n}]; got {k!r}")
    perm = np.random.default_rng(seed).permutation(n)
    folds, rest = perm[: n - n % k].reshape(k, -1), perm[n - n % k:]  # (k, n // k), (n % k,)
    return [(np.sort(np.concatenate([*(folds[j] for j in range(k) if j != i), rest])), np.sort(folds[i]))
            for i in range(k)]


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "replace"))
def epoch_indices(key, n: int, batch_size: int, *, replace: bool = False) -> jax.Array:
    """Indices of one epoch's mini-batches: int32 of shape ``(n // batch_size, batch_size)``.

    ``replace=False``: a random permutation of ``range(n)`` cut into full batches (the last
    ``n % batch_size`` samples of the permutation are dropped), so no index repeats.
    ``replace=True``: the book's ``np.random.choice(n, batch_size)`` for every step, each
    index drawn independently with replacement. Jitted with ``n``, ``batch_size`` and
    ``replace`` static; a pure function of ``key``. Use as ``x[idx[step]]``.

    >>> epoch_indices(jax.random.key(0), 10, 3).shape
    (3, 3)
    """
    for arg, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int; got {value!r}")
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of samples n ({n})")
    steps = n // batch_size
    if replace:
        return jax.random.randint(key, (steps, batch_size), 0, n, dtype=jnp.int32)
    perm = jax.random.permutation(key, n)[: steps * batch_size]
    return perm.astype(jnp.int32).reshape(steps, batch_size)  # (steps, batch_size)
