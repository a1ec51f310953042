"""The ``jaxscratch`` command: ``train``, ``evaluate``, ``predict``, ``compare``.

This module knows about files and printing; its private ``_flags`` holds the flags, their types
and the run configuration they make. A run directory holds ``checkpoint.npz`` (the last epoch's
whole state, the configuration and history), ``best.npz`` (the best-validation state),
``metrics.json`` and ``training.png``.

Contract:
  * Every flag is checked as it is parsed: its type (ints in ASCII digits, finite numbers,
    switches as --flag/--no-flag), its range, and named choices (the valid ones listed). A flag that does not
    apply to the chosen optimizer, schedule or dataset is an error, never silently ignored. A
    run's stored configuration is checked the same way when it is read back.
  * Every error a user can cause (a bad flag, a missing, damaged or foreign file, data that do
    not fit the model, an output that cannot be written) prints one line,
    ``jaxscratch CMD: error: ...``, and ``main`` returns 2: no traceback. ``main`` returns its
    exit status and raises only for ``--help`` and ``--version`` (``SystemExit(0)``).
  * Nothing is written before the inputs are checked. Files are written atomically (a
    temporary file, then a rename), only into ``--out`` or the file named by ``--json`` /
    ``--output``; a run that stops before its first checkpoint leaves no ``--out`` behind.
    The one exception is the cache of compiled programs (:mod:`jaxscratch.compile_cache`,
    enabled by :func:`run`, the command's entry point; ``JAXSCRATCH_COMPILE_CACHE=off``).
  * ``--json`` / ``--output`` never replace an existing file without ``--force``, nor ever one of
    the run's own files (or ``predict``'s input); a device or FIFO (``/dev/null``) is written in
    place. One ``train`` at a time holds a run folder (``fcntl.flock`` on ``--out/.lock``, removed
    when it ends; a killed one's lock is released by the OS), and it deletes the temporary files
    a killed save left there. Output that cannot be printed (``| head``, ``>/dev/full``) is
    dropped: the run goes on and saves.
  * ``--devices``, ``--precision`` and ``--skip-nonfinite`` give ``train.fit`` its ``mesh``, its
    ``compute_dtype`` and an ``optim.apply_if_finite`` optimizer (docs/scaling.md). Like every
    flag they are stored with the run (a run stored before them reads as their defaults), and
    ``--resume`` keeps the whole configuration but ``--epochs`` and ``--devices``.
  * ``--model FILE.py:FUNCTION`` trains the ``nn.Model`` that ``FUNCTION(input_shape, outputs)``
    returns (images in their stored shape; the MLP's flags refused). The run stores the file's
    absolute path and SHA-256 (``input_shape`` and ``model_sha256`` in the metadata); every later
    command imports it from there and refuses a changed file. An exception in the file is one
    line with its line number; ``--debug`` prints its traceback too. ``--loss mse`` trains on an
    ``.npz``'s numeric targets and reports RMSE.
  * A diverging run exits 1. Ctrl-C or SIGTERM exits 130 with the last finished epoch saved;
    ``--resume`` then finishes the run bit-identically to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import signal
import stat
import sys
import tempfile
import time
import traceback
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import __version__, checkpoint, compile_cache, data, devices, nn, optim, sweep, train
from jaxscratch._flags import (DECOUPLED_DECAY, DEFAULTS, OPT_FLAGS, PRECISIONS, UsageError, _flag, _init_scale,
                               _widths, build_optimizer, build_parser, data_parallel, stored_config, train_config)

CHECKPOINT, BEST, METRICS, FIGURE = "checkpoint.npz", "best.npz", "metrics.json", "training.png"
RUN_FILES = (CHECKPOINT, BEST, METRICS, FIGURE)


# ----------------------------------------------------------------- configuration
def _run_meta(path, *, resumable=False) -> dict:
    """A run checkpoint's metadata, its configuration checked (``_flags.stored_config``)."""
    meta = _read_meta(path)
    return dict(meta, config=stored_config(meta, path, resumable=resumable))


