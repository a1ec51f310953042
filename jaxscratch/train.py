"""Training any :class:`nn.Model`: a pure train step, whole epochs fused in one ``lax.scan``,
evaluation, history.

Contract:
  * :class:`TrainState` holds everything a run needs to continue: ``params``, ``opt_state``,
    ``model_state`` (the model's non-trained variables, e.g. batch-norm statistics; an empty
    pytree when there are none), the run's base PRNG ``key`` and ``step`` (updates done, int32).
    Every function here takes a state and returns a new one; nothing is mutated.
  * The model is any ``nn.Model(init, apply)``; the loss is a task of :func:`losses.task`:
    ``"cross_entropy"`` (accuracy reported, the best state is the one with the best validation
    accuracy), ``"mse"`` (RMSE reported, best = lowest validation loss) or a callable
    ``loss(outputs, y)`` (loss reported, best = lowest validation loss). Data are checked
    against the model before anything compiles: ``x`` ``(n, ...)`` as the model accepts it
    (found by ``jax.eval_shape``), targets that fit the loss and the model's outputs (the checks
    and the chunk layout of the data live in the private ``_fitdata``). NumPy's float64 inputs
    and targets and int64 labels are cast to float32 and int32 on the host, once, as the data
    are laid out for their one upload (unless ``jax_enable_x64``): JAX never truncates them
    and never warns that it would.
  * Randomness is a pure function of ``(key, step)``: epoch ``e`` draws its batch order from
    ``fold_in(fold_in(key, 0), e)`` and step ``t`` its dropout key from
    ``fold_in(fold_in(key, 1), t)``. ``fit`` initialises the model with ``model.init(key)``
    unless given ``params`` or a ``state``. So a run stopped after any epoch and resumed from
    its state gives bit-identical results to an uninterrupted one.
  * :func:`make_epoch` builds ``epoch(state, x, y, hyper) -> (state, step_losses)``: one epoch
    of ``len(x) // batch_size`` steps in a single ``lax.scan``. The data are arguments (never
    closed over: a closed-over array becomes a compile-time constant) and stay on the device;
    batches are gathered inside the scan. ``hyper`` (:class:`Hyper`) holds the traced weight
    decay, so one compiled epoch serves every value (and ``vmap``).
  * Weight decay is the book's ``0.5 * weight_decay * sum(|w| ** 2)`` added to the loss, over
    the leaves that are weights: by default :func:`losses.is_weight` (inexact, ``ndim >= 2``:
    the book's MLP gets exactly its weight matrices), or ``weight_decay_mask`` (a pytree of
    bools like ``params`` or a callable ``params -> mask``).
  * :func:`fit` runs epochs from Python (one compiled call per epoch, the state buffers
    donated), evaluates the train/validation/test sets after each with the one evaluator that
    :func:`evaluate` also uses, keeps the best state besides the last, and returns the per-step
    losses and per-epoch metrics as NumPy arrays. No host transfer happens inside an epoch.
  * Progress within an epoch: ``fit(chunk_steps=k, on_steps=f)`` runs each epoch as compiled
    chunks of ``k`` steps -- one program whatever the last chunk's length (a ``fori_loop`` with
    a traced trip count over the epoch's batch order, which is computed once per epoch on the
    device) -- reads back each chunk's step losses (``k`` numbers) and calls ``f(epoch,
    steps_done, steps_per_epoch, last_loss)``. Parameters and data never leave the device and
    the results are bit-identical to whole epochs (tested on CPU, both samplings, batch norm,
    dropout, weight decay, resume).
  * Compilation: ``fit`` keeps its compiled epoch and evaluation programs in the library's one
    cache of programs (the private ``_compiled``), keyed by the model, the task,
    ``optimizer.update`` and the static configuration, so a second ``fit`` with
    the same objects (``nn.mlp_model`` returns the same object for the same arguments; an
    ``optim.inject_hyperparams`` optimizer with other values) or another ``weight_decay`` value
    compiles nothing.
  * Scale: ``fit(..., mesh=jax.sharding.Mesh(...))`` splits every batch over the mesh's data
    axis (data parallelism; parameters and state replicated, XLA inserts the all-reduce).
    ``compute_dtype=jnp.bfloat16`` runs the model on bf16 copies of the floating parameters and
    inputs while parameters, optimizer state, model state and the loss stay float32.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import _compiled, _fitdata, _hostrandom, data, losses, nn, optim

__all__ = ["FitResult", "Hyper", "TrainState", "evaluate", "fit", "init_state", "make_epoch",
           "make_train_step", "run_steps", "SAMPLINGS"]

SAMPLINGS = ("epoch", "replacement")
EVAL_CHUNK = 2048  # rows per evaluation chunk (fit and evaluate): one compiled program, bounded memory


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    model_state: Any
    key: jax.Array
    step: jax.Array


class Hyper(NamedTuple):
    """The traced weight-decay strength (one compilation serves every value)."""

    weight_decay: jax.Array | float = 0.0


class FitResult(NamedTuple):
    state: TrainState        # after the last epoch
    best: TrainState         # best validation metric (the last state when there is no validation set)
    history: dict            # NumPy arrays: "step_loss" per step, the rest per epoch


def init_state(key, params, optimizer: optim.Optimizer, model_state=()) -> TrainState:
    """A fresh state: ``optimizer.init(params)``, the given model state, step 0."""
    return TrainState(params, optimizer.init(params), model_state, key, jax.device_put(np.int32(0)))


def _cast(tree, dtype):
    """Real floating leaves of ``tree`` as ``dtype`` (``None``: unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _master_dtype(params):
    """The dtype outputs are cast back to under mixed precision: the first floating parameter's."""
    floats = [a.dtype for a in jax.tree.leaves(params) if jnp.issubdtype(a.dtype, jnp.floating)]
    return floats[0] if floats else jnp.float32


def _run(model: nn.Model, params, model_state, x, *, train: bool, key, compute_dtype):
    """``model.apply`` under ``compute_dtype``, its outputs back in the parameters' precision."""
    out, new_state = model.apply(_cast(params, compute_dtype), model_state, _cast(x, compute_dtype),
                                 train=train, key=key)
    if compute_dtype is not None:
        out = _cast(out, _master_dtype(params))
    return out, new_state


def _penalty(params, mask_leaves: tuple | None, weight_decay):
    """``0.5 * weight_decay * sum(|w| ** 2)`` over the leaves where ``mask_leaves`` (flat, static)."""
    if mask_leaves is None:
        return losses.l2_penalty(params, weight_decay)
    mask = jax.tree.unflatten(jax.tree.structure(params), list(mask_leaves))
    return losses.l2_penalty(params, weight_decay, mask)


def make_train_step(model: nn.Model, optimizer: optim.Optimizer, *, loss="cross_entropy", use_weight_decay=True,
                    weight_decay_mask: tuple | None = None, compute_dtype=None) -> Callable:
    """``step(state, x, y, hyper) -> (state, loss)``: one update on one batch (pure).

    ``weight_decay_mask``: ``None`` (:func:`losses.is_weight`) or a flat tuple of bools, one per
    parameter leaf. ``compute_dtype`` (e.g. ``jnp.bfloat16``): the model runs on parameters and
    inputs cast to it; gradients, the loss and the optimizer stay in the parameters' dtype.
    """
    loss_fn = _make_loss(model, loss, use_weight_decay, weight_decay_mask, compute_dtype)

    def step(state: TrainState, x, y, hyper: Hyper):
        (value, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, x, y, _step_key(state.key, state.step), hyper)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optim.apply_updates(state.params, updates)
        return TrainState(params, opt_state, model_state, state.key, state.step + 1), value

    return step


def _make_loss(model: nn.Model, loss, use_weight_decay: bool, weight_decay_mask, compute_dtype) -> Callable:
    """``loss_fn(params, model_state, x, y, key, hyper) -> (loss, new model state)``: the training
    objective of :func:`make_train_step` (and of the optimizer comparison's vmapped models)."""
    task = losses.task(loss)

    def loss_fn(params, model_state, x, y, key, hyper):
        out, new_state = _run(model, params, model_state, x, train=True, key=key, compute_dtype=compute_dtype)
        value = task.loss(out, y)
        if use_weight_decay:
            value = value + _penalty(params, weight_decay_mask, jnp.asarray(hyper.weight_decay).astype(value.dtype))
        return value, new_state

    return loss_fn


def _step_key(key, step):
    """The key a training step hands the model (dropout) from the state's key and step."""
    return jax.random.fold_in(jax.random.fold_in(key, 1), step)


def make_epoch(model: nn.Model, optimizer: optim.Optimizer, *, batch_size: int, sampling: str = "epoch",
               sharding=None, **step_kwargs) -> Callable:
    """``epoch(state, x, y, hyper, n=None) -> (state, step_losses)``: ``n // batch_size`` steps in one scan.

    ``sampling="epoch"``: a fresh permutation each epoch, cut into full batches (the remainder
    is dropped, a different one each epoch). ``"replacement"``: the book's ``np.random.choice``,
    every batch drawn independently with replacement. ``n`` (static, default ``len(x)``): draw
    from the first ``n`` rows only (``fit`` pads the data). ``sharding``: where each gathered
    batch goes (a ``NamedSharding`` splitting rows over devices, for data parallelism).
    ``step_kwargs`` go to :func:`make_train_step`.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
    step = make_train_step(model, optimizer, **step_kwargs)

    def epoch(state: TrainState, x, y, hyper: Hyper, n: int | None = None):
        n = x.shape[0] if n is None else n
        return run(state, x, y, hyper, _epoch_order(state.key, state.step, n, batch_size, sampling))

    run = _steps_over(step, sharding)
    return epoch


def _epoch_order(key, step, n: int, batch_size: int, sampling: str):
    """:func:`make_epoch`'s batch order ``(n // batch_size, batch_size)`` for the epoch that
    ``step`` (a state's step count) is in, from the state's ``key``."""
    e = step // (n // batch_size)
    return data.epoch_indices(jax.random.fold_in(jax.random.fold_in(key, 0), e), n, batch_size,
                              replace=sampling == "replacement")


def _steps_over(step: Callable, sharding=None) -> Callable:
    """``run(state, x, y, hyper, idx) -> (state, step_losses)``: one ``step`` per row of ``idx``
    ``(steps, batch_size)``, in one scan: :func:`make_epoch`'s epoch once its batch order is known
    (``fit`` passes the order it computed on the host, ``_hostrandom``)."""
    def run(state: TrainState, x, y, hyper: Hyper, idx):
        def body(state, batch_idx):
            xb, yb = jnp.take(x, batch_idx, axis=0), jnp.take(y, batch_idx, axis=0)
            if sharding is not None:
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), sharding)
            return step(state, xb, yb, hyper)

        return jax.lax.scan(body, state, idx)

    return run


def _make_chunk(model: nn.Model, optimizer: optim.Optimizer, *, chunk: int, batch_size: int, sharding=None,
                **step_kwargs) -> Callable:
    """``run(state, x, y, hyper, idx, offset) -> (state, step_losses)``: steps ``offset`` to
    ``offset + chunk`` (fewer at the epoch's end: a traced trip count, so one program serves every
    chunk) of the epoch whose batch order ``idx`` ``(steps, batch_size)`` is (:func:`make_epoch`'s
    own). ``step_losses`` ``(chunk,)``: the losses of the steps run, then NaN. The steps are
    :func:`make_epoch`'s, so a chunked epoch equals a whole one bit for bit (tested)."""
    step = make_train_step(model, optimizer, **step_kwargs)

    def one(state, x, y, hyper, batch_idx):
        xb, yb = jnp.take(x, batch_idx, axis=0), jnp.take(y, batch_idx, axis=0)
        if sharding is not None:
            xb, yb = jax.lax.with_sharding_constraint((xb, yb), sharding)
        return step(state, xb, yb, hyper)

    def run(state: TrainState, x, y, hyper: Hyper, idx, offset):
        loss = jax.eval_shape(one, state, x, y, hyper, idx[0])[1]

        def body(i, carry):
            state, step_losses = carry
            state, value = one(state, x, y, hyper, jax.lax.dynamic_index_in_dim(idx, offset + i, keepdims=False))
            return state, step_losses.at[i].set(value)

        count = jnp.minimum(chunk, idx.shape[0] - offset)
        return jax.lax.fori_loop(0, count, body, (state, jnp.full((chunk,), jnp.nan, loss.dtype)))

    return run


# ----------------------------------------------------------------- evaluation
def _chunk_sums(model, task, params, model_state, xc, yc, mask, compute_dtype=None) -> dict:
    """Summed per-example loss (and correct predictions, for classification) over the rows of one
    chunk where ``mask``: the one evaluator of ``fit``, :func:`evaluate` and the sweeps."""
    out, _ = _run(model, params, model_state, xc, train=False, key=None, compute_dtype=compute_dtype)
    per, correct = task.per_example(out, yc)
    sums = {"loss": jnp.sum(jnp.where(mask, per, 0))}
    if correct is not None:
        sums["correct"] = jnp.sum(jnp.where(mask, correct, False))
    return sums


def _metrics(task, sums: dict, n: int, sqrt=math.sqrt) -> dict:
    """``{"loss", "acc" | "rmse"}`` (means over ``n`` rows) from summed chunk results."""
    out = {"loss": sums["loss"] / n}
    if task.metric == "acc":
        out["acc"] = sums["correct"] / n
    elif task.metric == "rmse":
        out["rmse"] = sqrt(out["loss"])
    return out


def evaluate(model: nn.Model, params, model_state, x, y, *, loss="cross_entropy", compute_dtype=None) -> dict:
    """Metrics of ``(x, y)`` in evaluation mode: ``{"loss", "acc"}`` for cross-entropy, ``{"loss",
    "rmse"}`` for MSE, ``{"loss"}`` for a callable loss (the data term only, no weight decay).

    Computed in chunks of :data:`EVAL_CHUNK` rows (memory stays bounded on large sets); traceable,
    so sweeps call it inside their vmapped programs. An empty set gives NaN.
    """
    task = losses.task(loss)
    x, y = jnp.asarray(x), jnp.asarray(y)
    n = x.shape[0]
    if n == 0:
        nan = jnp.float32(jnp.nan)
        return {k: nan for k in ("loss", task.metric) if k}
    pad = (-n) % EVAL_CHUNK if n > EVAL_CHUNK else 0
    k = (n + pad) // EVAL_CHUNK if pad or n > EVAL_CHUNK else 1
    chunks = tuple(jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]).reshape((k, -1) + a.shape[1:])
                   for a in (x, y))
    mask = (jnp.arange(n + pad) < n).reshape(k, -1)
    one = lambda c: _chunk_sums(model, task, params, model_state, *c, compute_dtype)
    sums = one((chunks[0][0], chunks[1][0], mask[0])) if k == 1 else jax.tree.map(
        jnp.sum, jax.lax.map(one, (*chunks, mask)))
    sums = {name: v.astype(jnp.float32) for name, v in sums.items()}
    return _metrics(task, sums, n, sqrt=jnp.sqrt)


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



