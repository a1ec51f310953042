"""Many trainings as one compiled program: comparisons, vmapped trials, searches, K-fold CV.

Contract:
  * :func:`compare_optimizers` trains one model per optimizer on the very same batches (drawn
    as the book draws them), from the same initial weights (a controlled comparison: only the
    optimizer differs) or, given a function of the optimizer's name, from each optimizer's own
    (the book's ``ch06/optimizer_compare_mnist.py``: a freshly initialised network per
    optimizer, only the batches shared). All the optimizers train in one ``lax.scan`` program:
    the models' forward and backward passes vmapped, each optimizer's update applied to its own
    model, groups of optimizers on the devices side by side.
  * A :class:`Spec` fixes everything static about a trial: the model, the loss, the optimizer
    name, the batch size, ... The model is the book's MLP (``sizes``, ``activation``, ...), or
    ``model=``: an ``nn.Model``, or a factory ``f(**model_hparams) -> nn.Model`` called inside
    the vmapped trace, so the model's own hyperparameters are traced too. Hyperparameters are
    arrays of shape ``(T,)``, one value per trial: ``learning_rate`` and the optimizer's other
    keywords (``momentum``, ``b1``, ...), ``weight_decay`` (the book's L2 on weights, in the
    loss), and the model's: for the MLP ``drop_rate`` and ``init_scale`` (the weights' standard
    deviation), for a factory the names of its parameters. :func:`run_trials` trains all ``T``
    trials with ``jax.vmap``; trial ``i`` equals ``train.fit`` run alone with key
    ``fold_in(key, seeds[i])`` (which initialises the model) and its hyperparameters (tested,
    to float tolerance).
  * :class:`Trials` holds the batched states, the hyperparameters, the seeds and a history of
    per-epoch metrics of shape ``(T, epochs)``; :func:`train_trials` continues it,
    :func:`select` keeps some trials. That is all successive halving needs. Trials run in
    groups (all at once on an accelerator, a few at a time on a CPU), one compiled program
    per configuration whatever the number of trials or epochs.
  * :func:`random_search` (the book's protocol: log-uniform ranges, a validation split, trials
    ranked by final validation accuracy), :func:`successive_halving` on top of it, and
    :func:`kfold_cv`, vmapped over configurations and folds.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import _compiled, _fitdata, _hostrandom, data, losses, nn, optim, train

__all__ = ["CVResult", "Spec", "Trials", "compare_optimizers", "ensemble_accuracy", "init_trials",
           "kfold_cv", "random_search", "run_trials", "select", "successive_halving", "table",
           "train_trials"]

_MLP_HPARAMS = ("drop_rate", "init_scale")


def compare_optimizers(key, optimizers: dict, params, x, y, *, iterations: int, batch_size: int,
                       activation="relu", model: nn.Model | None = None, model_state=None,
                       loss="cross_entropy", devices=None) -> dict:
    """Train a model with each optimizer on the same ``iterations`` batches.

    Batches are drawn as the book does (``np.random.choice(n, batch_size)`` each step, with
    replacement) from ``key``, once, and shared by every optimizer. All the optimizers train in
    one compiled program: the models' forward and backward passes are vmapped, and each
    optimizer updates its own model. The optimizers are split into equal contiguous groups over
    ``devices`` (default: ``jax.local_devices()``, one per core on a CPU when set up with
    :func:`jaxscratch.devices.use_cpu_cores`), at most one device per optimizer; a group short
    of optimizers repeats its last one and drops that result. Each device runs its own group's
    updates (a ``lax.switch`` on its index; no communication). Results equal each optimizer's
    trained alone (``train.run_steps``) to float rounding: the fused program may round
    differently in the last bits, which chaotic runs amplify over thousands of steps.

    Args:
      key: PRNG key for the batch indices.
      optimizers: name -> :class:`optim.Optimizer`.
      params: the initial parameters every optimizer starts from; or a function
        ``params(name) -> parameters`` giving each optimizer its own start (the book's protocol,
        where every optimizer gets a freshly initialised network), called once per optimizer.
      x, y: training inputs ``(n, ...)`` and targets (integer labels ``(n,)`` by default).
      model, model_state, loss: any ``nn.Model`` and its state (default: the book's MLP that
        ``params`` are for, with ``activation``), and the loss.
      devices: where to run them.

    Returns:
      name -> ``(final TrainState, per-step losses as a NumPy array)``; each state is on the
      device that trained it.
    """
    x, y = np.asarray(x), np.asarray(y)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int; got {iterations!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= x.shape[0]:
        raise ValueError(f"batch_size must be an int in [1, {x.shape[0]}]; got {batch_size!r}")
    if not isinstance(optimizers, dict) or not optimizers:
        raise ValueError(f"optimizers must be a non-empty dict of name -> optimizer; got {optimizers!r}")
    for name, opt in optimizers.items():
        if not isinstance(opt, optim.Optimizer) and not (hasattr(opt, "init") and hasattr(opt, "update")):
            raise TypeError(f"optimizers[{name!r}] must be an (init, update) pair; got {type(opt).__name__}")
    names = list(optimizers)
    devices = _devices(devices)
    per = -(-len(names) // len(devices))  # optimizers per device
    devices = devices[:-(-len(names) // per)]  # 4 optimizers on 3 devices: 2 + 2, the third idle
    slots = names + names[-1:] * (per * len(devices) - len(names))  # slot i trains on devices[i // per]
    starts = {name: params(name) for name in names} if callable(params) else None
    first = params if starts is None else starts[names[0]]
    if model is None:
        model = nn.mlp_model(_mlp_sizes(first), activation=activation, batchnorm="gamma" in first[0])
    if starts is not None:
        for name, p in starts.items():
            if jax.tree.structure(p) != jax.tree.structure(first):
                raise ValueError(f"params({name!r}) must be shaped like params({names[0]!r}) (one model "
                                 f"for all); got {jax.tree.structure(p)} vs {jax.tree.structure(first)}")
    own = [first if starts is None else starts[name] for name in slots]
    model_states = [nn.init_bn_state(p) if model_state is None and isinstance(p, list) else model_state for p in own]
    stack = lambda trees: jax.tree.map(lambda *a: np.stack([np.asarray(v) for v in a]), *trees)
    batches = _draw_batches(key, iterations, batch_size, x.shape[0])
    program = _compiled.program(_build_comparison, model, tuple(optimizers[name] for name in slots),
                                losses.task(loss), devices)
    params_out, states_out, opt_states, step_losses = program(
        *jax.device_put((stack(own), stack(model_states)), _trial_sharding(devices)),
        *_replicated((x, y, batches), devices))
    by_slot = _host_columns([(params_out, states_out)])
    by_device = [_host_columns([s]) for s in opt_states]  # optimizer i's state, one row per device
    step_losses = np.asarray(_to_host(step_losses))
    key0 = jax.random.key(0)  # train.run_steps' state key
    out = {}
    for i, name in enumerate(names):
        device = jax.sharding.SingleDeviceSharding(devices[i // per])
        p, ms = _put_rows(by_slot, i, device)
        opt_state = _put_rows(by_device[i], i // per, device)
        state = train.TrainState(p, opt_state, ms, jax.device_put(key0, device),
                                 jax.device_put(np.int32(iterations), device))
        out[name] = (state, step_losses[i])
    return out


def _draw_batches(key, iterations: int, batch_size: int, n: int):
    """``jax.random.randint(key, (iterations, batch_size), 0, n)``: with JAX's default generator
    computed on the host, bit for bit (``_hostrandom``; its program compiled in 0.2-0.3 s), else
    as a one-off program."""
    if _hostrandom.supported(key) and n < 2 ** 31 and iterations * batch_size <= 1 << 22:  # <= ~0.4 s of NumPy
        return _hostrandom.randint(_hostrandom.key_data(key), iterations * batch_size, n).reshape(iterations, batch_size)
    return _compiled.once(_draw_on_device, key, iterations, batch_size, n, static_argnums=(1, 2, 3))


def _draw_on_device(key, iterations, batch_size, n):
    return jax.random.randint(key, (iterations, batch_size), 0, n)  # (iterations, batch)


def _build_comparison(model, opts: tuple, task, devices: tuple):
    """The comparison's program for ``opts`` (one optimizer per slot; NamedTuples of functions,
    compared by identity) on ``devices``: ``run(params, model_state, x, y, batch_idx) ->
    (params, model_state, opt_states, step_losses)``. The slots' models are stacked along the
    first axis and split over the devices; ``opt_states`` holds every optimizer's state once per
    device (a device trains only its own group's). A repeated comparison compiles nothing."""
    per = len(opts) // len(devices)
    groups = [range(g * per, (g + 1) * per) for g in range(len(devices))]

    loss_fn = train._make_loss(model, task, False, None, None)  # train.run_steps' objective
    # Each model gets the batch as its own (broadcast) rather than sharing it: XLA then runs each
    # model's first-layer matmuls as a one-model program does, not as one wider matmul for all
    # (which rounds differently from a model trained alone, and ran no faster here).
    grads_of = jax.vmap(jax.value_and_grad(loss_fn, has_aux=True), in_axes=(0, 0, 0, None, None, None))
    row = lambda tree, r: jax.tree.map(lambda a: a[r], tree)

    def update(g):
        def run(grads, opt_states, params):
            opt_states, new = list(opt_states), []
            for r, i in enumerate(groups[g]):
                updates, opt_states[i] = opts[i].update(row(grads, r), opt_states[i], row(params, r))
                new.append(optim.apply_updates(row(params, r), updates))
            return jax.tree.map(lambda *a: jnp.stack(a), *new), tuple(opt_states)
        return run

    def local(params, model_state, x, y, batch_idx):  # this device's ``per`` models
        # Optimizer i starts from row i % per here: its own model on its own device; on the other
        # devices some model of the same shapes, which it never trains there.
        opt_states = tuple(opt.init(row(params, i % per)) for i, opt in enumerate(opts))
        key = jax.random.key(0)  # train.run_steps' (the models' own randomness, e.g. dropout)

        def body(carry, idx):
            params, model_state, opt_states, step = carry
            xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
            (values, model_state), grads = grads_of(params, model_state, jnp.broadcast_to(xb, (per, *xb.shape)), yb,
                                                    train._step_key(key, step), train.Hyper())
            if len(devices) == 1:
                params, opt_states = update(0)(grads, opt_states, params)
            else:
                params, opt_states = jax.lax.switch(jax.lax.axis_index("trials"),
                                                    [update(g) for g in range(len(devices))], grads, opt_states,
                                                    params)
            return (params, model_state, opt_states, step + 1), values

        (params, model_state, opt_states, _), values = jax.lax.scan(
            body, (params, model_state, opt_states, jnp.int32(0)), batch_idx)
        return params, model_state, jax.tree.map(lambda a: a[None], opt_states), values.T

    return _compiled.jit(_sharded(local, devices, (True, True, False, False, False)))


def _devices(devices) -> tuple:
    """The devices a sweep spreads its trials over: ``jax.local_devices()`` by default."""
    devices = tuple(jax.local_devices() if devices is None else devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be a non-empty sequence of jax devices (e.g. jax.local_devices()); got "
                        f"{devices!r}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct; got {devices!r}")
    return devices


def _mlp_sizes(params) -> tuple:
    if not isinstance(params, list) or not params or "w" not in params[0]:
        raise TypeError(f"params are not the book's MLP (nn.init_mlp); pass model= for other models; got "
                        f"{type(params).__name__}")
    return (params[0]["w"].shape[0], *(layer["w"].shape[1] for layer in params))


# ----------------------------------------------------------------- vmapped trials
class Spec(NamedTuple):
    """What every trial of a sweep shares (hashable: it keys the compilation cache).

    ``sizes``, ``activation``, ``weight_init``, ``batchnorm`` and ``dropout_mode`` describe the
    book's MLP; ``model`` replaces it with an ``nn.Model`` or a factory ``f(**model_hparams) ->
    nn.Model``. ``loss`` is ``train.fit``'s."""

    sizes: tuple = ()
    optimizer: str = "sgd"
    activation: str = "relu"
    weight_init: Any = "he"
    batchnorm: bool = False
    dropout_mode: str = "inverted"
    batch_size: int = 100
    sampling: str = "epoch"
    optimizer_kwargs: tuple = ()  # static (name, value) pairs, e.g. (("eps_in_sqrt", True),)
    model: Any = None             # None: the MLP above; an nn.Model; or a factory of one
    loss: Any = "cross_entropy"


class Trials(NamedTuple):
    state: train.TrainState  # every leaf has a leading trial axis (T, ...)
    hparams: dict            # name -> (T,) float32
    seeds: jax.Array         # (T,) int32
    history: dict            # metric -> (T, epochs so far) NumPy


def _model_hparams(spec: Spec) -> set:
    """The hyperparameter names the spec's model takes: the MLP's, a factory's parameters, or none."""
    if spec.model is None:
        return set(_MLP_HPARAMS)
    if isinstance(spec.model, nn.Model):
        return set()
    if not callable(spec.model):
        raise TypeError(f"Spec.model must be an nn.Model or a factory f(**hparams) -> nn.Model; got "
                        f"{type(spec.model).__name__}")
    return set(inspect.signature(spec.model).parameters)


def _check_spec(spec: Spec, hparams: dict) -> None:
    if spec.optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec.optimizer!r}; valid choices: {sorted(optim.OPTIMIZERS)}")
    if spec.model is None and len(spec.sizes) < 2:
        raise ValueError(f"Spec needs the MLP's sizes (input, hidden..., output) or a model=; got sizes {spec.sizes!r}")
    losses.task(spec.loss)  # a bad loss fails here
    accepted = set(inspect.signature(optim.OPTIMIZERS[spec.optimizer]).parameters) - {"weight_decay", "mask", "weight_decay_mask"}
    valid = accepted | {"weight_decay"} | _model_hparams(spec)
    for name in hparams:
        if name not in valid:
            raise ValueError(f"cannot sweep {name!r} with {spec.optimizer} and this model; valid names: {sorted(valid)}")
    clash = (accepted | {"weight_decay"}) & _model_hparams(spec) if spec.model is not None else set()
    if clash:
        raise ValueError(f"the model factory's parameters {sorted(clash)} are also {spec.optimizer}'s or the "
                         f"training's hyperparameters; rename them in the factory")
    if spec.model is not None and not isinstance(spec.model, nn.Model):
        missing = {n for n, p in inspect.signature(spec.model).parameters.items()
                   if p.default is inspect.Parameter.empty} - set(hparams)
        if missing:
            raise ValueError(f"the model factory needs the hyperparameters {sorted(missing)}; give them in hparams")


