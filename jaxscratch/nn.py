"""Models as pure functions over pytrees: the :class:`Model` contract, the book's MLP, adapters.

Contract:
  * A model is ``Model(init, apply)``: ``init(key) -> (params, state)`` and ``apply(params,
    state, x, *, train, key=None) -> (outputs, new_state)``. ``params`` are trained; ``state``
    holds what changes without being trained (batch-norm statistics; an empty pytree when
    none). Training code (``train``, ``sweep``, the command) sees only this pair.
  * ``mlp_model(sizes, ...)`` is the book's network as a Model, built from the functions below;
    ``from_flax(module, example_x)`` and ``from_equinox(module)`` wrap flax linen and equinox
    modules (``_adapters``; each imports its library only when called).
  * ``init_mlp(key, sizes, *, weight_init="he")`` returns ``params``: a list with one
    dict per affine layer, ``{"w": (n_in, n_out), "b": (n_out,)}``. Biases start at zero;
    weights are ``scale * normal`` with the textbook's scales (He ``sqrt(2 / n_in)``,
    Xavier ``sqrt(1 / n_in)``, or a number used as the standard deviation).
  * ``mlp(params, x, *, activation="relu")`` maps ``x`` of shape ``(..., n_in)`` to
    logits ``(..., n_out)``: affine -> activation for each hidden layer, then a final
    affine with no activation (softmax lives in the loss).
  * ``weights_mask(params)`` is a pytree of bools, True exactly on the weight matrices
    ``"w"``: the textbook's weight decay touches weights only, never biases nor batch-norm
    ``gamma`` and ``beta``.
  * Batch norm and dropout (the book's ``MultiLayerNetExtend``): ``init_mlp(...,
    batchnorm=True)`` adds ``gamma`` (ones) and ``beta`` (zeros) to every hidden layer;
    ``init_bn_state(params)`` gives the running statistics (zeros, as the book), one
    ``{"mean", "var"}`` per hidden layer. ``apply(params, x, state=..., train=..., key=...,
    drop_rate=...)`` returns ``(logits, new_state)``: affine -> [batch norm] -> activation ->
    [dropout] per hidden layer. In training mode batch norm normalises with the batch's mean
    and biased variance and returns updated running statistics
    (``running = momentum * running + (1 - momentum) * batch``); in evaluation mode it uses the
    running statistics and returns the state unchanged. Dropout drops each unit with
    probability ``drop_rate``: ``"inverted"`` (default) scales kept units by
    ``1 / (1 - drop_rate)`` at training time and does nothing at test time; ``"textbook"``
    keeps units unscaled in training and multiplies by ``1 - drop_rate`` at test time. Both
    have the same expected activation.

Nothing here knows about training: no optimizer, no loss; state goes in and comes out.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import _compiled, _hostrandom

__all__ = ["ACTIVATIONS", "DROPOUT_MODES", "Model", "apply", "batch_norm", "dropout", "init_bn_state",
           "from_equinox", "from_flax", "init_mlp", "mlp", "mlp_model", "unit_normals", "weight_scale",
           "weights_mask"]

DROPOUT_MODES = ("inverted", "textbook")


class Model(NamedTuple):
    """A model as two pure functions, the twin of ``optim.Optimizer(init, update)``.

    * ``init(key) -> (params, state)``: ``params`` are trained; ``state`` is a pytree of the
      variables that change without being trained (batch-norm running statistics), an empty
      pytree (``()``, ``{}``, a list of ``None``) when there are none.
    * ``apply(params, state, x, *, train, key=None) -> (outputs, new_state)``: ``x`` is a batch
      ``(batch, ...)``; ``train`` selects training mode (batch statistics, dropout on); ``key``
      drives dropout and is ignored by deterministic models. In evaluation mode ``new_state``
      is ``state``.
    """

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
BN_EPS = 1e-6         # the book writes 10e-7
BN_MOMENTUM = 0.9     # the book's running-average momentum

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
    batchnorm: bool = False,
    dtype=jnp.float32,
) -> list[dict[str, jax.Array]]:
    """Initialise the weights and biases of an MLP.

    Args:
      key: a PRNG key; split once per layer, never reused.
      sizes: layer widths including input and output, e.g. ``(784, 100, 100, 10)``.
      weight_init: ``"he"``, ``"xavier"`` or a number (the standard deviation).
      batchnorm: add batch-norm ``gamma`` (ones) and ``beta`` (zeros) to each hidden layer.
      dtype: floating dtype of every parameter.

    Returns:
      A list of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts, one per affine layer (hidden
      layers also hold ``"gamma"`` and ``"beta"`` of shape ``(n_out,)`` with ``batchnorm``).

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
    weight_scale(weight_init, sizes[0])  # a bad name fails here, not inside the trace
    counts = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    if jnp.dtype(dtype) == jnp.float32 and sum(counts) <= _HOST_HASH_MAX and _hostrandom.supported(key):
        # The hash on the host (bit for bit JAX's), the rest in a program without it: a
        # 784-100-100-10 MLP's initialisation traced and compiled in 0.13 s instead of 0.33 s
        # (2-core CPU), for ~10 ms of NumPy.
        keys = _hostrandom.split(_hostrandom.key_data(key), len(counts))
        bits = np.concatenate([_hostrandom.bits32(k, c) for k, c in zip(keys, counts)])
        return _compiled.once(_layers_from_bits, bits, sizes, weight_init, bool(batchnorm),
                              static_argnums=(1, 2, 3))
    args = (key, sizes, weight_init, bool(batchnorm), jnp.dtype(dtype))
    return _compiled.once(_init_layers, *args, static_argnums=(1, 2, 3, 4))


