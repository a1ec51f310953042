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
"""
from __future__ import annotations

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
_EVAL_CHUNK = 8192  # rows per evaluation chunk: bounds memory on large test sets


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
                      jnp.zeros([], jnp.int32))


def _as_hyper(weight_decay, drop_rate) -> Hyper:
    for name, v, hi in (("weight_decay", weight_decay, None), ("drop_rate", drop_rate, 1.0)):
        if isinstance(v, (int, float)) and not (v >= 0 and (hi is None or v < hi)):
            raise ValueError(f"{name} must be in [0, {hi or 'inf'}); got {v}")
    return Hyper(jnp.asarray(weight_decay, jnp.float32), jnp.asarray(drop_rate, jnp.float32))


def make_train_step(optimizer: optim.Optimizer, *, activation="relu", dropout_mode="inverted",
                    use_dropout=False, use_weight_decay=True) -> Callable:
    """``step(state, x, y, hyper) -> (state, loss)``: one update on one batch (pure)."""

    def loss_fn(params, bn_state, x, y, key, hyper):
        logits, new_bn = nn.apply(params, x, state=bn_state, train=True, key=key, activation=activation,
                                  drop_rate=hyper.drop_rate if use_dropout else 0.0, dropout_mode=dropout_mode)
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


def make_epoch(optimizer: optim.Optimizer, *, batch_size: int, sampling: str = "epoch", **step_kwargs) -> Callable:
    """``epoch(state, x, y, hyper) -> (state, step_losses)``: ``len(x) // batch_size`` steps in one scan.

    ``sampling="epoch"``: a fresh permutation each epoch, cut into full batches (the remainder
    is dropped, a different one each epoch). ``"replacement"``: the book's ``np.random.choice``,
    every batch drawn independently with replacement.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
    step = make_train_step(optimizer, **step_kwargs)

    def epoch(state: TrainState, x, y, hyper: Hyper):
        n = x.shape[0]
        steps = n // batch_size
        e = state.step // steps
        idx = data.epoch_indices(jax.random.fold_in(jax.random.fold_in(state.key, 0), e), n, batch_size,
                                 replace=sampling == "replacement")  # (steps, batch_size)

        def body(state, batch_idx):
            return step(state, jnp.take(x, batch_idx, axis=0), jnp.take(y, batch_idx, axis=0), hyper)

        return jax.lax.scan(body, state, idx)

    return epoch


def evaluate(params, bn_state, x, y, *, activation="relu", drop_rate=0.0, dropout_mode="inverted"):
    """``(mean loss, accuracy)`` in evaluation mode, computed in chunks of at most 8,192 rows.

    The loss here is the data term only (no weight-decay penalty).
    """
    n = x.shape[0]
    if n == 0:
        return jnp.float32(jnp.nan), jnp.float32(jnp.nan)
    chunk = min(n, _EVAL_CHUNK)
    pad = (-n) % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    ys = jnp.concatenate([y, jnp.zeros((pad,) + y.shape[1:], y.dtype)]) if pad else y
    valid = (jnp.arange(n + pad) < n).reshape(-1, chunk)
    xs, ys = xs.reshape((-1, chunk) + x.shape[1:]), ys.reshape((-1, chunk) + y.shape[1:])

    def one(args):
        xc, yc, mask = args
        logits, _ = nn.apply(params, xc, state=bn_state, train=False, activation=activation,
                             drop_rate=drop_rate, dropout_mode=dropout_mode)
        logp = jax.nn.log_softmax(logits, axis=-1)
        if jnp.issubdtype(yc.dtype, jnp.integer):
            nll = -jnp.take_along_axis(logp, yc[:, None], axis=-1)[:, 0]
            label = yc
        else:
            nll = -jnp.sum(yc * logp, axis=-1)
            label = jnp.argmax(yc, axis=-1)
        correct = jnp.argmax(logits, axis=-1) == label
        return jnp.sum(jnp.where(mask, nll, 0)), jnp.sum(jnp.where(mask, correct, False))

    loss_sums, hits = jax.lax.map(one, (xs, ys, valid))
    return jnp.sum(loss_sums) / n, jnp.sum(hits).astype(jnp.float32) / n


def _fmt(record: dict, epoch: int, epochs: int) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {record['train_loss']:.4f}", f"train {100 * record['train_acc']:.1f}%"]
    for name in ("val", "test"):
        if f"{name}_acc" in record:
            parts.append(f"{name} {100 * record[f'{name}_acc']:.1f}%")
    parts.append(f"{record['time']:.1f}s")
    return "  ".join(parts)


