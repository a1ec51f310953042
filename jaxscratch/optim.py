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
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxscratch._transforms import (ApplyIfFiniteState, EmptyState, HyperparameterError, HyperparameterTypeError,
                                    HyperparameterValueError, InjectState, Optimizer, OptState, Params, ScheduleState,
                                    Updates, _as, _at, _check, _check_flag, _count_if_scheduled, _decay_weights,
                                    _increment, _zeros_count, _zeros_like, add_decayed_weights, apply_if_finite,
                                    apply_updates, chain, clip_by_global_norm, inject_hyperparams)

__all__ = [
    "Optimizer", "EmptyState", "ScheduleState", "InjectState", "ApplyIfFiniteState", "apply_updates", "apply_if_finite", "chain",
    "add_decayed_weights", "clip_by_global_norm", "inject_hyperparams", "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
    "adamw", "nadam", "adamax", "lion", "adadelta", "scale_by_adam", "scale_by_adamax", "OPTIMIZERS",
    "Params", "Updates", "OptState", "HyperparameterError", "HyperparameterTypeError", "HyperparameterValueError",
]


# ---------------------------------------------------------------- states
# Only the Adam family keeps a count of its own (its bias correction reads it); the others get
# one from ScheduleState when a hyperparameter is a schedule (see the module docstring). Every
# moment has its parameter's dtype, complex included (as optax's).
class MomentumState(NamedTuple):
    velocity: Updates  # v = momentum * v - lr * g, the textbook's velocity


class SgdState(NamedTuple):  # sgd with momentum: optax's TraceState
    trace: Updates  # t = g + momentum * t, in gradient units (lr applied outside)


class NesterovState(NamedTuple):  # nesterov's: the same trace, kept under the book's name
    trace: Updates


class AdagradState(NamedTuple):
    sum_of_squares: Updates  # h = h0 + sum of |g|^2


class RmspropState(NamedTuple):
    nu: Updates  # EMA of |g|^2


class CenteredRmspropState(NamedTuple):  # rmsprop(centered=True): optax's ScaleByRStdDevState
    mu: Updates  # EMA of g
    nu: Updates  # EMA of |g|^2


class AdamState(NamedTuple):
    count: jax.Array  # int32, shape (): updates so far, t - 1 in the bias corrections 1 - b^t
    mu: Updates  # EMA of g
    nu: Updates  # EMA of |g|^2 (adamax: the decayed max of |g|)


class LionState(NamedTuple):
    mu: Updates  # EMA of g, with b2


class AdadeltaState(NamedTuple):
    e_g: Updates  # EMA of |g|^2
    e_x: Updates  # EMA of the squared step


# ---------------------------------------------------------------- shared pieces
def _abs_sq(g: jax.Array) -> jax.Array:
    """:math:`|g|^2`: ``g * g`` for real ``g``; ``(conj(g) g).real`` in ``g``'s dtype for complex."""
    return (g.conj() * g).real.astype(g.dtype) if jnp.iscomplexobj(g) else g * g


def _real(g: jax.Array):
    """``g``'s real dtype (float32 for complex64), for the step counts in bias corrections."""
    return jnp.finfo(g.dtype).dtype


def _ema(decay, grads: Updates, old: Updates, *, order: int = 1, norm: bool = False) -> Updates:
    r"""The moving average :math:`(1-d)\,x + d\,m` of ``x = g`` (``order=1``), ``g^2`` (``order=2``)
    or ``|g|^2`` (``norm=True``, optax's per-element norm for complex ``g``), leaf by leaf."""

    def one(g, m):
        d = _as(decay, g)
        if order == 1:
            return (1 - d) * g + d * m
        if norm and jnp.iscomplexobj(g):
            return (1 - d) * _abs_sq(g) + d * m
        return (1 - d) * g * g + d * m  # this order of products: the trajectories pinned by tests

    return jax.tree.map(one, grads, old)


def _trace(momentum, grads: Updates, trace: Updates, nesterov: bool) -> tuple[Updates, Updates]:
    """optax's trace: ``t <- g + momentum * t``; the direction is ``t``, or ``g + momentum * t``
    with ``nesterov``. Returns ``(direction, t)``."""
    t = jax.tree.map(lambda g, t: g + _as(momentum, g) * t, grads, trace)
    return (jax.tree.map(lambda g, t: g + _as(momentum, g) * t, grads, t) if nesterov else t), t


