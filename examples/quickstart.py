"""Quick start: train an MLP on the 8x8 digits with jax.grad and one of our optimizers.

Run:
    python examples/quickstart.py            # MLP 64-100-100-10, Adam, 2,000 steps
    python examples/quickstart.py --quick    # 300 steps, for the test suite

Expected: a test accuracy of about 97% in a few seconds on a laptop CPU (`--quick`: above 90%).
The 8x8 digits (1,797 images) ship inside jaxscratch, so this runs offline. This is the
hand-written loop; `python -m jaxscratch train` does the same with `train.fit` (scan-fused
epochs, evaluation, checkpoints).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxscratch
from jaxscratch import data, losses, nn, optim

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

HIDDEN = (100, 100)      # the book's hidden width, two layers: enough for 8x8 digits
LEARNING_RATE = 1e-3     # the book's Adam default
BATCH_SIZE = 100         # the book's mini-batch size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 steps (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = 300 if args.quick else args.steps

    ds = data.load_digits(seed=args.seed)  # stratified split: 1,438 train / 359 test
    x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    key = jax.random.key(args.seed)
    params = nn.init_mlp(key, (x_train.shape[1], *HIDDEN, 10), weight_init="he")
    opt = optim.adam(LEARNING_RATE)
    state = opt.init(params)

    def loss_fn(params, x, y):
        return losses.softmax_cross_entropy(nn.mlp(params, x), y)

    @jax.jit
    def step(params, state, x, y):  # data passed in, never closed over
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(args.seed)
    per_epoch = len(x_train) // BATCH_SIZE
    start = time.perf_counter()
    for i in range(steps):
        if i % per_epoch == 0:  # a fresh permutation each epoch: every image once per epoch
            order = rng.permutation(len(x_train))
        idx = order[(i % per_epoch) * BATCH_SIZE:(i % per_epoch + 1) * BATCH_SIZE]
        params, state, loss = step(params, state, x_train[idx], y_train[idx])
        if (i + 1) % max(steps // 5, 1) == 0:
            acc = losses.accuracy(nn.mlp(params, jnp.asarray(x_test)), jnp.asarray(y_test))
            print(f"step {i + 1:5d}  loss {float(loss):.3f}  test acc {100 * float(acc):.1f}%  "
                  f"{time.perf_counter() - start:.1f}s")
    acc = float(losses.accuracy(nn.mlp(params, jnp.asarray(x_test)), jnp.asarray(y_test)))
    print(f"final test accuracy {100 * acc:.1f}% on {len(y_test)} held-out digits")
    return acc


if __name__ == "__main__":
    main()