_HOST_HASH_MAX = 1 << 22  # weights drawn on the host at most (~0.1 s of NumPy per million)


def _init_layers(key, sizes, weight_init, batchnorm, dtype):
    return _layers_from_normals(unit_normals(key, sizes, dtype), weight_init, batchnorm)


def _layers_from_bits(bits, sizes, weight_init, batchnorm):
    return _layers_from_normals(_per_layer(_normals_from_bits(bits), sizes), weight_init, batchnorm)


def _per_layer(z, sizes) -> list:
    """``z`` ``(..., total)``, every layer's draws one after another, cut into ``(..., n_in, n_out)``."""
    shapes = list(zip(sizes[:-1], sizes[1:]))
    ends = np.cumsum([a * b for a, b in shapes])
    return [z[..., end - a * b:end].reshape(z.shape[:-1] + (a, b)) for end, (a, b) in zip(ends, shapes)]


def _normals_from_bits(bits):
    """``jax.random.normal``'s float32 values from its 32 random bits per value: the top 23 bits
    as a float in [1, 2), minus 1, mapped onto (-1, 1) and through sqrt(2) * erfinv."""
    mantissa = jax.lax.shift_right_logical(bits, np.uint32(9)) | np.float32(1).view(np.uint32)
    floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)
    low = np.nextafter(np.float32(-1), np.float32(0))
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(jnp.maximum(low, floats * (np.float32(1) - low) + low))


def unit_normals(key, sizes: Sequence[int], dtype=jnp.float32) -> list[jax.Array]:
    """The standard normal draws :func:`init_mlp` scales into its weights, one ``(n_in, n_out)``
    array per layer: ``normal(split(key, L)[i])``. Sweeps draw them in a program of their own
    that every configuration of one architecture shares (initial scale, batch norm, optimizer).

    With JAX's default generator (threefry, partitionable) and float32, every layer's draws come
    from one call of the hash over all layers at once instead of one per layer, bit for bit
    ``jax.random.normal``'s (tested): on a CPU each call is a loop of its own that XLA compiles
    separately: a 7-layer MLP's draws for 16 trials (vmapped) traced and compiled in 0.27-0.30 s
    instead of 0.44-0.64 s, a 2-layer MLP's in 0.16-0.18 instead of 0.20 s (XLA level 0, 2-core
    CPU, before one-off programs took their present options). Other generators and dtypes take
    ``jax.random.normal`` itself."""
    keys = jax.random.split(key, len(sizes) - 1)
    shapes = list(zip(sizes[:-1], sizes[1:]))
    counts = [n_in * n_out for n_in, n_out in shapes]
    if not _one_hash_ok(keys, dtype, counts):
        return [jax.random.normal(k, shape, dtype) for k, shape in zip(keys, shapes)]
    # jax.random.normal(k, shape, float32) with the partitionable threefry: the hash of (k, i) for
    # the row-major index i (high word 0 below 2**32), its two words xor-ed, made a normal value
    # by _normals_from_bits. Keys and indices are broadcast and iota-ed in the program (as
    # constants they compiled 10-20% slower).
    from jax.extend.random import threefry2x32_p
    data = jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys  # (L, 2) uint32
    lead = data.shape[:-2]
    per_layer = lambda word: jnp.concatenate(
        [jnp.broadcast_to(data[..., i, word:word + 1], lead + (c,)) for i, c in enumerate(counts)], axis=-1)
    lo = jnp.concatenate([jax.lax.broadcasted_iota(jnp.uint32, lead + (c,), len(lead)) for c in counts], axis=-1)
    b1, b2 = threefry2x32_p.bind(per_layer(0), per_layer(1), jnp.zeros_like(lo), lo)
    return _per_layer(_normals_from_bits(b1 ^ b2), sizes)


