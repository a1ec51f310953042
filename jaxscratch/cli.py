"""The ``jaxscratch`` command: ``train``, ``evaluate``, ``predict``, ``compare``.

This module holds each command's flow; its private helpers hold the rest: ``_flags`` (the flags,
their types and the run configuration they make), ``_rundir`` (the run folder, its lock, checked
outputs), ``_usermodel`` (a ``--model`` file), ``_inputs`` (data provenance, ``predict``'s
inputs), ``_progress`` (the display). Every file is written by ``_files``. A run directory holds
``checkpoint.npz`` (the last epoch's whole state, the configuration and history), ``best.npz``
(the best-validation state), ``metrics.jsonl`` (one line per finished epoch, appended and fsynced
as it ends: :mod:`jaxscratch.runlog`), ``metrics.json`` and ``training.png`` (at the end), and
TensorBoard event files with ``--tensorboard``.

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
  * ``train`` says what it does as it does it: loading (which files, from where), compiling
    (which program), then each epoch. On a terminal a status line (epoch, bar, steps/s, the
    latest loss, ETA) is redrawn in place at least once a second: epochs run in compiled chunks
    of :data:`CHUNK_STEPS` steps (``train.fit``'s ``chunk_steps``; bit-identical results) and a
    timer redraws the clock. Not on a terminal: plain lines. ``--quiet``: only errors and the
    final result. At the end ``train`` and ``compare`` draw their curves in the terminal
    (``plot.text_plot``; ``--plot`` / ``--no-plot``, by default only on a terminal).
  * A diverging run exits 1. Ctrl-C or SIGTERM exits 130 with the last finished epoch saved. After
    any of the three, once an epoch was saved, the folder also holds ``best.npz`` and a
    ``metrics.json`` marked ``"interrupted": true`` with ``"epochs_done"`` and ``"stopped_by"``
    (``interrupted`` or ``diverged``), so ``evaluate`` and ``predict`` work on it; ``--resume``
    then finishes the run bit-identically to an uninterrupted one (``metrics.jsonl`` cut back to
    the checkpoint's epoch). A SIGKILL loses at most the epoch in flight.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import (__version__, _idx, _inputs, _progress, _rundir as rundir, _usermodel, checkpoint,
                        compile_cache, data, devices, nn, optim, plot, runlog, sweep, train)
from jaxscratch._flags import (DECOUPLED_DECAY, DEFAULTS, OPT_FLAGS, PRECISIONS, UsageError, _flag, _init_scale,
                               _widths, build_optimizer, build_parser, data_parallel, stored_config, train_config)
from jaxscratch._rundir import BEST, CHECKPOINT, FIGURE, JSONL, METRICS


# ----------------------------------------------------------------- configuration
def _run_meta(path, *, resumable=False) -> dict:
    """A run checkpoint's metadata, its configuration checked (``_flags.stored_config``)."""
    meta = rundir.read_meta(path)
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
    return _usermodel.user_model(cfg["model"], tuple(input_shape), sizes[-1], sha256=sha256, debug=debug)


def _template(cfg, model, optimizer):
    key = jax.random.key(cfg["seed"])
    params, model_state = model.init(key)
    return train.init_state(key, params, optimizer, model_state)


