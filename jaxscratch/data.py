"""Data sets as NumPy arrays, splits on the host, and batch indices on the device.

Contract:
  * Every loader returns a :class:`Dataset` ``(x_train, y_train, x_test, y_test, name,
    num_classes, source)`` of NumPy arrays (``source``: None, or for a user's ``.npz`` the
    :class:`NpzSource` naming the arrays used and any test rows held out). With the defaults
    (the book's ``load_mnist(normalize=True, flatten=True, one_hot_label=False)``) images are
    float32 in [0, 1] of shape ``(n, features)`` and labels int32 ``(n,)``. ``normalize=False`` keeps the stored
    integers (uint8: 0..255 for MNIST, 0..16 for digits); ``flatten=False`` gives
    ``(n, 1, H, W)``; ``one_hot=True`` gives float32 labels ``(n, num_classes)``.
  * ``load_digits`` reads the 8x8 digits shipped inside the package (works offline).
  * ``load_npz`` reads a user's ``.npz``: ``x_train, y_train`` with or without ``x_test,
    y_test``, else ``X, y`` / ``x, y`` / ``images, labels``; a file without a test pair has
    ``NPZ_TEST_FRACTION`` of each class held out by seed ``NPZ_SPLIT_SEED`` (the same rows on
    every load). Float64 inputs become float32 here, on the host, once.
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
    "NPZ_SPLIT_SEED", "NPZ_TEST_FRACTION", "NpzSource", "describe_npz", "epoch_indices",
    "kfold_indices", "load_dataset", "load_digits", "load_fashion_mnist", "load_mnist", "load_npz",
    "npz_record", "npz_split", "one_hot", "read_idx", "train_val_split",
]


class Dataset(NamedTuple):
    """Train and test arrays (NumPy), the data set's name and its number of classes; for a
    user's ``.npz``, ``source`` (an :class:`NpzSource`) says which arrays were used."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    source: NpzSource | None = None


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
NPZ_TEST_FRACTION = 0.2  # of a train-only file's rows held out as its test set: load_digits' share
NPZ_SPLIT_SEED = 0


class NpzSource(NamedTuple):
    """Which arrays of a user's ``.npz`` made a :class:`Dataset`, and where its test rows came from.

    ``arrays``: ``(name, shape, dtype)`` of each array used, as stored: the inputs and targets,
    then the test pair's when the file holds ``x_test`` and ``y_test``. ``unused``: the names of
    the other arrays. For a train-only file, ``held_out`` of its rows were held out as the test
    set by ``test_fraction`` and ``seed`` (``stratified``: that share of each class); for a file
    with a test pair these are 0, None, None, False.
    """

    path: str
    arrays: tuple
    unused: tuple
    held_out: int
    test_fraction: float | None
    seed: int | None
    stratified: bool = False

    @property
    def integer_inputs(self) -> bool:
        """Whether the inputs were stored as integers (which ``normalize`` divides by 255)."""
        return bool(np.issubdtype(np.dtype(self.arrays[0][2]), np.integer))


def describe_npz(source: NpzSource) -> str:
    """One line: the file, each array used with its shape and dtype, and any split, e.g.
    ``runs.npz: X (1000, 64) float64, y (1000,) int64; no test set: 200 of 1000 rows held out
    as test (20% of each class, seed 0)``."""
    used = ", ".join(f"{name} {tuple(shape)} {dtype}" for name, shape, dtype in source.arrays)
    text = f"{os.path.basename(source.path)}: {used}"
    if source.test_fraction is not None:
        n = source.arrays[0][1][0]
        share = f"{100 * source.test_fraction:g}%" + (" of each class" if source.stratified else "")
        text += f"; no test set: {source.held_out} of {n} rows held out as test ({share}, seed {source.seed})"
    return text + (f"; not used: {', '.join(source.unused)}" if source.unused else "")


def npz_record(source: NpzSource) -> dict:
    """``source`` as JSON (what a run stores), with its :func:`describe_npz` line as ``"summary"``."""
    arrays = [{"name": n, "shape": list(shape), "dtype": dtype} for n, shape, dtype in source.arrays]
    return {**source._asdict(), "arrays": arrays, "unused": list(source.unused), "summary": describe_npz(source)}


def npz_split(record) -> dict:
    """The ``test_fraction`` and ``seed`` keywords of :func:`load_npz` that give again the split
    of a stored :func:`npz_record` (none for a file with a test pair, or no record)."""
    if not isinstance(record, dict) or record.get("test_fraction") is None:
        return {}
    fraction, seed = record["test_fraction"], record.get("seed")
    if not (isinstance(fraction, float) and 0 < fraction < 1 and isinstance(seed, int)
            and not isinstance(seed, bool) and seed >= 0):
        raise DataError(f"a stored data_source must hold a test_fraction in (0, 1) and a seed >= 0; found "
                        f"{fraction!r} and {seed!r}: the run's metadata was edited")
    return {"test_fraction": fraction, "seed": seed}