# ----------------------------------------------------------------- fit
def _programs(model, task, update, *, batch_size, sampling, n, use_weight_decay, mask_leaves, compute_dtype,
              mesh, data_axis, host_order) -> tuple[Callable, Callable]:
    """The compiled epoch and evaluation-chunk programs of a configuration, kept by
    ``_compiled.program``. Both take every set in ``fit``'s chunk layout (``_fitdata.layout``);
    with ``host_order`` the epoch program takes its batch order as a last argument."""
    return _compiled.program(_build_programs, model, task, update, batch_size, sampling, n, use_weight_decay,
                             mask_leaves, compute_dtype, mesh, data_axis, host_order)


def _build_programs(model, task, update, batch_size, sampling, n, use_weight_decay, mask_leaves, compute_dtype,
                    mesh, data_axis, host_order) -> tuple[Callable, Callable]:
    sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
    step_kwargs = dict(loss=task, use_weight_decay=use_weight_decay, weight_decay_mask=mask_leaves,
                       compute_dtype=compute_dtype)
    epoch = make_epoch(model, optim.Optimizer(None, update), batch_size=batch_size, sampling=sampling,
                       sharding=sharding, **step_kwargs)
    ordered = _steps_over(make_train_step(model, optim.Optimizer(None, update), **step_kwargs), sharding)

    def epoch_fn(state, xs, ys, hyper, *idx):  # idx: the epoch's batch order, when host_order
        flat = lambda a: a.reshape((-1,) + a.shape[2:])  # (k, chunk, ...) -> (k * chunk, ...): free
        if host_order:
            state, step_losses = ordered(state, flat(xs), flat(ys), hyper, *idx)
        else:
            state, step_losses = epoch(state, flat(xs), flat(ys), hyper, n=n)
        return state, (step_losses, _all_finite(state.params))

    def eval_fn(params, model_state, xs, ys, mask, i):  # chunk i of fit's layout
        xc, yc, mask = (jax.lax.dynamic_index_in_dim(a, i, keepdims=False) for a in (xs, ys, mask))
        if sharding is not None:
            xc, yc, mask = jax.lax.with_sharding_constraint((xc, yc, mask), sharding)
        return _chunk_sums(model, task, params, model_state, xc, yc, mask, compute_dtype)

    return _compiled.jit(epoch_fn, donate_argnums=0), _compiled.jit(eval_fn, evaluation=True)