def _scale(learning_rate, updates: Updates) -> Updates:
    """``-learning_rate * u``: the descent step."""
    return jax.tree.map(lambda u: -_as(learning_rate, u) * u, updates)


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
        raise HyperparameterValueError("sgd: nesterov=True needs a momentum; got momentum=None",
                                       optimizer="sgd", argument="nesterov", expected="a momentum with it",
                                       found=nesterov)

    def update(grads, state, params, count):
        return _scale(_at(learning_rate, count), grads), state

    return _count_if_scheduled(lambda params: EmptyState(), update, learning_rate)


def _trace_momentum(learning_rate, momentum, nesterov: bool, state_type) -> Optimizer:
    """``t <- g + momentum * t``; updates ``-lr * t``, or ``-lr * (g + momentum * t)`` with
    ``nesterov``; the state is ``state_type(trace=t)``."""

    def update(grads, state, params, count):
        direction, t = _trace(_at(momentum, count), grads, state.trace, nesterov)
        return _scale(_at(learning_rate, count), direction), state_type(t)

    return _count_if_scheduled(lambda params: state_type(_zeros_like(params)), update, learning_rate, momentum)


def momentum(learning_rate=0.01, momentum=0.9) -> Optimizer:
    r"""Momentum SGD, the textbook's form with the learning rate inside the velocity.

    .. math:: v \leftarrow \mu v - \eta_t g, \qquad W \leftarrow W + v

    (:math:`\mu` = ``momentum``, :math:`\eta_t` = ``learning_rate`` at ``count``.)
    optax: ``optax.chain(optax.scale_by_learning_rate(lr), optax.trace(momentum))``; equal to
    ``optax.sgd(lr, momentum=momentum)`` only for a constant learning rate.

    >>> opt = momentum(0.1, 0.9); p = {"w": jnp.zeros(1)}; s = opt.init(p)
    >>> for _ in range(2): u, s = opt.update({"w": jnp.ones(1)}, s); p = apply_updates(p, u)
    >>> round(float(p["w"][0]), 4)  # v1 = -0.1, v2 = 0.9 v1 - 0.1
    -0.29
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

    >>> opt = nesterov(0.1, 0.9); u, s = opt.update({"w": jnp.ones(1)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4)  # -lr (g + mu t) with t = g = 1
    -0.19
    """
    _check("nesterov", "learning_rate", learning_rate, 0)
    _check("nesterov", "momentum", momentum, 0, 1, hi_open=True)
    return _trace_momentum(learning_rate, momentum, True, NesterovState)