def _hold_out(y, *, labels: bool, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) of a train-only file: stratified for labels (each class gives
    ``round(test_fraction * class size)`` rows, so with a fraction below 0.5 every class keeps
    training rows), else a
    seeded permutation of which the first ``round(test_fraction * n)`` rows are held out."""
    if labels:
        return _stratified_split(y, test_fraction, seed)
    perm = np.random.default_rng(seed).permutation(len(y))
    k = round(test_fraction * len(y))
    return perm[k:], perm[:k]


def _npz_set(arrays, names, path, *, targets, normalize, flatten):
    """Inputs (float32) and targets of one pair ``names``, checked, and the targets' class count."""
    (xk, yk), read_targets = names, _npz.labels if targets == "labels" else _npz.values
    x = _npz.images(arrays[xk], xk, path, normalize=normalize, flatten=flatten)
    y, classes = read_targets(arrays[yk], yk, path)
    if len(x) != len(y):
        raise DataError(f"{path}: {xk} holds {len(x)} samples but {yk} {len(y)}")
    return x, y, classes


def load_npz(path, *, normalize=True, flatten=True, one_hot=False, targets="labels",
             test_fraction=NPZ_TEST_FRACTION, seed=NPZ_SPLIT_SEED) -> Dataset:
    """A data set of your own: an ``.npz`` of inputs and targets, with or without a test set.

    Arrays: the first pair of ``x_train, y_train``, ``X, y``, ``x, y``, ``images, labels`` that
    the file holds (in that order, ``_npz.TRAIN_PAIRS``) are the inputs and targets, ``x_test,
    y_test`` the test set; a second pair holding other arrays is refused as ambiguous. A file
    without ``x_test, y_test`` has ``test_fraction`` of its rows (of each class, for labels) held
    out as the test set by ``np.random.default_rng(seed)``: the same rows on every load.
    ``Dataset.source`` (an :class:`NpzSource`) names the arrays used and the split.

    Inputs (at least 2-D) become float32 on the host, once: integers must hold 0..255 and are
    divided by 255 when ``normalize`` (pass False for other ranges); float64 is cast; all must
    be finite. Labels are integers ``(n,)`` >= 0 or one-hot rows (``num_classes``: the width,
    else the largest label + 1; training must hold every class and every test label).
    ``targets="values"``: regression targets ``(n,)`` or ``(n, k)`` as float32, ``num_classes``
    their column count. Each member is read whole and checked (header, size, CRC-32); nothing
    is unpickled.
    """
    if targets not in ("labels", "values"):
        raise ValueError(f"targets must be 'labels' or 'values'; got {targets!r}")
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    _npz.check_archive(path)
    train_names, test_names, arrays, unused = _npz.read_pairs(path)
    if test_names and arrays[train_names[0]].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: {train_names[0]} and x_test samples differ in shape: "
                        f"{arrays[train_names[0]].shape[1:]} vs {arrays['x_test'].shape[1:]}")
    opts = {"targets": targets, "normalize": normalize, "flatten": flatten}
    x_train, y_train, classes = _npz_set(arrays, train_names, path, **opts)
    if not len(x_train):
        raise DataError(f"{path}: {train_names[0]} holds no samples; expected at least one")
    if test_names:
        x_test, y_test, _ = _npz_set(arrays, test_names, path, **opts)
        held, split = 0, (None, None, False)
    else:
        train, test = _hold_out(y_train, labels=targets == "labels", test_fraction=test_fraction, seed=int(seed))
        x_train, y_train, x_test, y_test = x_train[train], y_train[train], x_train[test], y_train[test]
        held, split = len(test), (test_fraction, int(seed), targets == "labels")
    source = NpzSource(os.fspath(path), tuple((k, arrays[k].shape, str(arrays[k].dtype)) for k in
                                              train_names + (test_names or ())), tuple(unused), held, *split)
    if targets == "values":
        if y_train.shape[1:] != y_test.shape[1:]:
            raise DataError(f"{path}: {train_names[1]} and y_test rows differ in shape: "
                            f"{y_train.shape[1:]} vs {y_test.shape[1:]}")
        return Dataset(x_train, y_train, x_test, y_test, Path(path).stem, classes, source)
    num_classes = _npz.check_classes(y_train, y_test, classes, path, declared=arrays[train_names[1]].ndim == 2,
                                     names=(train_names[1], "y_test" if test_names else f"{train_names[1]} (held out)"))
    return Dataset(x_train, _labels(y_train, num_classes, one_hot), x_test,
                   _labels(y_test, num_classes, one_hot), Path(path).stem, num_classes, source)


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
