"""A user's model file (``--model FILE.py:FUNCTION``): imported by path, checked by SHA-256.

Contract: :func:`user_model` imports ``FILE.py`` under a name made of its path and content (so
a changed file is a new module), calls ``FUNCTION(input_shape, outputs)`` and returns the
``nn.Model`` with the file's SHA-256, refusing a file whose content differs from ``sha256``.
Anything the file raises is one ``UsageError`` line naming the file and the line (its own
traceback on stderr with ``debug``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback

from jaxscratch import nn
from jaxscratch._flags import UsageError


def absolute_model(spec: str) -> str:
    """``FILE.py:FUNCTION`` with the file's absolute path (a run must find it from anywhere)."""
    path, _, func = spec.rpartition(":")
    return f"{os.path.abspath(path)}:{func}"


def user_model(spec: str, input_shape: tuple, outputs: int, *, sha256=None, debug=False):
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
        raise UsageError(user_error(path, stage, err, debug)) from None
    if not isinstance(model, nn.Model):
        raise UsageError(f"{func}() in the model file {path} must return an nn.Model (nn.mlp_model, nn.from_flax, "
                         f"nn.from_equinox or nn.Model(init, apply)); it returned {type(model).__name__}")
    return model, digest


def user_error(path, stage, err, debug) -> str:
    line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else next(
        (f.lineno for f in reversed(traceback.extract_tb(err.__traceback__)) if f.filename == path), None)
    where = f" at line {line}" if line else ""
    text = str(err).splitlines()[0] if str(err) else ""
    hint = "" if debug else "; pass --debug for its traceback"
    return f"the model file {path} failed{where} {stage}: {type(err).__name__}: {text}{hint}"
