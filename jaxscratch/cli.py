"""The ``jaxscratch`` command: ``train``, ``evaluate``, ``predict``, ``compare``.

This is the one module that knows about files, flags and printing. A run directory holds
``checkpoint.npz`` (the last epoch's whole state, the configuration and history),
``best.npz`` (the best-validation state), ``metrics.json`` and ``training.png``.

Contract:
  * Every flag is checked as it is parsed: its type (ints in ASCII digits, finite numbers,
    true/false), its range, and named choices (the valid ones listed). A flag that does not
    apply to the chosen optimizer, schedule or dataset is an error, never silently ignored. A
    run's stored configuration is checked the same way when it is read back.
  * Every error a user can cause (a bad flag, a missing, damaged or foreign file, data that do
    not fit the model, an output that cannot be written) prints one line,
    ``jaxscratch CMD: error: ...``, and ``main`` returns 2: no traceback. ``main`` returns its
    exit status and raises only for ``--help`` and ``--version`` (``SystemExit(0)``).
  * Nothing is written before the inputs are checked. Files are written atomically (a
    temporary file, then a rename), only into ``--out`` or the file named by ``--json`` /
    ``--output``; a run that stops before its first checkpoint leaves no ``--out`` behind.
  * A diverging run exits 1. Ctrl-C or SIGTERM exits 130 with the last finished epoch saved;
    ``--resume`` then finishes the run bit-identically to an uninterrupted one.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import __version__, checkpoint, data, nn, optim, schedules, sweep, train

CHECKPOINT, BEST, METRICS, FIGURE = "checkpoint.npz", "best.npz", "metrics.json", "training.png"

# Defaults of `jaxscratch train`: with nothing else, digits in seconds, >= 95% test accuracy.
DEFAULTS = {
    "dataset": "digits", "dataset_dir": None, "hidden": "100,100", "activation": "relu",
    "weight_init": "he", "optimizer": "adam", "learning_rate": None, "schedule": "constant",
    "warmup_epochs": 1, "decay_epochs": 10, "decay_factor": 0.5, "epochs": 30, "batch_size": 100,
    "validation_fraction": 0.1, "batchnorm": False, "dropout": 0.0, "dropout_mode": "inverted",
    "weight_decay": 0.0, "sampling": "epoch", "seed": 0,
}
# Optimizer hyperparameter flags: flag dest -> keyword of the optimizer factories.
OPT_FLAGS = ["momentum", "b1", "b2", "eps", "decay", "rho", "initial_accumulator_value", "eps_in_sqrt",
             "fold_bias_correction"]
DECOUPLED_DECAY = ("adamw", "lion", "adadelta")  # --weight-decay is the optimizer's own decay
SCHEDULES = ("constant", "exponential", "cosine", "warmup-cosine")
SCHEDULE_FLAGS = {"warmup_epochs": "warmup-cosine", "decay_epochs": "exponential", "decay_factor": "exponential"}
DATASETS = ("digits", "mnist", "fashion-mnist")
SEED_MAX = 2**32 - 1  # JAX keeps 32 bits of a seed while x64 is off: larger seeds would collide


class UsageError(Exception):
    """A bad input from the user: printed as one line, exit status 2."""


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# ----------------------------------------------------------------- flag types
# Each takes a command-line string (or a value read back from a stored configuration) and
# returns the checked value, or raises ArgumentTypeError saying what was expected and found.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _bad(expected: str, found) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {expected}; got {found!r}")


def _int(text) -> int:
    """An int in ASCII digits: ``"12"``, ``"-3"`` (not ``"1.0"``, ``"1e3"``, ``"1_000"``)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, str) and _INT.fullmatch(text):
        return int(text)
    raise _bad("an int", text)


def _float(text) -> float:
    """A finite decimal number: ``"0.1"``, ``"1e-3"``, ``"-2"`` (not ``"nan"``, ``"inf"``, ``"1e999"``)."""
    ok = (isinstance(text, str) and _FLOAT.fullmatch(text)) or (
        isinstance(text, (int, float)) and not isinstance(text, bool))
    try:
        value = float(text) if ok else math.inf
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise _bad("a finite number", text)
    return value


