"""The flags of the ``jaxscratch`` command and the run configuration they make (private to ``cli``).

Contract:
  * Each flag type takes a command-line string, or a value read back from a stored
    configuration, and returns the checked value; otherwise it raises
    ``argparse.ArgumentTypeError("expected ...; got '...'")``. Ints are ASCII digits, numbers
    are finite, named choices list the valid ones. Switches are ``--flag`` / ``--no-flag``
    (``argparse.BooleanOptionalAction``; a stored configuration holds them as JSON booleans), and
    the value-taking form ``--flag true`` is refused by name.
  * :data:`TRAIN_TYPES` maps every ``jaxscratch train`` flag to its type; :func:`build_parser`
    uses it and so does :func:`stored_config`, which checks a run read back from a checkpoint.
  * :func:`train_config` merges the given flags over :data:`DEFAULTS` and checks them
    together (a flag for another optimizer or schedule is an error, never ignored).
    :func:`build_optimizer` turns a configuration into an optimizer; :func:`data_parallel`
    into a device mesh. A configuration stored before a flag existed reads as that flag's
    default (:data:`ADDED_LATER`).
  * Every error is a :class:`UsageError` that names the flag: ``cli.main`` prints it as one
    line and returns 2. Nothing here reads or writes files.
"""
from __future__ import annotations

import argparse
import inspect
import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import __version__, losses, nn, optim, schedules, train

# Flags added after runs were first stored: a stored configuration without them means these.
ADDED_LATER = {"devices": 1, "precision": "float32", "skip_nonfinite": None, "model": None, "loss": "cross_entropy"}
# Defaults of `jaxscratch train`: with nothing else, digits in seconds, >= 95% test accuracy.
DEFAULTS = {
    "dataset": "digits", "dataset_dir": None, "hidden": "100,100", "activation": "relu",
    "weight_init": "he", "optimizer": "adam", "learning_rate": None, "schedule": "constant",
    "warmup_epochs": 1, "decay_epochs": 10, "decay_factor": 0.5, "epochs": 30, "batch_size": 100,
    "validation_fraction": 0.1, "batchnorm": False, "dropout": 0.0, "dropout_mode": "inverted",
    "weight_decay": 0.0, "sampling": "epoch", "seed": 0, **ADDED_LATER,
}
# Optimizer hyperparameter flags: flag dest -> keyword of the optimizer factories.
OPT_FLAGS = ["momentum", "b1", "b2", "eps", "decay", "rho", "initial_accumulator_value", "eps_in_sqrt",
             "fold_bias_correction"]
DECOUPLED_DECAY = ("adamw", "lion", "adadelta")  # --weight-decay is the optimizer's own decay
SWITCHES = ("batchnorm", "eps_in_sqrt", "fold_bias_correction")  # --flag / --no-flag
MLP_FLAGS = ("hidden", "activation", "weight_init", "batchnorm", "dropout", "dropout_mode")  # not with --model
LOSSES = ("cross_entropy", "mse")
SCHEDULES = ("constant", "exponential", "cosine", "warmup-cosine")
SCHEDULE_FLAGS = {"warmup_epochs": "warmup-cosine", "decay_epochs": "exponential", "decay_factor": "exponential"}
DATASETS = ("digits", "mnist", "fashion-mnist")
PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16}  # --precision -> fit's compute_dtype
SEED_MAX = 2**32 - 1  # JAX keeps 32 bits of a seed while x64 is off: larger seeds would collide
STEPS_MAX = 2**31 - 1  # a run's step counter (and a schedule's step) is an int32


class UsageError(Exception):
    """A bad input from the user: printed as one line, exit status 2."""


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# ----------------------------------------------------------------- flag types
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
    if value != 0 and not _F32_TINY <= abs(value) <= _F32_MAX:  # training computes in float32
        raise _OutOfFloat32(f"expected a number that float32 holds (0, or {_F32_TINY:.4g} to {_F32_MAX:.4g} in "
                            f"size): training computes in float32, where it would become "
                            f"{'0' if abs(value) < 1 else 'inf'}; got {text!r}")
    return value