def load_data(cfg, source=None):
    """``(Dataset, (x_train, y_train), (x_val, y_val))`` with the configured validation split.

    The MLP gets flattened images; a ``--model`` gets them in their stored shape (``(1, 28, 28)``
    for MNIST, the ``.npz``'s own). ``--loss mse`` reads an ``.npz``'s targets as numbers. A run's
    stored ``source`` (``data.npz_record``) gives a train-only ``.npz`` the test rows it had."""
    name, directory = cfg["dataset"], cfg.get("dataset_dir")
    if directory and name not in ("mnist", "fashion-mnist"):
        raise UsageError(f"--dataset-dir applies only to --dataset mnist or fashion-mnist; got --dataset {name}")
    if directory and not os.path.isdir(directory):
        raise UsageError(f"--dataset-dir {directory}: expected a folder holding the four {name} IDX files; no such folder")
    regression = cfg.get("loss") == "mse"
    if regression and not name.endswith(".npz"):
        raise UsageError(f"--loss mse needs regression data: an .npz whose y_train and y_test hold numbers; "
                         f"--dataset {name} holds class labels (use --loss cross_entropy)")
    flatten = cfg.get("model") is None
    try:
        if name.endswith(".npz"):
            ds = data.load_npz(name, flatten=flatten, targets="values" if regression else "labels",
                               **data.npz_split(source))
        else:
            ds = data.load_dataset(name, flatten=flatten, **({"path": directory} if directory else {}))
    except (data.DataError, OSError) as err:
        raise UsageError(str(err)) from None
    n, fraction = len(ds.x_train), cfg["validation_fraction"]
    if n - round(fraction * n) < 1:
        raise UsageError(f"--validation-fraction {fraction} of the {n} training examples leaves none to train on")
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, fraction, seed=cfg["seed"])
    return ds, (xt, yt), (xv, yv)


def _sizes(cfg, ds) -> list[int]:
    """The MLP's layer sizes; for a ``--model`` run, ``[features, outputs]``. Outputs: the classes,
    or the regression targets' columns."""
    hidden = () if cfg.get("model") else _widths(cfg["hidden"])
    return [int(np.prod(ds.x_train.shape[1:])), *hidden, int(ds.num_classes)]


def _model(cfg, sizes, input_shape, *, sha256=None, debug=False) -> tuple[nn.Model, str | None]:
    """The run's model and, for a ``--model`` file, its SHA-256 (checked against ``sha256`` if given)."""
    if cfg.get("model") is None:
        return nn.mlp_model(sizes, activation=cfg["activation"], weight_init=_init_scale(cfg["weight_init"]),
                            batchnorm=cfg["batchnorm"], drop_rate=cfg["dropout"], dropout_mode=cfg["dropout_mode"]), None
    return _user_model(cfg["model"], tuple(input_shape), sizes[-1], sha256=sha256, debug=debug)


_RAW_SCALE = {"digits": 16, "mnist": 255, "fashion-mnist": 255}  # what data.py divides their integer images by


def _provenance(cfg, ds) -> dict:
    """What a run stores of its data, so that later commands can check it and do the same: the
    SHA-256 of the arrays it trained on (as loaded: after scaling and flattening), the
    preprocessing (integer images divided by ``scale``; the training inputs' range after it) and,
    for an ``.npz``, which arrays were used and how its test rows were chosen (``data_source``)."""
    scale = _RAW_SCALE.get(cfg["dataset"]) or (255 if ds.source is not None and ds.source.integer_inputs else None)
    x = ds.x_train
    return {"data_sha256": _data_digest(ds),
            "preprocessing": {"integer_inputs_divided_by": scale, "input_range": [float(x.min()), float(x.max())]},
            **({"data_source": data.npz_record(ds.source)} if ds.source is not None else {})}


def _data_digest(ds) -> str:
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _check_same_data(meta, cfg, ds, during: str) -> None:
    """Refuse data whose arrays differ from those the run was trained on (runs that predate the
    checksum are not checked)."""
    stored = meta.get("data_sha256")
    if stored is not None and (now := _data_digest(ds)) != stored:
        raise UsageError(f"{during}{cfg['dataset']} changed since the run was trained (SHA-256 of its arrays "
                         f"{stored[:12]}..., now {now[:12]}...); use the data it was trained on, or train a new run")


def _template(cfg, model, optimizer):
    key = jax.random.key(cfg["seed"])
    params, model_state = model.init(key)
    return train.init_state(key, params, optimizer, model_state)


# ----------------------------------------------------------------- a user's model file
def _absolute_model(spec: str) -> str:
    """``FILE.py:FUNCTION`` with the file's absolute path (a run must find it from anywhere)."""
    path, _, func = spec.rpartition(":")
    return f"{os.path.abspath(path)}:{func}"