def _chunk_programs(model, task, update, *, chunk, batch_size, sampling, n, use_weight_decay, mask_leaves,
                    compute_dtype, mesh, data_axis, host_order) -> tuple[Callable, Callable]:
    """``(indices_fn, chunk_fn)``: an epoch's batch order from ``(key, step)`` (not called with
    ``host_order``), and ``chunk`` steps of it (:func:`_make_chunk`) with the parameters'
    finiteness; one program each."""
    return _compiled.program(_build_chunk_programs, model, task, update, chunk, batch_size, sampling, n,
                             use_weight_decay, mask_leaves, compute_dtype, mesh, data_axis)


_FINITE_CONCAT_MAX = 1 << 24  # values per dtype checked in one concatenation (a temporary copy)


def _all_finite(params):
    """Whether every inexact leaf is finite, in few XLA fusions: ``x * 0`` is zero for a finite
    ``x`` and NaN for an Inf or NaN, and a sum with a NaN is NaN in any order, so one product and
    sum over the leaves concatenated (per dtype) tells. In a 784-100-100-10 MLP's epoch program
    the check took 3 of 57 fusions; checked per leaf (``isfinite`` then ``all``), 11 of 65,
    ~0.07 s more of its ~0.5 s of compiling.
    Larger models (over :data:`_FINITE_CONCAT_MAX` values of a dtype) are summed leaf by leaf,
    with no copy of their parameters."""
    by_dtype: dict = {}
    for p in jax.tree.leaves(params):
        if jnp.issubdtype(p.dtype, jnp.inexact):
            by_dtype.setdefault(p.dtype, []).append(p.ravel())
    sums = []
    for flat in by_dtype.values():
        parts = [jnp.concatenate(flat)] if sum(a.size for a in flat) <= _FINITE_CONCAT_MAX else flat
        sums += [jnp.sum(a * 0) == 0 for a in parts]
    return jnp.all(jnp.stack(sums)) if sums else jnp.bool_(True)


