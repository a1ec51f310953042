"""The command's files: the run folder (its names, its lock), outputs checked before any work and
written atomically, and standard streams that tolerate going away.

Contract (the command's, see :mod:`jaxscratch.cli`): ``check_target`` refuses an output file in a
missing folder, a folder, one of the run's own files or an input, and an existing file without
``--force``; a device or a FIFO is fine (written in place). Every file is written by the
private ``_files`` (atomic replace, append and fsync); an ``OSError`` becomes one
``UsageError`` line naming the file. One ``train`` holds a run folder at a time (``fcntl.flock``
on ``.lock``, released by the OS however the process ends).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys

import numpy as np

from jaxscratch import _files, checkpoint, runlog
from jaxscratch._flags import UsageError

CHECKPOINT, BEST, METRICS, FIGURE, JSONL = "checkpoint.npz", "best.npz", "metrics.json", "training.png", runlog.JSONL
RUN_FILES = (CHECKPOINT, BEST, METRICS, FIGURE, JSONL)
LOCK = ".lock"  # in --out while a train runs: holds its pid, locked (flock) until the process ends


def check_target(path, flag, *, run_dir=None, inputs=(), force=False) -> None:
    """Refuse, before any work, an output file whose folder is missing or that is a folder, one of
    the run's own files (or an input), and an existing file unless ``force``. A device or a FIFO
    (``/dev/null``, ``/dev/stdout``) is fine: :func:`write_file` writes into it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: expected a file in an existing folder; "
                         f"{'it is a folder' if os.path.isdir(path) else f'no folder {folder}'}")
    for name in RUN_FILES if run_dir is not None else ():
        if same_file(path, os.path.join(run_dir, name)):
            raise UsageError(f"{flag} {path}: expected a file outside the run; it is the run's own {name}, which "
                             f"it would destroy; choose another file")
    for other in inputs:
        if same_file(path, other):
            raise UsageError(f"{flag} {path}: expected a new file; it is the input file {other}; choose another file")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # no such file (the usual case), or one the write will report
        return
    if stat.S_ISREG(mode) and not force:
        raise UsageError(f"{flag} {path}: the file exists; pass --force to replace it")


def same_file(a, b) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # a hard link, say
    except OSError:
        return False


def make_dirs(path, flag="--out") -> list[str]:
    """Create the folder ``path``; return the folders this created, outermost first."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: expected a folder; found a file")
    created, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        created, p = [p, *created], os.path.dirname(p)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create {flag} {path}: {err.strerror or err}") from None
    return created


def write_file(path, write, what) -> None:
    """``write(binary file)`` into ``path`` atomically (``_files.replace``: a temporary file renamed
    onto ``path``, onto the file a symlink points to; a device or a FIFO written in place)."""
    try:
        _files.replace(path, write)
    except OSError as err:
        raise UsageError(f"cannot write {what}{' ' if what else ''}{path}: {err.strerror or err}") from None




def lock_run(out) -> int:
    """Lock the run folder ``out`` for this process (``fcntl.flock`` on ``out/.lock``, which the OS
    releases when the process ends, killed or not); refuse a folder another process holds."""
    path = os.path.join(out, LOCK)
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError(f"cannot create the lock file {path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            pid = os.read(fd, 32).decode(errors="replace").strip() if isinstance(err, BlockingIOError) else ""
            os.close(fd)
            if isinstance(err, BlockingIOError):
                raise UsageError(f"--out {out}: another jaxscratch train is using this run folder"
                                 f"{f' (pid {pid})' if pid.isdigit() else ''}; wait for it or choose another --out") from None
            raise UsageError(f"cannot lock {path}: {err.strerror or err}") from None
        try:  # the holder before us may have removed the file as we opened it: lock the one in the folder
            here, mine = os.stat(path), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except OSError:
            pass
        os.close(fd)
    raise UsageError(f"--out {out}: cannot lock the run folder ({path} keeps changing); try again")


@contextlib.contextmanager
def claimed(out, checkpoint_name: str, *, logged=lambda name: False):
    """``with claimed(out, ...):`` the run folder ``out`` created (with its parents) and locked for
    this process, the temporary files a killed save left there deleted. If the body raises
    (Ctrl-C too) before ``out/checkpoint_name`` exists, the files it made for which ``logged(name)``
    holds are removed, then the folders this created: a run that saved nothing leaves nothing."""
    created = make_dirs(out)  # every input is checked: now the run may write
    present, lock = set(os.listdir(out)), None
    try:
        lock = lock_run(out)  # one train per folder; released however this process ends
        _files.remove_temporaries(out)
        yield
    except BaseException:
        if not os.path.exists(os.path.join(out, checkpoint_name)):
            for name in set(os.listdir(out)) - present:
                if logged(name):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(out, name))
        unlock_run(lock, out)
        lock = None
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    finally:
        unlock_run(lock, out)


def unlock_run(fd, out) -> None:
    """Remove ``out/.lock`` (still under the lock) and release it."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(out, LOCK))
        os.close(fd)


class Tolerant:
    """A text stream passing writes to ``stream`` until one fails (``| head`` closed the pipe, a
    full disk), then dropping them: a run goes on and saves when its terminal goes away. The
    stream's file descriptor then points at ``os.devnull``, so Python's last flush at exit
    succeeds instead of printing an ignored BrokenPipeError."""

    def __init__(self, stream):
        self._stream, self.failed = stream, False

    def write(self, text):
        if not self.failed:
            try:
                return self._stream.write(text)
            except OSError:
                self._fail()
        return len(text)

    def flush(self):
        if not self.failed:
            try:
                self._stream.flush()
            except OSError:
                self._fail()

    def _fail(self):
        self.failed = True
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):  # a StringIO, say: nothing to redirect
            return
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        with contextlib.suppress(Exception):
            self._stream.flush()  # what it still buffered goes to os.devnull

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def tolerant_output():
    """``sys.stdout`` and ``sys.stderr`` as :class:`Tolerant` streams while a command runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (None if s is None else Tolerant(s) for s in saved)
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            if s is not None:
                s.flush()
        sys.stdout, sys.stderr = saved


def write_json(path, obj, what="") -> None:
    text = json.dumps(runlog.json_safe(obj), indent=1, allow_nan=False)
    write_file(path, lambda f: f.write(text.encode()), what)


def history_json(history) -> dict:
    return {k: np.asarray(v).tolist() for k, v in history.items()}


def read_meta(path):
    try:
        return checkpoint.load_metadata(path)
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(str(err)) from None


def signature(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
