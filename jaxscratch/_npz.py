"""The reader of a user's ``.npz`` (private): every member checked before it is trusted, and
which of its arrays make the data set.

``np.load`` reads an ``.npy`` member up to the size its header declares and stops, so the zip's
CRC-32, checked only at the end of a member, is never checked, and a flipped bit in a header
(a shape, a dtype) silently shifts every value; a header may also declare terabytes in a
file of kilobytes. This reader parses each member's header with ``np.lib.format``, checks
it, then reads the whole member, so that the zip module verifies its CRC.

Contract:
  * :func:`read_arrays` returns ``{key: array}`` for the requested keys (members named
    ``key.npy`` or ``key``), each exactly as saved, or raises :class:`DataError` naming the
    file, the member, what was expected and what was found. It never unpickles.
  * Before allocating, a member's header must declare exactly the bytes the member holds,
    and all requested members together must fit in the memory available.
  * :func:`check_archive`, :func:`images`, :func:`labels`, :func:`values` and
    :func:`check_classes` check what the arrays hold (``data.load_npz`` states the rules).
  * :func:`read_pairs` chooses which arrays make the data set (see :data:`TRAIN_PAIRS`) and
    reads them with :func:`read_arrays`: ``(train_names, test_names or None, arrays, others)``.
    The first training pair of :data:`TRAIN_PAIRS` that the file holds whole is used; a file
    holding a second pair with other contents is ambiguous and refused, naming both; one
    holding the same arrays under two names uses the first. The test pair ``x_test, y_test``
    goes with any training pair; half of it is refused. A file with no whole training pair is
    refused with the arrays it holds and the names accepted.
"""
from __future__ import annotations

import contextlib
import math
import zipfile

import numpy as np

from jaxscratch._idx import DataError
from jaxscratch.devices import available_memory

_CHUNK = 1 << 24  # read members 16 MiB at a time
# Training pairs in the order they are looked for: ours first, then scikit-learn's X/y,
# the lower-case x/y, and the images/labels of image sets (our own digits.npz).
TRAIN_PAIRS = (("x_train", "y_train"), ("X", "y"), ("x", "y"), ("images", "labels"))
TEST_PAIR = ("x_test", "y_test")


def _header(f, path, name):
    """``(shape, fortran_order, dtype)`` of the member open in ``f``, checked."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # 3.0 only adds UTF-8 field names of structured dtypes, which no data set here has
        raise DataError(f"{path}: member {name}: expected an .npy header of version 1.0 or 2.0; found {version}")
    if dtype.hasobject:
        raise DataError(f"{path}: member {name} is an object array, which only pickle can read; refused "
                        f"(never unpickled): store numbers")
    return shape, fortran, dtype


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path, budget: int | None) -> np.ndarray:
    name = info.filename
    with zf.open(info) as f:
        shape, fortran, dtype = _header(f, path, name)
        nbytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - f.tell()
        if nbytes != held:
            raise DataError(f"{path}: member {name}: its header declares {dtype} {shape}, {nbytes} bytes, but the "
                            f"member holds {held}: the header is damaged or the file was cut")
        if budget is not None and nbytes > budget:
            raise DataError(f"{path}: member {name} declares {dtype} {shape}, {nbytes / 2**30:.3g} GiB, more than "
                            f"the {budget / 2**30:.3g} GiB of memory available")
        buffer = bytearray(nbytes)
        view, done = memoryview(buffer), 0
        while done < nbytes:
            n = f.readinto(view[done:done + _CHUNK])
            if not n:
                raise DataError(f"{path}: member {name} ends after {done} of its {nbytes} bytes")
            done += n
        if f.read(1):  # reading to the end makes zipfile check the CRC-32
            raise DataError(f"{path}: member {name} holds more bytes than its header declares")
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _index(zf: zipfile.ZipFile) -> tuple[dict, set]:
    """``{array name: member}`` (names without ``.npy``) and the names stored more than once."""
    members, twice = {}, set()
    for info in zf.infolist():
        key = info.filename.removesuffix(".npy")
        if key in members:
            twice.add(key)
        members[key] = info
    return members, twice


@contextlib.contextmanager
def _reading(path):
    """Any failure of zipfile, zlib or np.lib.format on damaged bytes as one DataError."""
    try:
        yield
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in this machine's memory") from None
    except Exception as e:  # zipfile, zlib and np.lib.format fail in many ways on damaged bytes (even tokenize's)
        raise DataError(f"{path}: corrupt .npz archive: {type(e).__name__}: {_one_line(e)}") from None


def member_names(path) -> list[str]:
    """The names of the arrays in the ``.npz`` at ``path`` (members without ``.npy``), sorted.
    Each member is opened (its data not read), so that zipfile checks the name in the central
    directory against the member's own header: a damaged name cannot pass for another layout."""
    with _reading(path), zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            zf.open(info).close()
        return sorted(_index(zf)[0])