def _one_hash_ok(keys, dtype, counts) -> bool:
    """Whether :func:`unit_normals` may draw every layer in one hash call (see there)."""
    return jnp.dtype(dtype) == jnp.float32 and _hostrandom.partitionable_threefry(keys) and max(counts) < 2**32


def _layers_from_normals(normals, weight_init, batchnorm) -> list[dict]:
    """:func:`init_mlp`'s parameters from its :func:`unit_normals`; ``weight_init`` may be traced
    (a standard deviation)."""
    params = []
    for z in normals:
        n_in, n_out = z.shape
        std = weight_init.astype(z.dtype) if isinstance(weight_init, jax.Array) else weight_scale(weight_init, n_in)
        params.append({"w": std * z, "b": jnp.zeros((n_out,), z.dtype)})  # w: (n_in, n_out)
    if batchnorm:
        for layer in params[:-1]:
            layer["gamma"] = jnp.ones_like(layer["b"])
            layer["beta"] = jnp.zeros_like(layer["b"])
    return params


# Called eagerly, one compiled program per architecture (``_compiled.once``, a one-off program).
# Eagerly, each layer's normal draw compiled on its own (13 programs, ~2.3 s on a 2-core CPU for
# 784-100-100-10).


def init_bn_state(params) -> list[dict[str, jax.Array] | None]:
    """Running batch-norm statistics for ``params``: zeros (as the book), ``None`` for layers
    without batch norm. A plain MLP gets a list of ``None``s, which is an empty pytree."""
    return [
        {"mean": jnp.zeros_like(layer["b"]), "var": jnp.zeros_like(layer["b"])} if "gamma" in layer else None
        for layer in params
    ]


def _has_batchnorm(params) -> bool:
    return any("gamma" in layer for layer in params)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}; got {name!r}"
        ) from None


def _row(v: jax.Array, like: jax.Array) -> jax.Array:
    """``v`` of shape ``(n,)`` reshaped to broadcast against ``like`` of shape ``(..., n)``
    (explicitly: the tests make implicit rank promotion an error)."""
    return v.reshape((1,) * (like.ndim - 1) + (-1,))


def _check_input(params, x) -> None:
    if len(params) == 0:
        raise ValueError("params holds no layer")
    n_in = params[0]["w"].shape[0]
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != n_in:
        raise ValueError(
            f"x must have shape (..., {n_in}) to match the first layer; got {jnp.shape(x)}"
        )


def mlp(params: Sequence[dict[str, jax.Array]], x: jax.Array, *, activation: str = "relu") -> jax.Array:
    """Logits of a plain MLP for a batch (for batch norm or dropout, use :func:`apply`).

    Args:
      params: as returned by :func:`init_mlp`.
      x: inputs of shape ``(..., n_in)``.
      activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"`` for the hidden layers.

    Returns:
      Logits of shape ``(..., n_out)``.
    """
    if _has_batchnorm(params):
        raise ValueError(
            "params hold batch-norm layers, which need running statistics: use "
            "nn.apply(params, x, state=bn_state, train=False)"
        )
    return apply(params, x, activation=activation)[0]  # evaluation mode, no dropout