# ----------------------------------------------------------------- commands
def cmd_train(args) -> int:
    out = args.out
    ckpt = os.path.join(out, CHECKPOINT)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: expected a folder; found a file")
    if args.model is not None:
        args.model = _usermodel.absolute_model(args.model)  # stored, and compared on --resume, as an absolute path
    if args.dataset is not None and args.dataset.endswith(".npz"):
        args.dataset = os.path.abspath(args.dataset)  # likewise: evaluate from another folder reads this file
    if args.resume:
        saved = rundir.signature(ckpt)  # the checkpoint read here; another train may replace it before the lock
        cfg, meta = _resume_config(args, ckpt)
    else:
        if os.path.exists(ckpt) or os.path.exists(os.path.join(out, METRICS)):
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        cfg = train_config(args)
    cfg["devices"], mesh = data_parallel(cfg)  # "all" is stored as the number it meant
    display = _progress.Display(sys.stdout, quiet=args.quiet, epochs=cfg["epochs"])
    with display:  # closed again by _train; here it shows the loading
        display.phase(_loading_text(cfg))
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
        _inputs.check_same_data(meta, cfg, ds, "--resume: ")
    model, sha = _model(cfg, sizes, ds.x_train.shape[1:], sha256=meta.get("model_sha256") if args.resume else None,
                        debug=args.debug)
    _check_memory(model, optimizer, cfg)
    state = best = history = None
    if args.resume:
        (state, best), history = _restore(ckpt, cfg, model, optimizer), meta["history"]
    with rundir.claimed(out, CHECKPOINT, logged=lambda name: name == JSONL or name.startswith(runlog.EVENTS)):
        if args.resume and rundir.signature(ckpt) != saved:
            raise UsageError(f"--resume: {ckpt} changed while this command started (another jaxscratch train "
                             f"saved it); run the command again")
        if not args.resume and (os.path.exists(ckpt) or os.path.exists(os.path.join(out, METRICS))):
            raise UsageError(f"{out} already holds a run (another jaxscratch train saved it while this command "
                             f"started); pass --resume to continue it or choose another --out")
        run = {"config": cfg, "sizes": sizes, "input_shape": list(ds.x_train.shape[1:]), "model_sha256": sha,
               **_inputs.provenance(cfg, ds)}
        return _train(args, run, ds, model, optimizer, (xt, yt), (xv, yv), state, best, history, mesh, display)


def _restore(ckpt, cfg, model, optimizer) -> tuple:
    """``(state, best)`` of the checkpoint to resume."""
    template = _template(cfg, model, optimizer)
    try:
        restored = checkpoint.restore(ckpt, like={"state": template, "best": template})
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(f"--resume: {_first_problem(str(err))}") from None
    return restored["state"], restored["best"]


def _resume_config(args, ckpt) -> tuple[dict, dict]:
    """``(configuration, metadata)`` of the run to resume: its stored configuration with the new
    ``--epochs`` and ``--devices``; any other flag that differs from it is refused."""
    if not os.path.exists(ckpt):
        raise UsageError(f"--resume: no checkpoint at {ckpt}; start a new run without --resume")
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
    if cfg["epochs"] <= done:  # nothing to train: refused before anything is touched
        raise UsageError(f"--resume: the run in {args.out} has {done} epochs already and --epochs {cfg['epochs']} "
                         f"asks for no more; pass --epochs greater than {done} to train it further")
    return cfg, meta


def _loading_text(cfg) -> str:
    """What loading the data does: which files, from where (the first folder holding them, in the
    order ``data`` searches), or a download."""
    name, files = cfg["dataset"], ", ".join(data.IDX_FILES.values())
    if name not in ("mnist", "fashion-mnist"):
        return f"loading {name}" + (" (shipped with the package)" if name == "digits" else "")
    if cfg.get("dataset_dir"):
        return f"loading {name} from {cfg['dataset_dir']} ({files})"
    system = data.MNIST_SYSTEM_DIRS if name == "mnist" else data.FASHION_MNIST_SYSTEM_DIRS
    folders = [_idx._cache_dir(name, None), *system]
    for folder in folders:
        if all(_idx._find_local(Path(folder), f) for f in data.IDX_FILES.values()):
            return f"loading {name} from {folder} ({files})"
    return f"loading {name}: {files}, downloading what is missing into {folders[0]}"


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


CHUNK_STEPS = 50  # steps per compiled chunk when progress is drawn in place: one read of the losses per chunk