def _bool(text) -> bool:
    """``true``, ``yes``, ``1`` or ``false``, ``no``, ``0``, in any case."""
    if isinstance(text, bool):
        return text
    word = text.lower() if isinstance(text, str) else None
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise _bad("true or false", text)


def _ranged(parse, lo, hi=None, *, lo_open=False, hi_open=False):
    """A type: ``parse``, then ``lo <= value <= hi`` (``<`` where open; no ``hi``: unbounded)."""
    kind = "an int" if parse is _int else "a number"
    if hi is None:
        expected = f"{kind} {'>' if lo_open else '>='} {lo}"
    else:
        expected = f"{kind} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def check(text):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError:
            raise _bad(expected, text) from None
        if (value <= lo if lo_open else value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
            raise _bad(expected, text)
        return value

    return check


def _choice(*valid: str):
    """A type: one of the named ``valid`` strings."""
    def check(text):
        if text not in valid:
            raise _bad(f"one of {', '.join(valid)}", text)
        return text

    return check


def _dataset(text) -> str:
    if isinstance(text, str) and (text in DATASETS or text.endswith(".npz")):
        return text
    raise _bad(f"{', '.join(DATASETS)} or a path ending in .npz", text)


def _widths(text) -> tuple[int, ...]:
    """Hidden-layer widths from ``"100,100"``: comma-separated ints >= 1."""
    items = text.split(",") if isinstance(text, str) else [""]
    if not all(_INT.fullmatch(s.strip()) and int(s) >= 1 for s in items):
        raise _bad("comma-separated positive ints such as 100,100", text)
    return tuple(int(s) for s in items)


def _hidden(text) -> str:
    """The ``--hidden`` type: checked by :func:`_widths`, kept as written."""
    _widths(text)
    return text


def _init_scale(text):
    """What ``nn.init_mlp`` takes for ``--weight-init``: ``"he"``, ``"xavier"`` or a std as a float."""
    if text in ("he", "xavier"):
        return text
    try:
        return _ranged(_float, 0, lo_open=True)(text)
    except argparse.ArgumentTypeError:
        raise _bad("he, xavier, or a standard deviation > 0", text) from None


def _weight_init(text) -> str:
    """The ``--weight-init`` type: checked by :func:`_init_scale`, kept as written."""
    _init_scale(text)
    return text


def _optimizer_names(text) -> list[str]:
    """``all`` or comma-separated optimizer names."""
    valid = sorted(optim.OPTIMIZERS)
    names = valid if text == "all" else text.split(",")
    if not all(n in optim.OPTIMIZERS for n in names):
        raise _bad(f"all, or comma-separated names among {', '.join(valid)}", text)
    return names


# `jaxscratch train` flag -> its type; the same types check a stored run's configuration.
TRAIN_TYPES = {
    "dataset": _dataset, "dataset_dir": str, "hidden": _hidden, "activation": _choice(*sorted(nn.ACTIVATIONS)),
    "weight_init": _weight_init, "optimizer": _choice(*sorted(optim.OPTIMIZERS)), "learning_rate": _ranged(_float, 0),
    "schedule": _choice(*SCHEDULES), "warmup_epochs": _ranged(_int, 0), "decay_epochs": _ranged(_int, 1),
    "decay_factor": _ranged(_float, 0, 1, lo_open=True), "epochs": _ranged(_int, 1), "batch_size": _ranged(_int, 1),
    "validation_fraction": _ranged(_float, 0, 1, hi_open=True), "batchnorm": _bool,
    "dropout": _ranged(_float, 0, 1, hi_open=True), "dropout_mode": _choice(*nn.DROPOUT_MODES),
    "weight_decay": _ranged(_float, 0), "sampling": _choice(*train.SAMPLINGS), "seed": _ranged(_int, 0, SEED_MAX),
    # The optimizer's own hyperparameters: finite numbers here; each optimizer checks its ranges.
    **{k: _float for k in OPT_FLAGS if k not in ("eps_in_sqrt", "fold_bias_correction")},
    "eps_in_sqrt": _bool, "fold_bias_correction": _bool,
}


# ----------------------------------------------------------------- configuration
def train_config(args) -> dict:
    """The full run configuration: the flags given, then DEFAULTS; flags checked together."""
    given = {k for k in [*DEFAULTS, *OPT_FLAGS] if getattr(args, k) is not None}
    cfg = {k: getattr(args, k) if k in given else v for k, v in DEFAULTS.items()}
    cfg.update({k: getattr(args, k) for k in OPT_FLAGS if k in given})
    accepted = inspect.signature(optim.OPTIMIZERS[cfg["optimizer"]]).parameters
    for k in OPT_FLAGS:
        if k in given and k not in accepted:
            users = [n for n, f in optim.OPTIMIZERS.items() if k in inspect.signature(f).parameters]
            raise UsageError(f"{_flag(k)} does not apply to {cfg['optimizer']}; it applies to {', '.join(users)}")
    for k, schedule in SCHEDULE_FLAGS.items():
        if k in given and cfg["schedule"] != schedule:
            raise UsageError(f"{_flag(k)} applies only to --schedule {schedule}; got --schedule {cfg['schedule']}")
    return cfg


def _run_meta(path, *, resumable=False) -> dict:
    """A run checkpoint's metadata, its configuration checked with the flags' own types."""
    meta = _read_meta(path)
    cfg, sizes = meta.get("config"), meta.get("sizes")
    ok = (isinstance(cfg, dict) and set(DEFAULTS) <= set(cfg) and isinstance(sizes, list) and len(sizes) >= 2
          and all(isinstance(n, int) and n >= 1 for n in sizes)
          and (not resumable or isinstance(meta.get("history"), dict)))
    if not ok:
        wanted = "'config', 'sizes' and 'history'" if resumable else "'config' and 'sizes'"
        raise UsageError(f"{path} is a checkpoint but not one of a jaxscratch train run: its metadata lacks {wanted}")
    for k, value in cfg.items():
        try:
            if k in TRAIN_TYPES and value is not None:
                TRAIN_TYPES[k](value)
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"{path} holds an invalid configuration: {_flag(k)}: {err}") from None
    if _widths(cfg["hidden"]) != tuple(sizes[1:-1]):
        raise UsageError(f"{path} holds an invalid configuration: --hidden {cfg['hidden']} but layer sizes {sizes}")
    return meta


