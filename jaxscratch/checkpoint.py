"""Save and restore a whole training state, bit for bit, without pickle.

Contract:
  * ``save(path, tree, *, metadata=None)`` writes ``tree`` (any pytree of arrays: params,
    optimizer states, batch-norm statistics, PRNG keys old-style ``uint32`` or typed
    ``key<impl>``, Python numbers) and ``metadata`` (a JSON-able dict, e.g. the run
    configuration) to the single file ``path``. The parent directory must exist.
  * ``restore(path, like) -> tree`` rebuilds the saved tree with the structure of the template
    ``like``, whose leaves may be arrays, ``jax.ShapeDtypeStruct`` or Python numbers. Every leaf
    comes back as a JAX array (on the default device) bit-identical to the saved one; typed keys
    come back as typed keys of the same implementation. Fields renamed since a checkpoint was written
    (0.4's ``bn_state``, now ``model_state``) are matched under their new names. Paths, shapes and dtypes must agree
    exactly, leaf for leaf; otherwise :class:`CheckpointError` names the first differing path or
    every mismatched leaf, e.g. ``leaf [0]['w']: checkpoint has float32 (64, 50), the model
    expects float32 (64, 100)``.
  * ``load_metadata(path, *, verify=False) -> dict`` returns the metadata; it checks the format,
    and with ``verify=True`` also the checksum of every array (``restore`` always does).
  * Python numbers are stored as 0-d arrays of JAX's default dtype (``jnp.asarray(3)`` is int32
    unless x64 is on) and come back as JAX arrays, not Python numbers. Metadata goes through JSON:
    tuples come back as lists and non-string keys as strings. 64-bit leaves need x64 on to
    restore (``with jax.enable_x64(True):``), since JAX would otherwise silently narrow them.
  * Errors: a missing file raises ``FileNotFoundError``; a file that is not a checkpoint
    (not a zip, a zip/npz without our manifest, another format name, a newer format version,
    a manifest that is not JSON), a damaged one (checksum or zip CRC mismatch, truncation) and
    a template that does not fit all raise :class:`CheckpointError`, a ``ValueError``. Members
    that would need pickle (object arrays) are refused, never unpickled.

File format (version 1): an uncompressed ``.npz``, so ``np.load(path)`` can read it too. Member
``leaf_00000``, ``leaf_00001``, ... holds each leaf, in ``jax.tree_util.tree_flatten_with_path``
order, as a plain numeric array: a typed key as its ``jax.random.key_data``; a dtype NumPy's
``.npy`` format does not know (bfloat16, float8, int4) as the unsigned integers of its bits.
Member ``__manifest__`` is a UTF-8 JSON document stored as a ``uint8`` array::

    {"format": "jaxscratch-checkpoint", "version": 1, "metadata": {...}, "sha256": "<hex>",
     "leaves": [{"path": "[0]['w']", "shape": [64, 100], "dtype": "float32"},
                {"path": "['key']", "shape": [], "dtype": "key<fry>", "key_impl": "threefry2x32",
                 "stored_dtype": "uint32", "stored_shape": [2]}, ...]}

``sha256`` hashes, leaf by leaf, the leaf's manifest entry (sorted-key JSON) then its stored
bytes in C order. Saving the same tree twice gives identical files (zip timestamps are fixed).

Atomicity: ``save`` writes a temporary file ``.<name>.<random>.tmp`` in the same directory,
flushes and fsyncs it, ``os.replace``-s it onto ``path`` (onto the file a symlink names) and
fsyncs the directory (the package's one writer, the private ``_files``), so ``path``
always holds either the old checkpoint or the complete new one. On an exception the temporary
file is removed; if the process is killed mid-save it stays behind (``restore`` never reads it,
and it is safe to delete). The hooks ``_after_leaf(index)`` and ``_before_replace(tmp_path)``
are no-ops that tests replace to inject failures at those moments.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import _files

__all__ = ["CheckpointError", "save", "restore", "load_metadata", "FORMAT", "VERSION"]

FORMAT = "jaxscratch-checkpoint"
VERSION = 1
_MANIFEST = "__manifest__.npy"
_NUMPY_DTYPES = {np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128)}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's epoch: same tree, same bytes


class CheckpointError(ValueError):
    """A file that is not a checkpoint, is damaged, or does not fit the template.

    When leaves do not fit (right paths, other shapes or dtypes), ``mismatches`` holds every
    mismatched leaf's description and ``summary`` the message without them; the message lists
    the first ten. Otherwise ``mismatches`` is empty and ``summary`` is the message."""

    def __init__(self, message, *, summary=None, mismatches=()):
        super().__init__(message)
        self.summary, self.mismatches = message if summary is None else summary, tuple(mismatches)


def _after_leaf(index: int) -> None:
    """Fault-injection hook: called after leaf ``index`` is written to the temporary file."""


def _before_replace(tmp_path: str) -> None:
    """Fault-injection hook: called once the temporary file is complete and fsynced."""


# ---------------------------------------------------------------- dtypes and leaves
def _is_key(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _dtype_name(dtype) -> str:
    return str(dtype) if _is_key(dtype) else np.dtype(dtype).name


def _known(dtype: np.dtype) -> bool:
    """A plain NumPy number, or one of JAX's extra types (bfloat16, float8, int4) stored as bits."""
    return dtype in _NUMPY_DTYPES or (dtype.kind == "V" and dtype.fields is None
                                      and dtype.itemsize in (1, 2, 4, 8) and hasattr(jnp, dtype.name))


