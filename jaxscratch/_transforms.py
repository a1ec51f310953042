"""The optimizer interface and what composes optimizers: the ``Optimizer`` pair, shared helpers,
``apply_updates``, ``chain``, ``add_decayed_weights``, ``clip_by_global_norm``,
``inject_hyperparams`` and ``apply_if_finite``.

Private: import these from :mod:`jaxscratch.optim`, whose docstring states the contract they
keep (optax's call signature with its extra keyword arguments, a step ``count`` in a state only
where its update reads one, ``update`` preserving the tree structure and dtypes, type checks always, range checks on
concrete values only). The algorithms themselves are in
``optim``; this module holds what they and their wrappers share.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


# Type aliases for the pytrees optimizers take and return (ours; the library never imports optax's).
Params = Any    # a pytree of arrays: the parameters
Updates = Any   # a pytree shaped like Params: gradients, updates, moments
OptState = Any  # an optimizer's state: a NamedTuple pytree (a tuple of them for chain)


class Optimizer(NamedTuple):
    """A pair of pure functions ``init(params) -> state`` and
    ``update(grads, state, params=None) -> (updates, state)``."""

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]


class EmptyState(NamedTuple):
    """The state of a transform that keeps nothing between steps (optax's ``EmptyState``)."""


class ScheduleState(NamedTuple):
    """The step count at which a transform that needs no count of its own evaluates its schedules,
    around its state; only present when one of its hyperparameters is a schedule."""

    count: jax.Array  # int32, shape ()
    inner_state: OptState


class InjectState(NamedTuple):
    count: jax.Array  # int32, shape (); always (as optax's): the schedules' step, whatever the kwargs
    hyperparams: dict[str, jax.Array]  # each a float32 scalar
    inner_state: OptState


class ApplyIfFiniteState(NamedTuple):  # optax's fields, and like optax's no count of its own
    notfinite_count: jax.Array  # int32, shape (): consecutive non-finite gradients (0 after a finite one)
    last_finite: jax.Array      # bool, shape (): whether the last gradient was finite
    total_notfinite: jax.Array  # int32, shape (): non-finite gradients skipped or applied, never reset
    inner_state: OptState


# ---------------------------------------------------------------- helpers
SCHEDULABLE = "a number, a JAX scalar or a schedule (a callable count -> value)"
NUMBER = "a number or a JAX scalar"


def _describe(value) -> str:
    """What a rejected argument is, for an error message: ``str '0.01'``, ``float32 array of shape (3,)``."""
    if value is None:
        return "None"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        traced = "traced " if isinstance(value, jax.core.Tracer) else ""
        return f"{traced}{value.dtype} array of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _is_number(value) -> bool:
    """A real scalar that is not a boolean: a Python int or float, a NumPy scalar, or a 0-d NumPy
    or JAX array of an integer or floating dtype (a tracer included)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float)):
        return True
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is None or shape != ():
        return False
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))


class HyperparameterError(Exception):
    """A hyperparameter an optimizer (or transform) refuses, raised when it is built. Always a
    :class:`HyperparameterTypeError` (a ``TypeError``: not a number, a schedule where none may be)
    or a :class:`HyperparameterValueError` (a ``ValueError``: NaN or out of range), whose message
    names both; the attributes carry the same facts for code: ``optimizer`` (``"adam"``),
    ``argument`` (``"b1"``), ``expected`` (``"in [0, 1)"``, ``"True or False"``) and ``found``
    (the value given)."""

    def __init__(self, message, *, optimizer=None, argument=None, expected=None, found=None):
        super().__init__(message)
        self.optimizer, self.argument, self.expected, self.found = optimizer, argument, expected, found


class HyperparameterTypeError(HyperparameterError, TypeError):
    """A hyperparameter of the wrong type (see :class:`HyperparameterError`)."""


class HyperparameterValueError(HyperparameterError, ValueError):
    """A hyperparameter that is NaN or out of range (see :class:`HyperparameterError`)."""


def _check(owner: str, name: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False,
           schedule=True) -> None:
    """Check that ``owner``'s hyperparameter ``name`` is a real scalar (or, when ``schedule``, a
    callable), then its range if it is concrete: tracers are only type-checked, never read."""
    facts = {"optimizer": owner, "argument": name, "found": value}
    if callable(value):
        if schedule:
            return
        raise HyperparameterTypeError(f"{owner}: {name} must be {NUMBER} (it cannot be a schedule); found "
                                      f"{_describe(value)}", expected=NUMBER, **facts)
    if not _is_number(value):
        expected = SCHEDULABLE if schedule else NUMBER
        raise HyperparameterTypeError(f"{owner}: {name} must be {expected}; found {_describe(value)}",
                                      expected=expected, **facts)
    if isinstance(value, jax.core.Tracer):
        return
    v = float(value)
    if v != v:
        raise HyperparameterValueError(f"{owner}: {name} must not be NaN", expected="a number, not NaN", **facts)
    ok = True
    if lo is not None:
        ok &= v > lo if lo_open else v >= lo
    if hi is not None:
        ok &= v < hi if hi_open else v <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        expected = f"in {left}{lo_s}, {hi_s}{right}"
        raise HyperparameterValueError(f"{owner}: {name} must be {expected}; got {value}", expected=expected, **facts)


def _check_flag(owner: str, name: str, value) -> None:
    """A switch must be ``True`` or ``False``: a string "False" would otherwise read as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise HyperparameterTypeError(f"{owner}: {name} must be True or False; found {_describe(value)}",
                                      optimizer=owner, argument=name, expected="True or False", found=value)


