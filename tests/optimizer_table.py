"""The one table of optimizers that drives every generic optimizer test.

Each case pairs a jaxscratch optimizer with its references:
  * ``optax``: the optax call that must compute the same thing (None where optax has no
    equivalent, e.g. the textbook's eps-after-sqrt AdaGrad or Adam's folded lr_t);
  * ``numpy``: a float64 NumPy transcription of the textbook's formula (or, for optimizers
    the book lacks, of the paper's), written the way the book's ``common/optimizer.py``
    writes it: a class with ``update(params, grads)`` that mutates a list of arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import optax

from jaxscratch import optim, schedules


# ----------------------------------------------------------- NumPy transcriptions
class NpSGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for i in range(len(params)):
            params[i] -= self.lr * grads[i]


class NpMomentum:
    def __init__(self, lr=0.01, momentum=0.9, lr_schedule=None):
        self.lr, self.momentum, self.v, self.t = lr, momentum, None, 0
        self.lr_schedule = lr_schedule

    def update(self, params, grads):
        lr = self.lr if self.lr_schedule is None else self.lr_schedule(self.t)
        self.t += 1
        if self.v is None:
            self.v = [np.zeros_like(p) for p in params]
        for i in range(len(params)):
            self.v[i] = self.momentum * self.v[i] - lr * grads[i]
            params[i] += self.v[i]


class NpNesterov:  # the book's corrected order
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = [np.zeros_like(p) for p in params]
        m, lr = self.momentum, self.lr
        for i in range(len(params)):
            params[i] += m * m * self.v[i]
            params[i] -= (1 + m) * lr * grads[i]
            self.v[i] *= m
            self.v[i] -= lr * grads[i]


class NpAdaGrad:
    def __init__(self, lr=0.01, h0=0.0, eps=1e-7):
        self.lr, self.h0, self.eps, self.h = lr, h0, eps, None

    def update(self, params, grads):
        if self.h is None:
            self.h = [np.full_like(p, self.h0) for p in params]
        for i in range(len(params)):
            self.h[i] += grads[i] * grads[i]
            params[i] -= self.lr * grads[i] / (np.sqrt(self.h[i]) + self.eps)


class NpRMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99, eps=1e-7):
        self.lr, self.decay_rate, self.eps, self.h = lr, decay_rate, eps, None

    def update(self, params, grads):
        if self.h is None:
            self.h = [np.zeros_like(p) for p in params]
        for i in range(len(params)):
            self.h[i] *= self.decay_rate
            self.h[i] += (1 - self.decay_rate) * grads[i] * grads[i]
            params[i] -= self.lr * grads[i] / (np.sqrt(self.h[i]) + self.eps)


class NpAdam:
    """The book's Adam when ``folded``; Kingma & Ba's Algorithm 1 otherwise."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7, folded=True, weight_decay=0.0,
                 decay_mask=None):
        self.lr, self.beta1, self.beta2, self.eps, self.folded = lr, beta1, beta2, eps, folded
        self.weight_decay, self.decay_mask = weight_decay, decay_mask
        self.iter, self.m, self.v = 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.iter += 1
        b1, b2, t = self.beta1, self.beta2, self.iter
        lr_t = self.lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        for i in range(len(params)):
            self.m[i] += (1 - b1) * (grads[i] - self.m[i])
            self.v[i] += (1 - b2) * (grads[i] ** 2 - self.v[i])
            if self.folded:
                step = lr_t * self.m[i] / (np.sqrt(self.v[i]) + self.eps)
            else:
                m_hat, v_hat = self.m[i] / (1 - b1**t), self.v[i] / (1 - b2**t)
                step = self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
            if self.weight_decay and (self.decay_mask is None or self.decay_mask[i]):
                step = step + self.lr * self.weight_decay * params[i]  # decoupled (AdamW)
            params[i] -= step


