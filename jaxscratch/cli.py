"""The ``jaxscratch`` command: ``train``, ``evaluate``, ``predict``, ``compare``.

This is the one module that knows about files, flags and printing. A run directory holds
``checkpoint.npz`` (the last epoch's whole state, the configuration and history),
``best.npz`` (the best-validation state), ``metrics.json`` and ``training.png``.
Every error a user can cause ends in one line on stderr and exit status 2, no traceback.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import tempfile
import time

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


class UsageError(Exception):
    """A bad input from the user: printed as one line, exit status 2."""


def _choices(name, value, valid):
    if value not in valid:
        raise UsageError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")
    return value


def _hidden(text) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated positive ints such as 100,100; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--hidden must be comma-separated positive ints such as 100,100; got {text!r}")
    return sizes


def _weight_init(text):
    try:
        return float(text)
    except ValueError:
        return _choices("--weight-init", text, ["he", "xavier"])


# ----------------------------------------------------------------- configuration
def train_config(args) -> dict:
    """The full run configuration: the flags given, then DEFAULTS; validated."""
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DEFAULTS.items()}
    cfg.update({k: getattr(args, k) for k in OPT_FLAGS if getattr(args, k) is not None})
    _choices("--optimizer", cfg["optimizer"], sorted(optim.OPTIMIZERS))
    _choices("--activation", cfg["activation"], sorted(nn.ACTIVATIONS))
    _choices("--schedule", cfg["schedule"], SCHEDULES)
    _choices("--dropout-mode", cfg["dropout_mode"], nn.DROPOUT_MODES)
    _choices("--sampling", cfg["sampling"], train.SAMPLINGS)
    _hidden(cfg["hidden"]), _weight_init(cfg["weight_init"])
    for name, lo, hi in (("epochs", 1, None), ("batch_size", 1, None), ("warmup_epochs", 0, None), ("decay_epochs", 1, None)):
        if cfg[name] < lo or (hi is not None and cfg[name] > hi):
            raise UsageError(f"--{name.replace('_', '-')} must be an int >= {lo}; got {cfg[name]}")
    for name, lo, hi in (("validation_fraction", 0, 1), ("dropout", 0, 1)):
        if not lo <= cfg[name] < hi:
            raise UsageError(f"--{name.replace('_', '-')} must be in [{lo}, {hi}); got {cfg[name]}")
    if cfg["weight_decay"] < 0:
        raise UsageError(f"--weight-decay must be >= 0; got {cfg['weight_decay']}")
    accepted = inspect.signature(optim.OPTIMIZERS[cfg["optimizer"]]).parameters
    for k in OPT_FLAGS:
        if k in cfg and k not in accepted:
            users = [n for n, f in optim.OPTIMIZERS.items() if k in inspect.signature(f).parameters]
            raise UsageError(f"--{k.replace('_', '-')} does not apply to {cfg['optimizer']}; it applies to {', '.join(users)}")
    return cfg


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
    except (TypeError, ValueError) as err:
        raise UsageError(f"--{cfg['optimizer']}: {err}") from None


def load_data(cfg):
    """``(Dataset, (x_train, y_train), (x_val, y_val))`` with the configured validation split."""
    name = cfg["dataset"]
    try:
        if name.endswith(".npz"):
            ds = data.load_npz(name)
        else:
            _choices("--dataset", name, ["digits", "mnist", "fashion-mnist"])
            kwargs = {"path": cfg["dataset_dir"]} if cfg["dataset_dir"] and name != "digits" else {}
            ds = data.load_dataset(name, **kwargs)
    except (data.DataError, FileNotFoundError, OSError) as err:
        raise UsageError(str(err)) from None
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, cfg["validation_fraction"], seed=cfg["seed"])
    return ds, (xt, yt), (xv, yv)


def _sizes(cfg, ds) -> list[int]:
    return [int(np.prod(ds.x_train.shape[1:])), *_hidden(cfg["hidden"]), int(ds.num_classes)]


def _template(cfg, sizes, optimizer):
    params = nn.init_mlp(jax.random.key(cfg["seed"]), sizes, weight_init=_weight_init(cfg["weight_init"]),
                         batchnorm=cfg["batchnorm"])
    return params, train.init_state(jax.random.key(cfg["seed"]), params, optimizer)


def _write_json(path, obj):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _history_json(history) -> dict:
    return {k: np.asarray(v).tolist() for k, v in history.items()}


# ----------------------------------------------------------------- commands
def cmd_train(args) -> int:
    out = args.out
    ckpt = os.path.join(out, CHECKPOINT)
    if args.resume:
        if not os.path.exists(ckpt):
            raise UsageError(f"--resume: no checkpoint at {ckpt}; start a new run without --resume")
        meta = _read_meta(ckpt)  # read once: the configuration now, the history after restoring
        stored = meta["config"]
        for k in list(DEFAULTS) + OPT_FLAGS:
            given = getattr(args, k)
            if k != "epochs" and given is not None and given != stored.get(k, DEFAULTS.get(k)):
                raise UsageError(f"--resume: --{k.replace('_', '-')} {given!r} conflicts with the run's {stored.get(k)!r}; "
                                 f"a resumed run keeps its configuration (only --epochs may change)")
        cfg = dict(stored, epochs=args.epochs if args.epochs is not None else stored["epochs"])
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
        try:
            restored = checkpoint.restore(ckpt, like={"state": template, "best": template})
        except checkpoint.CheckpointError as err:
            raise UsageError(f"--resume: {err}") from None
        state, best = restored["state"], restored["best"]
        history = meta["history"]
    os.makedirs(out, exist_ok=True)
    decoupled = cfg["optimizer"] in DECOUPLED_DECAY
    start = time.perf_counter()

    def save(epoch, result):
        meta = {"config": cfg, "sizes": sizes, "history": _history_json(result.history), "version": __version__}
        checkpoint.save(ckpt, {"state": result.state, "best": result.best}, metadata=meta)

    result = train.fit(
        jax.random.key(cfg["seed"]), params, optimizer, (xt, yt), epochs=cfg["epochs"], batch_size=cfg["batch_size"],
        validation=(xv, yv), test=(ds.x_test, ds.y_test), activation=cfg["activation"],
        weight_decay=0.0 if decoupled else cfg["weight_decay"], drop_rate=cfg["dropout"],
        dropout_mode=cfg["dropout_mode"], sampling=cfg["sampling"], state=state, best=best, history=history,
        verbose=not args.quiet, on_epoch=save)
    wall = time.perf_counter() - start
    save(None, result)
    checkpoint.save(os.path.join(out, BEST), {"state": result.best, "best": result.best},
                    metadata={"config": cfg, "sizes": sizes})
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


def _read_meta(path):
    try:
        return checkpoint.load_metadata(path)
    except checkpoint.CheckpointError as err:
        raise UsageError(str(err)) from None


def _load_run(run_dir, which=BEST):
    """``(config, sizes, TrainState)`` of a finished run's best (or last) checkpoint."""
    path = os.path.join(run_dir, which)
    if not os.path.exists(path):
        raise UsageError(f"{run_dir} holds no finished run ({which} missing); train one with: jaxscratch train --out {run_dir}")
    meta = _read_meta(path)
    cfg, sizes = meta["config"], meta["sizes"]
    _, template = _template(cfg, sizes, build_optimizer(cfg, 1))
    try:
        state = checkpoint.restore(path, like={"state": template, "best": template})["state"]
    except checkpoint.CheckpointError as err:
        raise UsageError(str(err)) from None
    return cfg, sizes, state


