"""Multi-layer perceptrons as pure functions over pytrees.

Contract:
  * ``init_mlp(key, sizes, *, weight_init="he")`` returns ``params``: a list with one
    dict per affine layer, ``{"w": (n_in, n_out), "b": (n_out,)}``. Biases start at zero;
    weights are ``scale * normal`` with the textbook's scales (He ``sqrt(2 / n_in)``,
    Xavier ``sqrt(1 / n_in)``, or a number used as the standard deviation).
  * ``mlp(params, x, *, activation="relu")`` maps ``x`` of shape ``(..., n_in)`` to
    logits ``(..., n_out)``: affine -> activation for each hidden layer, then a final
    affine with no activation (softmax lives in the loss).
  * ``weights_mask(params)`` is a pytree of bools, True exactly on the weight matrices
    ``"w"``: the textbook's weight decay touches weights only, never biases (nor, later,
    batch-norm gamma and beta).

Nothing here knows about training: no optimizer, no loss, no mutable state.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "init_mlp", "mlp", "weight_scale", "weights_mask"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}

# Aliases the textbook's code accepts for the two named scales.
_INIT_ALIASES = {"he": "he", "relu": "he", "xavier": "xavier", "sigmoid": "xavier"}


def weight_scale(weight_init: str | float, n_in: int) -> float:
    """Standard deviation of a layer's initial weights.

    Args:
      weight_init: ``"he"`` (``sqrt(2 / n_in)``, for ReLU), ``"xavier"``
        (``sqrt(1 / n_in)``, the textbook's Xavier, for sigmoid and tanh), or a positive
        number used as the standard deviation itself.
      n_in: fan-in of the layer.

    Returns:
      The standard deviation as a Python float.
    """
    if isinstance(weight_init, str):
        kind = _INIT_ALIASES.get(weight_init.lower())
        if kind is None:
            raise ValueError(
                f"weight_init must be 'he', 'xavier' or a positive number; got {weight_init!r}"
            )
        return (2.0 / n_in) ** 0.5 if kind == "he" else (1.0 / n_in) ** 0.5
    if isinstance(weight_init, bool) or not isinstance(weight_init, (int, float)):
        raise TypeError(
            f"weight_init must be 'he', 'xavier' or a number; got {type(weight_init).__name__}"
        )
    if not weight_init > 0 or weight_init == float("inf"):
        raise ValueError(f"weight_init as a standard deviation must be finite and > 0; got {weight_init}")
    return float(weight_init)


def init_mlp(
    key: jax.Array,
    sizes: Sequence[int],
    *,
    weight_init: str | float = "he",
    dtype=jnp.float32,
) -> list[dict[str, jax.Array]]:
    """Initialise the weights and biases of an MLP.

    Args:
      key: a PRNG key; split once per layer, never reused.
      sizes: layer widths including input and output, e.g. ``(784, 100, 100, 10)``.
      weight_init: ``"he"``, ``"xavier"`` or a number (the standard deviation).
      dtype: floating dtype of every parameter.

    Returns:
      A list of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts, one per affine layer.

    >>> params = init_mlp(jax.random.key(0), (4, 3, 2))
    >>> [p["w"].shape for p in params]
    [(4, 3), (3, 2)]
    """
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width; got {sizes}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"every size must be a positive int; got {sizes}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}")
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
        std = weight_scale(weight_init, n_in)
        w = std * jax.random.normal(k, (n_in, n_out), dtype)  # (n_in, n_out)
        params.append({"w": w, "b": jnp.zeros((n_out,), dtype)})
    return params


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}; got {name!r}"
        ) from None


def mlp(params: Sequence[dict[str, jax.Array]], x: jax.Array, *, activation: str = "relu") -> jax.Array:
    """Logits of an MLP for a batch.

    Args:
      params: as returned by :func:`init_mlp`.
      x: inputs of shape ``(..., n_in)``.
      activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"`` for the hidden layers.

    Returns:
      Logits of shape ``(..., n_out)``.
    """
    act = _activation(activation)
    if len(params) == 0:
        raise ValueError("params holds no layer")
    n_in = params[0]["w"].shape[0]
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != n_in:
        raise ValueError(
            f"x must have shape (..., {n_in}) to match the first layer; got {jnp.shape(x)}"
        )
    h = x
    for i, layer in enumerate(params):
        b = layer["b"].reshape((1,) * (h.ndim - 1) + (-1,))  # explicit broadcast: rank promotion may raise
        h = h @ layer["w"] + b  # (..., n_out of layer i)
        if i < len(params) - 1:
            h = act(h)
    return h


def weights_mask(params):
    """A pytree of bools shaped like ``params``: True on weight matrices ``"w"`` only.

    Use it as ``mask`` for ``optim.add_decayed_weights`` or ``losses.l2_penalty`` to get
    the textbook's weight decay, which leaves biases (and batch-norm scales) alone.
    """
    def is_weight(path, _):
        last = path[-1] if path else None
        return isinstance(last, jax.tree_util.DictKey) and last.key == "w"

    return jax.tree_util.tree_map_with_path(is_weight, params)
