"""Training: a pure train step, whole epochs fused in one ``lax.scan``, evaluation, history.

Contract:
  * :class:`TrainState` holds everything a run needs to continue: ``params``, ``opt_state``,
    ``bn_state`` (running batch-norm statistics, an empty pytree for plain nets), the run's base
    PRNG ``key`` and ``step`` (updates done, int32). Every function here takes a state and
    returns a new one; nothing is mutated.
  * Randomness is a pure function of ``(key, step)``: epoch ``e`` draws its batch order from
    ``fold_in(fold_in(key, 0), e)`` and step ``t`` its dropout masks from
    ``fold_in(fold_in(key, 1), t)``. So a run stopped after any epoch and resumed from its
    state gives bit-identical results to an uninterrupted one.
  * :func:`make_epoch` builds ``epoch(state, x, y, hyper) -> (state, step_losses)``: one epoch
    of ``len(x) // batch_size`` steps in a single ``lax.scan``. The data are arguments (never
    closed over: a closed-over array becomes a compile-time constant) and stay on the device;
    batches are gathered inside the scan. ``hyper`` (:class:`Hyper`) holds the traced
    regularisation strengths, so one compiled epoch serves every value (and ``vmap``).
  * :func:`fit` runs epochs from Python (one compiled call per epoch, the state buffers
    donated), evaluates on the train/validation/test sets after each, keeps the state with the
    best validation accuracy besides the last, and returns the per-step losses and per-epoch
    metrics as NumPy arrays.
  * Loss: softmax cross-entropy plus the book's ``0.5 * weight_decay * sum(W ** 2)`` over weight
    matrices only (``losses.l2_penalty``).
  * Compilation: ``fit`` keeps its compiled epoch and evaluation programs in a cache keyed by
    ``optimizer.update`` and the static configuration, so a second ``fit`` with the same
    optimizer object (or an ``optim.inject_hyperparams`` optimizer with other values), or other
    ``weight_decay`` / ``drop_rate`` values, compiles nothing. Evaluation compiles one program
    for a fixed chunk of rows that serves the train, validation and test sets alike.
  * Scale: ``fit(..., mesh=jax.sharding.Mesh(...))`` splits every batch over the mesh's data
    axis (data parallelism); the data set, parameters and optimizer state are replicated, and
    XLA inserts the gradient all-reduce. ``compute_dtype=jnp.bfloat16`` computes the forward
    and backward passes in bf16 while parameters, optimizer state, batch-norm statistics and
    the loss stay float32 (mixed precision, for GPU/TPU).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import data, losses, nn, optim

__all__ = ["FitResult", "Hyper", "TrainState", "evaluate", "fit", "init_state", "make_epoch",
           "make_train_step", "run_steps", "SAMPLINGS"]

SAMPLINGS = ("epoch", "replacement")
_EVAL_CHUNK = 8192  # rows per evaluation chunk in evaluate(): bounds memory on large test sets
_FIT_EVAL_CHUNK = 2048  # fit pads each set to a multiple of this: one compiled program, little waste


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    bn_state: Any
    key: jax.Array
    step: jax.Array


class Hyper(NamedTuple):
    """Regularisation strengths, traced (one compilation serves every value)."""

    weight_decay: jax.Array | float = 0.0
    drop_rate: jax.Array | float = 0.0


class FitResult(NamedTuple):
    state: TrainState        # after the last epoch
    best: TrainState         # best validation accuracy (the last state when there is no validation set)
    history: dict            # NumPy arrays: "step_loss" per step, the rest per epoch


def init_state(key, params, optimizer: optim.Optimizer) -> TrainState:
    """A fresh state: ``optimizer.init(params)``, zero running statistics, step 0."""
    return TrainState(params, optimizer.init(params), nn.init_bn_state(params), key,
                      jax.device_put(np.int32(0)))


def _as_hyper(weight_decay, drop_rate) -> Hyper:
    for name, v, hi in (("weight_decay", weight_decay, None), ("drop_rate", drop_rate, 1.0)):
        if isinstance(v, (int, float)) and not (v >= 0 and (hi is None or v < hi)):
            raise ValueError(f"{name} must be in [0, {hi or 'inf'}); got {v}")
    as_f32 = lambda v: v.astype(jnp.float32) if isinstance(v, jax.Array) else np.float32(v)
    return Hyper(as_f32(weight_decay), as_f32(drop_rate))


def _cast(tree, dtype):
    """Floating leaves of ``tree`` as ``dtype`` (``None``: unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_train_step(optimizer: optim.Optimizer, *, activation="relu", dropout_mode="inverted",
                    use_dropout=False, use_weight_decay=True, compute_dtype=None) -> Callable:
    """``step(state, x, y, hyper) -> (state, loss)``: one update on one batch (pure).

    ``compute_dtype`` (e.g. ``jnp.bfloat16``): the network runs on parameters and inputs cast to
    it; gradients, the loss, the optimizer and batch-norm statistics stay in the parameters'
    dtype (float32 master weights).
    """

    def loss_fn(params, bn_state, x, y, key, hyper):
        logits, new_bn = nn.apply(_cast(params, compute_dtype), _cast(x, compute_dtype), state=bn_state,
                                  train=True, key=key, activation=activation,
                                  drop_rate=hyper.drop_rate if use_dropout else 0.0, dropout_mode=dropout_mode)
        if compute_dtype is not None:  # the loss in the parameters' precision
            logits = logits.astype(jax.tree.leaves(params)[0].dtype)
        loss = losses.softmax_cross_entropy(logits, y)
        if use_weight_decay:
            loss = loss + losses.l2_penalty(params, hyper.weight_decay.astype(loss.dtype))
        return loss, new_bn

    def step(state: TrainState, x, y, hyper: Hyper):
        key = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)
        (loss, bn_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.bn_state, x, y, key, hyper)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optim.apply_updates(state.params, updates)
        return TrainState(params, opt_state, bn_state, state.key, state.step + 1), loss

    return step


