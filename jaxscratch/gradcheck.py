"""Numerical gradients over pytrees, and gradient checks against ``jax.grad``.

Contract:
  * ``numerical_gradient(f, params, h=1e-4, *, chunk_size=None)`` returns a pytree with the
    structure, shapes and dtypes of ``params``; entry ``i`` of each leaf is the textbook's
    central difference ``(f(x + h e_i) - f(x - h e_i)) / (2 h)`` with every other entry and
    leaf held fixed. ``f`` maps ``params`` to a scalar; every leaf must be floating.
    Evaluations are vectorised ``chunk_size`` entries at a time (``lax.map`` with
    ``batch_size``), so memory grows with ``chunk_size * leaf.size``, never ``leaf.size ** 2``.
  * ``gradient_check(f, params, h=1e-4)`` returns one ``LeafCheck(path, max_abs, rel)`` per
    leaf, in ``jax.tree.leaves`` order, comparing ``jax.grad(f)`` with the numerical gradient;
    ``max_relative_error(checks)`` is the worst ``rel``.

Precision: the central difference has truncation error ``O(h**2)`` but rounding error about
``eps * |f| / h``; in float32 (``eps ~ 1.2e-7``) with ``h = 1e-4`` that is ~1e-3 relative,
enough to hide a real bug. Run gradient checks in float64: float64 params inside
``with jax.enable_x64(True):``, where a correct gradient agrees to ~1e-9 or better.

Compilation: the per-leaf evaluator is jitted once per live ``f``: passing the same ``f``
object again (e.g. gradient descent with numerical gradients) reuses the compiled program; a
fresh lambda compiles anew. Arrays that ``f`` closes over (a data batch) become constants of
that program, and are freed with ``f`` (the cache holds ``f`` weakly).
"""
from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LeafCheck", "gradient_check", "max_relative_error", "numerical_gradient"]

# Default chunk: at most about this many elements of perturbed copies per evaluation.
_CHUNK_ELEMENTS = 2**22


class LeafCheck(NamedTuple):
    """Agreement of the numerical and analytic gradient on one leaf.

    Attributes:
      path: the leaf's path as ``jax.tree_util.keystr`` writes it, e.g. ``"[0]['w']"``.
      max_abs: ``max |num - ana|`` over the leaf's entries (0 for an empty leaf).
      rel: ``||num - ana|| / max(||num|| + ||ana||, tiny)`` with Frobenius norms; 0 when both
        gradients are zero.
    """

    path: str
    max_abs: float
    rel: float


def _check_h(h) -> float:
    is_number = not isinstance(h, (str, bytes, bool)) and hasattr(h, "__float__") and np.ndim(h) == 0
    value = float(h) if is_number else float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"h must be a positive finite number (e.g. 1e-4); got {h!r}")
    return value