def _check_finite(step_losses: np.ndarray, record: dict, step: int, epoch: int) -> None:
    """Stop on a NaN or Inf loss, naming the first bad step; the caller's last saved state
    (the previous epoch's) stays the last good one."""
    bad = ~np.isfinite(step_losses)
    if bad.any():
        first = int(np.argmax(bad))
        at = step - len(step_losses) + first + 1
        raise FloatingPointError(f"training diverged: loss {step_losses[first]} at step {at} (epoch {epoch}); "
                                 f"the state after epoch {epoch - 1} is the last good one")
    if not np.isfinite(record.get("train_eval_loss", 0.0)):
        raise FloatingPointError(f"training diverged: the parameters after epoch {epoch} (step {step}) give a "
                                 f"non-finite loss; the state after epoch {epoch - 1} is the last good one")


def fit(key, params, optimizer: optim.Optimizer, train, *, epochs: int, batch_size: int = 100,
        validation=None, test=None, activation="relu", weight_decay=0.0, drop_rate=0.0,
        dropout_mode="inverted", sampling="epoch", state: TrainState | None = None,
        best: TrainState | None = None, history: dict | None = None, verbose: bool = True,
        on_epoch: Callable | None = None) -> FitResult:
    """Train ``params`` with ``optimizer`` on ``train = (x, y)`` for ``epochs`` epochs in total.

    Args:
      key: the run's PRNG key (batch order and dropout derive from it and the step).
      params: initial parameters (``nn.init_mlp``); not modified.
      optimizer: any ``(init, update)`` pair.
      train, validation, test: ``(x, y)`` pairs of arrays; validation and test are optional.
      epochs: total number of epochs; a resumed run continues up to it.
      weight_decay: the book's L2 strength (loss penalty on weights only); drop_rate: dropout.
      state, best, history: from an earlier ``fit`` (or a checkpoint) to resume.
      verbose: print one dense line per epoch. on_epoch: ``f(epoch, result_so_far)`` after each
        epoch (checkpointing); returning ``False`` stops training.

    Raises:
      FloatingPointError: a NaN or Inf loss, naming the first bad step. It is detected once per
        epoch from the losses the scan returns (no host sync per step), before ``on_epoch``
        runs, so a checkpoint written there never holds a diverged state.

    Returns:
      :class:`FitResult` with the last state, the best-validation state and the history.
    """
    x, y = (jnp.asarray(a) for a in train)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"train x and y must have the same number of rows; got {x.shape[0]} and {y.shape[0]}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= x.shape[0]:
        raise ValueError(f"batch_size must be an int in [1, {x.shape[0]}] (the training set size); got {batch_size!r}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int; got {epochs!r}")
    hyper = _as_hyper(weight_decay, drop_rate)
    use_dropout = not (isinstance(drop_rate, (int, float)) and drop_rate == 0)
    epoch_fn = jax.jit(make_epoch(optimizer, batch_size=batch_size, sampling=sampling, activation=activation,
                                  dropout_mode=dropout_mode, use_dropout=use_dropout,
                                  use_weight_decay=not (isinstance(weight_decay, (int, float)) and weight_decay == 0)),
                       donate_argnums=0)
    eval_fn = jax.jit(lambda p, s, xe, ye, r: evaluate(p, s, xe, ye, activation=activation, drop_rate=r,
                                                        dropout_mode=dropout_mode))
    eval_rate = hyper.drop_rate if use_dropout else jnp.float32(0)
    sets = {"train": (x, y)}
    for name, pair in (("val", validation), ("test", test)):
        if pair is not None and len(pair[0]):
            sets[name] = tuple(jnp.asarray(a) for a in pair)

    if state is None:
        state = init_state(key, params, optimizer)
    state = jax.tree.map(jnp.copy, state)  # donated below: never invalidate the caller's arrays
    history = {k: list(v) for k, v in (history or {}).items()}
    steps_per_epoch = x.shape[0] // batch_size
    done = int(state.step) // steps_per_epoch
    best_acc = max(history.get("val_acc", [-1.0]), default=-1.0)
    for epoch in range(done + 1, epochs + 1):
        start = time.perf_counter()
        state, step_losses = epoch_fn(state, x, y, hyper)
        record = {"epoch": epoch}
        for name, (xe, ye) in sets.items():
            loss, acc = eval_fn(state.params, state.bn_state, xe, ye, eval_rate)
            record[f"{name}_eval_loss"], record[f"{name}_acc"] = float(loss), float(acc)
        step_losses = np.asarray(step_losses)  # one transfer per epoch: no host sync inside the scan
        _check_finite(step_losses, record, int(state.step), epoch)
        record["train_loss"] = float(step_losses.mean())
        record["time"] = time.perf_counter() - start
        history.setdefault("step_loss", []).extend(step_losses.tolist())
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        if "val_acc" in record and (best is None or record["val_acc"] > best_acc):
            best_acc, best = record["val_acc"], jax.tree.map(jnp.copy, state)  # copy: state is donated next
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