def make_epoch(optimizer: optim.Optimizer, *, batch_size: int, sampling: str = "epoch", sharding=None,
               **step_kwargs) -> Callable:
    """``epoch(state, x, y, hyper, n=None) -> (state, step_losses)``: ``n // batch_size`` steps in one scan.

    ``sampling="epoch"``: a fresh permutation each epoch, cut into full batches (the remainder
    is dropped, a different one each epoch). ``"replacement"``: the book's ``np.random.choice``,
    every batch drawn independently with replacement. ``n`` (static, default ``len(x)``): draw
    from the first ``n`` rows only (``fit`` pads the data). ``sharding``: where each gathered
    batch goes (a ``NamedSharding`` splitting rows over devices, for data parallelism).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
    step = make_train_step(optimizer, **step_kwargs)

    def epoch(state: TrainState, x, y, hyper: Hyper, n: int | None = None):
        n = x.shape[0] if n is None else n
        steps = n // batch_size
        e = state.step // steps
        idx = data.epoch_indices(jax.random.fold_in(jax.random.fold_in(state.key, 0), e), n, batch_size,
                                 replace=sampling == "replacement")  # (steps, batch_size)

        def body(state, batch_idx):
            xb, yb = jnp.take(x, batch_idx, axis=0), jnp.take(y, batch_idx, axis=0)
            if sharding is not None:
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), sharding)
            return step(state, xb, yb, hyper)

        return jax.lax.scan(body, state, idx)

    return epoch


def _chunk_sums(params, bn_state, xc, yc, mask, drop_rate, *, activation, dropout_mode, compute_dtype=None):
    """Summed loss and number of correct predictions over the rows of one chunk where ``mask``."""
    logits, _ = nn.apply(_cast(params, compute_dtype), _cast(xc, compute_dtype), state=bn_state, train=False,
                         activation=activation, drop_rate=drop_rate, dropout_mode=dropout_mode)
    if compute_dtype is not None:
        logits = logits.astype(jax.tree.leaves(params)[0].dtype)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(yc.dtype, jnp.integer):
        nll = -jnp.take_along_axis(logp, yc[:, None], axis=-1)[:, 0]
        nll = jnp.where((yc >= 0) & (yc < logp.shape[-1]), nll, jnp.nan)  # a bad label shows
        label = yc
    else:
        nll = -jnp.sum(yc.astype(logp.dtype) * logp, axis=-1)
        label = jnp.argmax(yc, axis=-1)
    correct = jnp.argmax(logits, axis=-1) == label
    return jnp.sum(jnp.where(mask, nll, 0)), jnp.sum(jnp.where(mask, correct, False))


def evaluate(params, bn_state, x, y, *, activation="relu", drop_rate=0.0, dropout_mode="inverted"):
    """``(mean loss, accuracy)`` in evaluation mode, computed in chunks of at most 8,192 rows.

    The loss here is the data term only (no weight-decay penalty).
    """
    n = x.shape[0]
    if n == 0:
        return jnp.float32(jnp.nan), jnp.float32(jnp.nan)
    if n <= _EVAL_CHUNK:  # one chunk: no loop
        loss_sum, hits = _chunk_sums(params, bn_state, x, y, jnp.ones(n, bool), drop_rate, activation=activation,
                                     dropout_mode=dropout_mode)
        return loss_sum / n, hits.astype(jnp.float32) / n
    chunk = _EVAL_CHUNK
    pad = (-n) % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    ys = jnp.concatenate([y, jnp.zeros((pad,) + y.shape[1:], y.dtype)]) if pad else y
    valid = (jnp.arange(n + pad) < n).reshape(-1, chunk)
    xs, ys = xs.reshape((-1, chunk) + x.shape[1:]), ys.reshape((-1, chunk) + y.shape[1:])

    def one(args):
        xc, yc, mask = args
        return _chunk_sums(params, bn_state, xc, yc, mask, drop_rate, activation=activation,
                           dropout_mode=dropout_mode)

    loss_sums, hits = jax.lax.map(one, (xs, ys, valid))
    return jnp.sum(loss_sums) / n, jnp.sum(hits).astype(jnp.float32) / n


def _fmt(record: dict, epoch: int, epochs: int) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {record['train_loss']:.4f}", f"train {100 * record['train_acc']:.1f}%"]
    for name in ("val", "test"):
        if f"{name}_acc" in record:
            parts.append(f"{name} {100 * record[f'{name}_acc']:.1f}%")
    parts.append(f"{record['time']:.1f}s")
    return "  ".join(parts)


def _check_finite(step_losses: np.ndarray, params_finite: bool, step: int, epoch: int, guarded: bool) -> None:
    """Stop on a NaN or Inf loss, naming the first bad step, or on non-finite parameters; the
    caller's last saved state (the previous epoch's) stays the last good one. With
    ``optim.apply_if_finite`` (``guarded``) a bad step was skipped, so only parameters stop the run."""
    bad = ~np.isfinite(step_losses)
    if bad.any() and not guarded:
        first = int(np.argmax(bad))
        at = step - len(step_losses) + first + 1
        raise FloatingPointError(f"training diverged: loss {step_losses[first]} at step {at} (epoch {epoch}); "
                                 f"the state after epoch {epoch - 1} is the last good one")
    if not params_finite:
        raise FloatingPointError(f"training diverged: the parameters after epoch {epoch} (step {step}) hold a "
                                 f"NaN or Inf; the state after epoch {epoch - 1} is the last good one")


def _check_data(name: str, pair, n_in: int, n_out: int):
    """``pair`` as NumPy arrays, checked against the model: ``x`` ``(n, n_in)`` floating, ``y``
    integer labels in ``[0, n_out)`` or one-hot rows ``(n, n_out)``."""
    try:
        x, y = (np.asarray(a) for a in pair)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (x, y) pair of arrays; got {type(pair).__name__}") from None
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"{name} x must have shape (n, {n_in}) to match the model's input layer; got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} x must be floating point; got {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{name} x must be finite; found {int(bad.sum())} NaN or Inf values "
                         f"(the first in row {int(np.argmax(bad.any(axis=1)))})")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{name} x and y must have the same number of rows; got {x.shape[0]} and "
                         f"{y.shape[0] if y.ndim else 'a scalar'}")
    if np.issubdtype(y.dtype, np.integer):
        if y.ndim != 1:
            raise ValueError(f"{name} integer labels must have shape (n,); got {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= n_out):
            raise ValueError(f"{name} labels must be in [0, {n_out}) for the model's {n_out} outputs; "
                             f"found {y.min()}..{y.max()}")
    elif y.ndim != 2 or y.shape[1] != n_out:
        raise ValueError(f"{name} y must be integer labels (n,) or one-hot rows (n, {n_out}); "
                         f"got {y.dtype} of shape {y.shape}")
    return x, y


def _layout(sets: dict, chunk: int, n_out: int) -> tuple[tuple, dict]:
    """Every set in one host array of chunks, the training set first: ``((xs (k, chunk, d), ys,
    mask (k, chunk)), {name: chunk indices})``. Each set is padded with zero rows to whole chunks
    (``mask`` marks the real rows), so the training rows are the first ``len(x_train)`` of the
    flattened array. Mixed label formats become one-hot rows (exact for integer labels)."""
    one_hot = any(not np.issubdtype(ye.dtype, np.integer) for _, ye in sets.values())
    x_dtype = jnp.dtype(jnp.result_type(sets["train"][0].dtype))  # float64 -> float32 unless x64
    where, k = {}, 0
    for name, (xe, _) in sets.items():
        where[name] = range(k, k + max(1, -(-len(xe) // chunk)))
        k = where[name].stop
    d = sets["train"][0].shape[1]
    xs = np.zeros((k * chunk, d), x_dtype)  # filled in place: one host copy of the data
    ys = np.zeros((k * chunk, n_out), x_dtype) if one_hot else np.zeros(k * chunk, np.int32)
    mask = np.zeros(k * chunk, bool)
    for name, (xe, ye) in sets.items():
        rows = slice(where[name].start * chunk, where[name].start * chunk + len(xe))
        xs[rows], mask[rows] = xe, True
        ys[rows] = data.one_hot(ye, n_out) if one_hot and ye.ndim == 1 else ye
    return tuple(a.reshape((k, chunk) + a.shape[1:]) for a in (xs, ys, mask)), where


@functools.lru_cache(maxsize=32)
def _programs(update, *, batch_size, sampling, n, activation, dropout_mode, use_dropout, use_weight_decay,
              compute_dtype, mesh, data_axis) -> tuple[Callable, Callable]:
    """The compiled epoch and evaluation-chunk programs of a configuration (cached: see the
    module docstring). Both take every set in ``fit``'s chunk layout (:func:`_layout`)."""
    sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
    epoch = make_epoch(optim.Optimizer(None, update), batch_size=batch_size, sampling=sampling,
                       sharding=sharding, activation=activation, dropout_mode=dropout_mode,
                       use_dropout=use_dropout, use_weight_decay=use_weight_decay, compute_dtype=compute_dtype)

    def epoch_fn(state, xs, ys, hyper):
        flat = lambda a: a.reshape((-1,) + a.shape[2:])  # (k, chunk, ...) -> (k * chunk, ...): free
        state, step_losses = epoch(state, flat(xs), flat(ys), hyper, n=n)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.params)]))
        return state, (step_losses, finite)

    def eval_fn(params, bn_state, xs, ys, mask, i, rate):  # chunk i of fit's layout
        xc, yc, mask = (jax.lax.dynamic_index_in_dim(a, i, keepdims=False) for a in (xs, ys, mask))
        if sharding is not None:
            xc, yc, mask = jax.lax.with_sharding_constraint((xc, yc, mask), sharding)
        return _chunk_sums(params, bn_state, xc, yc, mask, rate, activation=activation,
                           dropout_mode=dropout_mode, compute_dtype=compute_dtype)

    return jax.jit(epoch_fn, donate_argnums=0), jax.jit(eval_fn)


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # one program per tree, not one per leaf