def _train(args, run, ds, model, optimizer, train_set, val_set, state, best, history, mesh, display) -> int:
    """Train with the progress display, ``metrics.jsonl`` and a checkpoint after every epoch; then
    (or after Ctrl-C, SIGTERM or a divergence, from the last checkpoint) ``best.npz`` and
    ``metrics.json``, the result line and the curves."""
    out, cfg = args.out, run["config"]
    log = runlog.metrics_logger(out, tensorboard=args.tensorboard, epochs_done=len(history["epoch"]) if history else None)
    start, saved = time.perf_counter(), []

    def on_epoch(epoch, result):
        try:
            log(epoch, result)
        except OSError as err:
            raise UsageError(f"cannot write epoch {epoch}'s metrics into {out}: {err.strerror or err}") from None
        _save(out, CHECKPOINT, run, result.state, result.best, result.history)
        saved.append(epoch)
        display.epoch(train._fmt({k: v[-1] for k, v in result.history.items()}, epoch, cfg["epochs"]))
        _stop_point()  # a stop request whose exception a callback swallowed: stop here, this epoch saved

    def on_steps(*progress):
        display.steps(*progress)
        _stop_point()

    what = f"model {cfg['model']}" if cfg.get("model") else f"MLP {'-'.join(map(str, run['sizes']))}"
    display.phase(f"compiling the training program ({what}, {cfg['optimizer']}, batch {cfg['batch_size']})")
    try:
        with display:
            result = train.fit(
                jax.random.key(cfg["seed"]), model, optimizer, train_set, epochs=cfg["epochs"],
                batch_size=cfg["batch_size"], loss=cfg["loss"], validation=val_set,
                test=(ds.x_test, ds.y_test) if len(ds.x_test) else None, sampling=cfg["sampling"],
                weight_decay=0.0 if cfg["optimizer"] in DECOUPLED_DECAY else cfg["weight_decay"], state=state,
                best=best, history=history, verbose=False, on_epoch=on_epoch, mesh=mesh,
                compute_dtype=PRECISIONS[cfg["precision"]], chunk_steps=CHUNK_STEPS if display.tty else None,
                on_steps=on_steps)
    except (ValueError, TypeError) as err:
        if cfg.get("model") is None or isinstance(err, checkpoint.CheckpointError):
            raise
        raise UsageError(f"the model from {cfg['model']} cannot train on {ds.name}: {_one_line(str(err))}") from err
    except (KeyboardInterrupt, FloatingPointError) as err:
        if saved:  # best.npz and metrics.json from the last checkpoint: evaluate and predict work on it
            template = _template(cfg, model, optimizer)
            last = checkpoint.restore(os.path.join(out, CHECKPOINT), like={"state": template, "best": template})
            meta = checkpoint.load_metadata(os.path.join(out, CHECKPOINT))
            _finish(args, run, ds, last["state"], last["best"], meta["history"], time.perf_counter() - start,
                    history, stopped="diverged" if isinstance(err, FloatingPointError) else "interrupted")
        raise
    _save(out, CHECKPOINT, run, result.state, result.best, result.history)
    metrics = _finish(args, run, ds, result.state, result.best, result.history, time.perf_counter() - start, history)
    network = f"model {os.path.basename(cfg['model'])}" if cfg.get("model") else f"hidden {cfg['hidden']}"
    figure = _maybe_figure(plot.training_figure, result.history, os.path.join(out, FIGURE),
                           title=f"{ds.name}: {cfg['optimizer']}, {network}")
    print(f"{_result_text(metrics)}  ({metrics['steps']} steps, {metrics['wall_time_s']:.1f}s, "
          f"{metrics['steps_per_second']:.0f} steps/s{_skipped(metrics)})  -> {out}" + (f", {FIGURE}" if figure else ""))
    if _plotting(args):
        _show_curves(result.history)
    return 0


def _save(out, name, run, state, best, history=None) -> None:
    """``checkpoint.npz`` (the state, the best one, the history) or ``best.npz`` (the best state)."""
    path = os.path.join(out, name)
    meta = run if history is None else {**run, "history": rundir.history_json(history), "version": __version__}
    try:
        checkpoint.save(path, {"state": state, "best": best}, metadata=meta)
    except OSError as err:
        raise UsageError(f"cannot write {'the checkpoint ' if history is not None else ''}{path}: "
                         f"{err.strerror or err}") from None


