"""Losses and metrics for classification and regression.

Contract: every loss returns a scalar (a mean over the batch unless named otherwise), in
the dtype of its inputs; labels are either integer class indices ``(batch,)`` or one-hot /
probability rows ``(batch, classes)``, told apart by dtype: integers are indices, floats
are distributions.

Textbook notes: the book's cross-entropy adds ``1e-7`` inside the log of the softmax;
we compute ``log_softmax`` directly, which is exact and stable, so the two agree except
where a probability underflows below ~1e-7 (where ours keeps the true, larger loss).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxscratch import nn

__all__ = [
    "accuracy",
    "l2_penalty",
    "mse",
    "softmax_cross_entropy",
    "sum_squared_error",
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
    """Mean over every element of ``(predictions - targets) ** 2``."""
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape; got {jnp.shape(predictions)} "
            f"and {jnp.shape(targets)}"
        )
    return jnp.mean((predictions - targets) ** 2)


def sum_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """The textbook's ``mean_squared_error``: ``0.5 * sum((y - t) ** 2)`` (summed, not averaged)."""
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape; got {jnp.shape(predictions)} "
            f"and {jnp.shape(targets)}"
        )
    return 0.5 * jnp.sum((predictions - targets) ** 2)


def l2_penalty(params, weight_decay, mask=None) -> jax.Array:
    r"""The textbook's weight-decay term :math:`\tfrac{\lambda}{2}\sum_W \|W\|^2`.

    Args:
      params: any pytree of arrays.
      weight_decay: :math:`\lambda`, a float or (traced) scalar.
      mask: a pytree of bools like ``params`` or a callable ``params -> mask``; leaves
        that are False are left out. ``None`` (default) means :func:`nn.weights_mask`:
        weight matrices ``"w"`` only, as in the book (biases are not decayed).

    Returns:
      A scalar. Its gradient is ``weight_decay * W`` on masked leaves, zero elsewhere.
    """
    if mask is None:
        mask = nn.weights_mask
    if callable(mask):
        mask = mask(params)
    terms = jax.tree.map(lambda p, m: jnp.sum(p * p) if m else None, params, mask)
    leaves = jax.tree.leaves(terms)
    if not leaves:
        return jnp.zeros(())
    return 0.5 * weight_decay * sum(leaves)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max matches the label (integer or one-hot)."""
    _check_labels(logits, labels)
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