def _placement(mesh, data_axis, batch_size):
    """``(data_axis, devices on it, put)``: ``put`` places an array replicated over ``mesh`` (or on
    the default device)."""
    if mesh is None:
        return None, 1, jax.device_put  # explicit transfers (see the transfer_guard test)
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    if data_axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh has axes {mesh.axis_names}: name the batch axis with data_axis=")
        data_axis = mesh.axis_names[0]
    if data_axis not in mesh.axis_names:
        raise ValueError(f"data_axis must be one of the mesh's axes {mesh.axis_names}; got {data_axis!r}")
    devices = mesh.shape[data_axis]
    if batch_size % devices:
        raise ValueError(f"batch_size must be a multiple of the {devices} devices on mesh axis {data_axis!r}; "
                         f"got {batch_size}")
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return data_axis, devices, lambda a: jax.device_put(a, replicated)


def fit(key, params, optimizer: optim.Optimizer, train, *, epochs: int, batch_size: int = 100,
        validation=None, test=None, activation="relu", weight_decay=0.0, drop_rate=0.0,
        dropout_mode="inverted", sampling="epoch", state: TrainState | None = None,
        best: TrainState | None = None, history: dict | None = None, verbose: bool = True,
        on_epoch: Callable | None = None, mesh=None, data_axis: str | None = None,
        compute_dtype=None) -> FitResult:
    """Train ``params`` with ``optimizer`` on ``train = (x, y)`` for ``epochs`` epochs in total.

    Args:
      key: the run's PRNG key (batch order and dropout derive from it and the step).
      params: initial parameters (``nn.init_mlp``); not modified.
      optimizer: any ``(init, update)`` pair. Wrap it in ``optim.apply_if_finite`` to skip
        updates with non-finite gradients (``history["skipped_steps"]`` counts them per epoch).
      train, validation, test: ``(x, y)`` pairs of arrays, checked against the model: ``x``
        ``(n, n_in)``, ``y`` integer labels in ``[0, n_out)`` or one-hot; validation and test are
        optional.
      epochs: total number of epochs; a resumed run continues up to it.
      weight_decay: the book's L2 strength (loss penalty on weights only); drop_rate: dropout.
      state, best, history: from an earlier ``fit`` (or a checkpoint) to resume.
      verbose: print one dense line per epoch. on_epoch: ``f(epoch, result_so_far)`` after each
        epoch (checkpointing); returning ``False`` stops training.
      mesh, data_axis: a ``jax.sharding.Mesh`` to split each batch over the devices of its
        ``data_axis`` (default: the mesh's only axis); ``batch_size`` must be a multiple of
        their number. The results equal single-device training to float rounding.
      compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision (see :func:`make_train_step`).

    Raises:
      ValueError, TypeError: data that do not fit the model, or bad settings (named).
      FloatingPointError: a NaN or Inf loss, naming the first bad step. It is detected once per
        epoch from the losses the scan returns (no host sync per step), before ``on_epoch``
        runs, so a checkpoint written there never holds a diverged state.

    Returns:
      :class:`FitResult` with the last state, the best-validation state and the history.
    """
    if not params or "w" not in params[0]:
        raise ValueError("params must be an MLP from nn.init_mlp (a list of layer dicts)")
    n_in, n_out = params[0]["w"].shape[0], params[-1]["w"].shape[1]
    x, y = _check_data("train", train, n_in, n_out)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= x.shape[0]:
        raise ValueError(f"batch_size must be an int in [1, {x.shape[0]}] (the training set size); got {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int; got {epochs!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
    if compute_dtype is not None and not jnp.issubdtype(compute_dtype, jnp.floating):
        raise TypeError(f"compute_dtype must be a floating dtype such as jnp.bfloat16; got {compute_dtype!r}")
    hyper = _as_hyper(weight_decay, drop_rate)
    use_dropout = not (isinstance(drop_rate, (int, float)) and drop_rate == 0)
    data_axis, devices, put = _placement(mesh, data_axis, batch_size)
    sets = {"train": (x, y)}
    for name, pair in (("val", validation), ("test", test)):
        if pair is not None and len(pair[0]):
            sets[name] = _check_data(name, pair, n_in, n_out)
    chunk = min(_FIT_EVAL_CHUNK, max(len(xe) for xe, _ in sets.values()))
    chunk = -(-chunk // devices) * devices
    host, where = _layout(sets, chunk, n_out)
    arrays = tuple(put(a) for a in host)  # one upload: training reads its rows, evaluation every chunk
    index = [put(np.int32(i)) for i in range(len(host[0]))]  # uploaded once: no transfer per epoch
    del host
    epoch_fn, eval_fn = _programs(
        optimizer.update, batch_size=batch_size, sampling=sampling, n=x.shape[0], activation=activation,
        dropout_mode=dropout_mode, use_dropout=use_dropout,
        use_weight_decay=not (isinstance(weight_decay, (int, float)) and weight_decay == 0),
        compute_dtype=None if compute_dtype is None else jnp.dtype(compute_dtype), mesh=mesh, data_axis=data_axis)
    hyper, eval_rate = jax.tree.map(put, hyper), put(hyper.drop_rate if use_dropout else np.float32(0))

    if state is None:
        state = init_state(key, params, optimizer)  # eager: optimizer zeros are filled on the host
    state = _copy(put(state) if mesh is not None else state)  # donated below: never invalidate the caller's arrays
    guarded = isinstance(state.opt_state, optim.ApplyIfFiniteState)
    history = {k: list(v) for k, v in (history or {}).items()}
    steps_per_epoch = x.shape[0] // batch_size
    step, skipped = jax.device_get((state.step, state.opt_state.total_notfinite if guarded else 0))
    done = int(step) // steps_per_epoch
    best_acc = max(history.get("val_acc", [-1.0]), default=-1.0)
    if done < epochs:  # compile both programs first (cached): a compile beside a running epoch is slower
        epoch_fn.lower(state, arrays[0], arrays[1], hyper).compile()
        eval_fn.lower(state.params, state.bn_state, *arrays, index[0], eval_rate).compile()
    for epoch in range(done + 1, epochs + 1):
        start = time.perf_counter()
        state, (step_losses, params_finite) = epoch_fn(state, arrays[0], arrays[1], hyper)
        sums = {name: [eval_fn(state.params, state.bn_state, *arrays, index[i], eval_rate) for i in chunks]
                for name, chunks in where.items()}
        extra = state.opt_state.total_notfinite if guarded else 0
        # the epoch's one sync (explicit: fit runs under jax.transfer_guard("disallow"), tested)
        step_losses, params_finite, sums, extra, step = jax.device_get(
            (step_losses, params_finite, sums, extra, state.step))
        record = {"epoch": epoch}
        for name, parts in sums.items():
            n = len(sets[name][0])
            record[f"{name}_eval_loss"] = float(sum(float(p[0]) for p in parts) / n)
            record[f"{name}_acc"] = float(sum(int(p[1]) for p in parts) / n)
        _check_finite(step_losses, bool(params_finite), int(step), epoch, guarded)
        record["train_loss"] = float(np.nanmean(step_losses)) if guarded else float(step_losses.mean())
        if guarded:
            record["skipped_steps"], skipped = int(extra) - skipped, int(extra)
        record["time"] = time.perf_counter() - start
        history.setdefault("step_loss", []).extend(step_losses.tolist())
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        if "val_acc" in record and (best is None or record["val_acc"] > best_acc):
            best_acc, best = record["val_acc"], _copy(state)  # copy: state is donated next
        if verbose:
            print(_fmt(record, epoch, epochs), flush=True)
        if on_epoch is not None and on_epoch(epoch, FitResult(state, best if "val" in sets else state, history)) is False:
            break
    if best is None or "val" not in sets:
        best = state
    return FitResult(state, best, {k: np.asarray(v) for k, v in history.items()})


def run_steps(optimizer: optim.Optimizer, params, x, y, batch_idx, *, key=None, activation="relu") -> tuple:
    """Train on the given batches: ``batch_idx`` ``(steps, batch)`` indexes ``x`` and ``y``.

    One ``lax.scan`` over the rows of ``batch_idx``; returns ``(final TrainState, step losses)``.
    The optimizer comparison uses it to give every optimizer the very same batches.
    """
    step = make_train_step(optimizer, activation=activation, use_weight_decay=False)
    state = init_state(jax.random.key(0) if key is None else key, params, optimizer)

    def body(state, idx):
        return step(state, jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), Hyper())

    return jax.lax.scan(body, state, batch_idx)
