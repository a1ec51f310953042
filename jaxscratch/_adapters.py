"""Flax linen and Equinox modules as :class:`jaxscratch.nn.Model` pairs of pure functions.

Both adapters return ``Model(init, apply)`` with the contract of ``nn.Model``:
``init(key) -> (params, state)`` and ``apply(params, state, x, *, train, key=None) ->
(outputs, new_state)``, ``x`` a batch ``(batch, ...)``, ``train`` a Python bool. In evaluation
mode ``new_state`` is ``state`` itself. ``params`` are a pytree that ``jax.grad`` flows through;
what is neither trained nor state (structure, hyperparameters) stays in the adapter's closure.

``from_flax(module, example_x, ...)``, for a ``flax.linen.Module``:
  * ``init(key)`` calls ``module.init(rngs, zeros like example_x, <mode flag: eval>)`` with
    ``rngs = _rngs(key, ("params", *rng_names))``; ``params = variables["params"]``;
    ``state = {name: variables[name]}`` for each collection of ``mutable`` that init made
    (``{}`` when none). Init may create no other collection.
  * ``apply`` calls ``module.apply({"params": params, **state}, x, <mode flag>, rngs=...)``.
    The mode flag is ``train_kwarg=train`` or ``deterministic_kwarg=not train`` (the latter
    replaces the default ``train_kwarg``), or nothing when ``train_kwarg=None``. When ``key`` is
    given, ``rngs = _rngs(key, rng_names)``, where ``_rngs(key, names)`` is
    ``dict(zip(names, jax.random.split(key, len(names))))``: name ``i`` gets ``split(...)[i]``.
    In training mode the collections of ``state`` are mutable and the updated ones are the new
    state; in evaluation mode nothing is mutable.

``from_equinox(module_or_factory, ...)``, for an ``equinox.Module``:
  * ``params, static = eqx.partition(module, eqx.is_inexact_array)``: floating arrays are
    trained, the rest (layer sizes, activations, integer arrays) is kept as constants.
  * Given a module instance, ``init`` ignores its key: the module was initialised when it was
    built; ``state`` is the ``eqx.nn.State`` passed with it, or ``()``. Given a factory
    ``key -> module`` or ``key -> (module, eqx.nn.State)`` (``eqx.nn.make_with_state``),
    ``init(key)`` calls it, so the key really initialises (call ``init`` before ``apply``).
  * ``apply`` rebuilds ``eqx.nn.inference_mode(eqx.combine(params, static), value=not train)``
    (dropout off and batch norm on running statistics in evaluation mode) and calls it as
    ``model(x_i, state, key=k_i) -> (y_i, state)`` when there is a state, ``model(x_i, key=k_i)
    -> y_i`` otherwise; ``key`` is passed only when ``__call__`` has a ``key`` parameter.
    With ``per_example=True`` (Equinox's convention: layers see one example) the call is
    ``jax.vmap``-ed over axis 0 of ``x`` with ``axis_name`` (what ``eqx.nn.BatchNorm(...,
    axis_name="batch")`` reduces over), the state broadcast in and out (``in_axes=None``,
    ``out_axes=None``) and one key per example, ``k_i = jax.random.split(key, batch)[i]``.
    With ``per_example=False`` the module is called once on the whole batch with ``key``.

Neither flax nor equinox is imported until an adapter is called: the library needs only JAX
and NumPy.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["from_equinox", "from_flax"]


def _rngs(key, names: Sequence[str]) -> dict[str, jax.Array]:
    """One key per rng name: name ``i`` gets ``jax.random.split(key, len(names))[i]``."""
    return dict(zip(names, jax.random.split(key, len(names))))


def _call_parameters(fn) -> tuple[set[str], bool]:
    """The names ``fn`` accepts, and whether it also takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _flax_mode(module, train_kwarg, deterministic_kwarg, call_kwargs) -> Callable[[bool], dict]:
    """Check the mode flag against ``module.__call__``; return ``train -> {flag: value}``."""
    if deterministic_kwarg is not None and train_kwarg not in (None, "train"):
        raise ValueError(
            f"pass one mode flag, train_kwarg or deterministic_kwarg; got train_kwarg={train_kwarg!r} "
            f"and deterministic_kwarg={deterministic_kwarg!r} (drop one of them)")
    name = deterministic_kwarg if deterministic_kwarg is not None else train_kwarg
    reserved = {"rngs", "mutable"} | ({name} if name else set())
    if reserved & set(call_kwargs):
        raise ValueError(f"call_kwargs may not set {sorted(reserved & set(call_kwargs))}: the adapter passes them")
    accepted, any_kwarg = _call_parameters(module.__call__)
    if name is not None and name not in accepted and not any_kwarg:
        raise TypeError(
            f"{type(module).__name__}.__call__ takes no {name!r} argument (it takes {sorted(accepted)}); "
            "name its mode flag with train_kwarg=... or deterministic_kwarg=..., "
            "or pass train_kwarg=None for a module without one")
    if name is None:
        return lambda train: {}
    if deterministic_kwarg is not None:
        return lambda train: {name: not train}
    return lambda train: {name: train}