def batch_norm(x, gamma, beta, running, *, train: bool, momentum=BN_MOMENTUM, eps=BN_EPS):
    """Batch normalisation over axis 0 of ``x`` ``(batch, n)``; returns ``(y, new_running)``.

    ``train``: normalise with the batch mean and biased variance, update the running averages.
    Otherwise: normalise with ``running["mean"]`` and ``running["var"]``, unchanged.
    """
    if train:
        if x.ndim != 2:
            raise ValueError(f"batch norm in training mode needs x of shape (batch, n); got {x.shape}")
        xs = x.astype(running["mean"].dtype)  # statistics in the running state's dtype (mixed precision)
        mean = jnp.mean(xs, axis=0)
        var = jnp.mean((xs - _row(mean, xs)) ** 2, axis=0)  # biased, as the book
        new = {"mean": momentum * running["mean"] + (1 - momentum) * mean,
               "var": momentum * running["var"] + (1 - momentum) * var}
    else:
        mean, var, new = running["mean"], running["var"], running
    mean, std = mean.astype(x.dtype), jnp.sqrt(var + eps).astype(x.dtype)
    xn = (x - _row(mean, x)) / _row(std, x)
    return _row(gamma, x) * xn + _row(beta, x), new


def dropout(x, drop_rate, *, key=None, train: bool, mode: str = "inverted"):
    """Drop each entry of ``x`` with probability ``drop_rate`` (a float or traced scalar).

    ``mode="inverted"``: kept entries are scaled by ``1 / (1 - drop_rate)`` in training; the
    identity at test time. ``mode="textbook"``: kept entries unscaled in training; ``x * (1 -
    drop_rate)`` at test time. ``key`` is needed in training.
    """
    if mode not in DROPOUT_MODES:
        raise ValueError(f"dropout mode must be one of {list(DROPOUT_MODES)}; got {mode!r}")
    if isinstance(drop_rate, (int, float)) and not 0 <= drop_rate < 1:
        raise ValueError(f"drop_rate (probability of dropping) must be in [0, 1); got {drop_rate}")
    keep = 1 - jnp.asarray(drop_rate, x.dtype)
    if not train:
        return x if mode == "inverted" else x * keep
    if isinstance(drop_rate, (int, float)):
        # A constant rate would let XLA rewrite ``kept / keep`` as a product with a rounded
        # reciprocal; behind the barrier it computes what a traced rate computes, so a model built
        # with a number (nn.mlp_model, fit) equals, bit for bit, one whose rate is traced (sweeps).
        keep = jax.lax.optimization_barrier(keep)
    if key is None:
        raise ValueError("dropout in training mode needs a PRNG key: pass key=...")
    mask = jax.random.bernoulli(key, keep, x.shape)
    kept = jnp.where(mask, x, jnp.zeros_like(x))
    return kept / keep if mode == "inverted" else kept


def apply(params, x, *, state=None, train: bool = False, key=None, activation: str = "relu",
          drop_rate=0.0, dropout_mode: str = "inverted", bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS):
    """The book's ``MultiLayerNetExtend`` forward pass, with explicit batch-norm state.

    Args:
      params: from :func:`init_mlp` (with or without ``batchnorm``).
      x: inputs ``(batch, n_in)``.
      state: running statistics from :func:`init_bn_state` (needed when params use batch norm).
      train: training mode (batch statistics, dropout active) or evaluation mode.
      key: PRNG key for dropout in training; layer ``i`` uses ``fold_in(key, i)``.
      activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"``.
      drop_rate: probability of dropping a hidden unit (0 disables dropout; may be traced).
      dropout_mode: ``"inverted"`` or ``"textbook"`` (see :func:`dropout`).

    Returns:
      ``(logits, new_state)``; ``new_state`` equals ``state`` in evaluation mode.
    """
    act = _activation(activation)
    _check_input(params, x)
    if state is None:
        if _has_batchnorm(params):
            raise ValueError("params hold batch-norm layers: pass state=nn.init_bn_state(params) or a trained state")
        state = [None] * len(params)
    if len(state) != len(params):
        raise ValueError(f"state has {len(state)} entries for {len(params)} layers")
    use_dropout = not (isinstance(drop_rate, (int, float)) and drop_rate == 0)
    h, new_state = x, []
    for i, (layer, running) in enumerate(zip(params, state)):
        h = h @ layer["w"] + _row(layer["b"], h)  # (batch, n_out of layer i)
        if i == len(params) - 1:
            new_state.append(running)
            break
        if "gamma" in layer:
            h, running = batch_norm(h, layer["gamma"], layer["beta"], running, train=train,
                                    momentum=bn_momentum, eps=bn_eps)
        new_state.append(running)
        h = act(h)
        if use_dropout:
            h = dropout(h, drop_rate, key=None if key is None else jax.random.fold_in(key, i),
                        train=train, mode=dropout_mode)
    return h, new_state


