"""Cross-checking numerics: two optimizers side by side, and pytrees compared leaf by leaf.

Contract:
  * ``cross_check(opt_a, opt_b, params, grads=None, *, grad_fn=None, steps=None, rtol=1e-5,
    atol=0.0, names=("a", "b"))`` runs two ``(init, update)`` pairs (ours, optax's or any with optax's
    call signature) from the same ``params`` for ``steps`` updates in one jitted ``lax.scan``
    and returns a :class:`CrossCheck`. Step ``i`` (from 0, the optimizer's ``count``) is the
    update made with the ``i``-th gradient. The gradients come from exactly one of:

    - ``grads``, a stream the two share: a sequence or iterable of gradient pytrees, one
      pytree whose leaves carry a leading step axis, or a traceable ``grads(step)``;
    - ``grad_fn(params, step)``, evaluated on each optimizer's own params (e.g. a loss's
      ``jax.grad``), so that differences feed back as they do in training.

  * After each step, each leaf's difference is norm-relative, ``||a - b|| / max(||b||, tiny)``
    (``b`` the reference; Frobenius norm; ``tiny`` the leaf dtype's smallest normal), for
    float32, float64, complex and integer leaves alike. A leaf is past the tolerance when its
    relative difference exceeds ``rtol`` and its absolute one, ``||a - b||``, exceeds ``atol``
    (default 0: relative only; a small ``atol`` ignores rounding in a leaf passing near zero);
    a NaN is past any tolerance.
  * ``assert_trees_close(a, b, *, rtol=1e-6, atol=0.0, names=("a", "b"), check_dtypes=True)``
    returns None or raises ``AssertionError`` naming (by ``jax.tree_util.keystr``) the
    structure difference, or the first leaf in ``jax.tree.leaves`` order whose shape, dtype or
    values differ, with its largest absolute and relative differences. Elementwise it is
    ``numpy.testing.assert_allclose``'s test, ``|a - b| <= atol + rtol * |b|``, NaNs equal.

Nothing here imports optax: the caller passes optax's optimizer in. optax relies on implicit
dtype promotion, so under ``jax_numpy_dtype_promotion="strict"`` wrap the call in
``with jax.numpy_dtype_promotion("standard"):``. Arrays a ``grad_fn`` closes over become
constants of the compiled program; a stream is passed to it as an argument.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch.optim import Optimizer, apply_updates

__all__ = ["CrossCheck", "assert_trees_close", "cross_check"]


class CrossCheck(NamedTuple):
    """What :func:`cross_check` found. ``verdict`` is the one line to print or assert on."""

    paths: tuple[str, ...]    # each leaf's key path, in jax.tree.leaves order
    leaf_diffs: np.ndarray    # (steps, leaves): norm-relative difference after each step
    leaf_abs_diffs: np.ndarray  # (steps, leaves): ||a - b|| after each step
    max_diff: np.ndarray      # (steps,): the largest over the leaves
    first_step: int | None    # the first step past rtol, None if they agree throughout
    first_leaf: str | None    # the leaf past rtol at first_step (the worst, if several)
    verdict: str              # "a and b agree to 3.1e-07 over 1000 steps" or where they part
    params: tuple[Any, Any]   # the final params of opt_a and of opt_b


def _path(path) -> str:
    return jax.tree_util.keystr(path) or "(the root)"


def _diffs(a, b):
    """``||a - b|| / max(||b||, tiny)`` and ``||a - b||`` in the precision of the leaves."""
    dtype = jnp.promote_types(a.dtype, b.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    a, b = a.astype(dtype), b.astype(dtype)
    diff, scale = jnp.linalg.norm((a - b).ravel()), jnp.linalg.norm(b.ravel())
    out = jnp.result_type(float)
    return jnp.stack([(diff / jnp.maximum(scale, jnp.finfo(diff.dtype).tiny)).astype(out), diff.astype(out)])


def _check_like(tree, params, what: str, lead: tuple = ()) -> None:
    if jax.tree.structure(tree) != jax.tree.structure(params):
        raise ValueError(f"{what} has tree structure {jax.tree.structure(tree)}; params have "
                         f"{jax.tree.structure(params)}")
    for (path, g), p in zip(jax.tree.leaves_with_path(tree), jax.tree.leaves(params)):
        if jnp.shape(g) != lead + jnp.shape(p):
            raise ValueError(f"{what} at leaf {_path(path)} has shape {jnp.shape(g)}; expected "
                             f"{lead + jnp.shape(p)}")


def _stacked(grads, params, steps: int | None):
    """A gradient stream as one pytree with a leading step axis, and its number of steps."""
    if not isinstance(grads, Iterator) and jax.tree.structure(grads) == jax.tree.structure(params) \
            and jax.tree.leaves(grads):
        leaves = jax.tree.leaves(grads)
        if not all(jnp.ndim(g) == jnp.ndim(p) + 1 for g, p in zip(leaves, jax.tree.leaves(params))):
            raise ValueError("grads has the structure of params but not a leading step axis on every leaf: pass a "
                             "list of gradient trees, one tree of stacked gradients, or a function of the step")
        n = jnp.shape(leaves[0])[0]
        _check_like(grads, params, "the stacked gradient stream", (n,))
        if steps is not None and steps > n:
            raise ValueError(f"steps={steps} but the gradient stream holds {n} steps")
        steps = n if steps is None else steps
        return jax.tree.map(lambda g: g[:steps], grads), steps
    if isinstance(grads, (dict, jax.Array, np.ndarray)) or not isinstance(grads, Iterable):
        raise TypeError(f"grads must be a sequence or iterable of gradient pytrees, a pytree of leaves with a "
                        f"leading step axis, or a function of the step; got {type(grads).__name__}")
    items = list(grads if steps is None else itertools.islice(grads, steps))
    if steps is not None and len(items) < steps:
        raise ValueError(f"steps={steps} but the gradient stream holds {len(items)} steps")
    for i, g in enumerate(items):
        _check_like(g, params, f"gradient {i} of the stream")
    if not items:
        raise ValueError("the gradient stream is empty")
    return jax.tree.map(lambda *gs: jnp.stack(gs), *items), len(items)


def _update(opt, name, g, s, p):
    u, s = opt.update(g, s, p)
    if jax.tree.structure(u) != jax.tree.structure(p):
        raise ValueError(f"{name}'s update returned updates with tree structure {jax.tree.structure(u)}; the "
                         f"params have {jax.tree.structure(p)}")
    return apply_updates(p, u), s


def cross_check(opt_a: Optimizer, opt_b: Optimizer, params, grads: Sequence | Iterable | Callable | None = None, *,
                grad_fn: Callable | None = None, steps: int | None = None, rtol: float = 1e-5, atol: float = 0.0,
                names: tuple[str, str] = ("a", "b")) -> CrossCheck:
    """Run two optimizers from the same ``params`` and find where they part (see the module).

    Args:
      opt_a, opt_b: ``(init, update)`` pairs; ``opt_b`` is the reference (the denominator).
      params: the starting pytree.
      grads: the shared gradient stream (or None with ``grad_fn``).
      grad_fn: ``grad_fn(params, step) -> grads``, called on each optimizer's own params.
      steps: how many updates; by default the stream's length (needed with a function).
      rtol: the norm-relative tolerance per leaf.
      atol: differences ``||a - b|| <= atol`` pass whatever their relative size.
      names: what to call the two in the verdict.

    Returns:
      A :class:`CrossCheck`.

    >>> import jax.numpy as jnp
    >>> from jaxscratch import optim
    >>> stream = [{"w": jnp.full(3, 0.1 * k)} for k in range(5)]  # step 0's gradient is 0
    >>> cross_check(optim.sgd(0.1), optim.sgd(0.11), {"w": jnp.ones(3)}, stream).verdict
    "a and b part at step 1, leaf ['w']: rel diff 1.0e-03 > 1e-05"
    >>> cross_check(optim.sgd(0.1), optim.momentum(0.1, 0.0), {"w": jnp.ones(3)}, stream).verdict
    'a and b agree to 0.0e+00 over 5 steps'
    """
    if (grads is None) == (grad_fn is None):
        raise TypeError("pass exactly one of grads (a stream shared by both) and grad_fn(params, step)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1; got {steps!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not tol >= 0:
            raise ValueError(f"{name} must be >= 0; got {tol!r}")
    if grad_fn is not None or callable(grads):
        if steps is None:
            raise ValueError("steps is needed when the gradients come from a function")
        stream = None
    else:
        stream, steps = _stacked(grads, params, steps)
    name_a, name_b = names

    @jax.jit
    def run(params, stream):
        def body(carry, x):
            (pa, sa), (pb, sb) = carry
            step, g = x
            if grad_fn is not None:
                ga, gb = grad_fn(pa, step), grad_fn(pb, step)
            else:
                ga = gb = grads(step) if stream is None else g
            pa, sa = _update(opt_a, name_a, ga, sa, pa)
            pb, sb = _update(opt_b, name_b, gb, sb, pb)
            diffs = [_diffs(u, v) for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))]
            return ((pa, sa), (pb, sb)), jnp.stack(diffs, 1) if diffs else jnp.zeros((2, 0), jnp.result_type(float))

        start = ((params, opt_a.init(params)), (params, opt_b.init(params)))
        ((pa, _), (pb, _)), diffs = jax.lax.scan(body, start, (jnp.arange(steps, dtype=jnp.int32), stream))
        return pa, pb, diffs

    pa, pb, both = run(params, stream)
    diffs, abs_diffs = np.asarray(both[:, 0]), np.asarray(both[:, 1])
    paths = tuple(_path(p) for p, _ in jax.tree.leaves_with_path(params))
    worst = np.where(np.isnan(diffs), np.inf, diffs)  # NaN: past any tolerance, and the worst
    max_diff = worst.max(axis=1, initial=0.0)
    past = (worst > rtol) & ~(abs_diffs <= atol)
    head = f"{name_a} and {name_b}"
    if not past.any():
        verdict = f"{head} agree to {max_diff.max(initial=0.0):.1e} over {steps} steps"
        if (worst > rtol).any():
            verdict += f" (relative differences above {rtol:g} only where ||a - b|| <= atol {atol:g})"
        return CrossCheck(paths, diffs, abs_diffs, max_diff, None, None, verdict, (pa, pb))
    step = int(np.flatnonzero(past.any(axis=1))[0])
    leaf = int(np.argmax(np.where(past[step], worst[step], -1.0)))
    verdict = f"{head} part at step {step}, leaf {paths[leaf]}: rel diff {diffs[step, leaf]:.1e} > {rtol:g}"
    if atol:
        verdict += f", abs diff {abs_diffs[step, leaf]:.1e} > {atol:g}"
    return CrossCheck(paths, diffs, abs_diffs, max_diff, step, paths[leaf], verdict, (pa, pb))


def _structure_message(a, b, names) -> str | None:
    if jax.tree.structure(a) == jax.tree.structure(b):
        return None
    pa = [_path(p) for p, _ in jax.tree.leaves_with_path(a)]
    pb = [_path(p) for p, _ in jax.tree.leaves_with_path(b)]
    only_a, only_b = [p for p in pa if p not in set(pb)], [p for p in pb if p not in set(pa)]

    def listed(paths):
        return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "") or "none"

    text = f"{names[0]} and {names[1]} differ in tree structure: "
    if only_a or only_b:
        text += f"leaves only in {names[0]}: {listed(only_a)}; leaves only in {names[1]}: {listed(only_b)}"
    else:
        text += "the same leaf paths in different containers"
    return text + f"\n  {names[0]}: {jax.tree.structure(a)}\n  {names[1]}: {jax.tree.structure(b)}"


def _leaf_message(path, x, y, rtol, atol, names, check_dtypes) -> str | None:
    x, y = np.asarray(x), np.asarray(y)
    where = f"{names[0]} and {names[1]} differ at leaf {path}"
    if x.shape != y.shape:
        return f"{where}: shape {x.shape} in {names[0]}, {y.shape} in {names[1]}"
    if check_dtypes and x.dtype != y.dtype:
        return f"{where}: dtype {x.dtype} in {names[0]}, {y.dtype} in {names[1]}"
    wide = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(y) else np.float64
    x, y = x.astype(wide), y.astype(wide)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(x - y)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        bad = ~(same | (err <= atol + rtol * np.abs(y)))
        if not bad.any():
            return None
        err = np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))
        rel = np.where(err == 0, 0.0, err / np.abs(y))
    i = np.unravel_index(int(np.argmax(err)), err.shape)
    at = f" at index {tuple(int(k) for k in i)}" if err.ndim else ""
    return (f"{where}: {int(bad.sum())} of {bad.size} elements past rtol={rtol:g}, atol={atol:g}; largest abs "
            f"diff {err.max():.3e}{at} ({names[0]}={x[i]:.8g}, {names[1]}={y[i]:.8g}), largest rel diff "
            f"{rel.max():.3e}")


def assert_trees_close(a, b, *, rtol: float = 1e-6, atol: float = 0.0, names: tuple[str, str] = ("a", "b"),
                       check_dtypes: bool = True) -> None:
    """Raise ``AssertionError`` unless pytrees ``a`` and ``b`` match leaf by leaf (see the module).

    Args:
      a, b: pytrees; ``b`` is the reference (``rtol`` scales with ``|b|``).
      rtol, atol: elementwise ``|a - b| <= atol + rtol * |b|``.
      names: what to call the two in the message.
      check_dtypes: whether leaves of equal values but different dtypes differ.

    >>> import jax.numpy as jnp
    >>> assert_trees_close({"w": jnp.ones(3)}, {"w": jnp.ones(3)})
    >>> assert_trees_close({"w": jnp.ones(3)}, {"w": jnp.array([1.0, 1.5, 1.0])}, names=("ours", "optax"))
    Traceback (most recent call last):
    AssertionError: ours and optax differ at leaf ['w']: 1 of 3 elements past rtol=1e-06, atol=0; largest abs diff 5.000e-01 at index (1,) (ours=1, optax=1.5), largest rel diff 3.333e-01
    """
    message = _structure_message(a, b, names)
    if message is None:
        leaves = [(p, x, y) for (p, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b))]
        failures = [m for p, x, y in leaves
                    if (m := _leaf_message(_path(p), x, y, rtol, atol, names, check_dtypes)) is not None]
        if failures:
            message = failures[0] + (f"\n  (and {len(failures) - 1} more leaves differ)" if len(failures) > 1 else "")
    if message is not None:
        raise AssertionError(message)
