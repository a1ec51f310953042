"""IDX files (the MNIST format) and the search-then-download behind ``data.load_mnist`` and
``data.load_fashion_mnist``.

Private: use :mod:`jaxscratch.data`, whose docstring states the contract (where files are
looked for, in which order; a download lands in a temporary file, is checked against the MD5
and the IDX structure, and only then renamed into place). ``DataError``, ``read_idx`` and
``IDX_FILES`` are imported there. The MD5 tables, mirrors and system folders stay in ``data``
(read at call time, so they can be patched) and reach this module as ``source``.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from jaxscratch import _files


class DataError(ValueError):
    """A data file or array is missing, corrupt, or not what the loader expects."""


IDX_FILES = {  # Dataset field -> official file name
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


# ---------------------------------------------------------------------------- IDX files
# IDX: 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes, then the payload.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _gunzip(raw: bytes, path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from None


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or raw.

    Args:
      path: the file. Gzip is recognised by its magic bytes ``1f 8b``, not the extension.

    Returns:
      A NumPy array of the stored shape, in native byte order.

    Raises:
      DataError: unreadable file, corrupt gzip, bad magic number, dtype code or number of
        dimensions, or a payload shorter or longer than the header announces.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    data = _gunzip(raw, path) if raw[:2] == b"\x1f\x8b" else raw
    if len(data) < 4:
        raise DataError(f"{path}: expected an IDX header of at least 4 bytes; found {len(data)}")
    zero0, zero1, code, ndim = data[:4]
    if zero0 or zero1:
        raise DataError(f"{path}: not an IDX file: expected magic bytes 00 00; found {data[:2].hex(' ')}")
    if code not in _IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: expected an IDX dtype code among {codes}; found 0x{code:02X}")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: expected 1 to 4 dimensions in the IDX header; found {ndim}")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path}: IDX header truncated: expected {offset} bytes; found {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected, found = math.prod(dims) * dtype.itemsize, len(data) - offset
    if found != expected:
        what = "truncated" if found < expected else "too long"
        raise DataError(
            f"{path}: IDX payload {what}: shape {dims} of {dtype.name} needs {expected} bytes; "
            f"found {found}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=offset)
    return flat.astype(dtype.newbyteorder("=")).reshape(dims)  # a writable native copy


def _cache_dir(name: str, cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("JAXSCRATCH_DATA"):
        return Path(os.environ["JAXSCRATCH_DATA"]) / name
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxscratch" / name


def _find_local(directory: Path, filename: str) -> Path | None:
    for candidate in (filename, filename.removesuffix(".gz")):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _download(url: str, dest: Path, md5: str, timeout: float) -> np.ndarray:
    """Stream ``url`` to a temporary file beside ``dest``; check it; rename it into place."""
    with _files.replacing(dest) as (f, tmp), urllib.request.urlopen(url, timeout=timeout) as resp:
        digest, received = hashlib.md5(), 0
        announced = resp.headers.get("Content-Length")
        while chunk := resp.read(1 << 16):
            f.write(chunk)
            digest.update(chunk)
            received += len(chunk)
        if announced is not None and received != int(announced):
            raise DataError(f"connection closed after {received} of {announced} bytes")
        if digest.hexdigest() != md5:
            raise DataError(f"MD5 mismatch: expected {md5}; found {digest.hexdigest()}")
        f.flush()
        return read_idx(tmp)  # structure check before the file may enter the cache (renamed on return)


def _fetch(filename: str, name: str, path, cache_dir, mirrors, timeout, source) -> np.ndarray:
    """Read one of the four files from the first location that has it, else download it.
    ``source``: ``(md5 table, default mirrors, system folders, mirrors env var)``."""
    md5_table, default_mirrors, system_dirs, env_var = source
    if path is not None:
        found = _find_local(Path(path), filename)
        if found is None:
            raise DataError(f"{filename} (or {filename.removesuffix('.gz')}) not found in {path}")
        return read_idx(found)
    cache = _cache_dir(name, cache_dir)
    for directory in (cache, *map(Path, system_dirs)):
        found = _find_local(directory, filename)
        if found is None:
            continue
        try:
            return read_idx(found)
        except DataError as e:
            raise DataError(f"{e}\nDelete or replace that copy, or pass path= to a good one") from None
    if mirrors is None:
        env = os.environ.get(env_var, "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or default_mirrors
    elif isinstance(mirrors, str):
        mirrors = [mirrors]
    errors = []
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        errors.append(f"cannot create the cache folder {cache}: {e}")
        mirrors = ()
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            if not url.startswith(("https://", "http://")):
                raise DataError("a mirror must be an http:// or https:// URL")
            return _download(url, cache / filename, md5_table[filename], timeout)
        except (OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}")
    raise DataError(_not_found_message(filename, name, [cache, *system_dirs], errors, env_var))


def _not_found_message(filename, name, looked_in, errors, env_var) -> str:
    places = "\n".join(f"  {d}" for d in looked_in)
    tried = "\n".join(f"  {e}" for e in errors) or "  (no mirrors configured)"
    files = ", ".join(IDX_FILES.values())
    return (
        f"cannot find or download {filename} of {name}.\nLooked in:\n{places}\n"
        f"Tried:\n{tried}\nTo fix it, download the four files ({files}) by hand into one "
        f"directory and pass path=DIR (--dataset-dir DIR in the examples), or put them in "
        f"{looked_in[0]}, or set JAXSCRATCH_DATA=DIR to use DIR/{name}; {env_var} "
        "(comma-separated URLs) overrides the mirrors."
    )