def _example_struct(example_x) -> jax.ShapeDtypeStruct:
    """``example_x``'s shape and dtype (an array or ``jax.ShapeDtypeStruct``): ``init`` runs on
    zeros of them, so it closes over no data."""
    if not hasattr(example_x, "shape") or not hasattr(example_x, "dtype"):
        example_x = jnp.asarray(example_x)
    return jax.ShapeDtypeStruct(tuple(example_x.shape), example_x.dtype)


def _flax_state(variables: dict, mutable: Sequence[str]) -> dict:
    """The mutable collections ``init`` made; any other collection besides params is an error."""
    extra = sorted(set(variables) - {"params"} - set(mutable))
    if extra:
        raise ValueError(
            f"module.init made collections {extra} besides 'params' and mutable={list(mutable)}; "
            "add them to mutable=... to carry them as state")
    return {name: variables[name] for name in mutable if name in variables}


def from_flax(module, example_x, *, train_kwarg: str | None = "train", deterministic_kwarg: str | None = None,
              mutable: Sequence[str] = ("batch_stats",), rng_names: Sequence[str] = ("dropout",),
              **call_kwargs):
    """A ``flax.linen`` module as a :class:`jaxscratch.nn.Model` (contract in the module docstring).

    Args:
      module: a ``flax.linen.Module`` whose ``__call__`` takes a batch.
      example_x: a batch (or ``jax.ShapeDtypeStruct``); ``init`` runs on zeros of its shape and dtype.
      train_kwarg: the ``__call__`` argument that is ``True`` in training mode; ``None`` when
        the module has no mode flag.
      deterministic_kwarg: instead of ``train_kwarg`` (it replaces the default ``"train"``), an
        argument that is ``True`` in evaluation.
      mutable: collections carried as state and updated in training mode (batch statistics).
      rng_names: the rng streams the module draws from (``"params"`` is added for init).
      **call_kwargs: further keyword arguments for every call of the module.

    Returns:
      ``Model(init, apply)``; ``params`` are ``variables["params"]``, state a dict of collections.
    """
    import flax.core
    import flax.errors
    import flax.linen

    from jaxscratch.nn import Model

    if not isinstance(module, flax.linen.Module):
        raise TypeError(
            f"from_flax expects a flax.linen.Module; found {type(module).__module__}.{type(module).__name__} "
            "(an nnx module can be wrapped with flax.nnx.bridge.to_linen)")
    mode = _flax_mode(module, train_kwarg, deterministic_kwarg, call_kwargs)
    rng_names, mutable = tuple(rng_names), tuple(mutable)
    example = _example_struct(example_x)

    def init(key):
        rngs = _rngs(key, ("params",) + rng_names)
        variables = module.init(rngs, jnp.zeros(example.shape, example.dtype), **mode(False), **call_kwargs)
        variables = flax.core.unfreeze(variables)
        return variables.get("params", {}), _flax_state(variables, mutable)

    def apply(params, state, x, *, train: bool, key=None):
        mutated = list(state) if train and state else False
        rngs = None if key is None else _rngs(key, rng_names)
        try:
            out = module.apply({"params": params, **state}, x, rngs=rngs, mutable=mutated,
                               **mode(train), **call_kwargs)
        except flax.errors.InvalidRngError as err:
            if key is not None:
                raise
            raise ValueError(f"the module draws random numbers ({err}); pass key=... to apply") from err
        if not mutated:
            return out, state
        y, updated = out
        return y, {**state, **flax.core.unfreeze(updated)}

    return Model(init, apply)


