"""Chapter 6: batch norm against plain SGD over 16 initial weight scales (the book's Figure 6-19).

    python examples/batchnorm_grid.py [--dataset digits|fashion-mnist|mnist]
                                      [--dataset-dir DIR] [--quick] [--out figures]

The book's protocol: the first 1,000 training samples, MLP [100 x5], ReLU, SGD lr 0.01,
batch 100 drawn with replacement, 20 epochs of 10 steps, weights initialised with standard
deviation ``logspace(0, -4, 16)``. Each scale trains once with batch norm and once without;
the 16 scales run ``vmap``-ed as one compiled program per variant (``sweep.run_trials``).
Writes figures/batchnorm_grid.png (4x4: train accuracy per epoch, BN solid, plain dashed).
Expected output, full mode on Fashion-MNIST (2-core CPU shared with other jobs; times
include compilation, ~70 s in all; digits: ~30 s, BN wins at 15/16 scales):

    fashion-mnist: first 1000 samples, 784-[100 x5]-10, SGD lr 0.01, batch 100, 20 epochs x 10 steps
    batch norm   16 scales in 36.0s
    plain        16 scales in 27.2s
    W std      plain   with BN
    1          10.7%    54.6%
    0.541      10.7%    61.3%
    0.293      91.6%    71.6%
    0.158      83.1%    78.5%
    0.0858     36.7%    85.4%
    0.0464     11.5%    89.6%
    0.0251     11.5%    95.5%
    ...
    0.000185   11.5%    45.0%
    0.0001     11.5%    49.4%
    BN wins at 14/16 scales; mean final train accuracy plain 22.5%, BN 75.1%
    saved figures/batchnorm_grid.png

As in the book, batch norm learns at almost every scale (slowly when the weights are so small
that the batch variance falls below its eps 1e-6); the plain net learns only near the He
scale of the 100-unit hidden layers (sqrt(2/100) = 0.14): its signal explodes above (std 1)
and vanishes below (std <= 0.05).
"""
import argparse
import os
import time

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
import numpy as np  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import data, sweep  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

TRAIN_SIZE = 1000          # the book's x_train[:1000]: small, so the effect shows in seconds
HIDDEN = (100,) * 5        # the book's hidden_size_list=[100, 100, 100, 100, 100]
LEARNING_RATE = 0.01       # the book's SGD(lr=0.01)
BATCH_SIZE = 100           # the book's batch_size: 10 steps per epoch on 1,000 samples
EPOCHS = 20                # the book's max_epochs
QUICK_EPOCHS = 5           # a few epochs already separate BN from plain on digits
SCALES = np.logspace(0, -4, 16)  # the book's weight_scale_list, one subplot each
SAMPLING = "replacement"   # the book's np.random.choice(train_size, batch_size) every step
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def run(ds: data.Dataset, epochs: int, batchnorm: bool) -> tuple[np.ndarray, float]:
    """Train accuracy ``(16, epochs)`` for every scale, and the seconds taken (with compile)."""
    spec = sweep.Spec(sizes=(ds.x_train.shape[1], *HIDDEN, ds.num_classes), optimizer="sgd",
                      batchnorm=batchnorm, batch_size=BATCH_SIZE, sampling=SAMPLING)
    hparams = {"learning_rate": [LEARNING_RATE] * len(SCALES), "init_scale": SCALES}
    start = time.perf_counter()
    # Same key and seeds for both variants: scale i starts from the same weights with and without BN.
    trials = sweep.run_trials(jax.random.key(SEED), spec, hparams,
                              (ds.x_train[:TRAIN_SIZE], ds.y_train[:TRAIN_SIZE]), epochs=epochs)
    return trials.history["train_acc"], time.perf_counter() - start


def save_figure(bn: np.ndarray, plain: np.ndarray, title: str, path: str) -> str:
    fig, axes = plt.subplots(4, 4, figsize=(12, 10), sharex=True, sharey=True)
    epochs = np.arange(1, bn.shape[1] + 1)
    for i, ax in enumerate(axes.flat):
        ax.plot(epochs, bn[i], "-", color="tab:blue", label="batch norm")
        ax.plot(epochs, plain[i], "--", color="tab:green", label="plain")
        ax.set_title(f"W: {SCALES[i]:.3g}", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("train accuracy")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder holding the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs (the test suite's mode)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    ds = load(args)
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    n = min(TRAIN_SIZE, len(ds.x_train))
    sizes = f"{ds.x_train.shape[1]}-[100 x{len(HIDDEN)}]-{ds.num_classes}"
    print(f"{ds.name}: first {n} samples, {sizes}, SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, "
          f"{epochs} epochs x {n // BATCH_SIZE} steps")
    bn, seconds = run(ds, epochs, batchnorm=True)
    print(f"batch norm   {len(SCALES)} scales in {seconds:.1f}s")
    plain, seconds = run(ds, epochs, batchnorm=False)
    print(f"plain        {len(SCALES)} scales in {seconds:.1f}s")
    print("W std      plain   with BN")
    for scale, p, b in zip(SCALES, plain[:, -1], bn[:, -1]):
        print(f"{scale:<8.3g}  {100 * p:5.1f}%   {100 * b:5.1f}%")
    wins = int(np.sum(bn[:, -1] > plain[:, -1]))
    print(f"BN wins at {wins}/{len(SCALES)} scales; mean final train accuracy "
          f"plain {100 * plain[:, -1].mean():.1f}%, BN {100 * bn[:, -1].mean():.1f}%")
    os.makedirs(args.out, exist_ok=True)
    title = f"{ds.name}, first {n} samples, {sizes}, SGD {LEARNING_RATE}: batch norm (solid) vs plain (dashed)"
    print(f"saved {save_figure(bn, plain, title, os.path.join(args.out, 'batchnorm_grid.png'))}")
    return {"batchnorm": bn, "plain": plain}


if __name__ == "__main__":
    main()