def _numeric_dtype(name: str, path: str) -> np.dtype:
    """The dtype a manifest calls ``name``; never an object or structured dtype."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name != name or not _known(dtype):
        raise CheckpointError(f"{path} is damaged: its manifest names an unknown dtype {name!r}")
    return dtype


def _show(leaf_path: str) -> str:
    return leaf_path or "(root)"


def _encode(leaf_path: str, leaf) -> tuple[dict, np.ndarray]:
    """One leaf's manifest entry and the plain numeric array that stores it."""
    if isinstance(leaf, (bool, int, float, complex)) and not isinstance(leaf, np.generic):
        leaf = jnp.asarray(leaf)
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(f"leaf {_show(leaf_path)}: cannot save a {type(leaf).__name__}; leaves must "
                        "be arrays or Python numbers (put strings and settings in metadata)")
    entry = {"path": leaf_path, "shape": list(leaf.shape), "dtype": _dtype_name(leaf.dtype)}
    if _is_key(leaf.dtype):
        entry["key_impl"] = _impl_name(leaf)
        leaf = jax.random.key_data(leaf)
    arr = np.asarray(leaf)  # device -> host
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in _NUMPY_DTYPES:
        if not _known(arr.dtype):
            raise TypeError(f"leaf {_show(leaf_path)}: cannot save dtype {arr.dtype}")
        arr = arr.view(f"u{arr.dtype.itemsize}")  # bfloat16 etc.: the raw bits
    if arr.dtype.name != entry["dtype"] or list(arr.shape) != entry["shape"]:
        entry["stored_dtype"], entry["stored_shape"] = arr.dtype.name, list(arr.shape)
    return entry, np.asarray(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _spec(leaf_path: str, leaf) -> tuple[tuple[int, ...], str]:
    """``(shape, dtype name)`` a template leaf asks for."""
    if isinstance(leaf, (bool, int, float, complex)) and not isinstance(leaf, np.generic):
        leaf = jnp.asarray(leaf)
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        raise TypeError(f"template leaf {_show(leaf_path)} is a {type(leaf).__name__}; expected an "
                        "array, a jax.ShapeDtypeStruct or a Python number")
    if not _is_key(leaf.dtype) and jax.dtypes.canonicalize_dtype(leaf.dtype) != leaf.dtype:
        raise CheckpointError(f"leaf {_show(leaf_path)} is {leaf.dtype}, which JAX narrows while "
                              "x64 is off; restore inside `with jax.enable_x64(True):`")
    return tuple(leaf.shape), _dtype_name(leaf.dtype)


def _fold(digest, entry: dict, stored: np.ndarray) -> None:
    """Add one leaf (its manifest entry, then its bytes) to the checksum."""
    digest.update(json.dumps(entry, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(stored).reshape(-1).view(np.uint8))


# ---------------------------------------------------------------- writing
def _write_member(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    with zf.open(info, "w", force_zip64=True) as member:  # as np.savez writes members
        np.lib.format.write_array(member, arr, allow_pickle=False)


def _write_zip(f, arrays: list[np.ndarray], manifest: dict) -> None:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for i, arr in enumerate(arrays):
            _write_member(zf, f"leaf_{i:05d}.npy", arr)
            _after_leaf(i)
        _write_member(zf, _MANIFEST, np.frombuffer(json.dumps(manifest).encode(), np.uint8))


def _write_atomically(path: str, write) -> None:
    """``write(file)`` into a temporary file, then rename it onto ``path``; all or nothing
    (``_files.replacing``: the package's one writer)."""
    with _files.replacing(path, before_replace=lambda tmp: _before_replace(tmp)) as (f, _):
        write(f)


def save(path, tree, *, metadata: dict | None = None) -> None:
    """Write ``tree`` and ``metadata`` to the checkpoint file ``path``, atomically.

    Args:
      path: file to write (str or ``os.PathLike``); an existing file is replaced only once the
        new one is complete.
      tree: a pytree of arrays (typed PRNG keys included) and Python numbers.
      metadata: a JSON-serialisable dict, e.g. the run configuration; ``None`` stores ``{}``.

    Raises:
      TypeError: a leaf that is not an array or a number, or metadata JSON cannot hold.
    """
    path = os.fspath(path)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict; got {type(metadata).__name__}")
    try:
        metadata = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    encoded = [_encode(jax.tree_util.keystr(p), leaf) for p, leaf in flat]
    digest = hashlib.sha256()
    for entry, arr in encoded:
        _fold(digest, entry, arr)
    manifest = {"format": FORMAT, "version": VERSION, "metadata": metadata,
                "sha256": digest.hexdigest(), "leaves": [entry for entry, _ in encoded]}

    _write_atomically(path, lambda f: _write_zip(f, [arr for _, arr in encoded], manifest))


# ---------------------------------------------------------------- reading
@contextlib.contextmanager
def _open(path: str):
    with open(path, "rb") as f:  # a missing file raises FileNotFoundError naming it
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as err:
            raise CheckpointError(f"{path} is not a jaxscratch checkpoint (or it is truncated): "
                                  f"not a zip archive ({err})") from None
        with zf:
            yield zf


def _read_member(zf: zipfile.ZipFile, name: str, path: str) -> np.ndarray:
    """One ``.npy`` member, its header checked before any data is read: pickle is never used."""
    try:
        with zf.open(name) as fp:
            version = np.lib.format.read_magic(fp)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy version {version}, which checkpoints never use")
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, fortran_order, dtype = read_header(fp)
            if dtype.hasobject:
                raise CheckpointError(f"{path}: member {name!r} holds Python objects, which only "
                                      "pickle can load; checkpoints refuse pickle")
            nbytes = math.prod(shape) * dtype.itemsize
            data = fp.read(nbytes)
    except CheckpointError:
        raise
    except KeyError:
        raise CheckpointError(f"{path} is damaged: member {name!r} is missing") from None
    except (zipfile.BadZipFile, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error) as err:
        raise CheckpointError(f"{path} is damaged: cannot read member {name!r} ({err})") from None
    if len(data) != nbytes:
        raise CheckpointError(f"{path} is damaged: member {name!r} is truncated")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")


def _read_manifest(zf: zipfile.ZipFile, path: str) -> dict:
    foreign = f"{path} is not a jaxscratch checkpoint"
    if _MANIFEST not in zf.namelist():
        raise CheckpointError(f"{foreign}: it is a zip/npz archive without a '__manifest__' member")
    raw = _read_member(zf, _MANIFEST, path)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{foreign}: its '__manifest__' is {raw.dtype} {raw.shape}, not UTF-8 bytes")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{foreign}: its '__manifest__' is not valid JSON ({err})") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{foreign}: its manifest names the format {found!r}, not {FORMAT!r}")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{foreign}: its manifest has format version {version!r}")
    if version > VERSION:
        raise CheckpointError(f"{path} was written by a newer jaxscratch (checkpoint format version "
                              f"{version}); this one reads version {VERSION}: upgrade jaxscratch")
    leaves = manifest.get("leaves")
    well_formed = (isinstance(manifest.get("metadata"), dict) and isinstance(manifest.get("sha256"), str)
                   and isinstance(leaves, list) and all(
                       isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("dtype"), str)
                       and isinstance(e.get("shape"), list) and all(isinstance(n, int) for n in e["shape"])
                       for e in leaves))
    if not well_formed:
        raise CheckpointError(f"{path} is damaged: its manifest lacks or garbles 'leaves', 'metadata' or 'sha256'")
    return manifest