def _optimizer(spec: Spec, hp: dict) -> optim.Optimizer:
    opt_hp = {k: v for k, v in hp.items() if k != "weight_decay" and k not in _model_hparams(spec)}
    return optim.OPTIMIZERS[spec.optimizer](**dict(spec.optimizer_kwargs), **opt_hp)


def _model(spec: Spec, hp: dict) -> nn.Model:
    """The trial's model; its hyperparameters (traced inside a sweep) come from ``hp``."""
    model_hp = {k: v for k, v in hp.items() if k in _model_hparams(spec)}
    if spec.model is None:
        return nn.mlp_model(spec.sizes, activation=spec.activation, batchnorm=spec.batchnorm,
                            weight_init=model_hp.get("init_scale", spec.weight_init),
                            drop_rate=model_hp.get("drop_rate", 0.0), dropout_mode=spec.dropout_mode)
    if isinstance(spec.model, nn.Model):
        return spec.model
    model = spec.model(**model_hp)
    if not isinstance(model, nn.Model):
        raise TypeError(f"the model factory must return an nn.Model; got {type(model).__name__}")
    return model


def _init_one(spec: Spec, key, seed, hp):
    k = jax.random.fold_in(key, seed)
    params, model_state = _model(spec, hp).init(k)
    return train.init_state(k, params, _optimizer(spec, hp), model_state)


