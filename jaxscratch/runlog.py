"""Live metrics of a training run: ``metrics.jsonl``, and TensorBoard event files if asked.

Contract:
  * :func:`metrics_logger` ``(run_dir, *, tensorboard=False) -> on_epoch`` makes the callback
    :func:`train.fit` takes as ``on_epoch``: after each epoch it appends one JSON object to
    ``run_dir/metrics.jsonl`` -- the epoch's record (every per-epoch entry of the history:
    ``epoch``, ``train_loss``, ``val_acc``, ... and ``time``) with ``steps`` (updates done so
    far) -- and fsyncs it before it returns, so a run killed at any moment keeps every epoch that
    finished. NaN and Inf are written as ``null`` (standard JSON has neither).
  * Resuming: the first epoch a logger sees is ``e``; it first cuts the file back to its lines of
    epochs before ``e`` (a killed run may have logged an epoch its checkpoint lacks), so a
    resumed run's file equals an uninterrupted one's. ``run_dir`` must exist.
  * ``tensorboard=True`` writes the same scalars (tag: the key, step: the epoch) into TensorBoard
    event files in ``run_dir`` with ``tensorboardX`` (the optional extra ``tensorboard``),
    imported only then; without it, ``ImportError`` says how to install it.
  * :func:`read_metrics` returns a ``metrics.jsonl``'s whole lines as dicts.
  * The logger returns ``None``: it never stops training. Chain it with your own callback:
    ``fit(..., on_epoch=lambda e, r: (log(e, r), mine(e, r))[1])``.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

from jaxscratch import _files

__all__ = ["JSONL", "epoch_record", "metrics_logger", "read_metrics"]

JSONL = "metrics.jsonl"


def json_safe(obj):
    """``obj`` with every NaN or Inf as ``None``, NumPy scalars as Python numbers."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def epoch_record(history: dict) -> dict:
    """The last epoch's record from a ``fit`` history: each per-epoch entry, and ``steps`` done."""
    record = {k: v[-1] for k, v in history.items() if k != "step_loss"}
    record["steps"] = len(history.get("step_loss", ()))
    return json_safe(record)


def _epoch_of(line: str) -> float:
    try:
        return float(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a damaged line: dropped with the epochs after the resumed one


def _tensorboard_writer(run_dir):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard event files need tensorboardX: "
                          "python -m pip install 'jaxscratch[tensorboard]'") from None
    return SummaryWriter(logdir=os.fspath(run_dir))


def metrics_logger(run_dir, *, tensorboard: bool = False) -> Callable:
    """``on_epoch(epoch, result)`` for :func:`train.fit` writing ``run_dir/metrics.jsonl`` (see
    the module's contract) and, with ``tensorboard``, TensorBoard event files."""
    path = os.path.join(os.fspath(run_dir), JSONL)
    writer = _tensorboard_writer(run_dir) if tensorboard else None
    started = []

    def on_epoch(epoch: int, result) -> None:
        if not started:
            _files.keep_lines(path, lambda line: _epoch_of(line) < epoch)
            started.append(epoch)
        record = epoch_record(result.history)
        _files.append_line(path, json.dumps(record, allow_nan=False))
        if writer is not None:
            for k, v in record.items():
                if k not in ("epoch", "steps") and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, epoch)
            writer.flush()

    return on_epoch


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a last line cut by a kill is left out)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]