# Renamed fields, old path fragment -> new: jaxscratch 0.4's TrainState called its model state
# ``bn_state``; checkpoints that it wrote restore into today's ``model_state``.
_RENAMED = ((".bn_state", ".model_state"),)


def _current_path(path: str) -> str:
    for old, new in _RENAMED:
        path = path.replace(old + "[", new + "[").replace(old + ".", new + ".")
        if path.endswith(old):
            path = path[: -len(old)] + new
    return path


def _check_fit(path: str, entries: list[dict], expected: list[tuple[str, tuple, str]]) -> None:
    """Raise unless the checkpoint's leaves have the template's paths, shapes and dtypes."""
    hint = "was it saved with another configuration? load_metadata(path) returns the saved one"
    found, wanted = [_current_path(e["path"]) for e in entries], [p for p, _, _ in expected]
    if found != wanted:
        i = next((i for i, (f, w) in enumerate(zip(found, wanted)) if f != w), min(len(found), len(wanted)))
        f = _show(found[i]) if i < len(found) else "no more leaves"
        w = _show(wanted[i]) if i < len(wanted) else "no more leaves"
        raise CheckpointError(f"{path} does not fit the model: the checkpoint has {len(found)} leaves, the "
                              f"model expects {len(wanted)}; first difference at leaf #{i}: checkpoint "
                              f"has {f}, the model expects {w} ({hint})")
    problems = [f"leaf {_show(p)}: checkpoint has {e['dtype']} {tuple(e['shape'])}, the model expects {dtype} {shape}"
                for e, (p, shape, dtype) in zip(entries, expected)
                if (e["dtype"], tuple(e["shape"])) != (dtype, shape)]
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        summary = f"{path} does not fit the model ({hint})"
        raise CheckpointError(f"{summary}:\n  " + "\n  ".join(problems[:10]) + more, summary=summary,
                              mismatches=problems)