def _finish(args, run, ds, state, best, h, wall, before, stopped=None) -> dict:
    """Write ``best.npz`` and ``metrics.json`` (``"interrupted"`` and ``"epochs_done"`` when
    ``stopped``: "interrupted" or "diverged"); return the metrics."""
    _save(args.out, BEST, run, best, best)
    h = {k: np.asarray(v) for k, v in h.items()}
    last = lambda k: float(h[k][-1]) if k in h else None
    metrics = {
        "test_accuracy": last("test_acc"), "val_accuracy": last("val_acc"), "train_accuracy": last("train_acc"),
        "best_val_accuracy": float(np.max(h["val_acc"])) if "val_acc" in h else None,
        "test_loss": last("test_eval_loss"), "val_loss": last("val_eval_loss"), "train_loss": last("train_eval_loss"),
        **({"test_rmse": last("test_rmse"), "val_rmse": last("val_rmse"), "train_rmse": last("train_rmse")}
           if "train_rmse" in h else {}),
        "epochs_run": len(h["epoch"]), "steps": int(state.step), "wall_time_s": wall,
        "steps_per_second": (len(h["step_loss"]) - (len(before["step_loss"]) if before else 0)) / max(wall, 1e-9),
        "dataset": ds.name, "config": run["config"], "history": rundir.history_json(h), "jax_version": jax.__version__,
        "device": str(jax.devices()[0]), "version": __version__,
        **({"interrupted": True, "stopped_by": stopped, "epochs_done": len(h["epoch"])} if stopped else {}),
    }
    if "skipped_steps" in h:  # --skip-nonfinite: per epoch in the history, the run's total here
        metrics["skipped_steps"] = int(np.sum(h["skipped_steps"]))
    rundir.write_json(os.path.join(args.out, METRICS), metrics)
    return metrics


def _plotting(args) -> bool:
    """``--plot`` / ``--no-plot``; by default curves are drawn only on a terminal, and not with ``--quiet``."""
    return args.plot if args.plot is not None else not args.quiet and _progress.Display(sys.stdout).tty


def _show_curves(history) -> None:
    """The loss curve (per step) and the accuracy curves (per epoch) in the terminal."""
    lines = plot.text_plot({"training loss per step": history["step_loss"]}, title="loss")
    accuracy = {f"{name} accuracy (%)": 100 * np.asarray(history[f"{name}_acc"]) for name in ("train", "val", "test")
                if f"{name}_acc" in history}
    if accuracy and len(history["epoch"]) > 1:
        lines += [""] + plot.text_plot(accuracy, height=8, title="accuracy per epoch")
    print("\n".join(lines))


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


def _maybe_figure(draw, *args, **kwargs):
    """``draw(*args)``'s PNG path, or None without matplotlib (an optional extra)."""
    path = args[-1]
    try:
        return draw(*args, **kwargs)
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
        if which == BEST and os.path.isfile(os.path.join(run_dir, CHECKPOINT)):  # a train killed (SIGKILL) mid-run
            raise UsageError(f"{run_dir} holds an unfinished run ({BEST} missing: it was stopped before it could "
                             f"write it); finish it with: jaxscratch train --out {run_dir} --resume (or evaluate "
                             f"its last epoch: jaxscratch evaluate {run_dir} --last)")
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
        rundir.check_target(args.json, "--json", run_dir=args.run, force=args.force)
    run = _load_run(args.run, CHECKPOINT if args.last else BEST, debug=args.debug)
    cfg, sizes, state = run.cfg, run.sizes, run.state
    ds, (xt, yt), (xv, yv) = load_data(dict(cfg, dataset_dir=args.dataset_dir or cfg.get("dataset_dir")),
                                       run.meta.get("data_source"))
    what = "target columns" if cfg["loss"] == "mse" else "classes"
    if _sizes(cfg, ds)[0] != sizes[0] or ds.num_classes > sizes[-1]:
        raise UsageError(f"{cfg['dataset']} now gives {_sizes(cfg, ds)[0]} features and {ds.num_classes} {what}; the "
                         f"run's model takes {sizes[0]} features and {sizes[-1]} {what} (the dataset changed since training)")
    _inputs.check_same_data(run.meta, cfg, ds, "")
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
        rundir.write_json(args.json, report, "--json")
    return 0


