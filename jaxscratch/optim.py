"""Optimizers as ``(init, update)`` pairs over any pytree, with optax's call signature.

Contract:
  * ``opt = sgd(...)`` etc. returns an :class:`Optimizer`, a NamedTuple of two pure
    functions: ``state = opt.init(params)`` and
    ``updates, state = opt.update(grads, state, params=None)``. ``apply_updates(params,
    updates)`` adds the updates, keeping each leaf's dtype.
  * ``init`` accepts any pytree, an empty one included. ``update`` returns ``updates`` with
    the tree structure, shapes and dtypes of ``grads``; ``apply_updates(p, zeros) == p``.
  * A state is a NamedTuple pytree (``chain``'s: the tuple of its transforms' states) and holds
    a step ``count`` (int32, 0 before the first update) only where its update reads one, as
    optax's states do: the Adam family's own (``AdamState.count``, for the bias correction);
    ``ScheduleState(count, inner_state)`` around any other state when a hyperparameter is a
    schedule, which is evaluated at that count; ``inject_hyperparams``'s, always. Transforms
    that keep nothing have ``EmptyState()`` (``sgd``, ``clip_by_global_norm``,
    ``add_decayed_weights`` with constant hyperparameters), and ``apply_if_finite`` adds no count.
    So ``optax.tree_utils.tree_get(state, "count")`` finds a count where optax's equivalent
    state has one, with the same value. Two exceptions: optax's Adam with a scheduled learning
    rate holds two counts (Adam's and the schedule's), ours one; optax's lion keeps a count it
    never reads, ours none.
  * ``update`` takes extra keyword arguments too (optax's extra-args protocol, e.g. ``value=loss``
    for ``optax.contrib.reduce_on_plateau``): our optimizers ignore them, and ``chain``,
    ``inject_hyperparams`` and ``apply_if_finite`` hand them to each inner update that declares
    them (``**kwargs``, or by name), never to one that does not (optax's plain transforms).
    ``optax.chain`` passes them only to its own ``GradientTransformationExtraArgs``, so put such a
    transform in our :func:`chain`, not ours in ``optax.chain``.
  * The shape of the interface is optax's, so our optimizers work inside ``optax.chain``,
    optax's transformations work inside :func:`chain`, and ``optax.tree_utils`` reads our
    states, all without this module importing optax.

Where hyperparameters live: in the closure. A Python float is a compile-time constant
(changing it means a new trace); a JAX scalar, possibly a tracer, is an ordinary input,
so build the optimizer inside the function you ``jit`` or ``vmap`` and pass the value as
an argument: one compiled program then serves every value. A callable is a schedule
``count -> value``. :func:`inject_hyperparams` moves the numbers into the state instead,
for code that wants to change them between steps of an already-compiled ``update``.
Every hyperparameter is type-checked when the optimizer is built: a string, ``None``, a bool, a
list, a complex number or a non-scalar array raises a ``TypeError`` naming the optimizer and the
argument. Range checks (``learning_rate >= 0``, ``0 <= b1 < 1``, ...) run on concrete values
only, so they never break tracing. Both errors are a :class:`HyperparameterError` too
(``HyperparameterTypeError``, ``HyperparameterValueError``), whose attributes ``optimizer``,
``argument``, ``expected`` and ``found`` say the same for code that reports it its own way.

Layout: the :class:`Optimizer` pair, ``apply_updates`` and the wrappers that compose optimizers
(``chain``, ``add_decayed_weights``, ``clip_by_global_norm``, ``inject_hyperparams``,
``apply_if_finite``) live in the private ``_transforms`` module and are imported from here;
this module holds the algorithms, their states and the ``OPTIMIZERS`` table.

Defaults are the textbook's (Deep Learning from Scratch, ``common/optimizer.py``): its
learning rates, momentum 0.9, RMSprop decay 0.99, ``eps = 1e-7`` added *after* the square
root, AdaGrad's accumulator starting at 0. See ``docs/optimizers.md`` for the table of
update rules, defaults and the optax call that reproduces each one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxscratch._transforms import (ApplyIfFiniteState, EmptyState, HyperparameterError, HyperparameterTypeError,
                                    HyperparameterValueError, InjectState, Optimizer, ScheduleState, _as, _at, _check,
                                    _check_flag, _count_if_scheduled, _increment, _need_params, _resolve_mask,
                                    _zeros_count, _zeros_like, add_decayed_weights, apply_if_finite, apply_updates,
                                    chain, clip_by_global_norm, inject_hyperparams)

__all__ = [
    "Optimizer", "EmptyState", "ScheduleState", "InjectState", "ApplyIfFiniteState", "apply_updates", "apply_if_finite", "chain",
    "add_decayed_weights", "clip_by_global_norm", "inject_hyperparams", "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
    "adamw", "nadam", "adamax", "lion", "adadelta", "OPTIMIZERS", "HyperparameterError", "HyperparameterTypeError",
    "HyperparameterValueError",
]


# ---------------------------------------------------------------- states
# Only the Adam family keeps a count of its own (its bias correction reads it); the others get
# one from ScheduleState when a hyperparameter is a schedule (see the module docstring).
class MomentumState(NamedTuple):
    velocity: Any  # v = momentum * v - lr * g, the textbook's velocity


class SgdState(NamedTuple):  # sgd with momentum: optax's TraceState
    trace: Any  # t = g + momentum * t, in gradient units (lr applied outside)


class NesterovState(NamedTuple):  # nesterov's: the same trace, kept under the book's name
    trace: Any


class AdagradState(NamedTuple):
    sum_of_squares: Any


class RmspropState(NamedTuple):
    nu: Any


class AdamState(NamedTuple):
    count: jax.Array  # updates so far, t - 1 in the bias corrections 1 - b^t
    mu: Any
    nu: Any


class LionState(NamedTuple):
    mu: Any


class AdadeltaState(NamedTuple):
    e_g: Any
    e_x: Any


# ---------------------------------------------------------------- optimizers
def sgd(learning_rate=0.01, momentum=None, nesterov=False) -> Optimizer:
    r"""Stochastic gradient descent, as ``optax.sgd(learning_rate, momentum, nesterov)``.

    Without ``momentum``, :math:`W \leftarrow W - \eta g`; with it (:math:`\mu`), a trace in
    gradient units and the learning rate outside it:

    .. math:: t \leftarrow g + \mu t, \qquad W \leftarrow W - \eta_t\, t
              \quad (\text{nesterov: } W \leftarrow W - \eta_t (g + \mu t))

    The book's momentum, with :math:`\eta` inside the velocity, is :func:`momentum` (equal for a
    constant :math:`\eta`); ``sgd(lr, momentum=mu, nesterov=True)`` equals :func:`nesterov`.

    >>> opt = sgd(0.1); p = {"w": jnp.ones(2)}
    >>> u, s = opt.update({"w": jnp.ones(2)}, opt.init(p))
    >>> apply_updates(p, u)["w"].tolist()
    [0.8999999761581421, 0.8999999761581421]
    """
    _check("sgd", "learning_rate", learning_rate, 0)
    _check_flag("sgd", "nesterov", nesterov)
    if momentum is not None:
        _check("sgd", "momentum", momentum, 0, 1, hi_open=True)
        return _trace_momentum(learning_rate, momentum, nesterov, SgdState)
    if nesterov:  # optax ignores nesterov=True without momentum; that is plain SGD, surely not meant
        raise ValueError("sgd: nesterov=True needs a momentum; got momentum=None")

    def update(grads, state, params, count):
        lr = _at(learning_rate, count)
        return jax.tree.map(lambda g: -_as(lr, g) * g, grads), state

    return _count_if_scheduled(lambda params: EmptyState(), update, learning_rate)


def _trace_momentum(learning_rate, momentum, nesterov: bool, state_type) -> Optimizer:
    """``t <- g + momentum * t``; updates ``-lr * t``, or ``-lr * (g + momentum * t)`` with
    ``nesterov``; the state is ``state_type(trace=t)``."""

    def update(grads, state, params, count):
        lr, mu = _at(learning_rate, count), _at(momentum, count)
        t = jax.tree.map(lambda g, t: g + _as(mu, g) * t, grads, state.trace)
        direction = jax.tree.map(lambda g, t: g + _as(mu, g) * t, grads, t) if nesterov else t
        return jax.tree.map(lambda d: -_as(lr, d) * d, direction), state_type(t)

    return _count_if_scheduled(lambda params: state_type(_zeros_like(params)), update, learning_rate, momentum)


def momentum(learning_rate=0.01, momentum=0.9) -> Optimizer:
    r"""Momentum SGD, the textbook's form with the learning rate inside the velocity.

    .. math:: v \leftarrow \mu v - \eta_t g, \qquad W \leftarrow W + v

    (:math:`\mu` = ``momentum``, :math:`\eta_t` = ``learning_rate`` at ``count``.)
    optax: ``optax.chain(optax.scale_by_learning_rate(lr), optax.trace(momentum))``; equal to
    ``optax.sgd(lr, momentum=momentum)`` only for a constant learning rate.
    """
    _check("momentum", "learning_rate", learning_rate, 0)
    _check("momentum", "momentum", momentum, 0, 1, hi_open=True)

    def update(grads, state, params, count):
        lr, mu = _at(learning_rate, count), _at(momentum, count)
        v = jax.tree.map(lambda g, v: _as(mu, g) * v - _as(lr, g) * g, grads, state.velocity)
        return v, MomentumState(v)

    return _count_if_scheduled(lambda params: MomentumState(_zeros_like(params)), update, learning_rate, momentum)


def nesterov(learning_rate=0.01, momentum=0.9) -> Optimizer:
    r"""Nesterov's accelerated gradient in the textbook's (corrected) order.

    .. math:: t \leftarrow g + \mu t, \qquad W \leftarrow W - \eta_t (g + \mu t)

    With a constant :math:`\eta` and :math:`v = -\eta t` this is the book's
    ``W += m*m*v - (1+m)*lr*g; v = m*v - lr*g``. It is ``sgd(lr, momentum, nesterov=True)``, and
    ``optax.sgd(lr, momentum=momentum, nesterov=True)``.
    """
    _check("nesterov", "learning_rate", learning_rate, 0)
    _check("nesterov", "momentum", momentum, 0, 1, hi_open=True)
    return _trace_momentum(learning_rate, momentum, True, NesterovState)


def adagrad(learning_rate=0.01, initial_accumulator_value=0.0, eps=1e-7, *, eps_in_sqrt=False) -> Optimizer:
    r"""AdaGrad: :math:`h \leftarrow h + g^2`, :math:`W \leftarrow W - \eta g / (\sqrt{h} + \epsilon)`.

    ``eps_in_sqrt=True`` uses :math:`g / \sqrt{h + \epsilon}` (zero where :math:`h = 0`),
    which is ``optax.adagrad(lr, initial_accumulator_value, eps)``; the default is the book's.
    """
    _check("adagrad", "learning_rate", learning_rate, 0)
    _check("adagrad", "initial_accumulator_value", initial_accumulator_value, 0, schedule=False)
    _check("adagrad", "eps", eps, 0, schedule=False)
    _check_flag("adagrad", "eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return AdagradState(_zeros_like(params, initial_accumulator_value))

    def update(grads, state, params, count):
        lr = _at(learning_rate, count)
        h = jax.tree.map(lambda g, h: h + g * g, grads, state.sum_of_squares)

        def step(g, h):
            e = _as(eps, g)
            scaled = (jnp.where(h > 0, jax.lax.rsqrt(h + e), 0) * g) if eps_in_sqrt else g / (jnp.sqrt(h) + e)
            return -_as(lr, g) * scaled

        return jax.tree.map(step, grads, h), AdagradState(h)

    return _count_if_scheduled(init, update, learning_rate)


def rmsprop(learning_rate=0.01, decay=0.99, eps=1e-7, *, initial_scale=0.0, eps_in_sqrt=False) -> Optimizer:
    r"""RMSprop: :math:`h \leftarrow \rho h + (1-\rho) g^2`, :math:`W \leftarrow W - \eta g / (\sqrt{h} + \epsilon)`.

    (:math:`\rho` = ``decay``.) ``eps_in_sqrt=True`` uses :math:`g / \sqrt{h + \epsilon}`.
    optax: ``optax.rmsprop(lr, decay=decay, eps=eps, initial_scale=initial_scale,
    eps_in_sqrt=eps_in_sqrt)``.
    """
    _check("rmsprop", "learning_rate", learning_rate, 0)
    _check("rmsprop", "decay", decay, 0, 1)
    _check("rmsprop", "eps", eps, 0, schedule=False)
    _check("rmsprop", "initial_scale", initial_scale, 0, schedule=False)
    _check_flag("rmsprop", "eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return RmspropState(_zeros_like(params, initial_scale))

    def update(grads, state, params, count):
        lr, d = _at(learning_rate, count), _at(decay, count)
        nu = jax.tree.map(lambda g, n: (1 - _as(d, g)) * g * g + _as(d, g) * n, grads, state.nu)

        def step(g, n):
            e = _as(eps, g)
            scaled = g * jax.lax.rsqrt(n + e) if eps_in_sqrt else g / (jnp.sqrt(n) + e)
            return -_as(lr, g) * scaled

        return jax.tree.map(step, grads, nu), RmspropState(nu)

    return _count_if_scheduled(init, update, learning_rate, decay)


def _adam_family(name, learning_rate, b1, b2, eps, eps_root, fold_bias_correction, nesterov_momentum,
                 weight_decay, mask) -> Optimizer:
    _check(name, "learning_rate", learning_rate, 0)
    _check(name, "b1", b1, 0, 1, hi_open=True)
    _check(name, "b2", b2, 0, 1, hi_open=True)
    _check(name, "eps", eps, 0, schedule=False)
    _check(name, "eps_root", eps_root, 0, schedule=False)
    if weight_decay is not None:
        _check(name, "weight_decay", weight_decay, 0)
    _check_flag(name, "fold_bias_correction", fold_bias_correction)
    if fold_bias_correction and nesterov_momentum:
        raise ValueError("fold_bias_correction applies to Adam's update, not to NAdam's")

    def init(params):
        return AdamState(_zeros_count(), _zeros_like(params), _zeros_like(params))

    def update(grads, state, params=None, **extra_args):
        count = _increment(state.count)
        lr, wd = _at(learning_rate, state.count), _at(weight_decay, state.count)
        beta1, beta2 = _at(b1, state.count), _at(b2, state.count)
        mu = jax.tree.map(lambda g, m: (1 - _as(beta1, g)) * g + _as(beta1, g) * m, grads, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - _as(beta2, g)) * g * g + _as(beta2, g) * v, grads, state.nu)

        def step(g, m, v):
            t, c1, c2 = count.astype(g.dtype), _as(beta1, g), _as(beta2, g)
            bc1, bc2 = 1 - c1**t, 1 - c2**t
            if fold_bias_correction:  # the book's lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
                return jnp.sqrt(bc2) / bc1 * m / (jnp.sqrt(v + _as(eps_root, g)) + _as(eps, g))
            if nesterov_momentum:  # Dozat's NAdam, as optax.nadam
                m_hat = c1 * m / (1 - c1 ** (t + 1)) + (1 - c1) * g / bc1
            else:
                m_hat = m / bc1
            return m_hat / (jnp.sqrt(v / bc2 + _as(eps_root, g)) + _as(eps, g))

        u = jax.tree.map(step, grads, mu, nu)
        if weight_decay is not None:
            _need_params(params, name)
            keep = _resolve_mask(mask, params)
            u = jax.tree.map(lambda u, p, k: u + _as(wd, u) * p if k else u, u, params, keep)
        u = jax.tree.map(lambda u: -_as(lr, u) * u, u)
        return u, AdamState(count, mu, nu)

    return Optimizer(init, update)


def adam(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0,
         fold_bias_correction=False) -> Optimizer:
    r"""Adam (Kingma & Ba 2015, Algorithm 1).

    .. math:: m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
              W \leftarrow W - \eta\, \hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)

    with :math:`\hat m = m / (1-\beta_1^t)`, :math:`\hat v = v / (1-\beta_2^t)`. optax:
    ``optax.adam(lr, b1, b2, eps, eps_root=eps_root)``. ``fold_bias_correction=True`` is the
    textbook's form, :math:`W \leftarrow W - \eta_t m / (\sqrt{v} + \epsilon)` with
    :math:`\eta_t = \eta \sqrt{1-\beta_2^t} / (1-\beta_1^t)`; it equals Algorithm 1 with
    :math:`\epsilon` scaled by :math:`\sqrt{1-\beta_2^t}`.
    """
    return _adam_family("adam", learning_rate, b1, b2, eps, eps_root, fold_bias_correction, False, None, None)


def adamw(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0, weight_decay=1e-4, mask=None,
          fold_bias_correction=False) -> Optimizer:
    r"""AdamW: Adam with decoupled weight decay, :math:`W \leftarrow W - \eta(\text{adam} + \lambda W)`.

    Not the book's weight decay (that is an L2 loss term, coupled through the gradient).
    ``mask`` (None: every leaf) picks the decayed leaves. optax: ``optax.adamw(lr, b1, b2,
    eps, eps_root=eps_root, weight_decay=weight_decay, mask=mask)``. After ``eps`` every argument
    is keyword-only: optax's fifth positional argument is ``eps_root``, so a positional
    ``weight_decay`` would be read as the wrong one.
    """
    _check("adamw", "weight_decay", weight_decay, 0)  # None is no number here: adam is adamw without decay
    return _adam_family("adamw", learning_rate, b1, b2, eps, eps_root, fold_bias_correction, False, weight_decay, mask)


def nadam(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0) -> Optimizer:
    r"""NAdam (Dozat 2016): Adam with :math:`\hat m = \beta_1 m/(1-\beta_1^{t+1}) + (1-\beta_1) g/(1-\beta_1^t)`.

    optax: ``optax.nadam(lr, b1, b2, eps, eps_root=eps_root)``.
    """
    return _adam_family("nadam", learning_rate, b1, b2, eps, eps_root, False, True, None, None)


def adamax(learning_rate=0.002, b1=0.9, b2=0.999, eps=1e-7) -> Optimizer:
    r"""Adamax: :math:`u \leftarrow \max(|g| + \epsilon, \beta_2 u)`, :math:`W \leftarrow W - \eta \hat m / u`.

    optax: ``optax.adamax(lr, b1, b2, eps)`` (whose eps sits inside the max, as here).
    """
    _check("adamax", "learning_rate", learning_rate, 0)
    _check("adamax", "b1", b1, 0, 1, hi_open=True)
    _check("adamax", "b2", b2, 0, 1, hi_open=True)
    _check("adamax", "eps", eps, 0, schedule=False)

    def init(params):
        return AdamState(_zeros_count(), _zeros_like(params), _zeros_like(params))

    def update(grads, state, params=None, **extra_args):
        count = _increment(state.count)
        lr, beta1, beta2 = (_at(v, state.count) for v in (learning_rate, b1, b2))
        mu = jax.tree.map(lambda g, m: (1 - _as(beta1, g)) * g + _as(beta1, g) * m, grads, state.mu)
        nu = jax.tree.map(lambda g, v: jnp.maximum(jnp.abs(g) + _as(eps, g), _as(beta2, g) * v), grads, state.nu)
        u = jax.tree.map(
            lambda m, v: -_as(lr, m) * (m / (1 - _as(beta1, m) ** count.astype(m.dtype))) / v, mu, nu)
        return u, AdamState(count, mu, nu)

    return Optimizer(init, update)


def lion(learning_rate=1e-4, b1=0.9, b2=0.99, *, weight_decay=1e-3, mask=None) -> Optimizer:
    r"""Lion (Chen et al. 2023): :math:`W \leftarrow W - \eta(\mathrm{sign}(\beta_1 m + (1-\beta_1) g) + \lambda W)`,
    then :math:`m \leftarrow \beta_2 m + (1-\beta_2) g`.

    optax: ``optax.lion(lr, b1, b2, weight_decay=weight_decay, mask=mask)`` (keyword-only here
    after ``b2``: optax's fourth positional argument is ``mu_dtype``).
    """
    _check("lion", "learning_rate", learning_rate, 0)
    _check("lion", "b1", b1, 0, 1)
    _check("lion", "b2", b2, 0, 1)
    _check("lion", "weight_decay", weight_decay, 0)

    def update(grads, state, params, count):
        lr, wd = _at(learning_rate, count), _at(weight_decay, count)
        c1, c2 = _at(b1, count), _at(b2, count)
        u = jax.tree.map(lambda g, m: jnp.sign((1 - _as(c1, g)) * g + _as(c1, g) * m), grads, state.mu)
        mu = jax.tree.map(lambda g, m: (1 - _as(c2, g)) * g + _as(c2, g) * m, grads, state.mu)
        _need_params(params, "lion")
        keep = _resolve_mask(mask, params)
        u = jax.tree.map(lambda u, p, k: -_as(lr, u) * (u + _as(wd, u) * p if k else u), u, params, keep)
        return u, LionState(mu)

    return _count_if_scheduled(lambda params: LionState(_zeros_like(params)), update, learning_rate, b1, b2,
                               weight_decay)


def adadelta(learning_rate=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, weight_decay_mask=None) -> Optimizer:
    r"""Adadelta (Zeiler 2012): :math:`E_g \leftarrow \rho E_g + (1-\rho) g^2`,
    :math:`\Delta = \sqrt{E_x + \epsilon} / \sqrt{E_g + \epsilon}\, g`,
    :math:`E_x \leftarrow \rho E_x + (1-\rho) \Delta^2`, :math:`W \leftarrow W - \eta \Delta`.

    ``weight_decay`` adds :math:`\lambda W` to the gradient first, on the leaves
    ``weight_decay_mask`` picks (None: every leaf). optax: ``optax.adadelta(lr, rho, eps,
    weight_decay, weight_decay_mask)``.
    """
    _check("adadelta", "learning_rate", learning_rate, 0)
    _check("adadelta", "rho", rho, 0, 1)
    _check("adadelta", "eps", eps, 0, schedule=False)
    _check("adadelta", "weight_decay", weight_decay, 0)

    def init(params):
        return AdadeltaState(_zeros_like(params), _zeros_like(params))

    def update(grads, state, params, count):
        lr, r, wd = (_at(v, count) for v in (learning_rate, rho, weight_decay))
        if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
            _need_params(params, "adadelta with weight_decay")
            keep = _resolve_mask(weight_decay_mask, params)
            grads = jax.tree.map(lambda g, p, k: g + _as(wd, g) * p if k else g, grads, params, keep)
        e_g = jax.tree.map(lambda g, e: (1 - _as(r, g)) * g * g + _as(r, g) * e, grads, state.e_g)
        delta = jax.tree.map(
            lambda g, eg, ex: jnp.sqrt(ex + _as(eps, g)) / jnp.sqrt(eg + _as(eps, g)) * g, grads, e_g, state.e_x)
        e_x = jax.tree.map(lambda d, e: (1 - _as(r, d)) * d * d + _as(r, d) * e, delta, state.e_x)
        u = jax.tree.map(lambda d: -_as(lr, d) * d, delta)
        return u, AdadeltaState(e_g, e_x)

    return _count_if_scheduled(init, update, learning_rate, rho, weight_decay)


#: Every optimizer by name, for command lines and sweeps.
OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adagrad": adagrad,
    "rmsprop": rmsprop, "adam": adam, "adamw": adamw, "nadam": nadam, "adamax": adamax,
    "lion": lion, "adadelta": adadelta,
}