def _user_model(spec: str, input_shape: tuple, outputs: int, *, sha256=None, debug=False):
    """Import ``FILE.py``, call ``FUNCTION(input_shape, outputs)``; an error in the file is one
    line naming it and the line (its own traceback with ``--debug``)."""
    path, _, func = spec.rpartition(":")
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as err:
        raise UsageError(f"cannot read the model file {path}: {err.strerror or err}") from None
    digest = hashlib.sha256(source).hexdigest()
    if sha256 is not None and digest != sha256:
        raise UsageError(f"the model file {path} changed since the run was trained (SHA-256 {sha256[:12]}..., now "
                         f"{digest[:12]}...); restore that version of the file or train a new run")
    name = "_jaxscratch_model_" + hashlib.sha256(f"{path}\0{digest}".encode()).hexdigest()[:16]  # file and content
    stage = "while it was imported"
    try:
        module = sys.modules.get(name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[name] = module  # dataclasses (flax modules) look their module up while the file runs
            try:
                spec_.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        if not callable(getattr(module, func, None)):
            found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                           and getattr(v, "__module__", None) == name)
            raise UsageError(f"the model file {path} has no function {func!r}; it defines {', '.join(found) or 'none'}")
        stage = f"in {func}{input_shape, outputs}"
        model = getattr(module, func)(input_shape, outputs)
    except UsageError:
        raise
    except Exception as err:  # anything the user's code raises, SyntaxError included
        if debug:
            traceback.print_exception(err, file=sys.stderr)
        raise UsageError(_user_error(path, stage, err, debug)) from None
    if not isinstance(model, nn.Model):
        raise UsageError(f"{func}() in the model file {path} must return an nn.Model (nn.mlp_model, nn.from_flax, "
                         f"nn.from_equinox or nn.Model(init, apply)); it returned {type(model).__name__}")
    return model, digest


def _user_error(path, stage, err, debug) -> str:
    line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else next(
        (f.lineno for f in reversed(traceback.extract_tb(err.__traceback__)) if f.filename == path), None)
    where = f" at line {line}" if line else ""
    text = str(err).splitlines()[0] if str(err) else ""
    hint = "" if debug else "; pass --debug for its traceback"
    return f"the model file {path} failed{where} {stage}: {type(err).__name__}: {text}{hint}"


