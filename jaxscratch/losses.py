"""Losses and metrics for classification and regression.

Contract: every loss returns a scalar (a mean over the batch unless named otherwise), in
the dtype of its inputs; labels are either integer class indices ``(batch,)`` or one-hot /
probability rows ``(batch, classes)``, told apart by dtype: integers are indices, floats
are distributions.

Tasks: :func:`task` turns ``"cross_entropy"``, ``"mse"`` or a callable ``loss(outputs, y) ->
scalar`` into a :class:`Task`, which ``train`` and ``sweep`` use for the training loss, the
per-example losses that evaluation averages, the metrics reported (accuracy for
classification, RMSE for ``"mse"``) and the check of targets against the model's outputs.

Textbook notes: the book's cross-entropy adds ``1e-7`` inside the log of the softmax;
we compute ``log_softmax`` directly, which is exact and stable, so the two agree except
where a probability underflows below ~1e-7 (where ours keeps the true, larger loss).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import _compiled

__all__ = [
    "LOSSES",
    "Task",
    "accuracy",
    "check_targets",
    "is_weight",
    "l2_penalty",
    "mse",
    "softmax_cross_entropy",
    "sum_squared_error",
    "task",
]


def _check_labels(logits: jax.Array, labels: jax.Array) -> None:
    if jnp.ndim(logits) < 1:
        raise ValueError(f"logits must have a class axis; got shape {jnp.shape(logits)}")
    if jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        if jnp.shape(labels) != jnp.shape(logits)[:-1]:
            raise ValueError(
                f"integer labels must have shape {jnp.shape(logits)[:-1]} (one per row of logits "
                f"{jnp.shape(logits)}); got {jnp.shape(labels)}"
            )
    elif jnp.shape(labels) != jnp.shape(logits):
        raise ValueError(
            f"one-hot labels must have the shape of logits {jnp.shape(logits)}; got {jnp.shape(labels)}"
        )


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Mean softmax cross-entropy.

    .. math:: L = -\frac{1}{N}\sum_n \sum_k t_{nk} \log \mathrm{softmax}(z_n)_k

    Args:
      logits: ``(batch, classes)``.
      labels: integer class indices ``(batch,)`` or one-hot rows ``(batch, classes)``. An
        integer label outside ``[0, classes)`` makes the loss NaN.

    Returns:
      A scalar.

    >>> float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
    1.386294...
    """
    _check_labels(logits, labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        # a label out of range shows (a gather would wrap -1 to the last class); a one-hot select
        # instead of the gather compiles faster under vmap but ran the step ~3% slower
        nll = jnp.where((labels >= 0) & (labels < logp.shape[-1]), nll, jnp.nan)
    else:
        nll = -jnp.sum(labels.astype(logp.dtype) * logp, axis=-1)
    return jnp.mean(nll)


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over every element of ``(predictions - targets) ** 2``.

    >>> float(mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0])))  # (0 + 4) / 2
    2.0
    """
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape; got {jnp.shape(predictions)} "
            f"and {jnp.shape(targets)}"
        )
    return jnp.mean((predictions - targets) ** 2)


def sum_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """The textbook's ``mean_squared_error``: ``0.5 * sum((y - t) ** 2)`` (summed, not averaged).

    The book's own example (section 4.2.1): a softmax output against the one-hot label 2.

    >>> y = jnp.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    >>> round(float(sum_squared_error(y, jax.nn.one_hot(2, 10))), 4)
    0.0975
    """
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape; got {jnp.shape(predictions)} "
            f"and {jnp.shape(targets)}"
        )
    return 0.5 * jnp.sum((predictions - targets) ** 2)


def is_weight(leaf) -> bool:
    """The default weight-decay rule: an inexact (real or complex) array with ``ndim >= 2``.

    Weight matrices and convolution kernels are weights; biases, batch-norm scales and
    integer counters are not (for the book's MLP: exactly its ``"w"`` matrices).

    >>> is_weight(jnp.zeros((3, 2))), is_weight(jnp.zeros(2)), is_weight(jnp.zeros((3, 2), jnp.int32))
    (True, False, False)
    """
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and jnp.ndim(leaf) >= 2


def l2_penalty(params, weight_decay, mask=None) -> jax.Array:
    r"""The textbook's weight-decay term :math:`\tfrac{\lambda}{2}\sum_W \|W\|^2`.

    Args:
      params: any pytree of arrays.
      weight_decay: :math:`\lambda`, a float or (traced) scalar.
      mask: a pytree of bools like ``params`` or a callable ``params -> mask``; leaves
        that are False are left out. ``None`` (default) means :func:`is_weight` on every
        leaf: weight matrices and kernels, not biases (for the book's MLP, its ``"w"`` only).

    Returns:
      A real scalar (``|W| ** 2`` for complex leaves). Its gradient is ``weight_decay * W`` on
      masked leaves, zero elsewhere.

    >>> params = {"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([5.0])}  # the bias is left out
    >>> float(l2_penalty(params, 0.1))  # 0.5 * 0.1 * (1 + 4)
    0.25
    """
    if mask is None:
        mask = lambda tree: jax.tree.map(is_weight, tree)
    if callable(mask):
        mask = mask(params)
    terms = jax.tree.map(lambda p, m: jnp.sum(jnp.real(p * jnp.conj(p))) if m else None, params, mask)
    leaves = jax.tree.leaves(terms)
    if not leaves:
        return jnp.zeros(())
    return 0.5 * weight_decay * sum(leaves)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max matches the label (integer or one-hot).

    >>> logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    >>> float(accuracy(logits, jnp.array([1, 0, 0])))  # two of three
    0.6666666865348816
    """
    _check_labels(logits, labels)
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


# ----------------------------------------------------------------- tasks
class Task(NamedTuple):
    """What training needs to know about a loss (hashable: it keys compiled programs).

    * ``loss(outputs, y) -> scalar``: the training loss, a mean over the batch.
    * ``per_example(outputs, y) -> (losses (batch,), correct (batch,) bool or None)``: what
      evaluation sums over the real rows of a padded chunk; ``correct`` only for classification.
    * ``metric``: the second reported metric, ``"acc"``, ``"rmse"`` or ``None``.
    """

    name: str
    loss: Callable
    per_example: Callable
    metric: str | None


def _ce_per_example(outputs, y):
    logp = jax.nn.log_softmax(outputs, axis=-1)
    if jnp.issubdtype(y.dtype, jnp.integer):
        nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        nll = jnp.where((y >= 0) & (y < logp.shape[-1]), nll, jnp.nan)  # a bad label shows
        label = y
    else:
        nll = -jnp.sum(y.astype(logp.dtype) * logp, axis=-1)
        label = jnp.argmax(y, axis=-1)
    return nll, jnp.argmax(outputs, axis=-1) == label


def _as_target_shape(outputs, y):
    """Outputs ``(batch, 1)`` against targets ``(batch,)``: the one output column."""
    if outputs.ndim == y.ndim + 1 and outputs.shape[-1] == 1:
        return outputs[..., 0]
    return outputs


def _mse_loss(outputs, y):
    return mse(_as_target_shape(outputs, y), y.astype(outputs.dtype))


def _mse_per_example(outputs, y):
    d = _as_target_shape(outputs, y) - y.astype(outputs.dtype)
    return jnp.mean((d * d).reshape(d.shape[0], -1), axis=1), None


LOSSES = {
    "cross_entropy": Task("cross_entropy", softmax_cross_entropy, _ce_per_example, "acc"),
    "mse": Task("mse", _mse_loss, _mse_per_example, "rmse"),
}


def _custom_task(fn: Callable) -> Task:
    def per_example(outputs, y):  # the loss of each row alone: exact for a mean over the batch
        return jax.vmap(lambda o, t: fn(o[None], t[None]))(outputs, y), None

    return Task(getattr(fn, "__name__", "custom"), fn, per_example, None)


def task(loss) -> Task:
    """The :class:`Task` of ``loss``: ``"cross_entropy"`` (integer labels or one-hot rows;
    accuracy reported), ``"mse"`` (float targets ``(n,)`` or ``(n, k)``; RMSE reported) or a
    callable ``loss(outputs, y) -> scalar``, a mean over the batch of per-example terms
    (evaluation applies it to one row at a time and averages). A :class:`Task` is returned as is."""
    if isinstance(loss, Task):
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable loss(outputs, y); got {loss!r}")
        return LOSSES[loss]
    if callable(loss):
        return _compiled.program(_custom_task, loss)  # one Task per function: fit's programs are reused
    raise TypeError(f"loss must be one of {sorted(LOSSES)} or a callable loss(outputs, y); "
                    f"got {type(loss).__name__}")


def check_targets(task: Task, name: str, y: np.ndarray, outputs) -> None:
    """Raise unless targets ``y`` (NumPy, one row per example) fit ``task`` and the model's
    ``outputs`` (a shape-dtype struct for a batch), naming both."""
    out = tuple(outputs.shape[1:])
    if task.name == "cross_entropy":
        if len(out) != 1 or out[0] < 2:
            raise ValueError(f"cross_entropy needs model outputs (batch, classes) with at least 2 classes; the "
                             f"model gives {tuple(outputs.shape)} (for regression use loss='mse')")
        k = out[0]
        if np.issubdtype(y.dtype, np.integer):
            if y.ndim != 1:
                raise ValueError(f"{name} integer labels must have shape (n,); got {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= k):
                raise ValueError(f"{name} labels must be in [0, {k}) for the model's {k} outputs; "
                                 f"found {y.min()}..{y.max()}")
            return
        if not np.issubdtype(y.dtype, np.floating) or y.shape[1:] != (k,):
            raise ValueError(f"cross_entropy needs {name} targets as integer labels (n,) or one-hot rows (n, {k}) "
                             f"for the model's {k} outputs; got {y.dtype} of shape {y.shape}")
        if y.size and (y.min() < 0 or not np.allclose(y.sum(axis=1), 1, atol=1e-3)):
            raise ValueError(f"cross_entropy needs {name} float targets to be one-hot or probability rows (each "
                             f"non-negative, summing to 1); got {y.dtype} {y.shape} values from {y.min():.4g} to "
                             f"{y.max():.4g} (for regression targets use loss='mse')")
    elif task.name == "mse":
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(f"mse needs float {name} targets; got {y.dtype} (class labels: use "
                             f"loss='cross_entropy'; integer-valued targets: cast them to float)")
        rows = y.shape[1:]
        if out != rows and not (rows == () and out == (1,)):
            raise ValueError(f"mse needs model outputs of the {name} targets' row shape {rows} (or (1,) for "
                             f"targets (n,)); the model gives outputs {tuple(outputs.shape)} for targets {y.shape}")