def cmd_predict(args) -> int:
    if args.output:
        rundir.check_target(args.output, "--output", run_dir=args.run, inputs=(args.input,), force=args.force)
    run = _load_run(args.run, debug=args.debug)
    x = _inputs.read_inputs(args.input, run.sizes[0])
    x = _inputs.preprocess(x, run, args.input).reshape((len(x), *run.input_shape))
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
        rundir.write_file(args.output, lambda f: np.save(f, values), "--output")
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
    with _progress.Display(sys.stdout, quiet=args.quiet) as display:
        # One program for all (side by side on the devices); the same key: the very same batches.
        display.phase(f"training {len(names)} optimizer{'s' * (len(names) > 1)} ({', '.join(names)}) side by side: "
                      f"compiling, then {iterations} steps")
        start = time.perf_counter()
        runs = sweep.compare_optimizers(
            jax.random.fold_in(key, 1), {name: optim.OPTIMIZERS[name]() for name in names}, params, xt, yt,
            iterations=iterations, batch_size=args.batch_size, model=model, model_state=model_state)  # book defaults
        seconds = time.perf_counter() - start
        for name, (state, step_losses) in runs.items():
            acc = float(train.evaluate(model, state.params, state.model_state, xe, ye)["acc"]) if len(xe) else None
            curves[name] = np.asarray(step_losses)
            rows.append((name, float(np.mean(step_losses[-100:])), acc))
    print(f"{'optimizer':10s} {'final loss':>10s} {'test acc':>9s}   ({iterations} iterations, batch {args.batch_size})"
          + ("" if len(xe) else "  (no test rows: no test accuracy)"))
    for name, loss, acc in rows:
        print(f"{name:10s} {loss:10.4f} {'-' if acc is None else f'{100 * acc:.2f}%':>9s}")
    print(f"trained in {seconds:.1f}s (one program, compiling included)")
    rundir.make_dirs(args.out)
    rundir.write_json(os.path.join(args.out, "compare.json"), {"iterations": iterations, "time_s": seconds, "results": [
        {"optimizer": n, "final_loss": l, "test_accuracy": a} for n, l, a in rows]})
    fig = _maybe_figure(plot.comparison_figure, curves, os.path.join(args.out, "compare.png"),
                        title=f"{ds.name}: optimizer comparison")
    print(f"saved {os.path.join(args.out, 'compare.json')}" + (f" and {fig}" if fig else ""))
    if _plotting(args):  # the smoothed loss per step, one curve per optimizer
        print("\n".join(plot.text_plot({n: plot.smooth_curve(c) for n, c in curves.items()}, height=16, title=f"training loss per step (smoothed), {iterations} steps")))
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
        return (f"; the last finished epoch is saved (jaxscratch evaluate {args.out} works on it): continue with "
                f"jaxscratch train --out {args.out} --resume")
    return "; no epoch had finished, so nothing was saved"


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status. Its
    output may go away (``| head``, a full disk): the command goes on without it."""
    with rundir.tolerant_output():
        return _main(argv)


def _main(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(_one_line(str(err)), file=sys.stderr)
        return 2
    _STOP.clear()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM ends a run like Ctrl-C: checkpoints stay whole
        if sig == signal.SIGTERM or signal.getsignal(sig) is signal.default_int_handler:  # not one ignored
            try:
                previous[sig] = signal.signal(sig, _interrupt)
            except ValueError:  # not the main thread: Python's own handling
                pass
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run() -> int:
    """The ``jaxscratch`` command itself: :func:`main` with one JAX device per CPU core (for
    ``compare``, whose optimizers run side by side; ``devices.use_cpu_cores``, unless
    ``JAX_NUM_CPU_DEVICES`` says otherwise) and compiled programs kept on disk between runs
    (``compile_cache.enable``; ``JAXSCRATCH_COMPILE_CACHE=off`` disables it). ``main`` alone
    leaves JAX's settings as they are, for callers in a process of their own."""
    devices.use_cpu_cores()
    compile_cache.enable()
    code = main()
    if code == 130:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End an interrupted command's process now: its files are written and its output flushed,
    but XLA may still be compiling or running the program it stopped, and the interpreter's
    teardown beside those threads crashed (SIGSEGV after the "interrupted" line, in about 1 of 10
    to 16 stops timed at random). The exit functions (the compile cache's) run first."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


_STOP = threading.Event()  # set by Ctrl-C / SIGTERM during a command; see _interrupt


def _interrupt(signum, frame):
    """Ctrl-C and SIGTERM: raise ``KeyboardInterrupt`` now, and remember the request. Python
    drops an exception raised while it runs a callback (JAX runs one at every garbage
    collection), so ``_train`` raises it again at the next chunk or epoch (``_stop_point``)."""
    _STOP.set()
    raise KeyboardInterrupt


def _stop_point() -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