def _read_leaves(zf: zipfile.ZipFile, manifest: dict, path: str) -> list[np.ndarray]:
    """Every stored array, checked against the manifest and the checksum."""
    digest, arrays = hashlib.sha256(), []
    for i, entry in enumerate(manifest["leaves"]):
        name = f"leaf_{i:05d}.npy"
        stored = _read_member(zf, name, path)
        want = (entry.get("stored_dtype", entry["dtype"]), entry.get("stored_shape", entry["shape"]))
        if (stored.dtype.name, list(stored.shape)) != want:
            raise CheckpointError(f"{path} is damaged: member {name!r} is {stored.dtype} {stored.shape}, "
                                  f"its manifest says {want[0]} {tuple(want[1])}")
        _fold(digest, entry, stored)
        arrays.append(stored)
    if digest.hexdigest() != manifest["sha256"]:
        raise CheckpointError(f"{path} is damaged: the SHA-256 checksum of its arrays differs from the one "
                              "recorded when it was saved; restore an earlier checkpoint")
    return arrays


# Older JAX prints a key implementation by its short name; wrap_key_data wants the long one.
_IMPL_NAMES = {"fry": "threefry2x32", "urbg": "unsafe_rbg"}


def _impl_name(key) -> str:
    name = str(jax.random.key_impl(key))
    return _IMPL_NAMES.get(name, name)


def _decode(path: str, entry: dict, stored: np.ndarray) -> np.ndarray | jax.Array:
    """A stored leaf as what it stands for: typed keys rewrapped, raw bits viewed as their dtype."""
    if "key_impl" in entry:
        try:
            key = jax.random.wrap_key_data(stored, impl=entry["key_impl"])
        except Exception as err:  # an unknown implementation or a key_data of the wrong shape
            raise CheckpointError(f"{path} is damaged: leaf {_show(entry['path'])} is not a valid "
                                  f"{entry['key_impl']!r} key ({err})") from None
        if (str(key.dtype), list(key.shape)) != (entry["dtype"], entry["shape"]):
            raise CheckpointError(f"{path} is damaged: leaf {_show(entry['path'])} does not rebuild "
                                  f"a {entry['dtype']} key of shape {tuple(entry['shape'])}")
        return key
    dtype = _numeric_dtype(entry["dtype"], path)
    if stored.dtype != dtype:
        if stored.dtype.itemsize != dtype.itemsize or stored.dtype not in _NUMPY_DTYPES:
            raise CheckpointError(f"{path} is damaged: leaf {_show(entry['path'])} stored as "
                                  f"{stored.dtype} cannot hold {dtype}")
        stored = stored.view(dtype)
    return stored


def restore(path, like):
    """Read the checkpoint ``path`` into a tree shaped like the template ``like``.

    Args:
      path: a file written by :func:`save`.
      like: a pytree with the saved tree's structure; its leaves (arrays,
        ``jax.ShapeDtypeStruct`` or Python numbers) give the expected shapes and dtypes.

    Returns:
      ``like``'s structure holding the saved values as JAX arrays, bit-identical to them.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CheckpointError: not a checkpoint, damaged, or a leaf's path, shape or dtype differs.
    """
    path = os.fspath(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = [(k, *_spec(k, leaf)) for k, leaf in ((jax.tree_util.keystr(p), leaf) for p, leaf in flat)]
    with _open(path) as zf:
        manifest = _read_manifest(zf, path)
        _check_fit(path, manifest["leaves"], expected)
        arrays = _read_leaves(zf, manifest, path)
    host = [_decode(path, entry, arr) for entry, arr in zip(manifest["leaves"], arrays)]
    leaves = jax.device_put(host)  # one batched transfer (typed keys are already JAX arrays)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def load_metadata(path, *, verify: bool = False) -> dict:
    """The metadata dict saved with the checkpoint ``path`` (``{}`` if none was given).

    Args:
      path: a file written by :func:`save`.
      verify: also read every array and check the checksum (slower; ``restore`` always does).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CheckpointError: not a checkpoint, or (with ``verify``) damaged.
    """
    path = os.fspath(path)
    with _open(path) as zf:
        manifest = _read_manifest(zf, path)
        if verify:
            _read_leaves(zf, manifest, path)
    return manifest["metadata"]