def _equinox_parts(made, state, eqx) -> tuple[Any, Any]:
    """``(module, state)`` from a factory's result or a module instance, checked."""
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], eqx.nn.State):
        made, state = made
    if not isinstance(made, eqx.Module):
        raise TypeError(
            "from_equinox expects an equinox.Module, or a factory key -> module or key -> (module, "
            f"eqx.nn.State); found {type(made).__module__}.{type(made).__name__}")
    if isinstance(state, eqx.nn.State):
        return made, state
    if state is None or state == ():
        return made, ()
    raise TypeError(f"state must be an equinox.nn.State (from eqx.nn.make_with_state) or None; "
                    f"found {type(state).__name__}")


def _equinox_call(model, stateful: bool) -> Callable:
    """``(x, state, key) -> (y, state)`` for either of Equinox's call conventions."""
    takes_key = "key" in _call_parameters(model.__call__)[0]
    key_kwarg = (lambda key: {"key": key}) if takes_key else (lambda key: {})
    if stateful:
        return lambda x, state, key: model(x, state, **key_kwarg(key))
    return lambda x, state, key: (model(x, **key_kwarg(key)), state)


def from_equinox(module, *, state=None, per_example: bool = True, axis_name="batch"):
    """An Equinox module, or a factory of one, as a :class:`jaxscratch.nn.Model`.

    Args:
      module: an ``equinox.Module`` (already initialised; ``init`` ignores its key), or a
        factory ``key -> module`` or ``key -> (module, eqx.nn.State)``, such as
        ``lambda k: eqx.nn.make_with_state(Net)(key=k)``, which ``init`` calls.
      state: the ``eqx.nn.State`` that goes with a module instance (``None``: stateless).
      per_example: the module maps one example (Equinox's convention) and is vmapped over the
        batch; ``False`` calls it once on the whole batch.
      axis_name: the vmapped axis's name, which ``eqx.nn.BatchNorm``'s ``axis_name`` must match.

    Returns:
      ``Model(init, apply)``; ``params`` are the module's floating arrays (``None`` elsewhere).
    """
    import equinox as eqx

    from jaxscratch.nn import Model

    built = {}  # "static": the module's untrained rest; set now, or by init for a factory

    if isinstance(module, eqx.Module):
        instance, initial_state = _equinox_parts(module, state, eqx)
        instance_params, built["static"] = eqx.partition(instance, eqx.is_inexact_array)

        def init(key):
            del key  # the module was initialised when it was built
            return instance_params, initial_state
    elif callable(module):
        if state is not None:
            raise ValueError("state= goes with a module instance; a factory returns (module, state) itself")

        def init(key):
            made, made_state = _equinox_parts(module(key), None, eqx)
            params, built["static"] = eqx.partition(made, eqx.is_inexact_array)
            return params, made_state
    else:
        raise TypeError(f"from_equinox expects an equinox.Module or a factory key -> module; found "
                        f"{type(module).__name__} (for a (module, state) pair: from_equinox(module, state=state))")

    def apply(params, state, x, *, train: bool, key=None):
        if "static" not in built:
            raise RuntimeError("call model.init(key) before model.apply: the factory builds the module in init")
        model = eqx.nn.inference_mode(eqx.combine(params, built["static"]), value=not train)
        call = _equinox_call(model, stateful=isinstance(state, eqx.nn.State))
        if not per_example:
            y, new_state = call(x, state, key)
        else:
            if jnp.ndim(x) < 1:
                raise ValueError(f"per_example=True needs x of shape (batch, ...); got shape {jnp.shape(x)}")
            keys = None if key is None else jax.random.split(key, jnp.shape(x)[0])
            y, new_state = jax.vmap(call, in_axes=(0, None, None if keys is None else 0), out_axes=(0, None),
                                    axis_name=axis_name)(x, state, keys)
        return y, new_state if train else state

    return Model(init, apply)
