"""What ``train.fit`` and the sweeps check and lay out before anything compiles (private).

Contract:
  * :func:`as_model` returns an ``nn.Model`` or raises a ``TypeError`` that says how to get one
    (a flax or equinox module names its adapter).
  * :func:`check_pair` makes an ``(x, y)`` pair NumPy and checks it alone: numeric ``x`` with a
    row axis, finite, as many rows as ``y``. :func:`check_sets` checks every set against the
    training rows' shape, the model (its output shape for a batch, by ``jax.eval_shape``: a
    model that cannot take the data says so here, in its own words) and the loss
    (``losses.check_targets``, or ``eval_shape`` of a callable loss, which must give a scalar).
  * :func:`mask_leaves` turns a weight-decay mask (pytree or callable) into a flat, hashable
    tuple of bools; :func:`layout` puts every set into one host array of fixed-size chunks.
  * Dtypes JAX cannot hold are cast on the host, once, as :func:`layout` fills its array:
    float64 to float32 and int64 to int32 (unless ``jax_enable_x64``), so JAX never truncates
    (nor warns that it does) a user's NumPy arrays. Nothing here asks ``jnp.result_type`` of a
    64-bit dtype: it warns where :func:`device_dtype` is quiet.
"""
from __future__ import annotations

import sys

import jax
import numpy as np

from jaxscratch import data, losses, nn


def as_model(model) -> nn.Model:
    if isinstance(model, nn.Model):
        return model
    linen, eqx = sys.modules.get("flax.linen"), sys.modules.get("equinox")  # loaded only if the user did
    if linen is not None and isinstance(model, linen.Module):
        hint = "wrap a flax linen module with nn.from_flax(module, example_x)"
    elif eqx is not None and isinstance(model, eqx.Module):
        hint = "wrap an equinox module with nn.from_equinox(module)"
    else:
        hint = ("build one with nn.mlp_model(sizes), nn.from_flax(...), nn.from_equinox(...) or nn.Model(init, apply); "
                "initial parameters go in params=")
    raise TypeError(f"model must be an nn.Model(init, apply); got {type(model).__name__} ({hint})")


def check_pair(name: str, pair) -> tuple[np.ndarray, np.ndarray]:
    """``pair`` as NumPy ``(x, y)``: numeric ``x`` with a row axis, finite, as many rows as ``y``."""
    try:
        x, y = (np.asarray(a) for a in pair)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (x, y) pair of arrays; got {type(pair).__name__}") from None
    if x.ndim < 1 or x.dtype == bool or not (np.issubdtype(x.dtype, np.number)):
        raise TypeError(f"{name} x must be a numeric array with one row per example; got {x.dtype} {x.shape}")
    if np.issubdtype(x.dtype, np.inexact):
        bad = ~np.isfinite(x)
        if bad.any():
            raise ValueError(f"{name} x must be finite; found {int(bad.sum())} NaN or Inf values "
                             f"(the first in row {int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))})")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{name} x and y must have the same number of rows; got {x.shape[0]} and "
                         f"{y.shape[0] if y.ndim else 'a scalar'}")
    return x, y


def device_dtype(dtype) -> np.dtype:
    """The dtype an array of ``dtype`` has on the device: float64 -> float32, int64 -> int32 and
    complex128 -> complex64 unless ``jax_enable_x64``; found without the warning that
    ``jnp.result_type`` gives for a 64-bit dtype."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def output_struct(model, params, model_state, x_row: jax.ShapeDtypeStruct, task, name: str):
    """The model's output shape for a batch like ``x_row``, by ``jax.eval_shape``: a model that
    cannot take the data says so here, before anything compiles."""
    try:
        out, _ = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=False, key=None),
                                params, model_state, x_row)
    except Exception as err:  # the model's own complaint, whatever it raises
        raise ValueError(f"{name} x of shape (n, {', '.join(map(str, x_row.shape[1:]))}) ({x_row.dtype}) does not fit "
                         f"the model: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim < 1 or out.shape[0] != x_row.shape[0]:
        raise ValueError(f"the model must return outputs with one row per example, (batch, ...); for a batch "
                         f"{x_row.shape} it returned {jax.tree.map(lambda a: a.shape, out)}")
    return out


def check_sets(model, task, params, model_state, sets: dict, batch_size: int) -> dict:
    """Every ``(x, y)`` of ``sets`` checked against the first's row shape, the model and the loss."""
    x0 = sets["train"][0]
    checked = {}
    for name, pair in sets.items():
        x, y = check_pair(name, pair)
        if x.shape[1:] != x0.shape[1:]:
            raise ValueError(f"{name} x rows have shape {x.shape[1:]}; the training rows have {x0.shape[1:]}")
        checked[name] = (x, y)
    row = jax.ShapeDtypeStruct((batch_size,) + x0.shape[1:], device_dtype(x0.dtype))
    out = output_struct(model, params, model_state, row, task, "train")
    for name, (_, y) in checked.items():
        if task in losses.LOSSES.values():
            losses.check_targets(task, name, y, out)
        else:
            check_custom_loss(task, name, y, out, batch_size)
    return checked


