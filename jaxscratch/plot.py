"""Figures (matplotlib, the ``examples`` extra, imported when a figure is drawn) and curves drawn
in text. Training never imports this module.

Contract: every figure function takes NumPy-like data and a ``path``, writes one PNG atomically
(temp file, then rename, with a plain write's permissions: the private ``_files``) and returns
the path. ``smooth_curve`` is pure NumPy; ``text_plot`` draws curves as lines of text for a
terminal (pure Python: no matplotlib needed).
"""
from __future__ import annotations

import math
import os
import shutil

import numpy as np

from jaxscratch import _files

__all__ = ["comparison_figure", "smooth_curve", "text_plot", "training_figure"]

MARKS = "*o+x#@%&=~$^"  # one per series: 12 (a comparison of all 11 optimizers fits)


def _figure(**kwargs):
    """A matplotlib Figure that is not registered with pyplot: no backend switch (a notebook's
    inline display keeps working), nothing to close, nothing shown."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("figures need matplotlib: python -m pip install 'jaxscratch[examples]'") from None
    return Figure(**kwargs)


def _save(fig, path) -> str:
    """``fig`` as a PNG at ``path``, atomically, with a plain write's permissions (``_files``)."""
    path = os.fspath(path)
    with _files.replacing(path) as (f, _):
        fig.savefig(f, dpi=110, bbox_inches="tight", format="png")
    return path


def smooth_curve(values, window: int = 11) -> np.ndarray:
    """The book's loss smoothing (``common/util.py``): a Kaiser window (beta 2), same length out."""
    x = np.asarray(values, np.float64)
    if x.size < window:
        return x
    w = np.kaiser(window, 2)
    padded = np.r_[x[window - 1:0:-1], x, x[-1:-window:-1]]
    y = np.convolve(w / w.sum(), padded, mode="valid")
    return y[(window - 1) // 2: (window - 1) // 2 + x.size] if y.size > x.size else y


def training_figure(history: dict, path, *, title: str = "") -> str:
    """Per-step loss (smoothed) and per-epoch accuracies (RMSE for regression), side by side."""
    fig = _figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    step_loss = np.asarray(history.get("step_loss", []))
    if step_loss.size:
        ax_loss.plot(step_loss, color="0.8", lw=0.8, label="per step")
        ax_loss.plot(smooth_curve(step_loss), color="C0", label="smoothed")
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_loss.legend()
    epochs = np.asarray(history.get("epoch", []))
    # accuracy for classification; RMSE for regression; else the evaluation loss
    metric, label, scale = next(((m, lab, sc) for m, lab, sc in (("acc", "accuracy (%)", 100), ("rmse", "RMSE", 1),
                                                                  ("eval_loss", "loss", 1))
                                 if any(f"{n}_{m}" in history for n in ("train", "val", "test"))), ("acc", "", 1))
    for name, style in (("train", "-"), ("val", "--"), ("test", ":")):
        values = history.get(f"{name}_{metric}")
        if values is not None and len(values):
            ax_acc.plot(epochs, scale * np.asarray(values), style, marker="o", ms=3, label=name)
    ax_acc.set(xlabel="epoch", ylabel=label)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def comparison_figure(curves: dict, path, *, title: str = "") -> str:
    """Smoothed loss curves, one per optimizer (the book's Figure 6-9)."""
    fig = _figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for i, (name, losses) in enumerate(curves.items()):
        ax.plot(smooth_curve(np.asarray(losses)), label=name, color=f"C{i}", lw=1.2)
    ax.set(xlabel="iteration", ylabel="loss (smoothed)", ylim=(0, None))
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _columns(values, width: int) -> list[float]:
    """``values`` stretched or averaged onto ``width`` columns (NaN where a column has none)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return [math.nan] * width
    out = []
    for c in range(width):
        lo, hi = c * n / width, (c + 1) * n / width
        chunk = [v for v in values[int(lo):max(int(math.ceil(hi)), int(lo) + 1)] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def text_plot(curves: dict, width: int | None = None, height: int = 12, *, title: str = "") -> list[str]:
    """``curves`` (name -> values) drawn in text, the book's ``print_graph`` fitted to a terminal.

    Returns the title, ``height`` rows, the axis and the legend (wrapped onto as many lines as it
    needs), none wider than ``width`` (default: the terminal's): a y axis labelled with its
    range, one mark per series (``*``, ``o``, ``+``, ``x``, ...: at most ``len(MARKS)`` series)
    and a legend; each series stretched over the x axis, its points averaged into columns when
    there are more than columns. Non-finite points are left out; nothing is drawn when no series
    has a finite point or the width is under 20. Pure Python.
    """
    if len(curves) > len(MARKS):
        raise ValueError(f"text_plot draws at most {len(MARKS)} curves; got {len(curves)}")
    width = shutil.get_terminal_size((80, 24)).columns if width is None else width
    curves = {k: list(v) for k, v in curves.items() if any(math.isfinite(float(x)) for x in v)}
    if not curves or width < 20:
        return []
    finite = [float(x) for v in curves.values() for x in v if math.isfinite(float(x))]
    lo, hi = min(finite), max(finite)
    hi = hi if hi > lo else lo + 1
    label = max(len(f"{lo:.4g}"), len(f"{hi:.4g}"))
    cols = width - label - 2
    grid = [[" "] * cols for _ in range(height)]
    for mark, values in zip(MARKS, curves.values()):
        for c, v in enumerate(_columns(values, cols)):
            if math.isfinite(v):
                grid[height - 1 - round((v - lo) / (hi - lo) * (height - 1))][c] = mark
    lines = [title[:width]] if title else []
    for r, row in enumerate(grid):
        y = f"{hi:.4g}" if r == 0 else f"{lo:.4g}" if r == height - 1 else ""
        lines.append(f"{y:>{label}} |{''.join(row)}".rstrip())
    lines.append(" " * label + " +" + "-" * cols)
    indent, legend = " " * (label + 2), ""
    for entry in (f"{m} {name}" for m, name in zip(MARKS, curves)):
        if legend and len(indent) + len(legend) + 3 + len(entry) > width:
            lines.append((indent + legend)[:width])
            legend = ""
        legend += ("   " if legend else "") + entry
    lines.append((indent + legend)[:width])
    return lines
