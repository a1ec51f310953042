"""The one place the package writes files: checkpoints, ``metrics.json``, ``metrics.jsonl``,
figures, ``--json`` / ``--output`` reports and downloads.

Contract (three modes, nothing else):
  * :func:`replacing` / :func:`replace` -- atomic replace. The content goes into a temporary file
    beside the target (``.NAME.<12 hex>.tmp``, created with mode ``0666 & ~umask``, the
    permissions of a plain ``open(path, "w")``; an existing file's own mode is kept), is flushed
    and fsynced, and is renamed onto the target (onto the file a symlink points to); the folder is
    fsynced so the rename itself survives a crash. Readers see the old file or the new one, never
    a part. Any exception (``KeyboardInterrupt`` too) removes the temporary file.
  * Special files (a device, a FIFO: ``/dev/null``, ``/dev/stdout``) are written in place by the
    same functions: a rename would replace the device itself.
  * :func:`append` / :func:`append_line` -- append and fsync: one record or line per call
    (``metrics.jsonl``, TensorBoard event files), on disk when it returns, so a killed process keeps every line written before. :func:`keep_lines` cuts such
    a file back (``--resume`` continues from the checkpoint's epoch), atomically.

Errors are ``OSError`` as the system gave them; callers name the file to the user.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable

__all__ = ["TEMPORARY", "append", "append_line", "keep_lines", "remove_temporaries", "replace", "replacing"]

# Ours (.NAME.<12 hex>.tmp), and the names older versions used (.tmp-*): a killed save's leftovers.
TEMPORARY = re.compile(r"\.tmp-.*|\..+\.[0-9a-f]{12}\.tmp")


def _is_special(path: str) -> bool:
    """Whether ``path`` exists and is not a regular file (a device, a FIFO, a socket)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _create_temp(target: str) -> tuple[int, str]:
    """A new, uniquely named file beside ``target``, mode ``0666 & ~umask`` (``tempfile.mkstemp``
    would make it 0600), or the mode of the existing ``target``."""
    directory, name = os.path.split(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            with contextlib.suppress(OSError):
                os.fchmod(fd, mode)
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file next to {target}")


def _fsync_directory(directory: str) -> None:
    """Make a rename or a new file's name durable."""
    with contextlib.suppress(OSError):  # e.g. Windows cannot open a directory: nothing to sync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path, *, before_replace: Callable[[str], None] | None = None):
    """``with replacing(path) as (f, tmp):`` write the binary file ``f``; on a normal exit it
    replaces ``path`` atomically (see the module's contract). ``tmp`` names ``f`` on disk, for a
    check of the finished content (``f`` is flushed first) before it is renamed into place;
    ``before_replace(tmp)`` runs just before the rename (a fault-injection hook for tests)."""
    path = os.fspath(path)
    if _is_special(path):
        with open(path, "wb") as f:
            yield f, path
        return
    target = os.path.realpath(path)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(os.path.dirname(target))


def replace(path, content: bytes | str | Callable) -> None:
    """Replace ``path`` atomically with ``content``: bytes, text (UTF-8), or ``write(binary file)``."""
    with replacing(path) as (f, _):
        if callable(content):
            content(f)
        else:
            f.write(content.encode() if isinstance(content, str) else content)


def append_line(path, line: str) -> None:
    """Append ``line`` (a newline is added) to ``path``, creating it, and fsync before returning."""
    append(path, (line.rstrip("\n") + "\n").encode())


def append(path, data: bytes) -> None:
    """Append ``data`` to ``path``, creating it, and fsync before returning."""
    path = os.fspath(path)
    new = not os.path.exists(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        _fsync_directory(os.path.dirname(os.path.abspath(path)))


def keep_lines(path, keep: Callable[[str], bool]) -> int:
    """Cut the text file ``path`` to its whole lines (ending in a newline) for which ``keep(line)``
    holds, replacing it atomically if anything goes; returns the lines kept (0 with no file)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return 0
    lines = text.split("\n")[:-1]  # a last line without its newline was cut by a kill: dropped
    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines) or not text.endswith("\n") and text:
        replace(path, "".join(line + "\n" for line in kept))
    return len(kept)


def remove_temporaries(folder) -> None:
    """Delete the temporary files killed writes left in ``folder`` (the caller knows none is in use)."""
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if TEMPORARY.fullmatch(name) and os.path.isfile(full) and not os.path.islink(full):
            with contextlib.suppress(OSError):
                os.unlink(full)