def _check_inputs(f: Callable[[Any], Any], params) -> tuple[list[jax.Array], Any]:
    """Validate leaves and ``f``'s output; return (leaves as arrays, treedef)."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    leaves = []
    for path, (_, leaf) in zip(paths, with_path):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"every leaf of params must be a floating array; leaf {path or '<root>'} has "
                f"dtype {dtype}. Cast it, e.g. with .astype(jnp.float64)."
            )
        leaves.append(jnp.asarray(leaf))
    out = jax.eval_shape(f, jax.tree.unflatten(treedef, leaves))
    if not hasattr(out, "shape") or out.shape != ():
        found = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"f must return a scalar (shape ()); got {found}. Reduce it, e.g. with jnp.sum or jnp.mean."
        )
    return leaves, treedef


def _leaf_gradient(f, leaves, h, treedef, index, chunk_size):
    """Central differences over every entry of ``leaves[index]``, ``chunk_size`` at a time."""
    leaf = leaves[index]
    flat = leaf.reshape(-1)  # (n,)

    def f_at(flat_leaf):
        new_leaves = list(leaves)
        new_leaves[index] = flat_leaf.reshape(leaf.shape)
        return f(jax.tree.unflatten(treedef, new_leaves))

    def entry(i):
        diff = f_at(flat.at[i].add(h)) - f_at(flat.at[i].add(-h))
        return jnp.asarray(diff).astype(leaf.dtype) / (2 * h)

    grad = jax.lax.map(entry, jnp.arange(flat.size), batch_size=chunk_size)  # (n,)
    return grad.reshape(leaf.shape)


# One jitted evaluator per live f. Making f a static argument of one module-level jit would
# let jit's cache keep every f, and the data it closes over, alive for the whole process.
_EVALUATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATIC = ("treedef", "index", "chunk_size")


def _evaluator(f):
    try:
        return _EVALUATORS[f]
    except KeyError:
        pass
    except TypeError:  # f cannot be weakly referenced: compile for this call only
        return jax.jit(functools.partial(_leaf_gradient, f), static_argnames=_STATIC)
    f_ref = weakref.ref(f)  # the cached value must not hold f, or f would never be freed
    evaluator = jax.jit(lambda *a, **k: _leaf_gradient(f_ref(), *a, **k), static_argnames=_STATIC)
    _EVALUATORS[f] = evaluator
    return evaluator


def numerical_gradient(f: Callable[[Any], Any], params, h: float = 1e-4, *, chunk_size: int | None = None):
    """Central-difference gradient of a scalar function of a pytree (the book's chapter 4).

    Args:
      f: maps ``params`` to a scalar.
      params: any pytree of floating arrays (dicts, lists, scalar leaves, any shape).
      h: the step, a positive finite number; the book's ``1e-4``.
      chunk_size: entries perturbed per vectorised evaluation; ``None`` picks
        ``max(1, 2**22 // leaf.size)`` per leaf. Lower it if ``f`` itself is memory-hungry.

    Returns:
      A pytree like ``params`` (structure, shapes, dtypes) holding ``df/dparams``.

    >>> g = numerical_gradient(lambda x: jnp.sum(x ** 2), jnp.array([3.0, 4.0]))
    >>> [round(float(v), 1) for v in g]
    [6.0, 8.0]
    """
    h = _check_h(h)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    leaves, treedef = _check_inputs(f, params)
    evaluator, grads = _evaluator(f), []
    for index, leaf in enumerate(leaves):
        if leaf.size == 0:
            grads.append(jnp.zeros_like(leaf))
            continue
        chunk = chunk_size or max(1, _CHUNK_ELEMENTS // leaf.size)
        grads.append(evaluator(leaves, jnp.asarray(h, leaf.dtype), treedef=treedef, index=index,
                               chunk_size=min(chunk, leaf.size)))
    return jax.tree.unflatten(treedef, grads)


def gradient_check(f: Callable[[Any], Any], params, h: float = 1e-4) -> list[LeafCheck]:
    """Compare ``jax.grad(f)`` with :func:`numerical_gradient`, leaf by leaf.

    The relative error is norm-based, ``||num - ana|| / max(||num|| + ||ana||, tiny)``
    (Frobenius norms over the leaf, ``tiny`` the smallest normal float64): it lies in
    ``[0, 1]``, and a correct gradient in float64 gives ~1e-9 or less. A ReLU pre-activation
    within ``h`` of 0 spoils the entries it touches (elementwise ratios ~1e-2 or worse); the
    norm dilutes that over the leaf but does not hide it. Retry with a smaller ``h`` to tell.

    Args:
      f: maps ``params`` to a scalar; differentiable by ``jax.grad``.
      params: any pytree of floating arrays; use float64 (see the module docstring).
      h: the finite-difference step.

    Returns:
      A list of :class:`LeafCheck`, one per leaf in ``jax.tree.leaves`` order.
    """
    numeric = numerical_gradient(f, params, h)  # validates h, leaves and f first
    analytic = jax.jit(jax.grad(f))(params)  # one compile, not one per primitive
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    checks = []
    for path, num, ana in zip(paths, jax.tree.leaves(numeric), jax.tree.leaves(analytic)):
        num = np.asarray(num, dtype=np.float64)
        ana = np.asarray(ana, dtype=np.float64)
        diff = num - ana
        max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
        denom = max(float(np.linalg.norm(num) + np.linalg.norm(ana)), np.finfo(np.float64).tiny)
        checks.append(LeafCheck(path, max_abs, float(np.linalg.norm(diff)) / denom))
    return checks


def max_relative_error(checks: list[LeafCheck]) -> float:
    """The largest ``rel`` among ``checks`` (0.0 for no leaves): one number to assert on."""
    return max((c.rel for c in checks), default=0.0)