def build_optimizer(cfg, steps_per_epoch: int) -> optim.Optimizer:
    factory = optim.OPTIMIZERS[cfg["optimizer"]]
    kwargs = {k: cfg[k] for k in OPT_FLAGS if k in cfg}
    lr = cfg["learning_rate"]
    if lr is None:
        lr = inspect.signature(factory).parameters["learning_rate"].default
    total = cfg["epochs"] * steps_per_epoch
    if cfg["schedule"] == "exponential":
        lr = schedules.exponential_decay(lr, cfg["decay_epochs"] * steps_per_epoch, cfg["decay_factor"], staircase=True)
    elif cfg["schedule"] == "cosine":
        lr = schedules.cosine_decay(lr, max(total, 1))
    elif cfg["schedule"] == "warmup-cosine":
        warm = min(cfg["warmup_epochs"] * steps_per_epoch, max(total - 1, 0))
        lr = schedules.warmup_cosine_decay(0.0, lr, warm, max(total, 1))
    if cfg["optimizer"] in DECOUPLED_DECAY:
        kwargs["weight_decay"] = cfg["weight_decay"]
        if cfg["optimizer"] != "adadelta" or cfg["weight_decay"]:
            kwargs["mask"] = nn.weights_mask  # decay weights only, never biases, gamma or beta
    try:
        return factory(learning_rate=lr, **kwargs)
    except (TypeError, ValueError) as err:  # "b1 must be in [0, 1); got 1.5": name the flag instead
        text, name = str(err), str(err).split(" ", 1)[0]
        if name in kwargs:
            text = _flag(name) + text[len(name):]
        raise UsageError(f"{text} (--optimizer {cfg['optimizer']})") from None