# ----------------------------------------------------------------- files
def _check_target(path, flag, *, run_dir=None, inputs=(), force=False) -> None:
    """Refuse, before any work, an output file whose folder is missing or that is a folder, one of
    the run's own files (or an input), and an existing file unless ``force``. A device or a FIFO
    (``/dev/null``, ``/dev/stdout``) is fine: :func:`_write_file` writes into it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: expected a file in an existing folder; "
                         f"{'it is a folder' if os.path.isdir(path) else f'no folder {folder}'}")
    for name in RUN_FILES if run_dir is not None else ():
        if _same_file(path, os.path.join(run_dir, name)):
            raise UsageError(f"{flag} {path}: expected a file outside the run; it is the run's own {name}, which "
                             f"it would destroy; choose another file")
    for other in inputs:
        if _same_file(path, other):
            raise UsageError(f"{flag} {path}: expected a new file; it is the input file {other}; choose another file")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # no such file (the usual case), or one the write will report
        return
    if stat.S_ISREG(mode) and not force:
        raise UsageError(f"{flag} {path}: the file exists; pass --force to replace it")


def _same_file(a, b) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # a hard link, say
    except OSError:
        return False


def _make_dirs(path, flag="--out") -> list[str]:
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


def _write_file(path, write, what) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, then rename it onto ``path``
    (onto the file a symlink points to). Into a device or a FIFO (``/dev/null``) it writes in
    place: a rename would replace the device itself."""
    tmp = None
    try:
        try:
            special = not stat.S_ISREG(os.stat(path).st_mode)
        except FileNotFoundError:
            special = False
        if special:
            with open(path, "wb") as f:
                write(f)
            return
        target = os.path.realpath(path)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(target))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, target)
    except OSError as err:
        raise UsageError(f"cannot write {what}{' ' if what else ''}{path}: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


LOCK = ".lock"  # in --out while a train runs: holds its pid, locked (flock) until the process ends
_TEMPORARY = re.compile(r"\.tmp-.*|\..+\.[0-9a-f]{12}\.tmp")  # _write_file's and plot's; checkpoint._create_temp's


def _lock_run(out) -> int:
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


def _unlock_run(fd, out) -> None:
    """Remove ``out/.lock`` (still under the lock) and release it."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(out, LOCK))
        os.close(fd)


def _remove_temporaries(out) -> None:
    """Delete the temporary files a killed save left in ``out`` (the lock is held: none is in use)."""
    for name in os.listdir(out):
        full = os.path.join(out, name)
        if _TEMPORARY.fullmatch(name) and os.path.isfile(full) and not os.path.islink(full):
            with contextlib.suppress(OSError):
                os.unlink(full)


class _Tolerant:
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
def _tolerant_output():
    """``sys.stdout`` and ``sys.stderr`` as :class:`_Tolerant` streams while a command runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (None if s is None else _Tolerant(s) for s in saved)
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            if s is not None:
                s.flush()
        sys.stdout, sys.stderr = saved


def _write_json(path, obj, what="") -> None:
    text = json.dumps(_json_safe(obj), indent=1, allow_nan=False)
    _write_file(path, lambda f: f.write(text.encode()), what)


def _json_safe(obj):
    """``obj`` with every NaN or Inf (a skipped step's loss) as None: standard JSON has no NaN."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _history_json(history) -> dict:
    return {k: np.asarray(v).tolist() for k, v in history.items()}


def _read_meta(path):
    try:
        return checkpoint.load_metadata(path)
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(str(err)) from None


# ----------------------------------------------------------------- commands
def _signature(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def cmd_train(args) -> int:
    out = args.out
    ckpt = os.path.join(out, CHECKPOINT)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: expected a folder; found a file")
    if args.model is not None:
        args.model = _absolute_model(args.model)  # stored, and compared on --resume, as an absolute path
    if args.dataset is not None and args.dataset.endswith(".npz"):
        args.dataset = os.path.abspath(args.dataset)  # likewise: evaluate from another folder reads this file
    if args.resume:
        if not os.path.exists(ckpt):
            raise UsageError(f"--resume: no checkpoint at {ckpt}; start a new run without --resume")
        saved = _signature(ckpt)  # the checkpoint read here; another train may replace it before the lock
        meta = _run_meta(ckpt, resumable=True)  # read once: the configuration now, the history after restoring
        stored = meta["config"]
        for k in list(DEFAULTS) + OPT_FLAGS:
            given, kept = getattr(args, k), stored.get(k, DEFAULTS.get(k))
            if k not in ("epochs", "devices") and given is not None and given != kept:
                raise UsageError(f"--resume: {_flag(k)} {given!r} conflicts with the run's "
                                 f"{'default' if kept is None else repr(kept)}; a resumed run keeps its "
                                 f"configuration (only --epochs and --devices may change)")
        cfg = dict(stored, **{k: getattr(args, k) for k in ("epochs", "devices") if getattr(args, k) is not None})
        done = len(meta["history"].get("epoch", []))
        if cfg["epochs"] < done:
            raise UsageError(f"--resume: --epochs {cfg['epochs']} is fewer than the {done} epochs already run in {out}")
    else:
        if os.path.exists(ckpt) or os.path.exists(os.path.join(out, METRICS)):
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        cfg = train_config(args)
    cfg["devices"], mesh = data_parallel(cfg)  # "all" is stored as the number it meant
    ds, (xt, yt), (xv, yv) = load_data(cfg, meta.get("data_source") if args.resume else None)
    if ds.source is not None and not args.quiet:
        print(f"data: {data.describe_npz(ds.source)}")  # which arrays, and any test rows held out
    steps_per_epoch = len(xt) // cfg["batch_size"]
    if steps_per_epoch < 1:
        raise UsageError(f"--batch-size {cfg['batch_size']} exceeds the {len(xt)} training examples")
    optimizer = build_optimizer(cfg, steps_per_epoch)
    sizes = _sizes(cfg, ds)
    if args.resume and sizes != meta["sizes"]:
        raise UsageError(f"--resume: the run's model has layer sizes {meta['sizes']} but {cfg['dataset']} now "
                         f"gives {sizes}; the dataset changed since the run began")
    if args.resume:
        _check_same_data(meta, cfg, ds, "--resume: ")
    model, sha = _model(cfg, sizes, ds.x_train.shape[1:], sha256=meta.get("model_sha256") if args.resume else None,
                        debug=args.debug)
    _check_memory(model, optimizer, cfg)
    state = best = history = None
    if args.resume:
        template = _template(cfg, model, optimizer)
        try:
            restored = checkpoint.restore(ckpt, like={"state": template, "best": template})
        except (checkpoint.CheckpointError, OSError) as err:
            raise UsageError(f"--resume: {_first_problem(err)}") from None
        state, best = restored["state"], restored["best"]
        history = meta["history"]
    created = _make_dirs(out)  # every input is checked: now the run may write
    lock = None
    try:
        lock = _lock_run(out)  # one train per folder; released however this process ends
        if args.resume and _signature(ckpt) != saved:
            raise UsageError(f"--resume: {ckpt} changed while this command started (another jaxscratch train "
                             f"saved it); run the command again")
        if not args.resume and (os.path.exists(ckpt) or os.path.exists(os.path.join(out, METRICS))):
            raise UsageError(f"{out} already holds a run (another jaxscratch train saved it while this command "
                             f"started); pass --resume to continue it or choose another --out")
        _remove_temporaries(out)  # left by a killed save
        run = {"config": cfg, "sizes": sizes, "input_shape": list(ds.x_train.shape[1:]), "model_sha256": sha,
               **_provenance(cfg, ds)}
        return _train(args, run, ds, model, optimizer, (xt, yt), (xv, yv), state, best, history, mesh)
    except BaseException:
        _unlock_run(lock, out)
        lock = None
        for folder in reversed(created):  # stopped before the first checkpoint: leave no empty --out
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    finally:
        _unlock_run(lock, out)


def _check_memory(model, optimizer, cfg) -> None:
    """Refuse a model whose training state cannot fit, before a byte of it is allocated: its
    parameters and optimizer state (by ``jax.eval_shape``), held twice (the state and the best
    one), plus the gradients and updates."""
    params, model_state = jax.eval_shape(model.init, jax.random.key(0))
    opt_state = jax.eval_shape(optimizer.init, params)
    size = lambda tree: sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
    p = size(params)
    need = 2 * (p + size(model_state) + size(opt_state)) + 2 * p
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    have = stats.get("bytes_limit") if stats else devices.available_memory()
    if have is not None and need > have:
        count = sum(a.size for a in jax.tree.leaves(params))
        what = f"--model {cfg['model']}" if cfg.get("model") else f"--hidden {cfg['hidden']}"
        raise UsageError(f"{what}: the model has {count:,} parameters and training it needs about {need / 2**30:.3g} "
                         f"GiB (parameters, gradients, optimizer state and the best copy), more than the "
                         f"{have / 2**30:.3g} GiB of memory available on {device.platform}; choose a smaller model")


def _train(args, run, ds, model, optimizer, train_set, val_set, state, best, history, mesh) -> int:
    out, ckpt = args.out, os.path.join(args.out, CHECKPOINT)
    cfg = run["config"]
    decoupled = cfg["optimizer"] in DECOUPLED_DECAY
    start = time.perf_counter()

    def save(epoch, result):
        meta = {**run, "history": _history_json(result.history), "version": __version__}
        try:
            checkpoint.save(ckpt, {"state": result.state, "best": result.best}, metadata=meta)
        except OSError as err:
            raise UsageError(f"cannot write the checkpoint {ckpt}: {err.strerror or err}") from None

    try:
        result = train.fit(
            jax.random.key(cfg["seed"]), model, optimizer, train_set, epochs=cfg["epochs"],
            batch_size=cfg["batch_size"], loss=cfg["loss"], validation=val_set, test=(ds.x_test, ds.y_test) if len(ds.x_test) else None,
            weight_decay=0.0 if decoupled else cfg["weight_decay"], sampling=cfg["sampling"], state=state, best=best,
            history=history, verbose=not args.quiet, on_epoch=save, mesh=mesh,
            compute_dtype=PRECISIONS[cfg["precision"]])
    except (ValueError, TypeError) as err:
        if cfg.get("model") is None or isinstance(err, checkpoint.CheckpointError):
            raise
        raise UsageError(f"the model from {cfg['model']} cannot train on {ds.name}: {_one_line(str(err))}") from err
    wall = time.perf_counter() - start
    save(None, result)
    try:
        checkpoint.save(os.path.join(out, BEST), {"state": result.best, "best": result.best}, metadata=run)
    except OSError as err:
        raise UsageError(f"cannot write {os.path.join(out, BEST)}: {err.strerror or err}") from None
    h = result.history
    steps = int(result.state.step)
    last = lambda k: float(h[k][-1]) if k in h else None
    metrics = {
        "test_accuracy": last("test_acc"), "val_accuracy": last("val_acc"), "train_accuracy": last("train_acc"),
        "best_val_accuracy": float(np.max(h["val_acc"])) if "val_acc" in h else None,
        "test_loss": last("test_eval_loss"), "val_loss": last("val_eval_loss"), "train_loss": last("train_eval_loss"),
        **({"test_rmse": last("test_rmse"), "val_rmse": last("val_rmse"), "train_rmse": last("train_rmse")}
           if "train_rmse" in h else {}),
        "epochs_run": len(h["epoch"]), "steps": steps, "wall_time_s": wall,
        "steps_per_second": (len(h["step_loss"]) - (len(history["step_loss"]) if history else 0)) / max(wall, 1e-9),
        "dataset": ds.name, "config": cfg, "history": _history_json(h), "jax_version": jax.__version__,
        "device": str(jax.devices()[0]), "version": __version__,
    }
    if "skipped_steps" in h:  # --skip-nonfinite: per epoch in the history, the run's total here
        metrics["skipped_steps"] = int(np.sum(h["skipped_steps"]))
    _write_json(os.path.join(out, METRICS), metrics)
    network = f"model {os.path.basename(cfg['model'])}" if cfg.get("model") else f"hidden {cfg['hidden']}"
    figure = _maybe_figure(h, os.path.join(out, FIGURE), f"{ds.name}: {cfg['optimizer']}, {network}")
    if not args.quiet:
        print(f"{_result_text(metrics)}  ({steps} steps, {wall:.1f}s, "
              f"{metrics['steps_per_second']:.0f} steps/s{_skipped(metrics)})  -> {out}" + (f", {FIGURE}" if figure else ""))
    return 0


def _result_text(metrics) -> str:
    """The run's headline: its test result, or validation's (then training's) for a file without test rows."""
    for split in ("test", "val", "train"):
        if metrics[f"{split}_loss"] is not None:
            break
    name = {"test": "test", "val": "validation (no test rows)", "train": "training (no test or validation rows)"}[split]
    if metrics[f"{split}_accuracy"] is not None:
        return f"{name} accuracy {100 * metrics[f'{split}_accuracy']:.2f}%"
    if metrics.get(f"{split}_rmse") is not None:
        return f"{name} rmse {metrics[f'{split}_rmse']:#.4g}"
    return f"{name} loss {metrics[f'{split}_loss']:.4f}"


def _skipped(metrics) -> str:
    n = metrics.get("skipped_steps")
    return "" if n is None else f", {n} step{'s' * (n != 1)} skipped for non-finite gradients"


def _maybe_figure(history, path, title):
    try:
        from jaxscratch import plot
        return plot.training_figure(history, path, title=title)
    except ImportError:
        return None
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None


def _first_problem(err) -> str:
    """A checkpoint error (or ``OSError``) in one line: a list of mismatched leaves cut to the first
    one and a count."""
    leaves = getattr(err, "mismatches", ())
    return str(err) if len(leaves) < 2 else f"{err.summary}: {leaves[0]}; and {len(leaves) - 1} more leaves like it"


class _LoadedRun(NamedTuple):
    cfg: dict
    sizes: list
    input_shape: tuple
    model: nn.Model
    state: train.TrainState
    meta: dict


def _load_run(run_dir, which=BEST, *, debug=False) -> _LoadedRun:
    """A finished run's configuration, model and best (or last) state; a ``--model`` file is
    imported again from its stored absolute path, refused if its content changed."""
    path = os.path.join(run_dir, which)
    if not os.path.isfile(path):
        raise UsageError(f"{run_dir} holds no finished run ({which} missing); train one with: jaxscratch train --out {run_dir}")
    meta = _run_meta(path)
    cfg, sizes = meta["config"], meta["sizes"]
    input_shape = tuple(meta.get("input_shape") or sizes[:1])  # 0.4 runs: the MLP's flat inputs
    model, _ = _model(cfg, sizes, input_shape, sha256=meta.get("model_sha256"), debug=debug)
    template = _template(cfg, model, build_optimizer(cfg, 1))
    try:
        state = checkpoint.restore(path, like={"state": template, "best": template})["state"]
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(_first_problem(err)) from None
    return _LoadedRun(cfg, sizes, input_shape, model, state, meta)


def cmd_evaluate(args) -> int:
    if args.json:
        _check_target(args.json, "--json", run_dir=args.run, force=args.force)
    run = _load_run(args.run, CHECKPOINT if args.last else BEST, debug=args.debug)
    cfg, sizes, state = run.cfg, run.sizes, run.state
    ds, (xt, yt), (xv, yv) = load_data(dict(cfg, dataset_dir=args.dataset_dir or cfg.get("dataset_dir")),
                                       run.meta.get("data_source"))
    what = "target columns" if cfg["loss"] == "mse" else "classes"
    if _sizes(cfg, ds)[0] != sizes[0] or ds.num_classes > sizes[-1]:
        raise UsageError(f"{cfg['dataset']} now gives {_sizes(cfg, ds)[0]} features and {ds.num_classes} {what}; the "
                         f"run's model takes {sizes[0]} features and {sizes[-1]} {what} (the dataset changed since training)")
    _check_same_data(run.meta, cfg, ds, "")
    report = {}
    for name, (x, y) in (("train", (xt, yt)), ("val", (xv, yv)), ("test", (ds.x_test, ds.y_test))):
        if len(x):
            metrics = {k: float(v) for k, v in train.evaluate(run.model, state.params, state.model_state, x, y,
                                                              loss=cfg["loss"]).items()}
            named = {"loss": metrics["loss"], **({"accuracy": metrics["acc"]} if "acc" in metrics else {}),
                     **({"rmse": metrics["rmse"]} if "rmse" in metrics else {})}
            report[name] = {**named, "examples": len(x)}
            second = (f"  accuracy {100 * named['accuracy']:.2f}%" if "accuracy" in named
                      else f"  rmse {named['rmse']:#.4g}" if "rmse" in named else "")
            print(f"{name:5s}  loss {named['loss']:.4f}{second}  ({len(x)} examples)")
    if args.json:
        _write_json(args.json, report, "--json")
    return 0


def _read_inputs(path, features: int) -> np.ndarray:
    """Numeric, finite inputs ``(n, features)`` or ``(n, ...)`` from a .npy, or a .npz's array 'x'."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith((b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")):  # .npy, zip (.npz), empty zip
            raise UsageError(f"{path}: expected a .npy file, or a .npz with an array 'x'; found a file starting with {head!r}")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "x" not in loaded.files:
                    raise UsageError(f"{path} holds {loaded.files}; expected an array named 'x'")
                loaded = loaded["x"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # object arrays need pickle: ValueError
        raise UsageError(f"cannot read inputs from {path} (expected .npy, or .npz with an array 'x'): {err}") from None
    x = loaded
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"{path}: inputs must be integers or real numbers; got dtype {x.dtype}")
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != features:
        raise UsageError(f"{path}: inputs must have shape (n, {features}), or (n, ...) with {features} features, as "
                         f"the run's model expects; got {x.shape}")
    finite = np.isfinite(x.reshape(len(x), features)).all(axis=1)  # (0, -1) would be ambiguous for no rows
    if not finite.all():
        raise UsageError(f"{path}: inputs must be finite; row {int(np.argmin(finite))} holds NaN or Inf")
    return x


def _preprocess(x, run, path) -> np.ndarray:
    """Inputs as the run's model saw its training data: integer images divided as the loader divided
    them; inputs far outside the training range (raw 0..255 pixels for a model trained on 0..1,
    say) refused rather than mislabelled."""
    prep = run.meta.get("preprocessing") or {}
    scale = prep.get("integer_inputs_divided_by", _RAW_SCALE.get(run.cfg["dataset"]))  # older runs: the built-in sets'
    if np.issubdtype(x.dtype, np.integer) and scale and x.size:
        if x.min() < 0 or x.max() > scale:
            raise UsageError(f"{path}: integer inputs must lie in 0..{scale}, as the run's training images did "
                             f"(they are divided by {scale}); found {x.min()}..{x.max()}")
        x = x.astype(np.float32) / np.float32(scale)
    with np.errstate(over="ignore"):
        x = np.asarray(x, np.float32)
    lo, hi = prep.get("input_range") or (None, None)
    if lo is not None and x.size:
        span = max(hi - lo, 1e-6)
        mn, mx = float(x.min()), float(x.max())
        if mn < lo - span or mx > hi + span:
            how = (f"integer images 0..{scale} (divided by {scale} here) or floats scaled as in training"
                   if scale else "inputs preprocessed as in training")
            raise UsageError(f"{path}: inputs range {mn:.4g}..{mx:.4g}, far outside the {lo:.4g}..{hi:.4g} the run's "
                             f"model was trained on; pass {how}")
    return x


def cmd_predict(args) -> int:
    if args.output:
        _check_target(args.output, "--output", run_dir=args.run, inputs=(args.input,), force=args.force)
    run = _load_run(args.run, debug=args.debug)
    x = _read_inputs(args.input, run.sizes[0])
    x = _preprocess(x, run, args.input).reshape((len(x), *run.input_shape))
    if len(x):
        outputs, _ = jax.jit(functools.partial(run.model.apply, train=False))(run.state.params, run.state.model_state,
                                                                            jnp.asarray(x))
    else:  # no rows, no predictions (the model is not run on an empty batch)
        outputs = np.zeros((0, run.sizes[-1]), np.float32)
    if run.cfg["loss"] == "mse":  # regression: the predicted values, (n,) for one target column
        values, what = np.asarray(outputs).reshape(len(x), int(np.prod(np.shape(outputs)[1:]))), "predicted values"
        values = values[:, 0] if values.shape[1] == 1 else values
        text = "\n".join(" ".join(f"{v:.6g}" for v in np.atleast_1d(row)) for row in values)
    else:
        values, what = np.asarray(jnp.argmax(outputs, axis=-1)), "predicted labels"
        text = " ".join(map(str, values.tolist()))
    if args.output:
        _write_file(args.output, lambda f: np.save(f, values), "--output")
        print(f"saved {len(values)} {what} to {args.output}")
    elif len(values):
        print(text)
    return 0


def cmd_compare(args) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: expected a folder; found a file")
    names = args.optimizers
    cfg = dict(DEFAULTS, dataset=args.dataset, dataset_dir=args.dataset_dir, validation_fraction=0.0, seed=args.seed)
    ds, (xt, yt), _ = load_data(cfg)
    iterations = 200 if args.quick else args.iterations
    if args.batch_size > len(xt):
        raise UsageError(f"--batch-size {args.batch_size} exceeds the {len(xt)} training examples")
    key = jax.random.key(args.seed)
    sizes = (xt.shape[1], *_widths(args.hidden), ds.num_classes)
    model = nn.mlp_model(sizes, weight_init="he")
    params, model_state = model.init(key)  # the same initial weights for everyone
    xe, ye = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    curves, rows = {}, []
    for name in names:  # one at a time for the timings; the same key gives every one the same batches
        start = time.perf_counter()
        (state, step_losses), = sweep.compare_optimizers(
            jax.random.fold_in(key, 1), {name: optim.OPTIMIZERS[name]()}, params, xt, yt,  # the book's defaults
            iterations=iterations, batch_size=args.batch_size, model=model, model_state=model_state).values()
        acc = float(train.evaluate(model, state.params, state.model_state, xe, ye)["acc"]) if len(xe) else None
        curves[name] = step_losses
        rows.append((name, float(np.mean(step_losses[-100:])), acc, time.perf_counter() - start))
    print(f"{'optimizer':10s} {'final loss':>10s} {'test acc':>9s} {'time':>7s}   ({iterations} iterations, batch {args.batch_size})"
          + ("" if len(xe) else "  (no test rows: no test accuracy)"))
    for name, loss, acc, secs in rows:
        print(f"{name:10s} {loss:10.4f} {'-' if acc is None else f'{100 * acc:.2f}%':>9s} {secs:6.1f}s")
    _make_dirs(args.out)
    _write_json(os.path.join(args.out, "compare.json"), {"iterations": iterations, "results": [
        {"optimizer": n, "final_loss": l, "test_accuracy": a, "time_s": s} for n, l, a, s in rows]})
    fig = None
    try:
        from jaxscratch import plot
        fig = plot.comparison_figure(curves, os.path.join(args.out, "compare.png"), title=f"{ds.name}: optimizer comparison")
    except ImportError:
        pass
    print(f"saved {os.path.join(args.out, 'compare.json')}" + (f" and {fig}" if fig else ""))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "compare": cmd_compare}


def _one_line(text: str) -> str:
    """A multi-line message (e.g. every place a dataset was looked for) joined into one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:
        joined += (" " if joined.endswith((":", ".")) else "; ") + line
    return joined


def _after_stop(args) -> str:
    """What a stopped ``train`` left: the resume command, or that nothing was saved."""
    if args.command != "train":
        return ""
    if os.path.exists(os.path.join(args.out, CHECKPOINT)):
        return f"; the last finished epoch is saved: continue with jaxscratch train --out {args.out} --resume"
    return "; no epoch had finished, so nothing was saved"


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status. Its
    output may go away (``| head``, a full disk): the command goes on without it."""
    with _tolerant_output():
        return _main(argv)


def _main(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(_one_line(str(err)), file=sys.stderr)
        return 2
    try:  # SIGTERM ends a run like Ctrl-C: checkpoints stay whole (main thread only)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        previous = None
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"jaxscratch {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        hint = "; train again with a lower --learning-rate (--resume keeps the run's configuration)" \
            if args.command == "train" else ""
        print(f"jaxscratch {args.command}: error: {_one_line(str(err))}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jaxscratch {args.command}: interrupted{_after_stop(args)}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run() -> int:
    """The ``jaxscratch`` command itself: :func:`main` with one JAX device per CPU core (for
    ``compare``, whose optimizers run side by side; ``devices.use_cpu_cores``, unless
    ``JAX_NUM_CPU_DEVICES`` says otherwise) and compiled programs kept on disk between runs
    (``compile_cache.enable``; ``JAXSCRATCH_COMPILE_CACHE=off`` disables it). ``main`` alone
    leaves JAX's settings as they are, for callers in a process of their own."""
    devices.use_cpu_cores()
    compile_cache.enable()
    return main()


def _terminate(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