def cmd_evaluate(args) -> int:
    cfg, _, state = _load_run(args.run, CHECKPOINT if args.last else BEST)
    ds, (xt, yt), (xv, yv) = load_data(dict(cfg, dataset_dir=args.dataset_dir or cfg.get("dataset_dir")))
    report = {}
    for name, (x, y) in (("train", (xt, yt)), ("val", (xv, yv)), ("test", (ds.x_test, ds.y_test))):
        if len(x):
            loss, acc = train.evaluate(state.params, state.bn_state, jnp.asarray(x), jnp.asarray(y),
                                       activation=cfg["activation"], drop_rate=cfg["dropout"], dropout_mode=cfg["dropout_mode"])
            report[name] = {"loss": float(loss), "accuracy": float(acc), "examples": len(x)}
            print(f"{name:5s}  loss {float(loss):.4f}  accuracy {100 * float(acc):.2f}%  ({len(x)} examples)")
    if args.json:
        _write_json(args.json, report)
    return 0


def _read_inputs(path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read inputs from {path} (expected .npy, or .npz with an array 'x'): {err}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        if "x" not in loaded.files:
            raise UsageError(f"{path} holds {loaded.files}; expected an array named 'x'")
        return loaded["x"]


def cmd_predict(args) -> int:
    cfg, sizes, state = _load_run(args.run)
    x = _read_inputs(args.input)
    if x.ndim < 1 or int(np.prod(x.shape[1:])) != sizes[0] or x.ndim == 1:
        raise UsageError(f"inputs must have shape (n, {sizes[0]}) or (n, ...) with {sizes[0]} features; got {x.shape}")
    if not (np.issubdtype(x.dtype, np.number)):
        raise UsageError(f"inputs must be numeric; got dtype {x.dtype}")
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    logits, _ = nn.apply(state.params, jnp.asarray(x), state=state.bn_state, activation=cfg["activation"],
                         drop_rate=cfg["dropout"], dropout_mode=cfg["dropout_mode"])
    labels = np.asarray(jnp.argmax(logits, axis=-1))
    if args.output:
        np.save(args.output, labels)
        print(f"saved {len(labels)} predicted labels to {args.output}")
    else:
        print(" ".join(map(str, labels.tolist())))
    return 0


def cmd_compare(args) -> int:
    names = sorted(optim.OPTIMIZERS) if args.optimizers == "all" else args.optimizers.split(",")
    for n in names:
        _choices("optimizer", n, sorted(optim.OPTIMIZERS))
    cfg = dict(DEFAULTS, dataset=args.dataset, dataset_dir=args.dataset_dir, validation_fraction=0.0, seed=args.seed)
    ds, (xt, yt), _ = load_data(cfg)
    iterations = 200 if args.quick else args.iterations
    if args.batch_size > len(xt):
        raise UsageError(f"--batch-size {args.batch_size} exceeds the {len(xt)} training examples")
    key = jax.random.key(args.seed)
    sizes = (xt.shape[1], *_hidden(args.hidden), ds.num_classes)
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
    os.makedirs(args.out, exist_ok=True)
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
def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int; got {text!r}") from None


def _float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return v


def _bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxscratch", description="Train and study MLPs the Deep Learning from Scratch way, in JAX.")
    p.add_argument("--version", action="version", version=f"jaxscratch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP and write a run directory")
    d = DEFAULTS

    def add(flag, type_, help_, **kw):
        dest = flag.lstrip("-").replace("-", "_")
        default = d.get(dest)
        t.add_argument(flag, type=type_, default=None, help=f"{help_} (default: {default})", **kw)

    add("--dataset", str, "digits, mnist, fashion-mnist, or PATH.npz with x_train, y_train, x_test, y_test")
    add("--dataset-dir", str, "directory holding the dataset's IDX files")
    add("--hidden", str, "hidden layer widths, comma-separated")
    add("--activation", str, f"one of {', '.join(sorted(nn.ACTIVATIONS))}")
    add("--weight-init", str, "he, xavier, or a number used as the standard deviation")
    add("--optimizer", str, f"one of {', '.join(sorted(optim.OPTIMIZERS))}")
    add("--learning-rate", _float, "learning rate; default: the optimizer's own (the book's)")
    for flag, typ in (("--momentum", _float), ("--b1", _float), ("--b2", _float), ("--eps", _float), ("--decay", _float),
                      ("--rho", _float), ("--initial-accumulator-value", _float), ("--eps-in-sqrt", _bool),
                      ("--fold-bias-correction", _bool)):
        t.add_argument(flag, type=typ, default=None, help="optimizer hyperparameter (default: the optimizer's own)")
    add("--schedule", str, f"learning-rate schedule: {', '.join(SCHEDULES)}")
    add("--warmup-epochs", _int, "warm-up length for warmup-cosine")
    add("--decay-epochs", _int, "epochs between decays for exponential")
    add("--decay-factor", _float, "factor per decay for exponential")
    add("--epochs", _int, "total number of epochs (with --resume: continue up to this)")
    add("--batch-size", _int, "mini-batch size")
    add("--validation-fraction", _float, "fraction of training data held out for validation")
    t.add_argument("--batchnorm", action="store_const", const=True, default=None, help="batch norm after each hidden affine layer (default: off)")
    add("--dropout", _float, "probability of dropping a hidden unit")
    add("--dropout-mode", str, "inverted or textbook")
    add("--weight-decay", _float, "the book's L2 on weights (adamw, lion, adadelta: their decoupled decay)")
    add("--sampling", str, "epoch (permutations) or replacement (the book's)")
    add("--seed", _int, "random seed")
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
    c.add_argument("--dataset", default="digits", help="digits, mnist, fashion-mnist or PATH.npz (default: digits)")
    c.add_argument("--dataset-dir", default=None)
    c.add_argument("--optimizers", default="sgd,momentum,adagrad,adam", help="comma-separated, or 'all' (default: the book's four)")
    c.add_argument("--iterations", type=_int, default=2000, help="(default: 2000, the book's)")
    c.add_argument("--batch-size", type=_int, default=128, help="(default: 128, the book's)")
    c.add_argument("--hidden", default="100,100,100,100", help="(default: 100,100,100,100, the book's)")
    c.add_argument("--seed", type=_int, default=0)
    c.add_argument("--quick", action="store_true", help="200 iterations")
    c.add_argument("--out", default="runs/compare", help="(default: runs/compare)")
    c.set_defaults(func=cmd_compare)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # SIGTERM ends a run like Ctrl-C: checkpoints stay whole (main thread only)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        previous = None
    try:
        return args.func(args)
    except UsageError as err:
        print(f"jaxscratch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        hint = f"; lower --learning-rate, then jaxscratch train --out {args.out} --resume" if args.command == "train" else ""
        print(f"jaxscratch {args.command}: error: {err}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = f"; the last finished epoch is saved: continue with --out {args.out} --resume" if args.command == "train" else ""
        print(f"jaxscratch {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