def load_data(cfg):
    """``(Dataset, (x_train, y_train), (x_val, y_val))`` with the configured validation split."""
    name, directory = cfg["dataset"], cfg.get("dataset_dir")
    if directory and name not in ("mnist", "fashion-mnist"):
        raise UsageError(f"--dataset-dir applies only to --dataset mnist or fashion-mnist; got --dataset {name}")
    if directory and not os.path.isdir(directory):
        raise UsageError(f"--dataset-dir {directory}: expected a folder holding the four {name} IDX files; no such folder")
    try:
        ds = data.load_npz(name) if name.endswith(".npz") else data.load_dataset(name, **(
            {"path": directory} if directory else {}))
    except (data.DataError, OSError) as err:
        raise UsageError(str(err)) from None
    n, fraction = len(ds.x_train), cfg["validation_fraction"]
    if n - round(fraction * n) < 1:
        raise UsageError(f"--validation-fraction {fraction} of the {n} training examples leaves none to train on")
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, fraction, seed=cfg["seed"])
    return ds, (xt, yt), (xv, yv)


def _sizes(cfg, ds) -> list[int]:
    return [int(np.prod(ds.x_train.shape[1:])), *_widths(cfg["hidden"]), int(ds.num_classes)]


def _template(cfg, sizes, optimizer):
    params = nn.init_mlp(jax.random.key(cfg["seed"]), sizes, weight_init=_init_scale(cfg["weight_init"]),
                         batchnorm=cfg["batchnorm"])
    return params, train.init_state(jax.random.key(cfg["seed"]), params, optimizer)


