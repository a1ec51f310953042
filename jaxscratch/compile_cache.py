"""Compiled programs kept on disk between processes, shared safely by concurrent runs.

``jaxscratch train`` compiles its epoch and evaluation programs afresh in every process (about
2.5 s for the default MLP on a 2-core CPU). JAX can keep compiled programs in a folder (its
persistent compilation cache, ``jax_compilation_cache_dir``), but it writes each entry in
place: a process killed mid-write leaves a truncated entry that JAX warns about on every later
run and never replaces, and a process starting beside a writer can read half an entry. So
:func:`enable` gives JAX a folder of this process's own and shares entries through a second one.

Contract:
  * The shared folder only ever gains whole files, each named after its own checksum
    (``KEY-cache.SHA256``): at exit, each entry this process compiled is hard-linked in (or
    copied to a temporary file and renamed), an operation that is atomic.
  * At start, every shared entry whose content matches its name is linked into a fresh private
    folder, which JAX reads and writes; one that does not (a damaged disk, a foreign file) is
    deleted, so it is compiled again and written anew.
  * A process killed before exit loses only its own new entries; the next process removes its
    private folder. Concurrent processes never see each other's partial files.
  * Results do not depend on the cache: a program read from it is the very executable that
    was compiled (tested bit-identical across processes). Only programs that took at least
    ``min_compile_time_s`` to compile are kept; entries are tens of KB for jaxscratch's MLPs.
  * Only public JAX configuration is used. The folder may be deleted at any time.

The command line enables it in ``$JAXSCRATCH_COMPILE_CACHE`` (``off`` disables it), else
``$XDG_CACHE_HOME/jaxscratch/compiled`` (``~/.cache`` when unset). The library never enables
it by itself: a program that imports jaxscratch keeps JAX's own settings.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

import jax

__all__ = ["default_dir", "enable"]

_SUFFIX = "-cache"  # JAX names its entries KEY-cache; the shared folder holds KEY-cache.SHA256
_STAGING = ".staging"  # private folders, one per process: PID-RANDOM
_STALE_TMP_S = 3600  # a temporary file this old was left by a killed process
_state: dict = {}


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


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or cannot tell: leave it
    return True


def _tidy(folder: Path) -> dict[str, Path]:
    """Remove private folders of dead processes, stale temporary files and every shared file
    whose content does not match its name; return ``{JAX entry name: shared file}``."""
    for private in (folder / _STAGING).glob("*") if (folder / _STAGING).is_dir() else ():
        pid = private.name.split("-", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(private, ignore_errors=True)
    now, good = time.time(), {}
    for path in sorted(folder.glob(f"*{_SUFFIX}*")) if folder.is_dir() else ():
        try:
            if path.name.startswith("."):  # a temporary file
                if now - path.stat().st_mtime > _STALE_TMP_S:
                    path.unlink()
                continue
            name, _, digest = path.name.rpartition(".")
            if name.endswith(_SUFFIX) and name not in good and digest == _digest(path):
                good[name] = path
            else:
                path.unlink()  # damaged, foreign, or a second copy of an entry
        except OSError:
            pass
    return good


def _publish() -> int:
    """Share this process's new entries (atomically, named by checksum); remove its private folder."""
    folder, private, known = _state.get("folder"), _state.get("private"), _state.get("known", set())
    if private is None or not private.is_dir():
        return 0
    shared = 0
    for entry in sorted(private.glob(f"*{_SUFFIX}")):
        if entry.name in known:
            continue
        try:
            target = folder / f"{entry.name}.{_digest(entry)}"
            try:
                os.link(entry, target)  # atomic; an equal file already there is fine
            except FileExistsError:
                pass
            except OSError:  # no hard links here: a temporary copy, renamed
                tmp = folder / f".{entry.name}.{secrets.token_hex(4)}.tmp"
                shutil.copyfile(entry, tmp)
                os.replace(tmp, target)
            shared += 1
        except OSError:
            pass  # a cache: never fail the program at exit
    shutil.rmtree(private, ignore_errors=True)
    return shared


def enable(path=None, *, min_compile_time_s: float = 0.1) -> Path | None:
    """Keep compiled programs in ``path`` (default :func:`default_dir`) for later processes.

    Call it before compiling; entries compiled from then on are shared when the process exits.
    Returns the shared folder, or ``None`` when nothing is cached: the default says ``off``,
    JAX's cache was configured by the caller (their settings win), or the folder cannot be
    written.

    Raises:
      ValueError: ``min_compile_time_s`` negative or not a number.
    """
    if isinstance(min_compile_time_s, bool) or not isinstance(min_compile_time_s, (int, float)) \
            or not min_compile_time_s >= 0:
        raise ValueError(f"min_compile_time_s must be a number >= 0; got {min_compile_time_s!r}")
    if _state:
        return _state["folder"]
    folder = Path(path) if path is not None else default_dir()
    if folder is None or jax.config.jax_compilation_cache_dir:
        return None
    private = folder / _STAGING / f"{os.getpid()}-{secrets.token_hex(4)}"  # else JAX creates it
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        return None  # a folder we cannot write: run without the cache, never fail for it
    try:
        known = _tidy(folder)
        if known:
            private.mkdir(parents=True)
        for name, entry in known.items():
            try:
                os.link(entry, private / name)  # no copy: the same file, which is never rewritten
            except OSError:
                shutil.copyfile(entry, private / name)
    except OSError:
        shutil.rmtree(private, ignore_errors=True)
        return None
    jax.config.update("jax_compilation_cache_dir", str(private))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    # XLA's own GPU caches would live in the private folder, whose path would then enter every
    # program's cache key: no process could read another's entries
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    _state.update(folder=folder, private=private, known=set(known))
    atexit.register(_publish)
    return folder