def _mlp_draws(sizes: tuple, key, seed):
    """What the book's MLP draws at random for trial ``seed``: its key and its unit normals."""
    k = jax.random.fold_in(key, seed)
    return k, nn.unit_normals(k, sizes)


def _mlp_state(spec: Spec, k, normals, hp):
    """A trial's initial state from :func:`_mlp_draws` (no random numbers: a small program)."""
    weight_init = hp.get("init_scale", spec.weight_init)
    params = nn._layers_from_normals(normals, weight_init, spec.batchnorm)
    return train.init_state(k, params, _optimizer(spec, hp), nn.init_bn_state(params))


def _train_one(spec: Spec, epochs: int, state, hp, x, y, eval_sets, orders=None):
    """``epochs`` epochs of one trial, then its metrics on ``eval_sets``, epoch by epoch. ``orders``
    ``(epochs, steps, batch_size)``: the epochs' batch orders (``train.make_epoch``'s, so a trial
    equals ``fit`` run alone), or ``None``: drawn here."""
    model = _model(spec, hp)
    step = train.make_train_step(model, _optimizer(spec, hp), loss=spec.loss, use_weight_decay="weight_decay" in hp)
    run = train._steps_over(step)  # make_epoch's steps, given the batch order
    hyper = train.Hyper(hp.get("weight_decay", jnp.float32(0)))

    def body(state, order):
        if order is None:
            order = train._epoch_order(state.key, state.step, x.shape[0], spec.batch_size, spec.sampling)
        state, step_losses = run(state, x, y, hyper, order)
        record = {"train_loss": jnp.mean(step_losses)}
        for name, (xe, ye) in eval_sets.items():
            metrics = train.evaluate(model, state.params, state.model_state, xe, ye, loss=spec.loss)
            for k, v in metrics.items():
                record[f"{name}_eval_loss" if k == "loss" else f"{name}_{k}"] = v
        return state, record

    if epochs == 1 and orders is not None and orders.shape[0] == 1:  # train_trials': no loop of one epoch
        state, record = body(state, orders[0])
        return state, jax.tree.map(lambda v: v[None], record)
    return jax.lax.scan(body, state, orders, length=epochs)