def check_custom_loss(task, name, y, out, batch_size) -> None:
    yb = jax.ShapeDtypeStruct((batch_size,) + y.shape[1:], device_dtype(y.dtype))
    try:
        value = jax.eval_shape(task.loss, out, yb)
    except Exception as err:
        raise ValueError(f"the loss cannot take the model's outputs {tuple(out.shape)} and {name} targets "
                         f"{yb.shape} ({y.dtype}): {type(err).__name__}: {err}") from err
    if not isinstance(value, jax.ShapeDtypeStruct) or value.shape != ():
        raise ValueError(f"the loss must return a scalar; for outputs {tuple(out.shape)} and {name} targets "
                         f"{yb.shape} it returned {jax.tree.map(lambda a: a.shape, value)}")


def mask_leaves(weight_decay_mask, params) -> tuple | None:
    """The weight-decay mask as a flat tuple of bools (hashable: it keys the compiled programs)."""
    if weight_decay_mask is None:
        return None
    mask = weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask
    leaves, structure = jax.tree.flatten(mask)
    if structure != jax.tree.structure(params):
        raise ValueError(f"weight_decay_mask must have the structure of params; got {structure}, params have "
                         f"{jax.tree.structure(params)}")
    return tuple(bool(m) for m in leaves)


def layout(sets: dict, chunk: int, task) -> tuple[tuple, dict]:
    """Every set in one host array of chunks, the training set first: ``((xs (k, chunk, ...), ys,
    mask (k, chunk)), {name: chunk indices})``. Each set is padded with zero rows to whole chunks
    (``mask`` marks the real rows), so the training rows are the first ``len(x_train)`` of the
    flattened array. Classification sets that mix integer labels and one-hot rows become one-hot
    (exact for integer labels)."""
    y_rows = {ye.shape[1:] for _, ye in sets.values()}
    if len(y_rows) > 1 and task.name == "cross_entropy":
        k = max(r[0] for r in y_rows if r)
        sets = {name: (xe, data.one_hot(ye, k) if ye.ndim == 1 else ye) for name, (xe, ye) in sets.items()}
    elif len(y_rows) > 1:
        raise ValueError(f"every set's targets must have the same row shape; got {sorted(y_rows)}")
    canon = lambda a: device_dtype(a.dtype)  # float64 -> float32 unless x64: cast below, on the host, once
    x0, y0 = sets["train"]
    where, k = {}, 0
    for name, (xe, _) in sets.items():
        where[name] = range(k, k + max(1, -(-len(xe) // chunk)))
        k = where[name].stop
    xs = np.zeros((k * chunk,) + x0.shape[1:], canon(x0))  # filled in place: one host copy of the data
    ys = np.zeros((k * chunk,) + y0.shape[1:], canon(y0) if y0.dtype != np.int64 else np.int32)
    mask = np.zeros(k * chunk, bool)
    for name, (xe, ye) in sets.items():
        rows = slice(where[name].start * chunk, where[name].start * chunk + len(xe))
        xs[rows], ys[rows], mask[rows] = xe, ye, True
    return tuple(a.reshape((k, chunk) + a.shape[1:]) for a in (xs, ys, mask)), where