def _build_chunk_programs(model, task, update, chunk, batch_size, sampling, n, use_weight_decay, mask_leaves,
                          compute_dtype, mesh, data_axis) -> tuple[Callable, Callable]:
    sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
    run = _make_chunk(model, optim.Optimizer(None, update), chunk=chunk, batch_size=batch_size, sharding=sharding,
                      loss=task, use_weight_decay=use_weight_decay, weight_decay_mask=mask_leaves,
                      compute_dtype=compute_dtype)

    def indices_fn(key, step):  # make_epoch's batch order of the epoch that step is in
        return _epoch_order(key, step, n, batch_size, sampling)

    def chunk_fn(state, xs, ys, hyper, idx, offset):
        flat = lambda a: a.reshape((-1,) + a.shape[2:])
        state, step_losses = run(state, flat(xs), flat(ys), hyper, idx, offset)
        return state, (step_losses, _all_finite(state.params))

    return (jax.jit(indices_fn, compiler_options=_compiled.one_off_options()),
            _compiled.jit(chunk_fn, donate_argnums=0))


_copy_program = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # one program per tree, not one per leaf


def _copy(tree):
    """New buffers holding ``tree``'s values, placed alike: where this process holds them all, a
    transfer with nothing to compile (the jitted copy is a program of its own, ~0.02 s of
    compiling in every ``fit``); arrays spread over several processes take the program. Each
    committed leaf is put on its own sharding: without one, ``device_put`` moved PRNG key arrays
    to the default device, and a ``fit`` on a mesh compiled its epoch program twice."""
    leaves, treedef = jax.tree.flatten(tree)
    if all(getattr(a, "is_fully_addressable", True) for a in leaves):
        placement = [a.sharding if getattr(a, "committed", False) else None for a in leaves]
        return treedef.unflatten(jax.device_put(leaves, placement, may_alias=False))
    return _copy_program(tree)


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
    if replicated.is_fully_addressable:  # this process holds every device of the mesh
        return data_axis, devices, lambda a: jax.device_put(a, replicated)
    return data_axis, devices, lambda tree: jax.tree.map(lambda a: _put_across_processes(a, replicated), tree)