class NpNAdam:  # Dozat (2016), as in optax
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.v = lr, beta1, beta2, eps, 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        b1, b2, t = self.b1, self.b2, self.t
        for i in range(len(params)):
            self.m[i] = b1 * self.m[i] + (1 - b1) * grads[i]
            self.v[i] = b2 * self.v[i] + (1 - b2) * grads[i] ** 2
            m_hat = b1 * self.m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * grads[i] / (1 - b1**t)
            v_hat = self.v[i] / (1 - b2**t)
            params[i] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class NpAdamax:  # Kingma & Ba section 7.1, eps inside the max as optax
    def __init__(self, lr=0.002, beta1=0.9, beta2=0.999, eps=1e-7):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.u = lr, beta1, beta2, eps, 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.u = [np.zeros_like(p) for p in params]
        self.t += 1
        for i in range(len(params)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * grads[i]
            self.u[i] = np.maximum(self.b2 * self.u[i], np.abs(grads[i]) + self.eps)
            params[i] -= self.lr / (1 - self.b1**self.t) * self.m[i] / self.u[i]


class NpLion:  # Chen et al. (2023), Program 1
    def __init__(self, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=1e-3):
        self.lr, self.b1, self.b2, self.wd, self.m = lr, beta1, beta2, weight_decay, None

    def update(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
        for i in range(len(params)):
            c = np.sign(self.b1 * self.m[i] + (1 - self.b1) * grads[i])
            params[i] -= self.lr * (c + self.wd * params[i])
            self.m[i] = self.b2 * self.m[i] + (1 - self.b2) * grads[i]


class NpAdadelta:  # Zeiler (2012), Algorithm 1, times a learning rate
    def __init__(self, lr=1.0, rho=0.9, eps=1e-6):
        self.lr, self.rho, self.eps, self.eg, self.ex = lr, rho, eps, None, None

    def update(self, params, grads):
        if self.eg is None:
            self.eg = [np.zeros_like(p) for p in params]
            self.ex = [np.zeros_like(p) for p in params]
        r, e = self.rho, self.eps
        for i in range(len(params)):
            self.eg[i] = r * self.eg[i] + (1 - r) * grads[i] ** 2
            dx = np.sqrt(self.ex[i] + e) / np.sqrt(self.eg[i] + e) * grads[i]
            self.ex[i] = r * self.ex[i] + (1 - r) * dx**2
            params[i] -= self.lr * dx


# ----------------------------------------------------------- the table
@dataclass
class Case:
    name: str
    ours: Callable[[], Any]
    optax: Callable[[], Any] | None = None
    numpy: Callable[[], Any] | None = None
    # a learning rate that converges on the quadratic / Rosenbrock test problems, steps for each
    tags: tuple = field(default_factory=tuple)

    def __str__(self):
        return self.name


def _decay_sched():
    return schedules.exponential_decay(0.05, 100, 0.5)


CASES = [
    Case("sgd", lambda: optim.sgd(0.01), lambda: optax.sgd(0.01), lambda: NpSGD(0.01)),
    Case("sgd-0.3", lambda: optim.sgd(learning_rate=0.3), lambda: optax.sgd(0.3), lambda: NpSGD(0.3)),
    Case("momentum", lambda: optim.momentum(0.01, 0.9),
         lambda: optax.chain(optax.scale_by_learning_rate(0.01), optax.trace(0.9)), lambda: NpMomentum(0.01, 0.9)),
    Case("momentum-0.5", lambda: optim.momentum(learning_rate=0.05, momentum=0.5),
         lambda: optax.chain(optax.scale_by_learning_rate(0.05), optax.trace(0.5)), lambda: NpMomentum(0.05, 0.5)),
    Case("momentum-schedule", lambda: optim.momentum(_decay_sched(), 0.9),
         lambda: optax.chain(optax.scale_by_learning_rate(optax.exponential_decay(0.05, 100, 0.5)), optax.trace(0.9)),
         lambda: NpMomentum(momentum=0.9, lr_schedule=lambda t: 0.05 * 0.5 ** (t / 100))),
    Case("nesterov", lambda: optim.nesterov(0.01, 0.9),
         lambda: optax.sgd(0.01, momentum=0.9, nesterov=True), lambda: NpNesterov(0.01, 0.9)),
    Case("nesterov-0.7", lambda: optim.nesterov(learning_rate=0.03, momentum=0.7),
         lambda: optax.sgd(0.03, momentum=0.7, nesterov=True), lambda: NpNesterov(0.03, 0.7)),
    Case("adagrad-book", lambda: optim.adagrad(0.01), None, lambda: NpAdaGrad(0.01)),
    Case("adagrad-book-h0", lambda: optim.adagrad(0.1, initial_accumulator_value=0.5, eps=1e-6), None,
         lambda: NpAdaGrad(0.1, 0.5, 1e-6)),
    Case("adagrad-optax", lambda: optim.adagrad(0.01, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True),
         lambda: optax.adagrad(0.01, initial_accumulator_value=0.1, eps=1e-7)),
    Case("adagrad-optax-0", lambda: optim.adagrad(0.05, initial_accumulator_value=0.0, eps=1e-6, eps_in_sqrt=True),
         lambda: optax.adagrad(0.05, initial_accumulator_value=0.0, eps=1e-6)),
    Case("rmsprop-book", lambda: optim.rmsprop(0.01, decay=0.99, eps=1e-7, eps_in_sqrt=False),
         lambda: optax.rmsprop(0.01, decay=0.99, eps=1e-7, eps_in_sqrt=False), lambda: NpRMSprop(0.01, 0.99)),
    Case("rmsprop-0.9", lambda: optim.rmsprop(0.001, decay=0.9, eps=1e-5),
         lambda: optax.rmsprop(0.001, decay=0.9, eps=1e-5, eps_in_sqrt=False), lambda: NpRMSprop(0.001, 0.9, 1e-5)),
    Case("rmsprop-in-sqrt", lambda: optim.rmsprop(0.01, decay=0.9, eps=1e-8, eps_in_sqrt=True),
         lambda: optax.rmsprop(0.01, decay=0.9, eps=1e-8, eps_in_sqrt=True)),
    Case("rmsprop-centered", lambda: optim.rmsprop(0.003, decay=0.9, eps=1e-6, centered=True),
         lambda: optax.rmsprop(0.003, decay=0.9, eps=1e-6, eps_in_sqrt=False, centered=True)),
    Case("rmsprop-momentum", lambda: optim.rmsprop(0.001, eps=1e-8, eps_in_sqrt=True, momentum=0.9, nesterov=True),
         lambda: optax.rmsprop(0.001, decay=0.99, eps=1e-8, momentum=0.9, nesterov=True)),
    Case("adam", lambda: optim.adam(0.001, b1=0.9, b2=0.999, eps=1e-7),
         lambda: optax.adam(0.001, b1=0.9, b2=0.999, eps=1e-7), lambda: NpAdam(0.001, folded=False)),
    Case("adam-optax-defaults", lambda: optim.adam(0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-9),
         lambda: optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-9)),
    Case("adam-folded", lambda: optim.adam(0.001, fold_bias_correction=True), None, lambda: NpAdam(0.001)),
    Case("adam-folded-0.3", lambda: optim.adam(0.3, b1=0.8, b2=0.99, fold_bias_correction=True), None,
         lambda: NpAdam(0.3, 0.8, 0.99)),
    Case("adamw", lambda: optim.adamw(0.001, b1=0.9, b2=0.999, eps=1e-7, weight_decay=1e-2),
         lambda: optax.adamw(0.001, b1=0.9, b2=0.999, eps=1e-7, weight_decay=1e-2),
         lambda: NpAdam(0.001, folded=False, weight_decay=1e-2)),
    Case("adamw-mask", lambda: optim.adamw(0.003, weight_decay=0.1, mask=_mask),
         lambda: optax.adamw(0.003, eps=1e-7, weight_decay=0.1, mask=_mask),
         lambda: NpAdam(0.003, folded=False, weight_decay=0.1, decay_mask=_MASK_LEAVES)),
    Case("nadam", lambda: optim.nadam(0.002, b1=0.9, b2=0.999, eps=1e-7),
         lambda: optax.nadam(0.002, b1=0.9, b2=0.999, eps=1e-7), lambda: NpNAdam(0.002)),
    Case("adamax", lambda: optim.adamax(0.002, b1=0.9, b2=0.999, eps=1e-7),
         lambda: optax.adamax(0.002, b1=0.9, b2=0.999, eps=1e-7), lambda: NpAdamax(0.002)),
    Case("lion", lambda: optim.lion(1e-4, b1=0.9, b2=0.99, weight_decay=1e-3),
         lambda: optax.lion(1e-4, b1=0.9, b2=0.99, weight_decay=1e-3), lambda: NpLion(1e-4)),
    Case("adadelta", lambda: optim.adadelta(1.0, rho=0.9, eps=1e-6),
         lambda: optax.adadelta(1.0, rho=0.9, eps=1e-6), lambda: NpAdadelta(1.0)),
    Case("adadelta-wd", lambda: optim.adadelta(0.5, rho=0.95, eps=1e-6, weight_decay=0.01),
         lambda: optax.adadelta(0.5, rho=0.95, eps=1e-6, weight_decay=0.01)),
]


# The random pytree every generic test runs on: nested dicts and lists, several shapes.
SHAPES = {"dense": [{"w": (3, 4), "b": (4,)}, {"w": (4, 2), "b": (2,)}], "scalar": (), "cube": (2, 3, 2)}


def _mask(params):
    """Decay only the weight matrices "w" and the leaf "cube" (works on any tree, empty ones too)."""
    def keep(path, _):
        return getattr(path[-1], "key", None) in ("w", "cube") if path else False

    return jax.tree_util.tree_map_with_path(keep, params)


# _mask in the flattened leaf order of SHAPES (jax sorts dict keys: cube, dense[0].b, .w, ...)
_MASK_LEAVES = [True, False, True, False, True, False]