def _check_optimizer(owner: str, name: str, value) -> None:
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(f"{owner}: {name} must be an optimizer, an (init, update) pair such as "
                        f"optim.adam(); found {_describe(value)}")


def _at(value, count):
    """A hyperparameter's value at step ``count``: schedules are called, numbers pass."""
    return value(count) if callable(value) else value


def _as(x, like: jax.Array) -> jax.Array:
    """``x`` in ``like``'s dtype, so strict dtype promotion holds and dtypes are kept."""
    return jnp.asarray(x).astype(jnp.result_type(like))


def _zeros_count() -> jax.Array:
    return jax.device_put(np.int32(0))  # outside a trace: a buffer, no program compiled


def _full_like(x, fill) -> jax.Array:
    """``jnp.full_like(x, fill)``; for a concrete array, filled on the host and placed where
    ``x`` is, so an eager ``init`` compiles no small program per shape (``train.fit``'s setup)."""
    if isinstance(x, jax.core.Tracer) or isinstance(fill, jax.core.Tracer) or getattr(x, "weak_type", False) \
            or not hasattr(x, "shape"):
        return jnp.full_like(x, fill)
    committed = getattr(x, "committed", False)
    return jax.device_put(np.full(x.shape, fill, x.dtype), x.sharding if committed else None)


def _increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    top = jnp.iinfo(jnp.int32).max
    return jnp.where(count < top, count + 1, top)


def _zeros_like(tree, fill=0.0):
    return jax.tree.map(lambda x: _full_like(x, fill), tree)


def _resolve_mask(mask, params):
    """``None`` -> every leaf; a callable -> ``mask(params)``; else a pytree of bools."""
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    return mask(params) if callable(mask) else mask


def _count_if_scheduled(init: Callable, update: Callable, *hyperparams) -> Optimizer:
    """The optimizer of ``init(params) -> state`` and ``update(grads, state, params, count) ->
    (updates, state)``, keeping a step count only if one of ``hyperparams`` is a schedule: the
    state is then ``ScheduleState(count, state)`` and ``update`` gets ``count`` to evaluate the
    schedules at; otherwise the state is ``init``'s alone and ``count`` is None."""
    if not any(callable(h) for h in hyperparams):
        def plain_update(grads, state, params=None, **extra_args):
            return update(grads, state, params, None)

        return Optimizer(init, plain_update)

    def counted_init(params):
        return ScheduleState(_zeros_count(), init(params))

    def counted_update(grads, state, params=None, **extra_args):
        updates, inner = update(grads, state.inner_state, params, state.count)
        return updates, ScheduleState(_increment(state.count), inner)

    return Optimizer(counted_init, counted_update)


def _decay_weights(who: str, updates: Updates, params: Params, weight_decay, mask, count) -> Updates:
    """``u + weight_decay * p`` on the leaves ``mask`` picks (None: every leaf); ``updates``
    unchanged, and no ``params`` needed, when ``weight_decay`` is None or a constant 0."""
    if weight_decay is None or (_is_number(weight_decay) and not isinstance(weight_decay, jax.core.Tracer)
                                and float(weight_decay) == 0):
        return updates
    _need_params(params, who)
    wd, keep = _at(weight_decay, count), _resolve_mask(mask, params)
    return jax.tree.map(lambda u, p, k: u + _as(wd, u) * p if k else u, updates, params, keep)


