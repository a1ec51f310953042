"""Gradient check (chapter 5): backprop by ``jax.grad`` against central differences, in float64.

Run:
    python examples/gradient_check.py [--quick]

Uses the 8x8 digits shipped with jaxscratch (pixels scaled to [0, 1]).
Expected output (digits vary by platform; every relative error ~1e-9, far below 1e-6):
    data: digits, 100 samples, MLP 64 -> 50 -> 10, float64, h = 0.0001
    tanh  [0]['b']  max abs 2.5e-10  relative 1.5e-09
    tanh  [0]['w']  max abs 1.8e-10  relative 7.3e-10
    ...
    relu  max relative error 1e-09 (< 1e-06: backprop agrees)  2.3s
A ReLU pre-activation within h of 0 would show as one first-layer leaf at ~1e-3 or more.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxscratch
from jaxscratch import data, gradcheck, losses, nn

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

SEED = 0
HIDDEN = 50  # the book's TwoLayerNet hidden width
BATCH = 100  # the book checks 3 samples; more samples exercise more units (still a fast check)
QUICK_BATCH = 10  # --quick: the test suite's run, compile time dominates either way
WEIGHT_DECAY = 0.1  # keep the L2 term in the loss so its gradient is checked too
H = 1e-4  # the book's step: truncation ~h**2, float64 rounding ~1e-16/h, both far below 1e-6
TOLERANCE = 1e-6  # float64 correct gradients land ~1e-9; a real bug gives ~1e-2 or more
INIT = {"tanh": "xavier", "relu": "he"}  # the book's scale for each activation


def load_batch(n, rng):
    """Inputs (n, 64) in [0, 1] and integer labels (n,): real 8x8 digits (shipped with jaxscratch)."""
    digits = data.load_digits()
    rows = rng.choice(len(digits.y_train), size=n, replace=False)
    return "digits", digits.x_train[rows].astype(np.float64), digits.y_train[rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"check on {QUICK_BATCH} samples")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    source, x_np, y_np = load_batch(QUICK_BATCH if args.quick else BATCH, rng)
    with jax.enable_x64(True):  # float32 rounding (~1e-7 / h ~ 1e-3) would swamp the check
        x = jnp.asarray(x_np, jnp.float64)  # (batch, 64)
        y = jnp.asarray(y_np, jnp.int32)  # (batch,)
        print(f"data: {source}, {len(y_np)} samples, MLP 64 -> {HIDDEN} -> 10, float64, h = {H:g}")
        for i, activation in enumerate(INIT):
            key = jax.random.fold_in(jax.random.key(SEED), i)
            params = nn.init_mlp(key, (64, HIDDEN, 10), weight_init=INIT[activation], dtype=jnp.float64)

            def loss(p, activation=activation):
                logits = nn.mlp(p, x, activation=activation)  # (batch, 10)
                return losses.softmax_cross_entropy(logits, y) + losses.l2_penalty(p, WEIGHT_DECAY)

            start = time.perf_counter()
            checks = gradcheck.gradient_check(loss, params, h=H)
            for c in checks:
                print(f"{activation}  {c.path:<9} max abs {c.max_abs:.1e}  relative {c.rel:.1e}")
            worst = gradcheck.max_relative_error(checks)
            verdict = "backprop agrees" if worst < TOLERANCE else "MISMATCH (a kink within h, or a bug)"
            print(f"{activation}  max relative error {worst:.0e} (< {TOLERANCE:.0e}: {verdict})"
                  f"  {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
