"""The JAX + optax peer: what a competent user writes without jaxscratch (never imports it).

A plain MLP over jaxscratch's parameter layout (a list of ``{"w", "b"[, "gamma", "beta"]}``), so
every peer starts from the very same weights; optax's integer-label cross-entropy plus the book's
``0.5 * wd * sum(W ** 2)``; the book's batch norm (biased variance, eps 1e-6, running averages with
momentum 0.9). Data stay on the device, mini-batches are gathered there. Two styles: ``loop`` (a
jitted step, carry donated, called from Python) and ``scan`` (a whole run in one ``lax.scan``).
The book's optimizers in optax: ``sgd``; Momentum ``sgd(momentum=0.9)``; AdaGrad ``adagrad(eps=1e-7,
initial_accumulator_value=0)`` (eps inside the root: the same work, slightly different numbers);
Adam ``adam(eps=1e-7)``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

BN_EPS, BN_MOMENTUM = 1e-6, 0.9

OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.01),
    "momentum": lambda: optax.sgd(0.01, momentum=0.9),
    "adagrad": lambda: optax.adagrad(0.01, initial_accumulator_value=0.0, eps=1e-7),
    "adam": lambda: optax.adam(1e-3, eps=1e-7),
}


# ----------------------------------------------------------------- model
def init_bn(params):
    """Running statistics (zeros, as the book) for every hidden layer with batch norm, else None."""
    return [{"mean": jnp.zeros_like(p["b"]), "var": jnp.zeros_like(p["b"])} if "gamma" in p else None
            for p in params]


def forward(params, x, bn=None, train=True):
    """Logits and the new running statistics; ``bn`` is None for a plain net."""
    bn = [None] * len(params) if bn is None else bn
    new_bn = []
    for i, (p, s) in enumerate(zip(params, bn)):
        x = x @ p["w"] + p["b"]
        if i == len(params) - 1:
            new_bn.append(s)
            break
        if "gamma" in p:
            if train:
                mean = x.mean(axis=0)
                var = ((x - mean) ** 2).mean(axis=0)
                s = {"mean": BN_MOMENTUM * s["mean"] + (1 - BN_MOMENTUM) * mean,
                     "var": BN_MOMENTUM * s["var"] + (1 - BN_MOMENTUM) * var}
            else:
                mean, var = s["mean"], s["var"]
            x = p["gamma"] * (x - mean) / jnp.sqrt(var + BN_EPS) + p["beta"]
        new_bn.append(s)
        x = jax.nn.relu(x)
    return x, new_bn


def loss_fn(params, bn, x, y, wd=None):
    logits, new_bn = forward(params, x, bn, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if wd is not None:
        loss = loss + 0.5 * wd * sum(jnp.sum(p["w"] ** 2) for p in params)
    return loss, new_bn


def accuracy_and_loss(params, bn, x, y):
    logits, _ = forward(params, x, bn, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jnp.mean(jnp.argmax(logits, axis=-1) == y), loss


def make_step(opt, wd=False):
    """``step(carry, x, y, idx, wd) -> (carry, loss)`` with ``carry = (params, opt_state, bn)``."""

    def step(carry, x, y, idx, weight_decay=None):
        params, opt_state, bn = carry
        (loss, bn), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, bn, jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), weight_decay if wd else None)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, bn), loss

    return step


# ----------------------------------------------------------------- (a), (b): a run of given batches
def loop_runner(opt):
    """``run(params, x, y, batches) -> (params, losses)``: a jitted step called once per batch, the
    row indices ``batches`` ``(steps, batch)`` sent from the host (the book's style); the data stay
    on the device, gathered there; the losses stay there until one ``device_get`` at the end."""
    step = jax.jit(make_step(opt), donate_argnums=0)

    def run(params, x, y, batches):
        params = jax.tree.map(jnp.copy, params)  # the step donates its carry: keep the caller's arrays
        carry = (params, opt.init(params), [None] * len(params))
        losses = []
        for idx in np.asarray(batches):
            carry, loss = step(carry, x, y, idx)
            losses.append(loss)
        return carry[0], np.asarray(jax.device_get(losses))

    return run


def scan_runner(opt):
    """``run(params, x, y, batches) -> (params, losses)``: the whole run in one jitted scan."""
    step = make_step(opt)

    @jax.jit
    def run(params, x, y, batches):
        carry = (params, opt.init(params), [None] * len(params))
        carry, losses = jax.lax.scan(lambda c, idx: step(c, x, y, idx), carry, batches)
        return carry[0], losses

    return run


# ----------------------------------------------------------------- (c), (d): trials trained by epochs
def epoch_batches(key, epoch, n, batch_size, replace):
    """One epoch's batch indices ``(n // batch_size, batch_size)`` drawn from ``fold_in(fold_in(key,
    0), epoch)``: a permutation cut into batches, or (``replace``) independent draws with replacement.
    The same draws as jaxscratch's, so the runs can be compared number for number."""
    k = jax.random.fold_in(jax.random.fold_in(key, 0), epoch)
    steps = n // batch_size
    if replace:
        return jax.random.randint(k, (steps, batch_size), 0, n, dtype=jnp.int32)
    return jax.random.permutation(k, n)[:steps * batch_size].astype(jnp.int32).reshape(steps, batch_size)


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size", "replace", "wd"))
def train_trial(params, lr, weight_decay, key, x, y, evals, *, epochs, batch_size, replace, wd=True):
    """One trial, one program: ``epochs`` epochs of SGD(lr), each on batches drawn from ``key``,
    then accuracy on each set of ``evals`` (a dict of ``(x, y)``). lr and weight decay are traced,
    so one compilation serves every trial. Returns name -> accuracy per epoch."""
    opt = optax.sgd(lr)
    step = make_step(opt, wd=wd)
    carry = (params, opt.init(params), init_bn(params))

    def epoch(carry, e):
        batches = epoch_batches(key, e, x.shape[0], batch_size, replace)
        carry, _ = jax.lax.scan(lambda c, idx: step(c, x, y, idx, weight_decay), carry, batches)
        accs = {name: accuracy_and_loss(carry[0], carry[2], xe, ye)[0] for name, (xe, ye) in evals.items()}
        return carry, accs

    carry, accs = jax.lax.scan(epoch, carry, jnp.arange(epochs))
    return carry, accs