def _trial_mesh(devices: tuple):
    return jax.sharding.Mesh(np.array(devices), ("trials",))


def _sharded(fn, devices: tuple, in_specs: tuple):
    """``fn`` (vmapped over trials) run with its trial axis split over ``devices``: each device
    trains its own trials, with no communication (``shard_map``); ``in_specs``: True for the
    arguments with a trial axis, False for those every device gets whole (the data)."""
    if len(devices) == 1:
        return fn
    P = jax.sharding.PartitionSpec
    return jax.shard_map(fn, mesh=_trial_mesh(devices), in_specs=tuple(P("trials") if t else P() for t in in_specs),
                         out_specs=P("trials"), check_vma=False)  # no collectives: nothing to check


# Initialisation runs once per sweep but, vmapped, took XLA 5-18 s to optimise on a 2-core CPU
# (its random-number loops); as a one-off program (_compiled.one_off_options) it compiles in
# well under 1 s, with the values XLA's defaults give. (Initialising trial by trial with
# nn.init_mlp's program compiles no faster and ran ~20 ms a trial.) The book's MLP draws its
# random numbers in a program keyed on its sizes alone, shared by every spec of that architecture
# (batch norm or not, any optimizer: the batch-norm grid's two specs, a search and its halving),
# and builds the state in a second, small program without random numbers.
def _build_init_many(spec: Spec, devices: tuple):
    fn = jax.vmap(functools.partial(_init_one, spec), in_axes=(None, 0, 0))
    return jax.jit(_sharded(fn, devices, (False, True, True)), compiler_options=_compiled.one_off_options(devices[0].platform))


def _build_mlp_draws(sizes: tuple, devices: tuple):
    fn = jax.vmap(functools.partial(_mlp_draws, sizes), in_axes=(None, 0))
    return jax.jit(_sharded(fn, devices, (False, True)), compiler_options=_compiled.one_off_options(devices[0].platform))


def _build_mlp_states(spec: Spec, devices: tuple):
    fn = jax.vmap(functools.partial(_mlp_state, spec))  # one product per weight: the same bits at any level
    return jax.jit(_sharded(fn, devices, (True, True, True)),
                   compiler_options=_compiled.one_off_options(devices[0].platform, one_op=True))


def _init_program(spec: Spec, devices: tuple):
    """``init(key, seeds, hp) -> state`` for the trials of ``spec`` (leaves ``(T, ...)``)."""
    if spec.model is not None:
        return _compiled.program(_build_init_many, spec, devices)
    draws = _compiled.program(_build_mlp_draws, tuple(spec.sizes), devices)
    states = _compiled.program(_build_mlp_states, spec, devices)
    return lambda key, seeds, hp: states(*draws(key, seeds), hp)


# The trial program takes each epoch's batch order as an argument: inside it, the permutation's
# hash and sort took ~0.27 s of its ~1.2 s of compiling (2-core CPU, the search's 8-trial
# program). train_trials computes the orders with NumPy (_Orders) or, for other generators, in
# this one-off program, shared by every spec with the same batch size, sampling and rows.
def _build_orders(batch_size: int, sampling: str, n: int, devices: tuple):
    fn = jax.vmap(lambda key, step: train._epoch_order(key, step, n, batch_size, sampling)[None])  # (1, steps, batch)
    return jax.jit(_sharded(fn, devices, (True, True)), compiler_options=_compiled.one_off_options(devices[0].platform))


def _build_train_many(spec: Spec, epochs: int, devices: tuple):
    """One epoch of a group of trials, given their batch orders (:func:`_build_orders`)."""
    fn = jax.vmap(functools.partial(_train_one, spec, epochs), in_axes=(0, 0, None, None, None, 0))
    return _compiled.jit(_sharded(fn, devices, (True, True, False, False, False, True)))


def _host_columns(trees: list) -> tuple:
    """The trees' leaves fetched in one transfer and concatenated along the trial axis:
    ``(columns, key impls, treedef)``; PRNG key leaves travel as their raw data."""
    flat = [jax.tree.flatten(t) for t in trees]
    leaves, treedef = flat[0]
    impls = [jax.random.key_impl(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else None for a in leaves]
    raw = _to_host([[jax.random.key_data(a) if impl else a for a, impl in zip(ls, impls)] for ls, _ in flat])
    columns = [np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0]) for parts in zip(*raw)]
    return columns, impls, treedef


def _put_rows(host: tuple, rows, sharding=None) -> Any:
    """Rows ``rows`` of :func:`_host_columns`'s trees, back on the device (or split over the
    devices of ``sharding`` along the trial axis). Gathering on the host compiles nothing; on the
    device it compiled a program for every number of trials (each rung of successive halving)."""
    columns, impls, treedef = host
    leaves = jax.device_put([c[rows] for c in columns], sharding)
    return treedef.unflatten([jax.random.wrap_key_data(a, impl=impl) if impl else a for a, impl in zip(leaves, impls)])