def mlp_model(sizes: Sequence[int], *, activation: str = "relu", weight_init="he", batchnorm: bool = False,
              drop_rate=0.0, dropout_mode: str = "inverted", dtype=jnp.float32) -> Model:
    """The book's ``MultiLayerNetExtend`` as a :class:`Model`.

    ``init(key)`` is ``(init_mlp(key, sizes, ...), init_bn_state(params))``; ``apply`` is
    :func:`apply` with dropout keyed by ``key`` in training, on inputs ``(batch, n_in)`` (or
    ``(batch, ...)``, flattened). ``weight_init`` and ``drop_rate``
    may be traced scalars (a sweep's model factory): a traced ``weight_init`` is the weights'
    standard deviation (unit normals times it). Called twice with the same concrete arguments
    it returns the same object, so ``train.fit``'s compiled programs are reused.

    >>> model = mlp_model((4, 3, 2))
    >>> params, state = model.init(jax.random.key(0))
    >>> model.apply(params, state, jnp.ones((5, 4)), train=False)[0].shape
    (5, 2)
    """
    sizes = tuple(sizes)
    args = (sizes, activation, weight_init, bool(batchnorm), drop_rate, dropout_mode, jnp.dtype(dtype))
    if any(isinstance(a, jax.Array) for a in (weight_init, drop_rate)):
        return _mlp_model(*args)
    return _compiled.program(_mlp_model, *args)  # one object per configuration: fit's programs are reused


def _mlp_model(sizes, activation, weight_init, batchnorm, drop_rate, dropout_mode, dtype) -> Model:
    _activation(activation)  # bad names fail here, not inside a trace
    if dropout_mode not in DROPOUT_MODES:
        raise ValueError(f"dropout_mode must be one of {list(DROPOUT_MODES)}; got {dropout_mode!r}")
    if isinstance(drop_rate, (int, float)) and not 0 <= drop_rate < 1:
        raise ValueError(f"drop_rate (probability of dropping) must be in [0, 1); got {drop_rate}")
    traced_scale = isinstance(weight_init, jax.Array)

    def init(key):
        params = init_mlp(key, sizes, weight_init=1.0 if traced_scale else weight_init, batchnorm=batchnorm,
                          dtype=dtype)
        if traced_scale:  # unit normals, then the (traced) standard deviation
            params = [dict(layer, w=layer["w"] * weight_init.astype(dtype)) for layer in params]
        return params, init_bn_state(params)

    def apply_fn(params, state, x, *, train: bool, key=None):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):  # raw pixels or ids: never silently
            raise TypeError(f"the MLP takes floating-point inputs; got {jnp.result_type(x)} (scale images to "
                            f"floats in [0, 1] first)")
        if jnp.ndim(x) > 2:  # images (batch, ...) -> (batch, features)
            x = jnp.reshape(x, (jnp.shape(x)[0], -1))
        return apply(params, x, state=state, train=train, key=key, activation=activation,
                     drop_rate=drop_rate, dropout_mode=dropout_mode)

    return Model(init, apply_fn)


def weights_mask(params):
    """A pytree of bools shaped like ``params``: True on weight matrices ``"w"`` only.

    Use it as ``mask`` for ``optim.add_decayed_weights`` or ``losses.l2_penalty`` to get
    the textbook's weight decay, which leaves biases (and batch-norm scales) alone.
    """
    def is_weight(path, _):
        last = path[-1] if path else None
        return isinstance(last, jax.tree_util.DictKey) and last.key == "w"

    return jax.tree_util.tree_map_with_path(is_weight, params)


# Adapters for flax linen and equinox modules; they import their library only when called.
from jaxscratch._adapters import from_equinox, from_flax  # noqa: E402 (needs Model, defined above)
