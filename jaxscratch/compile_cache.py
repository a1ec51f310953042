"""Compiled programs kept on disk between processes, written atomically and checksummed.

``jaxscratch train`` compiles its epoch and evaluation programs afresh in every process (about
2.5 s for the default MLP on a 2-core CPU). JAX can keep compiled programs in a folder (its
persistent compilation cache); :func:`enable` turns that on with a store of its own, because
JAX's file store writes entries in place: a process killed mid-write leaves a truncated entry
that JAX then warns about on every later run and never replaces, and a process starting
beside a writer can read half an entry.

Contract:
  * An entry is written to a temporary file in the same folder, then renamed: readers see a
    whole entry or none, whatever runs beside them or is killed.
  * Every entry ends with the SHA-256 of its bytes. An entry that fails the check (a damaged
    disk, a foreign file) is deleted and reads as a miss: JAX compiles again and the entry is
    written anew. Nothing damaged is ever handed to JAX.
  * Results do not depend on the cache: a program read from it is the very executable that was
    compiled (tested bit-identical across processes).
  * Only programs that took at least ``min_compile_time_s`` to compile are kept (the small ones
    load no faster than they compile).
  * The folder grows by one entry per distinct program (hundreds of KB each); delete it at any
    time. Keys are JAX's, which include the JAX, jaxlib and XLA versions and the device kind.

The command line enables it in ``$JAXSCRATCH_COMPILE_CACHE`` (``off`` disables it), else
``$XDG_CACHE_HOME/jaxscratch/compiled`` (``~/.cache`` when unset). The library never enables
it by itself: a program that imports jaxscratch keeps JAX's own settings.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import jax

__all__ = ["default_dir", "enable"]

_DIGEST = 32  # bytes of SHA-256 at the end of every entry
_SUFFIX = "-cache"
_STALE_TMP_S = 3600  # a temporary file this old belongs to a process that died mid-write


def default_dir() -> Path | None:
    """``$JAXSCRATCH_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/jaxscratch/compiled`` (``~/.cache``);
    ``None`` when the variable says ``off``."""
    chosen = os.environ.get("JAXSCRATCH_COMPILE_CACHE", "").strip()
    if chosen.lower() in ("off", "0", "false", "no", "none"):
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxscratch" / "compiled"


def _store_class():
    """The store, subclassing JAX's cache interface (``None`` when this JAX has none)."""
    try:
        from jax._src.compilation_cache_interface import CacheInterface
    except ImportError:
        return None

    class _AtomicStore(CacheInterface):
        def __init__(self, path: Path):
            self._path = path

        def _file(self, key: str) -> Path:
            if not key or "/" in key or key.startswith("."):
                raise ValueError(f"compile cache keys must be plain file names; got {key!r}")
            return self._path / f"{key}{_SUFFIX}"

        def get(self, key: str) -> bytes | None:
            path = self._file(key)
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                return None
            value, digest = blob[:-_DIGEST], blob[-_DIGEST:]
            if len(blob) <= _DIGEST or hashlib.sha256(value).digest() != digest:
                path.unlink(missing_ok=True)  # damaged: a miss, and put() writes it anew
                return None
            return value

        def put(self, key: str, value: bytes) -> None:
            path = self._file(key)
            if path.exists():
                return
            self._path.mkdir(parents=True, exist_ok=True)  # created at the first entry, not before
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self._path)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(value)
                    f.write(hashlib.sha256(value).digest())
                os.replace(tmp, path)  # atomic: a reader sees the whole entry or none
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    return _AtomicStore


def enable(path=None, *, min_compile_time_s: float = 0.1) -> Path | None:
    """Keep compiled programs in ``path`` (default :func:`default_dir`) for later processes.

    Returns the folder in use, or ``None`` when nothing is cached: the default says ``off``,
    JAX's cache was already set up by the caller (their settings win), or this JAX version
    offers no hook for a store (jaxscratch then runs as without a cache; it never falls back
    to JAX's in-place writer).

    The folder is created when the first entry is written.

    Raises:
      ValueError: ``min_compile_time_s`` negative or not a number.
    """
    if isinstance(min_compile_time_s, bool) or not isinstance(min_compile_time_s, (int, float)) \
            or not min_compile_time_s >= 0:
        raise ValueError(f"min_compile_time_s must be a number >= 0; got {min_compile_time_s!r}")
    folder = Path(path) if path is not None else default_dir()
    store_class = _store_class()
    try:
        from jax._src import compilation_cache as cc
        hooks = all(hasattr(cc, name) for name in ("_cache", "_cache_initialized", "_cache_initialized_mutex"))
    except ImportError:
        hooks = False
    if folder is None or store_class is None or not hooks:
        return None
    with cc._cache_initialized_mutex:
        if cc._cache_initialized or cc._cache is not None or jax.config.jax_compilation_cache_dir:
            return None  # the caller configured JAX's cache: leave it alone
        now = time.time()
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():  # left by a process killed mid-write
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
        cc._cache = store_class(folder)
        cc._cache_initialized = True
    return folder
