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
  * ``tensorboard=True`` also writes the same scalars (tag: the key, step: the epoch) into a new
    TensorBoard event file in ``run_dir`` (``events.out.tfevents.<time>.<host>``, made when the
    first epoch ends), one ``Event``
    per epoch, appended and fsynced likewise. The format (TFRecord frames of ``Event`` protos) is
    written here: no TensorBoard package is needed to write it, only to view it.
  * :func:`read_metrics` returns a ``metrics.jsonl``'s whole lines as dicts.
  * The logger returns ``None``: it never stops training. Chain it with your own callback:
    ``fit(..., on_epoch=lambda e, r: (log(e, r), mine(e, r))[1])``.
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable

from jaxscratch import _files

__all__ = ["EVENTS", "JSONL", "crc32c", "epoch_record", "metrics_logger", "read_metrics", "tensorboard_record"]

JSONL = "metrics.jsonl"
EVENTS = "events.out.tfevents."  # TensorBoard's event files: EVENTS + "<time>.<host>"


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


# TensorBoard event files: TFRecords (length, masked CRC-32C of it, data, masked CRC-32C of it) of
# Event protos -- wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary =
# 5 (Summary: repeated value = 1, Value: tag = 1 (string), simple_value = 2 (float)) -- written by
# hand: a few dozen lines instead of a dependency, and each epoch's record fsynced like metrics.jsonl.
_CRC32C = []
for _n in range(256):
    for _ in range(8):
        _n = (_n >> 1) ^ 0x82F63B78 if _n & 1 else _n >> 1
    _CRC32C.append(_n)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord frames use: ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _message(number: int, payload: bytes) -> bytes:  # a length-delimited field (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tensorboard_record(wall_time: float, step: int | None = None, scalars: dict | None = None,
                       file_version: str | None = None) -> bytes:
    """One TFRecord holding one TensorBoard ``Event``: scalars (tag -> value) at ``step``, or the
    ``file_version`` header an event file starts with."""
    event = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step is not None:
        event += _varint(2 << 3) + _varint(step)
    if file_version is not None:
        event += _message(3, file_version.encode())
    if scalars:
        values = b"".join(_message(1, _message(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
                          for tag, value in scalars.items())
        event += _message(5, values)
    length = struct.pack("<Q", len(event))
    return length + _masked(length) + event + _masked(event)


def _tensorboard_file(run_dir) -> str:
    """A new event file in ``run_dir``, its header written (TensorBoard reads every one there)."""
    path = os.path.join(os.fspath(run_dir), f"{EVENTS}{int(time.time())}.{socket.gethostname()}")
    _files.append(path, tensorboard_record(time.time(), file_version="brain.Event:2"))
    return path


def metrics_logger(run_dir, *, tensorboard: bool = False, epochs_done: int | None = None) -> Callable:
    """``on_epoch(epoch, result)`` for :func:`train.fit` writing ``run_dir/metrics.jsonl`` (see
    the module's contract) and, with ``tensorboard``, TensorBoard event files. ``epochs_done``
    (a resumed run: its checkpoint's epochs) cuts the file back to them now, so that a resume
    stopped before its first epoch leaves no line the checkpoint lacks."""
    path = os.path.join(os.fspath(run_dir), JSONL)
    if epochs_done is not None:
        _files.keep_lines(path, lambda line: _epoch_of(line) <= epochs_done)
    started, events = [], None

    def on_epoch(epoch: int, result) -> None:
        nonlocal events
        if not started:  # the first epoch: cut a resumed run's file back (unless done above); a new event file
            if epochs_done is None:
                _files.keep_lines(path, lambda line: _epoch_of(line) < epoch)
            events = _tensorboard_file(run_dir) if tensorboard else None
            started.append(epoch)
        record = epoch_record(result.history)
        _files.append_line(path, json.dumps(record, allow_nan=False))
        if events is not None:
            scalars = {k: v for k, v in record.items() if k not in ("epoch", "steps") and isinstance(v, (int, float))}
            _files.append(events, tensorboard_record(time.time(), epoch, scalars))

    return on_epoch


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a last line cut by a kill is left out)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]