def _trial_sharding(devices: tuple):
    """Where a group's trial-axis arrays go: split over ``devices``; ``None`` (JAX's default
    placement) for the default device alone, or for another process's device. Every call places
    its arguments alike, so one compiled program serves them all (JAX keys programs on their
    inputs' placement too)."""
    if len(devices) == 1:
        mine = devices[0].process_index == jax.process_index() and devices[0] != jax.local_devices()[0]
        return jax.sharding.SingleDeviceSharding(devices[0]) if mine else None
    return jax.sharding.NamedSharding(_trial_mesh(devices), jax.sharding.PartitionSpec("trials"))


def _replicated(tree, devices: tuple):
    """``tree`` whole on every device of ``devices`` (the data every trial reads)."""
    if len(devices) == 1:
        return jax.device_put(tree, _trial_sharding(devices))
    everywhere = jax.sharding.NamedSharding(_trial_mesh(devices), jax.sharding.PartitionSpec())
    if everywhere.is_fully_addressable:
        return jax.device_put(tree, everywhere)
    # devices of several processes (jax.distributed): every process passes the same values
    return jax.tree.map(lambda a: train._put_across_processes(a, everywhere), tree)


def _to_host(tree):
    """``jax.device_get(tree)``; arrays split over the devices of several processes (a sweep over
    ``jax.devices()`` under ``jax.distributed``) are gathered whole onto every process."""
    if all(a.is_fully_addressable for a in jax.tree.leaves(tree) if isinstance(a, jax.Array)):
        return jax.device_get(tree)  # one batched transfer

    def get(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return jax.device_get(a)
        if a.sharding.is_fully_replicated:
            return np.asarray(a.addressable_shards[0].data)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(get, tree)


def _hparams(hparams: dict) -> tuple[dict, int]:
    arrays = {}
    for k, v in hparams.items():  # float32 on the host, one transfer each (jnp.asarray compiled a cast)
        raw = np.asarray(v)
        if not (raw.dtype == bool or jnp.issubdtype(raw.dtype, jnp.integer) or jnp.issubdtype(raw.dtype, jnp.floating)):
            raise TypeError(f"hyperparameter {k!r} must be numbers, one per trial; got {v!r}")
        arrays[k] = jax.device_put(raw.astype(np.float32).reshape(-1))
    sizes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every hyperparameter needs one value per trial; got lengths {sizes}")
    return arrays, next(iter(sizes.values()), 1)


def init_trials(key, spec: Spec, hparams: dict, seeds=None, *, devices=None) -> Trials:
    """``T`` fresh trials; ``seeds`` (default ``0..T-1``) pick each one's initial weights.
    ``devices`` (default ``jax.local_devices()``) share the work."""
    hp, n = _hparams(hparams)
    _check_spec(spec, hp)
    devices = _devices(devices)
    seeds = np.arange(n, dtype=np.int32) if seeds is None else np.asarray(seeds).reshape(-1)
    if not np.issubdtype(seeds.dtype, np.integer):
        raise TypeError(f"seeds must be integers, one per trial; got {seeds.dtype}")
    seeds = jax.device_put(seeds.astype(np.int32))  # made on the host: compiled arange and casts took 0.03-0.07 s
    if seeds.shape[0] != n:
        raise ValueError(f"seeds must have one entry per trial ({n}); got {seeds.shape[0]}")
    init = _init_program(spec, devices)
    rows = np.minimum(np.arange(-(-n // len(devices)) * len(devices)), n - 1)  # pad: repeat the last trial
    state = init(_replicated(key, devices), *_put_rows(_host_columns([(seeds, hp)]), rows, _trial_sharding(devices)))
    if len(rows) > n:
        state = _put_rows(_host_columns([state]), np.arange(n), _trial_sharding(devices[:1]))  # drop the padding
    return Trials(state, hp, seeds, {})


def _pairs(spec: Spec, hp: dict, train_data, validation, test) -> tuple:
    """The sets as device arrays, checked against the first trial's model and the loss."""
    model = _model(spec, {k: jax.device_put(np.asarray(v)[0]) for k, v in hp.items()})  # no program to index
    params, model_state = jax.eval_shape(model.init, jax.random.key(0))
    raw = {"train": train_data, **{k: v for k, v in (("val", validation), ("test", test)) if v is not None}}
    n = len(_fitdata.check_pair("train", train_data)[0])
    if not 1 <= spec.batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the training set size); got {spec.batch_size}")
    checked = _fitdata.check_sets(model, losses.task(spec.loss), params, model_state, raw, spec.batch_size)
    # device_put: a transfer (jnp.asarray of a NumPy array compiled a program per shape, ~0.05 s in all)
    sets = {k: tuple(jax.device_put(a) for a in v) for k, v in checked.items() if k == "train" or len(v[0])}
    return sets["train"][0], sets["train"][1], sets


# On a CPU, each device trains its trials in groups of this many, one compiled program serving
# every group, every epoch and every rung of successive halving; elsewhere all trials form one
# group (see train_trials).
CPU_GROUP_SIZE = 4


def train_trials(trials: Trials, spec: Spec, train_data, *, epochs: int, validation=None, test=None,
                 group_size: int | None = None, devices=None) -> Trials:
    """Train every trial ``epochs`` more epochs.

    The trials are split over ``devices`` (default ``jax.local_devices()``: every GPU or TPU, or
    one CPU device per core once :func:`jaxscratch.devices.use_cpu_cores` has run; the devices
    never communicate) and ``vmap``-ed in groups of ``group_size`` per device (the last group
    padded with repeats of the last trial, whose results are dropped); every call trains one
    group for one epoch. So a single compiled program serves every group, epoch count and trial
    count of a configuration, and successive halving compiles once instead of once per rung.
    Default: all trials in one group on an accelerator (width is what it is good at);
    :data:`CPU_GROUP_SIZE` per device on a CPU, which is compute-bound at any width (measured on
    MLPs: benchmarks/RESULTS.md). Convolutions differ: vmapped over trials they become batched
    convolutions that XLA:CPU ran about 1.7-2x slower per trial than one trial at a time (a
    16-filter CNN on 28x28 images), so pass ``group_size=1`` for convolutional models on a CPU.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}")
    devices = _devices(devices)
    x, y, sets = _pairs(spec, trials.hparams, train_data, validation, test)
    x, y, sets = _replicated((x, y, sets), devices)  # one upload per call
    n, d = int(trials.seeds.shape[0]), len(devices)
    if group_size is None:
        group_size = CPU_GROUP_SIZE if devices[0].platform == "cpu" else -(-n // d)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int; got {group_size!r}")
    width = group_size * d  # fewer trials than that are padded too: the same program serves them
    groups = -(-n // width)
    index = np.minimum(np.arange(groups * width), n - 1).reshape(groups, width)  # pad: repeat the last trial
    whole = groups == 1 and width == n  # one group of every trial: nothing to gather
    program = _compiled.program(_build_train_many, spec, 1, devices)
    sharding = _trial_sharding(devices)
    group = jax.tree.map(lambda a: jax.ShapeDtypeStruct((width,) + a.shape[1:], a.dtype, sharding=sharding),
                         (trials.state, trials.hparams))
    order = jax.ShapeDtypeStruct((width, 1, int(x.shape[0]) // spec.batch_size, spec.batch_size), jnp.int32,
                                 sharding=sharding)
    _compiled.precompile(program, *group, x, y, sets, order)  # while the trials may still be initialising
    orders = _Orders(trials.state, spec, int(x.shape[0]), width, epochs, devices, sharding)
    host = None if whole else _host_columns([(trials.state, trials.hparams)])
    states, records = [], []
    for g in range(groups):
        if whole:
            state, hp = jax.device_put((trials.state, trials.hparams), sharding)
        else:
            state, hp = _put_rows(host, index[g], sharding)
        per_epoch = []
        for j in range(epochs):
            state, record = program(state, hp, x, y, sets, orders(state, index[g], j))  # record: metric -> (width, 1)
            per_epoch.append(record)
        states.append(state)
        records.append(per_epoch)
    state = states[0] if whole else _put_rows(_host_columns(states), np.arange(n))
    records = _to_host(records)  # one transfer for the whole call
    history = dict(trials.history)
    for k in records[0][0]:
        v = np.concatenate([np.concatenate([r[k] for r in per_epoch], axis=1) for per_epoch in records])[:n]
        history[k] = np.concatenate([history[k], v], axis=1) if k in history else v  # (T, epochs so far)
    return Trials(state, trials.hparams, trials.seeds, history)


class _Orders:
    """The batch orders of a group's epochs, ``(width, 1, steps, batch_size)`` on the devices: with
    NumPy (``_hostrandom``, bit for bit the trials' own) for JAX's default generator, for a block
    of a group's epochs at once (NumPy's cost is per operation: epoch by epoch it was ~0.1 ms per
    trial-epoch), uploaded one epoch at a time; otherwise in a one-off program
    (:func:`_build_orders`, ~0.2 s of compiling in the benchmark's search)."""

    MAX_DRAWS = 1 << 21  # indices per block

    def __init__(self, state, spec: Spec, rows: int, width: int, epochs: int, devices: tuple, sharding):
        self.rows, self.batch_size, self.replace = rows, spec.batch_size, spec.sampling == "replacement"
        self.sharding, self.epochs = sharding, epochs
        self.block = min(epochs, self.MAX_DRAWS // (width * rows))
        self.host = self.block >= 1 and _hostrandom.partitionable_threefry(state.key)
        if self.host:  # every trial's key and first epoch, fetched once
            keys, steps = jax.device_get((jax.random.key_data(state.key), state.step))
            self.keys, self.first = np.asarray(keys, np.uint32), np.asarray(steps) // (rows // spec.batch_size)
            self.ready = None  # (trials, first epoch j of the block, orders (width, block, steps, batch))
        else:
            self.program = _compiled.program(_build_orders, spec.batch_size, spec.sampling, rows, devices)

    def __call__(self, state, trials: np.ndarray, j: int):
        """Epoch ``j`` of this call for the group of ``trials`` (indices), whose ``state`` it is."""
        if not self.host:
            return self.program(state.key, state.step)
        ready = self.ready
        if ready is None or not np.array_equal(ready[0], trials) or not ready[1] <= j < ready[1] + ready[2].shape[1]:
            span = np.arange(j, min(j + self.block, self.epochs))
            epochs = self.first[trials][:, None] + span  # (width, block)
            keys = np.broadcast_to(self.keys[trials][:, None], epochs.shape + (2,))
            ready = self.ready = (trials, j, _hostrandom.fit_epoch_indices(keys, epochs, self.rows, self.batch_size,
                                                                           self.replace))
        return jax.device_put(ready[2][:, j - ready[1]][:, None], self.sharding)


def run_trials(key, spec: Spec, hparams: dict, train_data, *, epochs: int, validation=None, test=None,
               seeds=None, group_size: int | None = None, devices=None) -> Trials:
    """:func:`init_trials` then :func:`train_trials`."""
    return train_trials(init_trials(key, spec, hparams, seeds, devices=devices), spec, train_data, epochs=epochs,
                        validation=validation, test=test, group_size=group_size, devices=devices)


def select(trials: Trials, index) -> Trials:
    """The trials at ``index`` (an int array), in that order."""
    index = np.asarray(index)
    state, hparams, seeds = _put_rows(_host_columns([(trials.state, trials.hparams, trials.seeds)]), index)
    return Trials(state, hparams, seeds, {k: v[index] for k, v in trials.history.items()})


def _ranking_metric(history: dict) -> str:
    """Validation accuracy where there is one (classification), else the validation loss."""
    return "val_acc" if "val_acc" in history else "val_eval_loss"


def table(trials: Trials, metric: str | None = None) -> list[dict]:
    """One row per trial (hyperparameters and final metrics), best ``metric`` first (default:
    validation accuracy for classification, else validation loss; metrics ending in "loss" rank
    lowest first)."""
    metric = _ranking_metric(trials.history) if metric is None else metric
    seeds, hparams = jax.device_get((trials.seeds, trials.hparams))  # indexed on the host: no program per shape
    rows = []
    for i in range(len(seeds)):
        row = {"trial": i, "seed": int(seeds[i])}
        row.update({k: float(v[i]) for k, v in hparams.items()})
        row.update({k: float(v[i, -1]) for k, v in trials.history.items()})
        rows.append(row)
    reverse = not metric.endswith("loss")
    return sorted(rows, key=lambda r: r.get(metric, float("nan")), reverse=reverse)


# ----------------------------------------------------------------- searches
def _log_uniform(key, ranges: dict, n: int) -> dict:
    """A search's hyperparameters: ``10 ** jax.random.uniform(fold_in(fold_in(key, 1), i), (n,),
    log10 low, log10 high)`` for the ``i``-th name in sorted order."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_trials must be an int >= 1; got {n!r}")
    for name, (lo, hi) in ranges.items():
        if not 0 < lo <= hi:
            raise ValueError(f"range for {name} must satisfy 0 < low <= high (log-uniform); got ({lo}, {hi})")
    names = sorted(ranges)
    bounds = np.asarray([[math.log10(ranges[k][0]), math.log10(ranges[k][1])] for k in names], np.float32)
    if not names:
        return {}
    if _hostrandom.supported(key):  # the hashes with NumPy, the rest in one small program: ~0.4 s less compiling
        raw = _hostrandom.fold_in(_hostrandom.key_data(key), 1)
        bits = _hostrandom.bits32(_hostrandom.fold_in(raw, np.arange(len(names))), n)  # (names, n): one key each
        draws = _compiled.once(_log_uniform_of_bits, bits, bounds)
    else:
        key = jax.random.fold_in(key, 1)
        draws = [10.0 ** jax.random.uniform(jax.random.fold_in(key, i), (n,), minval=lo, maxval=hi)
                 for i, (lo, hi) in enumerate(bounds)]
    return dict(zip(names, draws))


def _log_uniform_of_bits(bits, bounds) -> list:
    """``10 ** U(low, high)`` from ``jax.random.bits``' 32-bit words, row ``i`` for ``bounds[i]``:
    ``jax.random.uniform``'s arithmetic (a one-off program: the multiply-add fused as in the
    program ``jax.random.uniform`` compiles)."""
    floats = jax.lax.bitcast_convert_type((bits >> 9) | np.float32(1).view(np.uint32), jnp.float32) - 1.0
    lo, hi = bounds[:, :1], bounds[:, 1:]
    return list(10.0 ** jnp.maximum(lo, floats * (hi - lo) + lo))


def random_search(key, spec: Spec, ranges: dict, train_data, validation, *, n_trials: int, epochs: int,
                  test=None, group_size: int | None = None, devices=None) -> tuple[Trials, list[dict]]:
    """The book's search: each hyperparameter ``10 ** U(log10 low, log10 high)``, every trial
    trained ``epochs`` epochs; returns the trials and their table, best validation accuracy (for
    regression and custom losses: lowest validation loss) first."""
    hp = _log_uniform(key, ranges, n_trials)
    trials = run_trials(key, spec, hp, train_data, epochs=epochs, validation=validation, test=test,
                        group_size=group_size, devices=devices)
    return trials, table(trials)


def successive_halving(key, spec: Spec, ranges: dict, train_data, validation, *, n_trials: int,
                       max_epochs: int, min_epochs: int = 1, eta: int = 3, test=None,
                       group_size: int | None = None, devices=None) -> tuple[Trials, list[dict], dict]:
    """Random search that stops bad trials early.

    Rung ``i`` trains the survivors up to ``min_epochs * eta ** i`` epochs (the last rung to
    ``max_epochs``) and keeps the best ``1 / eta`` by validation accuracy. Samples the same
    hyperparameters as :func:`random_search` with the same key. One compiled program trains every
    rung; on a CPU its group size (``group_size=None``) is chosen from the rung schedule to pad the
    rungs' last groups as little as possible (:func:`_halving_group_size`).

    Returns:
      ``(final trials, their table, summary)``; the summary counts the epochs trained against the
      ``n_trials * max_epochs`` of a full search.
    """
    if not (isinstance(eta, int) and eta >= 2):
        raise ValueError(f"eta must be an int >= 2; got {eta!r}")
    if not 1 <= min_epochs <= max_epochs:
        raise ValueError(f"need 1 <= min_epochs <= max_epochs; got {min_epochs} and {max_epochs}")
    hp = _log_uniform(key, ranges, n_trials)
    devices = _devices(devices)
    schedule = _rungs(n_trials, max_epochs, min_epochs, eta)  # (survivors, epochs) per rung
    if group_size is None and devices[0].platform == "cpu":
        group_size = _halving_group_size(schedule, len(devices))
    trials = init_trials(key, spec, hp, devices=devices)
    done, spent, rungs = 0, 0, []
    for keep, epochs in schedule:
        if rungs:  # every rung after the first trains the best of the previous one
            metric = _ranking_metric(trials.history)
            final = trials.history[metric][:, -1]
            trials = select(trials, np.argsort(final if metric.endswith("loss") else -final, kind="stable")[:keep])
        trials = train_trials(trials, spec, train_data, epochs=epochs, validation=validation, test=test,
                              group_size=group_size, devices=devices)
        spent, done = spent + epochs * keep, done + epochs
        rungs.append({"epochs": done, "trials": keep})
    summary = {"epochs_trained": spent, "epochs_full_search": n_trials * max_epochs,
               "fraction_of_full": spent / (n_trials * max_epochs), "rungs": rungs}
    return trials, table(trials), summary


def _rungs(n_trials: int, max_epochs: int, min_epochs: int, eta: int) -> list[tuple[int, int]]:
    """``(trials, epochs)`` that each rung of :func:`successive_halving` trains, in order."""
    out, n, done, budget = [], n_trials, 0, min_epochs
    while True:
        budget = min(budget, max_epochs)
        out.append((n, budget - done))
        done = budget
        if budget >= max_epochs or n == 1:
            return out
        n, budget = max(1, math.ceil(n / eta)), budget * eta


def _halving_group_size(rungs: list, n_devices: int) -> int:
    """The group size for successive halving on CPU devices. One program (one group width) serves
    every rung, and the last group of a rung is padded: 100 trials and rungs of 34, 12 and 4 in
    groups of 4 on 2 devices train 1440 trial-epochs for 1220 real ones (groups of 3: 1260). Wider
    groups run a little more efficiently, so: the widest group, up to :data:`CPU_GROUP_SIZE`, whose
    padded trial-epochs are within 5% of the fewest. Measured on that search (benchmarks' workload
    (c), 2 CPU devices, 4 interleaved pairs, compiling excluded): 5.2 s in groups of 3, 5.7 s in
    groups of 4."""
    def padded(g):
        width = g * n_devices
        return sum(-(-n // width) * width * epochs for n, epochs in rungs)
    cost = {g: padded(g) for g in range(1, CPU_GROUP_SIZE + 1)}
    return max(g for g, c in cost.items() if c <= 1.05 * min(cost.values()))


# ----------------------------------------------------------------- K-fold cross-validation
class CVResult(NamedTuple):
    hparams: dict         # name -> (C,)
    val_loss: np.ndarray  # (C, K) final validation loss per configuration and fold
    val_acc: np.ndarray | None  # (C, K); None for losses without accuracy
    state: train.TrainState  # leaves (C, K, ...): every fold's model
    best: int             # the configuration with the lowest mean validation loss


def kfold_cv(key, spec: Spec, hparams: dict, x, y, *, k: int, epochs: int, seed: int = 0,
             devices=None) -> CVResult:
    """K-fold cross-validation of ``C`` configurations, vmapped over configurations and folds,
    the configurations split over ``devices`` (default ``jax.local_devices()``).

    Folds are :func:`data.kfold_indices`'s: equal validation folds of ``n // k`` samples, the
    ``n % k`` left over by the seeded shuffle in every fold's training set (trained on, never
    validated). Every configuration sees the same folds and, per fold, the same initial weights.
    """
    hp, c = _hparams(hparams)
    _check_spec(spec, hp)
    devices = _devices(devices)
    x, y = np.asarray(x), np.asarray(y)
    folds_idx = data.kfold_indices(len(x), k, seed=seed)
    train_idx, val_idx = (np.stack([f[i] for f in folds_idx]) for i in (0, 1))  # (k, n - n//k), (k, n//k)
    folds = _replicated((x[train_idx], y[train_idx], x[val_idx], y[val_idx]), devices)  # arguments, not constants
    rows = np.minimum(np.arange(-(-c // len(devices)) * len(devices)), c - 1)  # pad: repeat the last configuration
    padded = _put_rows(_host_columns([hp]), rows, _trial_sharding(devices))
    state, records = _compiled.program(_build_kfold, spec, epochs, k, devices)(_replicated(key, devices), padded, *folds)
    state = _put_rows(_host_columns([state]), np.arange(c), _trial_sharding(devices[:1]))
    records = _to_host(records)
    val_loss = np.asarray(records["val_eval_loss"][:c, :, -1])
    val_acc = np.asarray(records["val_acc"][:c, :, -1]) if "val_acc" in records else None
    return CVResult(hp, val_loss, val_acc, state, int(np.argmin(val_loss.mean(axis=1))))


def _build_kfold(spec: Spec, epochs: int, k: int, devices: tuple):
    def one_config(key, hp_c, xs, ys, xv, yv):
        def one_fold(fold, xf, yf, xvf, yvf):
            state = _init_one(spec, key, fold, hp_c)
            return _train_one(spec, epochs, state, hp_c, xf, yf, {"val": (xvf, yvf)})
        return jax.vmap(one_fold)(jnp.arange(k, dtype=jnp.int32), xs, ys, xv, yv)

    configs = jax.vmap(one_config, in_axes=(None, 0, None, None, None, None))
    return _compiled.jit(_sharded(configs, devices, (False, True, False, False, False, False)))


def ensemble_accuracy(states, x, y, *, activation="relu", model: nn.Model | None = None) -> float:
    """Accuracy of the average softmax of the models in ``states`` (leaves ``(M, ...)``); ``model``
    (default: the book's MLP with ``activation``) maps each one's params to logits."""
    if model is None:
        model = nn.mlp_model(_mlp_sizes(jax.tree.map(lambda a: a[0], states.params)), activation=activation)
    x = jnp.asarray(x)

    def probs(s):
        logits, _ = model.apply(s.params, s.model_state, x, train=False)
        return jax.nn.softmax(logits, axis=-1)

    p = jnp.mean(jax.jit(jax.vmap(probs))(states), axis=0)
    return float(jnp.mean(jnp.argmax(p, axis=-1) == jnp.asarray(y)))