def _need_params(params, who: str):
    if params is None:
        raise ValueError(f"{who} needs params: call update(grads, state, params)")


def _forwarding_extra_args(update: Callable) -> Callable:
    """``update`` as a function that takes any extra keyword arguments (optax's protocol: a loss
    ``value=`` for ``reduce_on_plateau``, ...) and passes on those ``update`` declares: all of them
    when it has ``**kwargs`` (every update of ours, optax's ``GradientTransformationExtraArgs``),
    otherwise the keywords it names after ``params`` (none, for optax's plain transforms)."""
    try:
        sig = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass everything
        return update
    if any(p.kind is p.VAR_KEYWORD for p in sig):
        return update
    named = {p.name for p in list(sig)[3:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def call(grads, state, params=None, **extra_args):
        return update(grads, state, params, **{k: v for k, v in extra_args.items() if k in named})

    return call


def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, each result in its parameter's dtype."""
    return jax.tree.map(
        lambda p, u: None if p is None else jnp.asarray(p + u).astype(jnp.result_type(p)),
        params, updates, is_leaf=lambda x: x is None,
    )


# ---------------------------------------------------------------- composition
def chain(*transforms) -> Optimizer:
    """Apply ``transforms`` in order; the state is the tuple of their states (as optax's).

    Extra keyword arguments of ``update`` (``value=loss`` for ``optax.contrib.reduce_on_plateau``)
    reach every transform that takes them; the others never see them.
    """
    for i, t in enumerate(transforms):
        _check_optimizer("chain", f"transform {i}", t)
    updates = [_forwarding_extra_args(t.update) for t in transforms]

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(f"chain of {len(transforms)} transforms got a state of length {len(state)}")
        new_states = []
        for u, s in zip(updates, state):
            grads, s = u(grads, s, params, **extra_args)
            new_states.append(s)
        return grads, tuple(new_states)

    return Optimizer(init, update)


def add_decayed_weights(weight_decay=0.0, mask=None) -> Optimizer:
    """``u + weight_decay * p`` on masked leaves (``mask=None``: every leaf).

    The textbook's L2 decay on weights only is ``mask=nn.weights_mask``.
    """
    _check("add_decayed_weights", "weight_decay", weight_decay, 0)

    def update(grads, state, params, count):
        _need_params(params, "add_decayed_weights")
        return _decay_weights("add_decayed_weights", grads, params, weight_decay, mask, count), state

    return _count_if_scheduled(lambda params: EmptyState(), update, weight_decay)


def _sq32(g: jax.Array) -> jax.Array:
    """:math:`|g|^2` in float32 (complex leaves: squared magnitudes, as optax's global norm)."""
    return jnp.square(jnp.abs(g).astype(jnp.float32)) if jnp.iscomplexobj(g) else jnp.square(g.astype(jnp.float32))


def clip_by_global_norm(max_norm) -> Optimizer:
    """Rescale all updates together so their global L2 norm is at most ``max_norm``."""
    _check("clip_by_global_norm", "max_norm", max_norm, 0, lo_open=True)

    def update(grads, state, params, count):
        leaves = jax.tree.leaves(grads)
        norm = jnp.sqrt(sum(jnp.sum(_sq32(g)) for g in leaves)) if leaves else 0.0
        limit = _at(max_norm, count)
        scale = jnp.where(norm < limit, 1.0, limit / jnp.where(norm == 0, 1.0, norm))
        return jax.tree.map(lambda g: g * _as(scale, g), grads), state

    return _count_if_scheduled(lambda params: EmptyState(), update, max_norm)


_MASKS = ("mask", "weight_decay_mask")  # callables that are not schedules: they stay static


def inject_hyperparams(factory: Callable[..., Optimizer]) -> Callable[..., Optimizer]:
    """Wrap an optimizer factory so its numeric hyperparameters live in the state.

    ``opt = inject_hyperparams(adam)(learning_rate=1e-3)``; then
    ``state.hyperparams["learning_rate"]`` can be read or replaced between steps with no
    recompilation, and vmapped over. Schedules are evaluated at each step and their current
    value stored; booleans, masks and other non-numbers stay static keyword arguments. Every value
    is checked by ``factory`` first, so a wrong type fails here, naming the factory and argument.
    """

    if not callable(factory):
        raise TypeError(f"inject_hyperparams: factory must be an optimizer factory such as optim.adam; "
                        f"found {_describe(factory)}")

    def wrapped(**kwargs) -> Optimizer:
        factory(**kwargs)  # the factory checks every value (types, and ranges of concrete ones) up front
        numeric = {k: v for k, v in kwargs.items() if k not in _MASKS and (callable(v) or _is_number(v))}
        static = {k: v for k, v in kwargs.items() if k not in numeric}
        schedules = {k: v for k, v in numeric.items() if callable(v)}

        def init(params):
            count = _zeros_count()
            hp = {k: jnp.asarray(_at(v, count), jnp.result_type(float)) for k, v in numeric.items()}
            return InjectState(count, hp, factory(**static, **hp).init(params))

        # The update reads the numbers from the state, so it depends only on the factory, the
        # static arguments, the names and the schedules: equal ones compare equal, and so share
        # ``train.fit``'s compiled programs (no recompilation for a new value).
        return Optimizer(init, _InjectedUpdate(factory, static, tuple(numeric), schedules))

    return wrapped


class _InjectedUpdate:
    """``inject_hyperparams``'s update: a function of the factory, the static arguments, the
    hyperparameters' names and the schedules only, equal (and hashing alike) when they are; by
    identity when a static argument is unhashable (a mask pytree)."""

    def __init__(self, factory, static: dict, names: tuple, schedules: dict):
        self.factory, self.static, self.names, self.schedules = factory, static, names, schedules
        try:
            self._key = (factory, tuple(sorted(static.items())), tuple(sorted(names)),
                         tuple(sorted(schedules.items())))
            hash(self._key)
        except TypeError:
            self._key = None

    def __eq__(self, other):
        if self._key is None or not isinstance(other, _InjectedUpdate):
            return self is other
        return self._key == other._key

    def __hash__(self):
        return id(self) if self._key is None else hash(self._key)

    def __call__(self, grads, state, params=None, **extra_args):
        # schedules are evaluated at this step; numbers come from the state
        hp = {k: jnp.asarray(self.schedules[k](state.count), jnp.result_type(float)) if k in self.schedules
              else state.hyperparams[k] for k in self.names}
        inner_update = _forwarding_extra_args(self.factory(**self.static, **hp).update)
        updates, inner = inner_update(grads, state.inner_state, params, **extra_args)
        return updates, InjectState(_increment(state.count), hp, inner)


def apply_if_finite(inner: Optimizer, max_consecutive_errors: int = 5) -> Optimizer:
    """Skip updates whose gradients hold a NaN or Inf (optax's ``apply_if_finite``).

    A non-finite gradient gives zero updates and leaves ``inner``'s state as it was; after more
    than ``max_consecutive_errors`` in a row the update is applied anyway, so a run that keeps
    failing shows it (``train.fit`` then stops with the step named). The counts are in the state
    (:class:`ApplyIfFiniteState`); ``train.fit`` reports ``total_notfinite`` per epoch.
    """
    _check_optimizer("apply_if_finite", "inner", inner)
    if isinstance(max_consecutive_errors, (bool, np.bool_)) or not isinstance(max_consecutive_errors, (int, np.integer)):
        raise TypeError(f"apply_if_finite: max_consecutive_errors must be an int >= 0; "
                        f"found {_describe(max_consecutive_errors)}")
    if max_consecutive_errors < 0:
        raise ValueError(f"apply_if_finite: max_consecutive_errors must be an int >= 0; got {max_consecutive_errors}")

    inner_update = _forwarding_extra_args(inner.update)

    def init(params):
        zero = _zeros_count()
        return ApplyIfFiniteState(zero, jax.device_put(np.bool_(True)), zero, inner.init(params))

    def update(grads, state, params=None, **extra_args):
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [jnp.bool_(True)]))
        run = jnp.where(finite, 0, _increment(state.notfinite_count))
        apply = finite | (run > max_consecutive_errors)
        updates, new_inner = inner_update(grads, state.inner_state, params, **extra_args)
        updates = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(lambda new, old: jnp.where(apply, new, old), new_inner, state.inner_state)
        total = jnp.where(finite, state.total_notfinite, _increment(state.total_notfinite))
        return updates, ApplyIfFiniteState(run, finite, total, new_inner)

    return Optimizer(init, update)