class _OutOfFloat32(argparse.ArgumentTypeError):
    """A finite number beyond float32: reported as such, whatever range the flag has."""


_F32_TINY, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def _switch(value) -> bool:
    """A switch's value in a stored configuration: ``True`` or ``False`` (on the command line a
    switch takes no value: ``--flag`` / ``--no-flag``)."""
    if isinstance(value, bool):
        return value
    raise _bad("true or false", value)


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
        except _OutOfFloat32:
            raise
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
    except _OutOfFloat32:
        raise
    except argparse.ArgumentTypeError:
        raise _bad("he, xavier, or a standard deviation > 0", text) from None


def _weight_init(text) -> str:
    """The ``--weight-init`` type: checked by :func:`_init_scale`, kept as written."""
    _init_scale(text)
    return text


def _model_spec(text) -> str:
    """``FILE.py:FUNCTION`` (the file is found and read by ``cli``)."""
    path, sep, func = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not (sep and path.endswith(".py") and func.isidentifier()):
        raise _bad("FILE.py:FUNCTION, e.g. models.py:make_model", text)
    return text


def _devices(text):
    """``all``, or how many devices split each batch: an int >= 1."""
    if text == "all":
        return text
    try:
        return _ranged(_int, 1)(text)
    except argparse.ArgumentTypeError:
        raise _bad("all or an int >= 1", text) from None


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
    "validation_fraction": _ranged(_float, 0, 1, hi_open=True), "batchnorm": _switch,
    "dropout": _ranged(_float, 0, 1, hi_open=True), "dropout_mode": _choice(*nn.DROPOUT_MODES),
    "weight_decay": _ranged(_float, 0), "sampling": _choice(*train.SAMPLINGS), "seed": _ranged(_int, 0, SEED_MAX),
    "devices": _devices, "precision": _choice(*PRECISIONS), "skip_nonfinite": _ranged(_int, 0),
    "model": _model_spec, "loss": _choice(*LOSSES),
    # The optimizer's own hyperparameters: finite numbers here; each optimizer checks its ranges.
    **{k: _float for k in OPT_FLAGS if k not in SWITCHES}, **{k: _switch for k in SWITCHES if k in OPT_FLAGS},
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
    if cfg["model"] is not None:
        for k in MLP_FLAGS:
            if k in given:
                raise UsageError(f"{_flag(k)} applies only to the built-in MLP; with --model the model file "
                                 f"defines the network")
    return cfg


