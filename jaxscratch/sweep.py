"""Many trainings as one compiled program: comparisons, vmapped trials, searches, K-fold CV.

Contract:
  * :func:`compare_optimizers` trains one model per optimizer from the same initial weights on
    the very same batches (the book's comparison protocol); optimizers have different state
    shapes, so they run one after another, each as one ``lax.scan``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxscratch import optim, train

__all__ = ["compare_optimizers"]


def compare_optimizers(key, optimizers: dict, params, x, y, *, iterations: int, batch_size: int,
                       activation="relu") -> dict:
    """Train ``params`` with each optimizer on the same ``iterations`` batches.

    Batches are drawn as the book does (``np.random.choice(n, batch_size)`` each step, with
    replacement) from ``key``, once, and shared by every optimizer.

    Args:
      key: PRNG key for the batch indices.
      optimizers: name -> :class:`optim.Optimizer`.
      params: the common initial parameters.
      x, y: training inputs ``(n, features)`` and integer labels ``(n,)``.

    Returns:
      name -> ``(final TrainState, per-step losses as a NumPy array)``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int; got {iterations!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= x.shape[0]:
        raise ValueError(f"batch_size must be an int in [1, {x.shape[0]}]; got {batch_size!r}")
    batches = jax.random.randint(key, (iterations, batch_size), 0, x.shape[0])  # (iterations, batch)
    results = {}
    for name, opt in optimizers.items():
        if not isinstance(opt, optim.Optimizer) and not (hasattr(opt, "init") and hasattr(opt, "update")):
            raise TypeError(f"optimizers[{name!r}] must be an (init, update) pair; got {type(opt).__name__}")
        run = jax.jit(lambda p, x, y, b, opt=opt: train.run_steps(opt, p, x, y, b, activation=activation))
        state, losses = run(params, x, y, batches)
        results[name] = (state, np.asarray(losses))
    return results