def read_arrays(path, keys) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path``, each verified whole (see the module)."""
    with _reading(path), zipfile.ZipFile(path) as zf:
        members, twice = _index(zf)
        missing = [k for k in keys if k not in members]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}; found {sorted(members)}")
        if twice & set(keys):
            raise DataError(f"{path}: expected one member per array; found {sorted(twice & set(keys))} twice")
        budget = available_memory()
        out = {}
        for k in keys:
            out[k] = _member(zf, members[k], path, budget)
            budget = None if budget is None else budget - out[k].nbytes
        return out


def _accepted() -> str:
    return ", ".join("/".join(pair) for pair in TRAIN_PAIRS)


def _choose(path, names: list[str]) -> tuple[list[tuple], tuple | None]:
    """The whole training pairs ``names`` holds (in :data:`TRAIN_PAIRS` order) and its test pair."""
    pairs = [pair for pair in TRAIN_PAIRS if set(pair) <= set(names)]
    if not pairs:
        raise DataError(f"{path}: expected a pair of arrays, inputs and targets, named {_accepted()} (with "
                        f"x_test/y_test for a test set); found {names}")
    half = [k for k in TEST_PAIR if k in names]
    if len(half) == 1:
        other = TEST_PAIR[1 - TEST_PAIR.index(half[0])]
        raise DataError(f"{path}: missing arrays [{other!r}]; found {names} (a test set needs both x_test and "
                        f"y_test; a file with neither has its test rows held out of the training pair)")
    return pairs, TEST_PAIR if half else None


def read_pairs(path) -> tuple[tuple, tuple | None, dict[str, np.ndarray], list[str]]:
    """``(train_names, test_names or None, {name: array}, names of the arrays left unused)``."""
    names = member_names(path)
    pairs, test = _choose(path, names)
    keys = list(dict.fromkeys([k for pair in pairs for k in pair] + list(test or ())))
    arrays = read_arrays(path, keys)
    first = pairs[0]
    for pair in pairs[1:]:
        same = all(arrays[a].dtype == arrays[b].dtype and np.array_equal(arrays[a], arrays[b])
                   for a, b in zip(first, pair))
        if not same:
            raise DataError(f"{path}: ambiguous: it holds two different pairs of arrays, {'/'.join(first)} and "
                            f"{'/'.join(pair)}; keep one pair (names accepted, in order: {_accepted()})")
    used = set(first) | set(test or ())
    return first, test, {k: arrays[k] for k in keys if k in used}, [k for k in names if k not in used]


# ---------------------------------------------------------------- the arrays' values
def labels(y, key, path) -> tuple[np.ndarray, int]:
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


def check_classes(y_train, y_test, num_classes, path, *, declared: bool, names=("y_train", "y_test")) -> int:
    """``num_classes``, once training holds two classes or more, every test label is one of them,
    and (unless one-hot rows ``declared`` the count) every class 0..C-1 occurs in training:
    anything else would train outputs that no example teaches. ``names``: the two label sets'."""
    train, test = names
    seen = np.unique(y_train)
    if len(seen) < 2:
        raise DataError(f"{path}: {train} must hold at least two classes for a classifier; found only "
                        f"{seen.tolist()} (every loss would be 0 and every accuracy 100%)")
    if len(seen) < num_classes and not declared:
        absent = np.setdiff1d(np.arange(min(num_classes, len(seen) + 6)), seen)[:5].tolist()
        raise DataError(f"{path}: {train} must hold every class 0..{num_classes - 1} ({num_classes} outputs); "
                        f"found {len(seen)} distinct labels, so classes such as {absent} never occur: number "
                        f"the classes 0..{len(seen) - 1}")
    unknown = np.setdiff1d(np.unique(y_test), seen)
    if unknown.size:
        raise DataError(f"{path}: {test} holds labels {unknown[:5].tolist()} that {train} never has (its classes are "
                        f"0..{num_classes - 1}); a model cannot learn them")
    return num_classes


def values(y, key, path) -> tuple[np.ndarray, int]:
    """Regression targets as float32 ``(n,)`` or ``(n, k)``, finite; and their number of columns."""
    if y.ndim not in (1, 2) or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{path}: {key} must be numeric targets (n,) or (n, k) for regression; found {y.dtype} {y.shape}")
    with np.errstate(over="ignore"):
        y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise DataError(f"{path}: {key} must hold finite numbers (within float32's range); found NaN or Inf at "
                        f"index {int(np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0])}")
    return y, 1 if y.ndim == 1 else y.shape[1]


def check_archive(path) -> None:
    """Refuse, before zipfile or NumPy read it, a file that is not a zip: never let ``np.load``
    take it for a pickle."""
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


def images(x, key, path, *, normalize, flatten) -> np.ndarray:
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



def _one_line(err) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + "..."