def stored_config(meta: dict, path, *, resumable=False) -> dict:
    """The configuration in a run checkpoint's metadata ``meta``, checked with the flags' own
    types; a flag it predates reads as its default."""
    cfg, sizes = meta.get("config"), meta.get("sizes")
    ok = (isinstance(cfg, dict) and set(DEFAULTS) - set(ADDED_LATER) <= set(cfg) and isinstance(sizes, list)
          and len(sizes) >= 2 and all(isinstance(n, int) and n >= 1 for n in sizes)
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
    if cfg.get("model") is None and _widths(cfg["hidden"]) != tuple(sizes[1:-1]):
        raise UsageError(f"{path} holds an invalid configuration: --hidden {cfg['hidden']} but layer sizes {sizes}")
    return {**ADDED_LATER, **cfg}


def build_optimizer(cfg, steps_per_epoch: int) -> optim.Optimizer:
    """The configured optimizer and learning-rate schedule, in ``optim.apply_if_finite`` with
    ``--skip-nonfinite`` (its state then has another structure: part of the configuration)."""
    factory = optim.OPTIMIZERS[cfg["optimizer"]]
    kwargs = {k: cfg[k] for k in OPT_FLAGS if k in cfg}
    lr = cfg["learning_rate"]
    if lr is None:
        lr = inspect.signature(factory).parameters["learning_rate"].default
    total = cfg["epochs"] * steps_per_epoch
    if total > STEPS_MAX:
        raise UsageError(f"--epochs {cfg['epochs']} x {steps_per_epoch} steps per epoch is {total} steps, more than "
                         f"the {STEPS_MAX} a run can count (its step counter is a 32-bit int); pass fewer --epochs "
                         f"or a larger --batch-size")
    if cfg["schedule"] == "exponential":
        lr = schedules.exponential_decay(lr, cfg["decay_epochs"] * steps_per_epoch, cfg["decay_factor"], staircase=True)
    elif cfg["schedule"] == "cosine":
        lr = schedules.cosine_decay_schedule(lr, max(total, 1))
    elif cfg["schedule"] == "warmup-cosine":
        warm = min(cfg["warmup_epochs"] * steps_per_epoch, max(total - 1, 0))
        lr = schedules.warmup_cosine_decay_schedule(0.0, lr, warm, max(total, 1))
    if cfg["optimizer"] in DECOUPLED_DECAY:
        kwargs["weight_decay"] = cfg["weight_decay"]
        if cfg["optimizer"] != "adadelta" or cfg["weight_decay"]:
            mask = "weight_decay_mask" if cfg["optimizer"] == "adadelta" else "mask"
            kwargs[mask] = _weights  # decay weights only, never biases, gamma or beta
    try:
        optimizer = factory(learning_rate=lr, **kwargs)
    except optim.HyperparameterError as err:  # "adam: b1 must be in [0, 1); got 1.5": name the flag instead
        name = _flag(err.argument) if err.argument in kwargs else err.argument
        raise UsageError(f"{name} must be {err.expected}; got {err.found} (--optimizer {cfg['optimizer']})") from None
    if cfg.get("skip_nonfinite") is not None:
        optimizer = optim.apply_if_finite(optimizer, max_consecutive_errors=cfg["skip_nonfinite"])
    return optimizer


def _weights(params):
    """The weight-decay mask of every model: :func:`losses.is_weight` on each leaf."""
    return jax.tree.map(losses.is_weight, params)


def data_parallel(cfg) -> tuple[int, jax.sharding.Mesh | None]:
    """``(n, mesh)`` for ``--devices``: a mesh over the first ``n`` local devices (``None`` for one)."""
    available = jax.devices()
    n = len(available) if cfg["devices"] == "all" else cfg["devices"]
    if cfg["batch_size"] % n:
        raise UsageError(f"--batch-size {cfg['batch_size']} is not a multiple of --devices {n}: every device "
                         f"takes an equal share of each batch")
    if n > len(available):
        kind = available[0].platform
        raise UsageError(f"--devices {n} exceeds the {len(available)} {kind} device{'s' * (len(available) > 1)} "
                         f"available; pass --devices all or a number up to {len(available)}")
    return n, None if n == 1 else jax.sharding.Mesh(np.array(available[:n]), ("data",))


# ----------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) raised as UsageError, not an exit,
    and which refuses abbreviated flags (``--epoch`` is not ``--epochs``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self._switches = {}  # option string -> its --flag/--no-flag action

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if isinstance(action, argparse.BooleanOptionalAction):
            self._switches.update(dict.fromkeys(action.option_strings, action))
        return action

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, but the old ``--flag true`` of a switch is refused naming the flag (argparse
        would only call ``true`` an unrecognized argument)."""
        namespace, extras = super().parse_known_args(args, namespace)
        words = list(sys.argv[1:] if args is None else args)
        for flag, value in zip(words, words[1:]):
            if flag in self._switches and value in extras:
                on, off = self._switches[flag].option_strings
                raise UsageError(f"{self.prog}: error: argument {flag}: expected no value (a switch: {on} turns it "
                                 f"on, {off} off); got {value!r}")
        return namespace, extras

    def error(self, message):
        hint = "" if "expected" in message else f"; see {self.prog} --help"
        raise UsageError(f"{self.prog}: error: {message}{hint}")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxscratch`` parser; ``args.command`` names the subcommand (``cli.COMMANDS`` runs it)."""
    p = _Parser(prog="jaxscratch", description="Train and study MLPs the Deep Learning from Scratch way, in JAX.")
    p.add_argument("--version", action="version", version=f"jaxscratch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP (or your own model) and write a run directory")

    def add(flag, help_, default=None, **kwargs):
        dest = flag.lstrip("-").replace("-", "_")
        t.add_argument(flag, type=TRAIN_TYPES[dest], default=None,
                       help=f"{help_} (default: {default or DEFAULTS.get(dest)})", **kwargs)

    add("--dataset", "digits, mnist, fashion-mnist, or PATH.npz with x_train, y_train (and x_test, y_test; "
                     "without them 20%% of the rows are held out as test), or X, y / x, y / images, labels")
    add("--dataset-dir", "directory holding the dataset's IDX files (mnist, fashion-mnist)")
    add("--hidden", "hidden layer widths, comma-separated")
    add("--activation", f"one of {', '.join(sorted(nn.ACTIVATIONS))}")
    add("--weight-init", "he, xavier, or a number used as the standard deviation")
    add("--optimizer", f"one of {', '.join(sorted(optim.OPTIMIZERS))}")
    add("--learning-rate", "learning rate >= 0; default: the optimizer's own (the book's)")
    for dest in OPT_FLAGS:
        kind = {"action": argparse.BooleanOptionalAction} if dest in SWITCHES else {"type": TRAIN_TYPES[dest]}
        t.add_argument(_flag(dest), default=None, help="optimizer hyperparameter (default: the optimizer's own)", **kind)
    add("--schedule", f"learning-rate schedule: {', '.join(SCHEDULES)}")
    add("--warmup-epochs", "warm-up length for warmup-cosine")
    add("--decay-epochs", "epochs between decays for exponential")
    add("--decay-factor", "factor per decay for exponential, in (0, 1]")
    add("--epochs", "total number of epochs (with --resume: continue up to this)")
    add("--batch-size", "mini-batch size")
    add("--validation-fraction", "fraction of training data held out for validation, in [0, 1)")
    t.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="batch norm after each hidden affine layer (default: off)")
    add("--dropout", "probability of dropping a hidden unit, in [0, 1)")
    add("--dropout-mode", "inverted or textbook")
    add("--weight-decay", "the book's L2 on weights (adamw, lion, adadelta: their decoupled decay)")
    add("--sampling", "epoch (permutations) or replacement (the book's)")
    add("--seed", f"random seed, 0 to {SEED_MAX}")
    add("--devices", "data parallelism: split each batch over the first N local devices, or all "
        "(may change on --resume)", metavar="N")
    add("--precision", "float32, or bfloat16 for the forward and backward passes (weights and checkpoints "
        "stay float32)", metavar="DTYPE")
    add("--skip-nonfinite", "skip updates whose gradients hold NaN or Inf; stop after more than N in a row",
        "off", metavar="N")
    add("--model", "FILE.py:FUNCTION: train the nn.Model that FUNCTION(input_shape, outputs) returns instead of "
        "the MLP", "the MLP", metavar="FILE.py:FUNCTION")
    add("--loss", "cross_entropy (labels) or mse (regression: an .npz with numeric targets)")
    t.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    t.add_argument("--debug", action="store_true", help="show the traceback of an error in a --model file")
    t.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files into --out, "
                   "one event per epoch (viewing them needs TensorBoard; writing them needs nothing)")
    _display_flags(t)

    e = sub.add_parser("evaluate", help="report a finished run's loss and accuracy")
    e.add_argument("run", help="run directory")
    e.add_argument("--last", action="store_true", help="the last epoch's state instead of the best-validation one")
    e.add_argument("--dataset-dir", default=None, help="directory holding the dataset's IDX files")
    e.add_argument("--json", default=None, help="also write the report to this JSON file")
    e.add_argument("--force", action="store_true", help="replace the --json file if it exists")
    e.add_argument("--debug", action="store_true", help="show the traceback of an error in the run's model file")

    pr = sub.add_parser("predict", help="predict labels for inputs in a .npy or .npz (array 'x')")
    pr.add_argument("run", help="run directory")
    pr.add_argument("input", help=".npy, or .npz holding 'x'")
    pr.add_argument("--output", default=None, help=".npy file for the labels (default: print them)")
    pr.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    pr.add_argument("--debug", action="store_true", help="show the traceback of an error in the run's model file")

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
    _display_flags(c)
    return p


def _display_flags(p) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the final result")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the loss and accuracy curves in the terminal at the end (default: when stdout is a terminal)")