def _put_across_processes(a, replicated):
    """``jax.device_put(a, replicated)`` for a mesh that spans several processes
    (``jax.distributed``). Every process passes the same value, and device_put checks that they
    agree. It refuses typed PRNG keys there ("must be a Device or a Sharding which represents
    addressable devices"), so a key travels as its raw ``uint32`` data and is wrapped again."""
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        raw = jax.device_put(jax.random.key_data(a), replicated)
        return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(a))
    return jax.device_put(a, replicated)


def _check_settings(epochs, batch_size, n, sampling, compute_dtype, weight_decay, chunk_steps=None) -> None:
    if chunk_steps is not None and (isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int)
                                    or chunk_steps < 1):
        raise ValueError(f"chunk_steps must be None or a positive int; got {chunk_steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in [1, {n}] (the training set size); got {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int; got {epochs!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
    if compute_dtype is not None and not jnp.issubdtype(compute_dtype, jnp.floating):
        raise TypeError(f"compute_dtype must be a floating dtype such as jnp.bfloat16; got {compute_dtype!r}")
    if isinstance(weight_decay, (int, float)) and not weight_decay >= 0:
        raise ValueError(f"weight_decay must be in [0, inf); got {weight_decay}")


def _initial_state(key, model, optimizer, params, model_state, state):
    """The state ``fit`` starts from: ``state`` (resuming), else ``params`` (and ``model_state``,
    else the model's initial one), else ``model.init(key)``."""
    if state is not None:
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a train.TrainState (from fit or a checkpoint); got {type(state).__name__}")
        return state
    if params is None or model_state is None:
        init_params, init_model_state = model.init(key)
        params = init_params if params is None else params
        model_state = init_model_state if model_state is None else model_state
    return init_state(key, params, optimizer, model_state)  # eager: optimizer zeros are filled on the host


class _Run(NamedTuple):
    """What ``fit``'s epoch loop needs, prepared once."""

    epoch_fn: Callable
    eval_fn: Callable
    arrays: tuple            # device: (xs, ys, mask) in the chunk layout
    index: list              # device int32 scalars: chunk indices, uploaded once
    where: dict              # set name -> chunk indices
    sizes: dict              # set name -> rows
    hyper: Hyper
    task: losses.Task
    guarded: bool
    steps_per_epoch: int
    chunks: tuple | None     # (indices_fn, chunk_fn, device offsets, chunk) or None: one program per epoch
    order: _HostOrder | None  # the epochs' batch orders computed on the host, or None: in the programs


class _HostOrder:
    """``make_epoch``'s batch order of each epoch, computed with NumPy (``_hostrandom``, bit for
    bit JAX's) and uploaded, instead of inside the epoch program: the permutation's hash loop and
    sort were ~0.28 s of a 784-100-100-10 epoch program's ~0.97 s of XLA compiling (2-core CPU),
    and cost ~10 ms of NumPy per epoch of 54,000 rows. The next epoch's order is computed while
    the device runs the current one."""

    MAX_ROWS = 1 << 21  # above this, the host's ~0.2 s per million rows is left to the device

    def __init__(self, key, n: int, batch_size: int, replace: bool, put: Callable, epochs: int):
        self.key, self.n, self.batch_size, self.replace, self.put = key, n, batch_size, replace, put
        self.epochs = epochs  # fit's: no order is computed ahead for an epoch past the last
        self.ready: tuple | None = None  # (epoch index, device array)

    @staticmethod
    def usable(key, n: int) -> bool:
        return n <= _HostOrder.MAX_ROWS and _hostrandom.supported(key)

    def get(self, e: int):
        """The order of epoch ``e`` (``state.step // steps``), on the device."""
        if self.ready is None or self.ready[0] != e:
            self.ready = (e, self._upload(e))
        return self.ready[1]

    def prefetch(self, e: int) -> None:
        """Compute epoch ``e``'s order now, if fit runs that epoch."""
        if e < self.epochs:
            self.ready = (e, self._upload(e))

    def _upload(self, e: int):
        return self.put(_hostrandom.fit_epoch_indices(self.key, e, self.n, self.batch_size, self.replace))


def _prepare(key, model, optimizer, loss, train, validation, test, *, params, model_state, state, epochs,
             batch_size, weight_decay, weight_decay_mask, sampling, mesh, data_axis, compute_dtype, chunk_steps):
    """Checks, the initial state, the data on the device and the compiled programs."""
    model, task = _fitdata.as_model(model), losses.task(loss)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an (init, update) pair such as optim.adam(); got {type(optimizer).__name__}")
    raw = {"train": train, **{k: v for k, v in (("val", validation), ("test", test)) if v is not None}}
    n = len(_fitdata.check_pair("train", train)[0])
    _check_settings(epochs, batch_size, n, sampling, compute_dtype, weight_decay, chunk_steps)
    state = _initial_state(key, model, optimizer, params, model_state, state)
    sets = {k: v for k, v in _fitdata.check_sets(model, task, state.params, state.model_state, raw, batch_size).items()
            if k == "train" or len(v[0])}
    data_axis, devices, put = _placement(mesh, data_axis, batch_size)
    chunk = -(-min(EVAL_CHUNK, max(len(xe) for xe, _ in sets.values())) // devices) * devices
    host, where = _fitdata.layout(sets, chunk, task)
    arrays = tuple(put(a) for a in host)  # one upload: training reads its rows, evaluation every chunk
    index = [put(np.int32(i)) for i in range(len(host[0]))]  # uploaded once: no transfer per epoch
    order = (_HostOrder(_hostrandom.key_data(state.key), n, batch_size, sampling == "replacement", put, epochs)
             if _HostOrder.usable(state.key, n) else None)
    config = dict(batch_size=batch_size, sampling=sampling, n=n,
                  use_weight_decay=not (isinstance(weight_decay, (int, float)) and weight_decay == 0),
                  mask_leaves=_fitdata.mask_leaves(weight_decay_mask, state.params),
                  compute_dtype=None if compute_dtype is None else jnp.dtype(compute_dtype), mesh=mesh,
                  data_axis=data_axis, host_order=order is not None)
    epoch_fn, eval_fn = _programs(model, task, optimizer.update, **config)
    steps = n // batch_size
    chunks = None
    if chunk_steps is not None:
        chunk = min(chunk_steps, steps)
        chunks = (*_chunk_programs(model, task, optimizer.update, chunk=chunk, **config),
                  [put(np.int32(o)) for o in range(0, steps, chunk)], chunk)  # uploaded once
    wd = weight_decay.astype(jnp.float32) if isinstance(weight_decay, jax.Array) else np.float32(weight_decay)
    state = _copy(put(state) if mesh is not None else state)  # donated below: never invalidate the caller's arrays
    run = _Run(epoch_fn, eval_fn, arrays, index, where, {k: len(v[0]) for k, v in sets.items()},
               Hyper(put(wd)), task, isinstance(state.opt_state, optim.ApplyIfFiniteState), steps, chunks, order)
    return run, state


def _train_epoch(run: _Run, state: TrainState, epoch: int, on_steps: Callable | None):
    """One epoch: ``(state, step_losses, params_finite)``. Whole: one program, nothing read back.
    In chunks: one read of each chunk's losses, then ``on_steps(epoch, steps_done, steps, loss)``;
    parameters and data stay on the device."""
    e = epoch - 1  # state.step // steps: fit's epochs are whole
    idx = () if run.order is None else (run.order.get(e),)
    if run.chunks is None:
        state, (step_losses, finite) = run.epoch_fn(state, run.arrays[0], run.arrays[1], run.hyper, *idx)
        if run.order is not None:
            run.order.prefetch(e + 1)  # while the device runs this epoch
        return state, step_losses, finite
    indices_fn, chunk_fn, offsets, chunk = run.chunks
    idx = idx[0] if idx else indices_fn(state.key, state.step)  # (steps, batch_size), on the device
    parts = []
    for i, offset in enumerate(offsets):
        state, (step_losses, finite) = chunk_fn(state, run.arrays[0], run.arrays[1], run.hyper, idx, offset)
        parts.append(jax.device_get(step_losses)[:min(chunk, run.steps_per_epoch - i * chunk)])
        if on_steps is not None:
            on_steps(epoch, min((i + 1) * chunk, run.steps_per_epoch), run.steps_per_epoch, float(parts[-1][-1]))
    return state, np.concatenate(parts), finite


def _precompile(run: _Run, state: TrainState, first_epoch: int) -> None:
    """Compile the epoch (or chunk) and evaluation programs now (cached): faster than beside an epoch."""
    idx = () if run.order is None else (run.order.get(first_epoch - 1),)  # kept for that epoch
    if run.chunks is None:
        _compiled.precompile(run.epoch_fn, state, run.arrays[0], run.arrays[1], run.hyper, *idx)
    else:
        indices_fn, chunk_fn, offsets, _ = run.chunks
        idx = idx[0] if idx else indices_fn(state.key, state.step)  # runs it: the signature the epochs pass
        _compiled.precompile(chunk_fn, state, run.arrays[0], run.arrays[1], run.hyper, idx, offsets[0])
    _compiled.precompile(run.eval_fn, state.params, state.model_state, *run.arrays, run.index[0])


def _record(run: _Run, epoch: int, step_losses, sums: dict) -> dict:
    """One epoch's metrics from its step losses and the summed evaluation of every set."""
    record = {"epoch": epoch}
    for name, parts in sums.items():
        total = {k: sum(float(p[k]) for p in parts) for k in parts[0]}
        for k, v in _metrics(run.task, total, run.sizes[name]).items():
            record[f"{name}_eval_loss" if k == "loss" else f"{name}_{k}"] = float(v)
    record["train_loss"] = float(np.nanmean(step_losses)) if run.guarded else float(step_losses.mean())
    return record


def _score(task, record: dict) -> float | None:
    """Higher is better: validation accuracy for classification, minus the validation loss otherwise."""
    if "val_eval_loss" not in record:
        return None
    return record["val_acc"] if task.metric == "acc" else -record["val_eval_loss"]


def _fmt(record: dict, epoch: int, epochs: int) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {record['train_loss']:.4f}"]
    for name in ("train", "val", "test"):
        if f"{name}_acc" in record:
            parts.append(f"{name} {100 * record[f'{name}_acc']:.1f}%")
        elif f"{name}_rmse" in record:
            parts.append(f"{name} rmse {record[f'{name}_rmse']:#.4g}")
        elif f"{name}_eval_loss" in record and name != "train":
            parts.append(f"{name} loss {record[f'{name}_eval_loss']:.4f}")
    parts.append(f"{record['time']:.1f}s")
    return "  ".join(parts)


def fit(key, model: nn.Model, optimizer: optim.Optimizer, train, *, epochs: int, batch_size: int = 100,
        loss="cross_entropy", validation=None, test=None, params=None, model_state=None,
        state: TrainState | None = None, best: TrainState | None = None, history: dict | None = None,
        weight_decay=0.0, weight_decay_mask=None, sampling="epoch", verbose: bool = True,
        on_epoch: Callable | None = None, mesh=None, data_axis: str | None = None, compute_dtype=None,
        chunk_steps: int | None = None, on_steps: Callable | None = None) -> FitResult:
    """Train ``model`` with ``optimizer`` on ``train = (x, y)`` for ``epochs`` epochs in total.

    Args:
      key: the run's PRNG key: ``model.init(key)`` (unless ``params`` or ``state`` is given), the
        batch order and the dropout keys derive from it.
      model: an :class:`nn.Model` (``nn.mlp_model``, ``nn.from_flax``, ``nn.from_equinox``, your own).
      optimizer: any ``(init, update)`` pair. Wrap it in ``optim.apply_if_finite`` to skip
        updates with non-finite gradients (``history["skipped_steps"]`` counts them per epoch).
      train, validation, test: ``(x, y)`` pairs, ``x`` ``(n, ...)``; checked against the model and
        the loss before anything compiles. Validation and test are optional. float64 (int64)
        arrays are cast to float32 (int32) on the host, once, without JAX's truncation warning.
      epochs: total number of epochs; a resumed run continues up to it.
      loss: ``"cross_entropy"``, ``"mse"`` or a callable ``loss(outputs, y) -> scalar`` (see
        :func:`losses.task`).
      params, model_state: initial parameters (and model state) instead of ``model.init(key)``.
      state, best, history: from an earlier ``fit`` (or a checkpoint) to resume.
      weight_decay, weight_decay_mask: the book's L2 strength and which leaves it touches.
      verbose: one dense line per epoch. on_epoch: ``f(epoch, result_so_far)`` after each epoch
        (checkpointing); returning ``False`` stops training.
      mesh, data_axis: a ``jax.sharding.Mesh`` to split each batch over the devices of its
        ``data_axis``; ``batch_size`` must be a multiple of their number.
      compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision.
      chunk_steps, on_steps: run each epoch in compiled chunks of ``chunk_steps`` steps (one
        program; the results are bit-identical to whole epochs) and call ``on_steps(epoch,
        steps_done, steps_per_epoch, last_loss)`` after each: progress within a long epoch.

    Raises:
      ValueError, TypeError: data that do not fit the model or the loss, or bad settings (named).
      FloatingPointError: a NaN or Inf loss, naming the first bad step, detected once per epoch
        before ``on_epoch`` runs, so a checkpoint written there never holds a diverged state.

    Returns:
      :class:`FitResult` with the last state, the best-validation state and the history.
    """
    run, state = _prepare(key, model, optimizer, loss, train, validation, test, params=params,
                          model_state=model_state, state=state, epochs=epochs, batch_size=batch_size,
                          weight_decay=weight_decay, weight_decay_mask=weight_decay_mask, sampling=sampling,
                          mesh=mesh, data_axis=data_axis, compute_dtype=compute_dtype, chunk_steps=chunk_steps)
    history = {k: list(v) for k, v in (history or {}).items()}
    step, skipped = (int(v) for v in jax.device_get(
        (state.step, state.opt_state.total_notfinite if run.guarded else 0)))
    scores = [s for s in (_score(run.task, {k: v[i] for k, v in history.items()})
                          for i in range(len(history.get("epoch", [])))) if s is not None]
    best_score = max(scores, default=-math.inf)
    if step // run.steps_per_epoch < epochs:
        _precompile(run, state, step // run.steps_per_epoch + 1)
    for epoch in range(step // run.steps_per_epoch + 1, epochs + 1):
        start = time.perf_counter()
        state, step_losses, params_finite = _train_epoch(run, state, epoch, on_steps)
        sums = {name: [run.eval_fn(state.params, state.model_state, *run.arrays, run.index[i]) for i in chunks]
                for name, chunks in run.where.items()}
        extra = state.opt_state.total_notfinite if run.guarded else 0
        # the epoch's one sync (explicit: fit runs under jax.transfer_guard("disallow"), tested)
        step_losses, params_finite, sums, extra, step = jax.device_get(
            (step_losses, params_finite, sums, extra, state.step))
        _check_finite(step_losses, bool(params_finite), int(step), epoch, run.guarded)
        record = _record(run, epoch, step_losses, sums)
        if run.guarded:
            record["skipped_steps"], skipped = int(extra) - skipped, int(extra)
        record["time"] = time.perf_counter() - start
        history.setdefault("step_loss", []).extend(step_losses.tolist())
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        score = _score(run.task, record)
        if score is not None and (best is None or score > best_score):
            best_score, best = score, _copy(state)  # copy: state is donated next
        if verbose:
            print(_fmt(record, epoch, epochs), flush=True)
        if on_epoch is not None and on_epoch(epoch, FitResult(state, best if "val" in run.where else state,
                                                              history)) is False:
            break
    if best is None or "val" not in run.where:
        best = state
    return FitResult(state, best, {k: np.asarray(v) for k, v in history.items()})


def run_steps(model: nn.Model, optimizer: optim.Optimizer, params, model_state, x, y, batch_idx, *, key=None,
              loss="cross_entropy") -> tuple:
    """Train on the given batches: ``batch_idx`` ``(steps, batch)`` indexes ``x`` and ``y``.

    One ``lax.scan`` over the rows of ``batch_idx``; returns ``(final TrainState, step losses)``.
    The optimizer comparison uses it to give every optimizer the very same batches.
    """
    step = make_train_step(model, optimizer, loss=loss, use_weight_decay=False)
    state = init_state(jax.random.key(0) if key is None else key, params, optimizer, model_state)

    def body(state, idx):
        return step(state, jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), Hyper())

    return jax.lax.scan(body, state, batch_idx)