def adagrad(learning_rate=0.01, initial_accumulator_value=0.0, eps=1e-7, *, eps_in_sqrt=False) -> Optimizer:
    r"""AdaGrad: :math:`h \leftarrow h + |g|^2`, :math:`W \leftarrow W - \eta g / (\sqrt{h} + \epsilon)`.

    ``eps_in_sqrt=True`` uses :math:`g / \sqrt{h + \epsilon}` (zero where :math:`h = 0`),
    which is ``optax.adagrad(lr, initial_accumulator_value, eps)``; the default is the book's.

    >>> opt = adagrad(0.1); u, s = opt.update({"w": jnp.full(1, 2.0)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4), float(s.sum_of_squares["w"][0])  # -lr g / (|g| + eps)
    (-0.1, 4.0)
    """
    _check("adagrad", "learning_rate", learning_rate, 0)
    _check("adagrad", "initial_accumulator_value", initial_accumulator_value, 0, schedule=False)
    _check("adagrad", "eps", eps, 0, schedule=False)
    _check_flag("adagrad", "eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return AdagradState(_zeros_like(params, initial_accumulator_value))

    def update(grads, state, params, count):
        h = jax.tree.map(lambda g, h: h + _abs_sq(g), grads, state.sum_of_squares)

        def scaled(g, h):
            e = _as(eps, g)
            return (jnp.where(h > 0, jax.lax.rsqrt(h + e), 0) * g) if eps_in_sqrt else g / (jnp.sqrt(h) + e)

        return _scale(_at(learning_rate, count), jax.tree.map(scaled, grads, h)), AdagradState(h)

    return _count_if_scheduled(init, update, learning_rate)


def rmsprop(learning_rate=0.01, decay=0.99, eps=1e-7, *, initial_scale=0.0, eps_in_sqrt=False, centered=False,
            momentum=None, nesterov=False) -> Optimizer:
    r"""RMSprop: :math:`h \leftarrow \rho h + (1-\rho) |g|^2`, :math:`W \leftarrow W - \eta g / (\sqrt{h} + \epsilon)`.

    (:math:`\rho` = ``decay``.) ``eps_in_sqrt=True`` uses :math:`g / \sqrt{h + \epsilon}`;
    ``centered=True`` divides by the standard deviation, :math:`\sqrt{h - |m|^2}` with
    :math:`m \leftarrow \rho m + (1-\rho) g`; ``momentum`` (:math:`\mu`) keeps a trace of the
    scaled steps, :math:`b \leftarrow \mu b - \eta g / (\dots)`, :math:`W \leftarrow W + b`
    (``nesterov``: :math:`W \leftarrow W + \mu b - \eta g / (\dots)`). optax: ``optax.rmsprop(lr,
    decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt, centered=centered,
    momentum=momentum, nesterov=nesterov)``.

    >>> opt = rmsprop(0.01, decay=0.99); u, s = opt.update({"w": jnp.ones(1)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4)  # -lr g / sqrt(0.01 g^2): ten times the learning rate
    -0.1
    """
    _check("rmsprop", "learning_rate", learning_rate, 0)
    _check("rmsprop", "decay", decay, 0, 1)
    _check("rmsprop", "eps", eps, 0, schedule=False)
    _check("rmsprop", "initial_scale", initial_scale, 0, schedule=False)
    _check_flag("rmsprop", "eps_in_sqrt", eps_in_sqrt)
    _check_flag("rmsprop", "centered", centered)
    _check_flag("rmsprop", "nesterov", nesterov)
    if momentum is not None:
        _check("rmsprop", "momentum", momentum, 0, 1, hi_open=True)
    elif nesterov:
        raise HyperparameterValueError("rmsprop: nesterov=True needs a momentum; got momentum=None",
                                       optimizer="rmsprop", argument="nesterov", expected="a momentum with it",
                                       found=nesterov)

    def init(params):  # with momentum, (that state, SgdState(trace)): optax's (..., TraceState)
        nu = _zeros_like(params, initial_scale)
        rms = CenteredRmspropState(_zeros_like(params), nu) if centered else RmspropState(nu)
        return rms if momentum is None else (rms, SgdState(_zeros_like(params)))

    def update(grads, state, params, count):
        rms = state if momentum is None else state[0]
        d = _at(decay, count)
        nu = _ema(d, grads, rms.nu, order=2, norm=True)
        mu = _ema(d, grads, rms.mu) if centered else None
        rms = CenteredRmspropState(mu, nu) if centered else RmspropState(nu)

        def scaled(g, n, m=None):
            if centered:
                n = n - _abs_sq(m)
            e = _as(eps, g)
            return g * jax.lax.rsqrt(n + e) if eps_in_sqrt else g / (jnp.sqrt(n) + e)

        u = _scale(_at(learning_rate, count), jax.tree.map(scaled, grads, nu, *([mu] if centered else [])))
        if momentum is None:
            return u, rms
        u, trace = _trace(_at(momentum, count), u, state[1].trace, nesterov)
        return u, (rms, SgdState(trace))

    return _count_if_scheduled(init, update, learning_rate, decay, momentum)


# ------------------------------------------------------------- the Adam family, composed
# As optax builds it: a core that scales the gradient into a direction and keeps AdamState
# (scale_by_adam, scale_by_adamax), then decayed weights, then the learning rate. The pieces read
# the core's count, so a schedule anywhere is evaluated at Adam's step and the state stays AdamState.
def scale_by_adam(b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0, nesterov=False,
                  fold_bias_correction=False, _name="scale_by_adam") -> Optimizer:
    r"""Adam's direction without the learning rate: :math:`\hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)`.

    ``nesterov=True`` is NAdam's :math:`\hat m`; ``fold_bias_correction=True`` the book's
    :math:`\sqrt{1-\beta_2^t} / (1-\beta_1^t)\, m / (\sqrt{v} + \epsilon)`. optax:
    ``optax.scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov)``.

    >>> opt = scale_by_adam(); u, s = opt.update({"w": jnp.full(1, 3.0)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4), int(s.count)  # the first direction is sign(g)
    (1.0, 1)
    """
    name = _name  # the optimizer built on it, in error messages
    _check(name, "b1", b1, 0, 1, hi_open=True)
    _check(name, "b2", b2, 0, 1, hi_open=True)
    _check(name, "eps", eps, 0, schedule=False)
    _check(name, "eps_root", eps_root, 0, schedule=False)
    _check_flag(name, "nesterov", nesterov)
    _check_flag(name, "fold_bias_correction", fold_bias_correction)
    if fold_bias_correction and nesterov:
        raise ValueError("fold_bias_correction applies to Adam's update, not to NAdam's")

    def update(grads, state, params=None, **extra_args):
        count = _increment(state.count)
        beta1, beta2 = _at(b1, state.count), _at(b2, state.count)
        mu, nu = _ema(beta1, grads, state.mu), _ema(beta2, grads, state.nu, order=2, norm=True)

        def direction(g, m, v):
            t = count.astype(_real(g))
            c1, c2 = _as(beta1, t), _as(beta2, t)
            bc1, bc2 = 1 - c1**t, 1 - c2**t

            def cast(x):  # a real factor into g's dtype: nothing for real g
                return x.astype(g.dtype)

            if fold_bias_correction:  # the book's lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
                return cast(jnp.sqrt(bc2) / bc1) * m / (jnp.sqrt(v + _as(eps_root, g)) + _as(eps, g))
            if nesterov:  # Dozat's NAdam, as optax.nadam
                m_hat = cast(c1) * m / cast(1 - c1 ** (t + 1)) + cast(1 - c1) * g / cast(bc1)
            else:
                m_hat = m / cast(bc1)
            return m_hat / (jnp.sqrt(v / cast(bc2) + _as(eps_root, g)) + _as(eps, g))

        return jax.tree.map(direction, grads, mu, nu), AdamState(count, mu, nu)

    return Optimizer(_adam_init, update)


def scale_by_adamax(b1=0.9, b2=0.999, eps=1e-7, *, _name="scale_by_adamax") -> Optimizer:
    r"""Adamax's direction: :math:`u \leftarrow \max(|g| + \epsilon, \beta_2 u)`, :math:`\hat m / u`.

    optax: ``optax.scale_by_adamax(b1, b2, eps)``.

    >>> opt = scale_by_adamax(); u, s = opt.update({"w": jnp.full(1, -2.0)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4), round(float(s.nu["w"][0]), 4)  # sign(g), and u = |g| + eps
    (-1.0, 2.0)
    """
    _check(_name, "b1", b1, 0, 1, hi_open=True)
    _check(_name, "b2", b2, 0, 1, hi_open=True)
    _check(_name, "eps", eps, 0, schedule=False)

    def update(grads, state, params=None, **extra_args):
        count = _increment(state.count)
        beta1, beta2 = _at(b1, state.count), _at(b2, state.count)
        mu = _ema(beta1, grads, state.mu)
        nu = jax.tree.map(lambda g, v: jnp.maximum(jnp.abs(g).astype(g.dtype) + _as(eps, g), _as(beta2, g) * v),
                          grads, state.nu)  # complex g: |g| as a complex number, compared by its real part

        def direction(m, v):
            t = count.astype(_real(m))
            bc1 = 1 - _as(beta1, t) ** t
            return m / bc1.astype(m.dtype) / v

        return jax.tree.map(direction, mu, nu), AdamState(count, mu, nu)

    return Optimizer(_adam_init, update)


def _adam_init(params) -> AdamState:
    return AdamState(_zeros_count(), _zeros_like(params), _zeros_like(params))


def _decayed_and_scaled(name: str, learning_rate, core: Callable[[str], Optimizer], *, weight_decay=None,
                        mask=None) -> Optimizer:
    """``core(name)``'s direction, plus ``weight_decay * W`` on the leaves ``mask`` picks, times
    ``-learning_rate``; the hyperparameters are evaluated at the core's ``AdamState.count``."""
    _check(name, "learning_rate", learning_rate, 0)
    if weight_decay is not None:
        _check(name, "weight_decay", weight_decay, 0)
    core = core(name)

    def update(grads, state, params=None, **extra_args):
        direction, new_state = core.update(grads, state, params)
        direction = _decay_weights(name, direction, params, weight_decay, mask, state.count)
        return _scale(_at(learning_rate, state.count), direction), new_state

    return Optimizer(core.init, update)


def adam(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0,
         fold_bias_correction=False) -> Optimizer:
    r"""Adam (Kingma & Ba 2015, Algorithm 1).

    .. math:: m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) |g|^2,\quad
              W \leftarrow W - \eta\, \hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)

    with :math:`\hat m = m / (1-\beta_1^t)`, :math:`\hat v = v / (1-\beta_2^t)`. optax:
    ``optax.adam(lr, b1, b2, eps, eps_root=eps_root)``. ``fold_bias_correction=True`` is the
    textbook's form, :math:`W \leftarrow W - \eta_t m / (\sqrt{v} + \epsilon)` with
    :math:`\eta_t = \eta \sqrt{1-\beta_2^t} / (1-\beta_1^t)`; it equals Algorithm 1 with
    :math:`\epsilon` scaled by :math:`\sqrt{1-\beta_2^t}`.

    >>> opt = adam(0.01); u, s = opt.update({"w": jnp.full(1, -5.0)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4)  # the first step is lr * sign(-g)
    0.01
    """
    return _decayed_and_scaled("adam", learning_rate, lambda name: scale_by_adam(
        b1, b2, eps, eps_root=eps_root, fold_bias_correction=fold_bias_correction, _name=name))


def adamw(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0, weight_decay=1e-4, mask=None,
          fold_bias_correction=False) -> Optimizer:
    r"""AdamW: Adam with decoupled weight decay, :math:`W \leftarrow W - \eta(\text{adam} + \lambda W)`.

    Not the book's weight decay (that is an L2 loss term, coupled through the gradient).
    ``mask`` (None: every leaf) picks the decayed leaves. optax: ``optax.adamw(lr, b1, b2,
    eps, eps_root=eps_root, weight_decay=weight_decay, mask=mask)``. After ``eps`` every argument
    is keyword-only: optax's fifth positional argument is ``eps_root``, so a positional
    ``weight_decay`` would be read as the wrong one.

    >>> opt = adamw(0.01, weight_decay=0.5); p = {"w": jnp.full(1, 2.0)}
    >>> u, s = opt.update({"w": jnp.zeros(1)}, opt.init(p), p)
    >>> round(float(u["w"][0]), 4)  # zero gradient: only the decay, -lr * wd * W
    -0.01
    """
    _check("adamw", "weight_decay", weight_decay, 0)  # None is no number here: adam is adamw without decay
    return _decayed_and_scaled("adamw", learning_rate, lambda name: scale_by_adam(
        b1, b2, eps, eps_root=eps_root, fold_bias_correction=fold_bias_correction, _name=name),
        weight_decay=weight_decay, mask=mask)


def nadam(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-7, *, eps_root=0.0) -> Optimizer:
    r"""NAdam (Dozat 2016): Adam with :math:`\hat m = \beta_1 m/(1-\beta_1^{t+1}) + (1-\beta_1) g/(1-\beta_1^t)`.

    optax: ``optax.nadam(lr, b1, b2, eps, eps_root=eps_root)``.

    >>> opt = nadam(0.01); u, s = opt.update({"w": jnp.ones(1)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4)  # m_hat = 0.9 * 0.1 g / 0.19 + g: the first step is larger than Adam's
    -0.0147
    """
    return _decayed_and_scaled("nadam", learning_rate, lambda name: scale_by_adam(
        b1, b2, eps, eps_root=eps_root, nesterov=True, _name=name))


def adamax(learning_rate=0.002, b1=0.9, b2=0.999, eps=1e-7) -> Optimizer:
    r"""Adamax: :math:`u \leftarrow \max(|g| + \epsilon, \beta_2 u)`, :math:`W \leftarrow W - \eta \hat m / u`.

    optax: ``optax.adamax(lr, b1, b2, eps)`` (whose eps sits inside the max, as here).

    >>> opt = adamax(0.002); u, s = opt.update({"w": jnp.full(1, 4.0)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 4)  # the first step is lr * sign(-g)
    -0.002
    """
    return _decayed_and_scaled("adamax", learning_rate, lambda name: scale_by_adamax(b1, b2, eps, _name=name))


def lion(learning_rate=1e-4, b1=0.9, b2=0.99, *, weight_decay=1e-3, mask=None) -> Optimizer:
    r"""Lion (Chen et al. 2023): :math:`W \leftarrow W - \eta(\mathrm{sign}(\beta_1 m + (1-\beta_1) g) + \lambda W)`,
    then :math:`m \leftarrow \beta_2 m + (1-\beta_2) g`.

    optax: ``optax.lion(lr, b1, b2, weight_decay=weight_decay, mask=mask)`` (keyword-only here
    after ``b2``: optax's fourth positional argument is ``mu_dtype``).

    >>> opt = lion(0.1, weight_decay=0.0); p = {"w": jnp.ones(2)}
    >>> u, s = opt.update({"w": jnp.array([3.0, -0.5])}, opt.init(p), p)
    >>> u["w"].tolist()  # -lr * sign(g)
    [-0.10000000149011612, 0.10000000149011612]
    """
    _check("lion", "learning_rate", learning_rate, 0)
    _check("lion", "b1", b1, 0, 1)
    _check("lion", "b2", b2, 0, 1)
    _check("lion", "weight_decay", weight_decay, 0)

    def update(grads, state, params, count):
        u = jax.tree.map(jnp.sign, _ema(_at(b1, count), grads, state.mu))
        u = _decay_weights("lion", u, params, weight_decay, mask, count)
        return _scale(_at(learning_rate, count), u), LionState(_ema(_at(b2, count), grads, state.mu))

    return _count_if_scheduled(lambda params: LionState(_zeros_like(params)), update, learning_rate, b1, b2,
                               weight_decay)


def adadelta(learning_rate=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, weight_decay_mask=None) -> Optimizer:
    r"""Adadelta (Zeiler 2012): :math:`E_g \leftarrow \rho E_g + (1-\rho) g^2`,
    :math:`\Delta = \sqrt{E_x + \epsilon} / \sqrt{E_g + \epsilon}\, g`,
    :math:`E_x \leftarrow \rho E_x + (1-\rho) \Delta^2`, :math:`W \leftarrow W - \eta \Delta`.

    ``weight_decay`` adds :math:`\lambda W` to the gradient first, on the leaves
    ``weight_decay_mask`` picks (None: every leaf). optax: ``optax.adadelta(lr, rho, eps,
    weight_decay, weight_decay_mask)``. Complex parameters square magnitudes, :math:`|g|^2` and
    :math:`|\Delta|^2`, as the other optimizers (optax's adadelta squares the complex numbers and
    declares complex parameters unsupported).

    >>> opt = adadelta(1.0, rho=0.9, eps=1e-6); u, s = opt.update({"w": jnp.ones(1)}, opt.init({"w": jnp.zeros(1)}))
    >>> round(float(u["w"][0]), 6)  # sqrt(eps) / sqrt(0.1 + eps): tiny first steps
    -0.003162
    """
    _check("adadelta", "learning_rate", learning_rate, 0)
    _check("adadelta", "rho", rho, 0, 1)
    _check("adadelta", "eps", eps, 0, schedule=False)
    _check("adadelta", "weight_decay", weight_decay, 0)

    def init(params):
        return AdadeltaState(_zeros_like(params), _zeros_like(params))

    def update(grads, state, params, count):
        r = _at(rho, count)
        grads = _decay_weights("adadelta", grads, params, weight_decay, weight_decay_mask, count)
        e_g = _ema(r, grads, state.e_g, order=2, norm=True)
        delta = jax.tree.map(
            lambda g, eg, ex: jnp.sqrt(ex + _as(eps, g)) / jnp.sqrt(eg + _as(eps, g)) * g, grads, e_g, state.e_x)
        return _scale(_at(learning_rate, count), delta), AdadeltaState(e_g, _ema(r, delta, state.e_x, order=2, norm=True))

    return _count_if_scheduled(init, update, learning_rate, rho, weight_decay)


#: Every optimizer by name, for command lines and sweeps.
OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adagrad": adagrad,
    "rmsprop": rmsprop, "adam": adam, "adamw": adamw, "nadam": nadam, "adamax": adamax,
    "lion": lion, "adadelta": adadelta,
}