# ----------------------------------------------------------------- files
def _check_target(path, flag) -> None:
    """Refuse, before any work, an output file whose folder is missing or that is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: expected a file in an existing folder; "
                         f"{'it is a folder' if os.path.isdir(path) else f'no folder {folder}'}")


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
    """``write(binary file)`` into a temporary file beside ``path``, then rename it onto ``path``."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except OSError as err:
        raise UsageError(f"cannot write {what}{' ' if what else ''}{path}: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path, obj, what="") -> None:
    _write_file(path, lambda f: f.write(json.dumps(obj, indent=1).encode()), what)


def _history_json(history) -> dict:
    return {k: np.asarray(v).tolist() for k, v in history.items()}


def _read_meta(path):
    try:
        return checkpoint.load_metadata(path)
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(str(err)) from None


# ----------------------------------------------------------------- commands
def cmd_train(args) -> int:
    out = args.out
    ckpt = os.path.join(out, CHECKPOINT)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: expected a folder; found a file")
    if args.resume:
        if not os.path.exists(ckpt):
            raise UsageError(f"--resume: no checkpoint at {ckpt}; start a new run without --resume")
        meta = _run_meta(ckpt, resumable=True)  # read once: the configuration now, the history after restoring
        stored = meta["config"]
        for k in list(DEFAULTS) + OPT_FLAGS:
            given = getattr(args, k)
            if k != "epochs" and given is not None and given != stored.get(k, DEFAULTS.get(k)):
                raise UsageError(f"--resume: {_flag(k)} {given!r} conflicts with the run's {stored.get(k)!r}; "
                                 f"a resumed run keeps its configuration (only --epochs may change)")
        cfg = dict(stored, epochs=args.epochs if args.epochs is not None else stored["epochs"])
        done = len(meta["history"].get("epoch", []))
        if cfg["epochs"] < done:
            raise UsageError(f"--resume: --epochs {cfg['epochs']} is fewer than the {done} epochs already run in {out}")
    else:
        if os.path.exists(ckpt) or os.path.exists(os.path.join(out, METRICS)):
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        cfg = train_config(args)
    ds, (xt, yt), (xv, yv) = load_data(cfg)
    steps_per_epoch = len(xt) // cfg["batch_size"]
    if steps_per_epoch < 1:
        raise UsageError(f"--batch-size {cfg['batch_size']} exceeds the {len(xt)} training examples")
    optimizer = build_optimizer(cfg, steps_per_epoch)
    sizes = _sizes(cfg, ds)
    params, template = _template(cfg, sizes, optimizer)
    state = best = history = None
    if args.resume:
        if sizes != meta["sizes"]:
            raise UsageError(f"--resume: the run's model has layer sizes {meta['sizes']} but {cfg['dataset']} now "
                             f"gives {sizes}; the dataset changed since the run began")
        try:
            restored = checkpoint.restore(ckpt, like={"state": template, "best": template})
        except (checkpoint.CheckpointError, OSError) as err:
            raise UsageError(f"--resume: {_first_problem(str(err))}") from None
        state, best = restored["state"], restored["best"]
        history = meta["history"]
    created = _make_dirs(out)  # every input is checked: now the run may write
    try:
        return _train(args, cfg, ds, sizes, optimizer, params, (xt, yt), (xv, yv), state, best, history)
    except BaseException:
        for folder in reversed(created):  # stopped before the first checkpoint: leave no empty --out
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _train(args, cfg, ds, sizes, optimizer, params, train_set, val_set, state, best, history) -> int:
    out, ckpt = args.out, os.path.join(args.out, CHECKPOINT)
    decoupled = cfg["optimizer"] in DECOUPLED_DECAY
    start = time.perf_counter()

    def save(epoch, result):
        meta = {"config": cfg, "sizes": sizes, "history": _history_json(result.history), "version": __version__}
        try:
            checkpoint.save(ckpt, {"state": result.state, "best": result.best}, metadata=meta)
        except OSError as err:
            raise UsageError(f"cannot write the checkpoint {ckpt}: {err.strerror or err}") from None

    result = train.fit(
        jax.random.key(cfg["seed"]), params, optimizer, train_set, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
        validation=val_set, test=(ds.x_test, ds.y_test), activation=cfg["activation"],
        weight_decay=0.0 if decoupled else cfg["weight_decay"], drop_rate=cfg["dropout"],
        dropout_mode=cfg["dropout_mode"], sampling=cfg["sampling"], state=state, best=best, history=history,
        verbose=not args.quiet, on_epoch=save)
    wall = time.perf_counter() - start
    save(None, result)
    try:
        checkpoint.save(os.path.join(out, BEST), {"state": result.best, "best": result.best},
                        metadata={"config": cfg, "sizes": sizes})
    except OSError as err:
        raise UsageError(f"cannot write {os.path.join(out, BEST)}: {err.strerror or err}") from None
    h = result.history
    steps = int(result.state.step)
    metrics = {
        "test_accuracy": float(h["test_acc"][-1]), "val_accuracy": float(h["val_acc"][-1]) if "val_acc" in h else None,
        "train_accuracy": float(h["train_acc"][-1]), "best_val_accuracy": float(np.max(h["val_acc"])) if "val_acc" in h else None,
        "epochs_run": len(h["epoch"]), "steps": steps, "wall_time_s": wall,
        "steps_per_second": (len(h["step_loss"]) - (len(history["step_loss"]) if history else 0)) / max(wall, 1e-9),
        "dataset": ds.name, "config": cfg, "history": _history_json(h), "jax_version": jax.__version__,
        "device": str(jax.devices()[0]), "version": __version__,
    }
    _write_json(os.path.join(out, METRICS), metrics)
    figure = _maybe_figure(h, os.path.join(out, FIGURE), f"{ds.name}: {cfg['optimizer']}, hidden {cfg['hidden']}")
    if not args.quiet:
        print(f"test accuracy {100 * metrics['test_accuracy']:.2f}%  ({steps} steps, {wall:.1f}s, "
              f"{metrics['steps_per_second']:.0f} steps/s)  -> {out}" + (f", {FIGURE}" if figure else ""))
    return 0


def _maybe_figure(history, path, title):
    try:
        from jaxscratch import plot
        return plot.training_figure(history, path, title=title)
    except ImportError:
        return None
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None


def _first_problem(text: str) -> str:
    """A checkpoint's list of mismatched leaves, cut to the first one and a count."""
    lines = text.splitlines()
    more = re.search(r"\.\.\. and (\d+) more", lines[-1])
    count = sum(line.strip().startswith("leaf ") for line in lines) + (int(more.group(1)) if more else 0)
    return text if count < 2 else f"{lines[0]} {lines[1].strip()}; and {count - 1} more leaves like it"


def _load_run(run_dir, which=BEST):
    """``(config, sizes, TrainState)`` of a finished run's best (or last) checkpoint."""
    path = os.path.join(run_dir, which)
    if not os.path.isfile(path):
        raise UsageError(f"{run_dir} holds no finished run ({which} missing); train one with: jaxscratch train --out {run_dir}")
    meta = _run_meta(path)
    cfg, sizes = meta["config"], meta["sizes"]
    _, template = _template(cfg, sizes, build_optimizer(cfg, 1))
    try:
        state = checkpoint.restore(path, like={"state": template, "best": template})["state"]
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(_first_problem(str(err))) from None
    return cfg, sizes, state


def cmd_evaluate(args) -> int:
    if args.json:
        _check_target(args.json, "--json")
    cfg, sizes, state = _load_run(args.run, CHECKPOINT if args.last else BEST)
    ds, (xt, yt), (xv, yv) = load_data(dict(cfg, dataset_dir=args.dataset_dir or cfg.get("dataset_dir")))
    if _sizes(cfg, ds)[0] != sizes[0] or ds.num_classes > sizes[-1]:
        raise UsageError(f"{cfg['dataset']} now gives {_sizes(cfg, ds)[0]} features and {ds.num_classes} classes; the "
                         f"run's model takes {sizes[0]} features and {sizes[-1]} classes (the dataset changed since training)")
    report = {}
    for name, (x, y) in (("train", (xt, yt)), ("val", (xv, yv)), ("test", (ds.x_test, ds.y_test))):
        if len(x):
            loss, acc = train.evaluate(state.params, state.bn_state, jnp.asarray(x), jnp.asarray(y),
                                       activation=cfg["activation"], drop_rate=cfg["dropout"], dropout_mode=cfg["dropout_mode"])
            report[name] = {"loss": float(loss), "accuracy": float(acc), "examples": len(x)}
            print(f"{name:5s}  loss {float(loss):.4f}  accuracy {100 * float(acc):.2f}%  ({len(x)} examples)")
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
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        raise UsageError(f"{path}: inputs must be finite; row {int(np.argmin(finite))} holds NaN or Inf")
    return x


def cmd_predict(args) -> int:
    if args.output:
        _check_target(args.output, "--output")
    cfg, sizes, state = _load_run(args.run)
    x = _read_inputs(args.input, sizes[0])
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    logits, _ = nn.apply(state.params, jnp.asarray(x), state=state.bn_state, activation=cfg["activation"],
                         drop_rate=cfg["dropout"], dropout_mode=cfg["dropout_mode"])
    labels = np.asarray(jnp.argmax(logits, axis=-1))
    if args.output:
        _write_file(args.output, lambda f: np.save(f, labels), "--output")
        print(f"saved {len(labels)} predicted labels to {args.output}")
    else:
        print(" ".join(map(str, labels.tolist())))
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
    params = nn.init_mlp(key, sizes, weight_init="he")  # the same initial weights for everyone
    xe, ye = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    curves, rows = {}, []
    for name in names:  # one at a time for the timings; the same key gives every one the same batches
        start = time.perf_counter()
        (state, step_losses), = sweep.compare_optimizers(
            jax.random.fold_in(key, 1), {name: optim.OPTIMIZERS[name]()}, params, xt, yt,  # the book's defaults
            iterations=iterations, batch_size=args.batch_size).values()
        _, acc = train.evaluate(state.params, state.bn_state, xe, ye)
        curves[name] = step_losses
        rows.append((name, float(np.mean(step_losses[-100:])), float(acc), time.perf_counter() - start))
    print(f"{'optimizer':10s} {'final loss':>10s} {'test acc':>9s} {'time':>7s}   ({iterations} iterations, batch {args.batch_size})")
    for name, loss, acc, secs in rows:
        print(f"{name:10s} {loss:10.4f} {100 * acc:8.2f}% {secs:6.1f}s")
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


# ----------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) raised as UsageError, not an exit,
    and which refuses abbreviated flags (``--epoch`` is not ``--epochs``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        hint = "" if "expected" in message else f"; see {self.prog} --help"
        raise UsageError(f"{self.prog}: error: {message}{hint}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxscratch", description="Train and study MLPs the Deep Learning from Scratch way, in JAX.")
    p.add_argument("--version", action="version", version=f"jaxscratch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP and write a run directory")

    def add(flag, help_):
        dest = flag.lstrip("-").replace("-", "_")
        t.add_argument(flag, type=TRAIN_TYPES[dest], default=None, help=f"{help_} (default: {DEFAULTS.get(dest)})")

    add("--dataset", "digits, mnist, fashion-mnist, or PATH.npz with x_train, y_train, x_test, y_test")
    add("--dataset-dir", "directory holding the dataset's IDX files (mnist, fashion-mnist)")
    add("--hidden", "hidden layer widths, comma-separated")
    add("--activation", f"one of {', '.join(sorted(nn.ACTIVATIONS))}")
    add("--weight-init", "he, xavier, or a number used as the standard deviation")
    add("--optimizer", f"one of {', '.join(sorted(optim.OPTIMIZERS))}")
    add("--learning-rate", "learning rate >= 0; default: the optimizer's own (the book's)")
    for dest in OPT_FLAGS:
        t.add_argument(_flag(dest), type=TRAIN_TYPES[dest], default=None,
                       help="optimizer hyperparameter (default: the optimizer's own)")
    add("--schedule", f"learning-rate schedule: {', '.join(SCHEDULES)}")
    add("--warmup-epochs", "warm-up length for warmup-cosine")
    add("--decay-epochs", "epochs between decays for exponential")
    add("--decay-factor", "factor per decay for exponential, in (0, 1]")
    add("--epochs", "total number of epochs (with --resume: continue up to this)")
    add("--batch-size", "mini-batch size")
    add("--validation-fraction", "fraction of training data held out for validation, in [0, 1)")
    t.add_argument("--batchnorm", action="store_const", const=True, default=None, help="batch norm after each hidden affine layer (default: off)")
    add("--dropout", "probability of dropping a hidden unit, in [0, 1)")
    add("--dropout-mode", "inverted or textbook")
    add("--weight-decay", "the book's L2 on weights (adamw, lion, adadelta: their decoupled decay)")
    add("--sampling", "epoch (permutations) or replacement (the book's)")
    add("--seed", f"random seed, 0 to {SEED_MAX}")
    t.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="report a finished run's loss and accuracy")
    e.add_argument("run", help="run directory")
    e.add_argument("--last", action="store_true", help="the last epoch's state instead of the best-validation one")
    e.add_argument("--dataset-dir", default=None, help="directory holding the dataset's IDX files")
    e.add_argument("--json", default=None, help="also write the report to this JSON file")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict labels for inputs in a .npy or .npz (array 'x')")
    pr.add_argument("run", help="run directory")
    pr.add_argument("input", help=".npy, or .npz holding 'x'")
    pr.add_argument("--output", default=None, help=".npy file for the labels (default: print them)")
    pr.set_defaults(func=cmd_predict)

    c = sub.add_parser("compare", help="the book's optimizer comparison: same batches, same initial weights")
    c.add_argument("--dataset", type=_dataset, default="digits", help="digits, mnist, fashion-mnist or PATH.npz (default: digits)")
    c.add_argument("--dataset-dir", default=None, help="directory holding the dataset's IDX files (mnist, fashion-mnist)")
    c.add_argument("--optimizers", type=_optimizer_names, default="sgd,momentum,adagrad,adam",
                   help="comma-separated, or 'all' (default: the book's four)")
    c.add_argument("--iterations", type=_ranged(_int, 1), default=2000, help="(default: 2000, the book's)")
    c.add_argument("--batch-size", type=_ranged(_int, 1), default=128, help="(default: 128, the book's)")
    c.add_argument("--hidden", type=_hidden, default="100,100,100,100", help="(default: 100,100,100,100, the book's)")
    c.add_argument("--seed", type=TRAIN_TYPES["seed"], default=0, help=f"0 to {SEED_MAX} (default: 0)")
    c.add_argument("--quick", action="store_true", help="200 iterations")
    c.add_argument("--out", default="runs/compare", help="(default: runs/compare)")
    c.set_defaults(func=cmd_compare)
    return p


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
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
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
        return args.func(args)
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


def _terminate(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
