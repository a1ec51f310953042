"""Chapter 7: bring your own model: one small CNN in flax linen and in equinox, trained by train.fit.

    python examples/bring_your_own_model.py [--dataset digits|fashion-mnist|mnist]
                                            [--dataset-dir DIR] [--quick] [--out figures]

The book's SimpleConvNet, smaller: conv 16 3x3 (same padding) -> ReLU -> max pool 2x2 -> dense
100 -> ReLU -> dense 10, Adam lr 1e-3, batch 100. The flax one adds batch norm and dropout 0.1,
so the adapter carries batch statistics as state and hands dropout a key every step; the
equinox one maps one example, vmapped over the batch by ``nn.from_equinox``. Both train with
``train.fit`` (10% of the training set held out); then ``sweep.run_trials`` trains the flax CNN
from 4 seeds as one vmapped program: how far test accuracy moves with the seed alone. Writes
figures/bring_your_own_model.png. Expected output, full mode on Fashion-MNIST (2 epochs, the
sweep on 5,000 images; 2-core CPU, times with compiling: 2.3 min in all, 4 min when shared):

    fashion-mnist: 54000 train, 6000 validation, 10000 test images (1, 28, 28); CNN conv 16x3x3-...
    flax linen  314,902 params  loss 0.3123  train  90.8%  val  89.1%  test  88.6%  42.0s
    equinox     314,870 params  loss 0.3485  train  89.1%  val  88.4%  test  88.0%  36.5s
    sweep: flax CNN x 4 seeds vmapped, 5000 train images, 2 epochs, 54.0s
      seed 0  loss 0.4646  val  83.2%  test  83.3%
      ...
    test accuracy over 4 seeds: 82.9% +- 0.9 (min 81.9%, max 84.0%)

On the 8x8 digits (the default; 30 epochs, 18 s in all): flax 97.8%, equinox 95.8%, sweep
97.0% +- 0.3 (96.7%-97.2%). The seed alone moves test accuracy by about a point, two on the
Fashion-MNIST subset: compare models over several seeds. The flax CNN, with batch norm, learns
faster than its plain equinox twin. --quick (digits, 1,000 images, 5 epochs, ~15 s): flax 90.0%.
"""
import argparse
import os
import time

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
import numpy as np  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import data, nn, optim, train, sweep  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

FILTERS, KERNEL = 16, 3    # 16 3x3 filters: the book's 30 5x5 would leave little of an 8x8 digit
HIDDEN = 100               # the book's SimpleConvNet hidden_size
DROP_RATE = 0.1            # flax only: light, 100 units; enough to need a dropout key every step
BN_MOMENTUM = 0.9          # the book's running-average momentum (flax's default is 0.99)
LEARNING_RATE = 1e-3       # Adam's default, the book's choice for its CNN
BATCH_SIZE = 100           # the book's
VALIDATION_FRACTION = 0.1  # held out of the training set: the sweep reports it beside test
# Epochs: digits has 13 steps an epoch, Fashion-MNIST 540 at ~40 s an epoch per model on 2 cores.
EPOCHS = {"digits": 30, "fashion-mnist": 2, "mnist": 2}
QUICK_EPOCHS, QUICK_TRAIN = 5, 1000  # the tests': compiling is what costs
SEEDS = (0, 1, 2, 3)       # one vmapped group (sweep.CPU_GROUP_SIZE)
# Vmapped over seeds the CNN trains ~2x slower per trial than alone on a CPU: the sweep gets a subset.
SWEEP_TRAIN = 5000
SEED = 0


class FlaxCNN(linen.Module):
    """conv -> batch norm -> ReLU -> pool -> dense -> ReLU -> dropout -> dense, on a batch."""

    classes: int

    @linen.compact
    def __call__(self, x, train: bool):  # x: (batch, 1, H, W)
        x = jnp.transpose(x, (0, 2, 3, 1))  # (batch, H, W, 1): flax convolutions are channels-last
        x = linen.Conv(FILTERS, (KERNEL, KERNEL), padding="SAME")(x)  # (batch, H, W, 16)
        x = linen.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM)(x)
        x = linen.max_pool(linen.relu(x), (2, 2), strides=(2, 2))  # (batch, H/2, W/2, 16)
        x = linen.relu(linen.Dense(HIDDEN)(x.reshape((x.shape[0], -1))))  # (batch, 100)
        x = linen.Dropout(DROP_RATE, deterministic=not train)(x)
        return linen.Dense(self.classes)(x)  # (batch, classes)


class EqxCNN(eqx.Module):
    """conv -> ReLU -> pool -> dense -> ReLU -> dense, on one example (1, H, W)."""

    conv: eqx.nn.Conv2d
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, shape, classes, *, key):
        (channels, h, w), (k_conv, k_hidden, k_out) = shape, jax.random.split(key, 3)
        self.conv = eqx.nn.Conv2d(channels, FILTERS, KERNEL, padding="SAME", key=k_conv)
        self.hidden = eqx.nn.Linear(FILTERS * (h // 2) * (w // 2), HIDDEN, key=k_hidden)
        self.out = eqx.nn.Linear(HIDDEN, classes, key=k_out)

    def __call__(self, x):  # x: (1, H, W)
        x = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.conv(x)))  # (16, H/2, W/2)
        return self.out(jax.nn.relu(self.hidden(x.reshape(-1))))  # (classes,)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder with the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRAIN} images, {QUICK_EPOCHS} epochs (tests)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    ds = data.load_dataset(args.dataset, flatten=False, **kwargs)  # images (n, 1, H, W)
    n = QUICK_TRAIN if args.quick else len(ds.x_train)
    xt, yt, xv, yv = data.train_val_split(ds.x_train[:n], ds.y_train[:n], VALIDATION_FRACTION, seed=SEED)
    epochs, test = QUICK_EPOCHS if args.quick else EPOCHS[ds.name], (ds.x_test, ds.y_test)
    models = {"flax linen": nn.from_flax(FlaxCNN(ds.num_classes), xt[:1]),
              "equinox": nn.from_equinox(lambda key: EqxCNN(xt.shape[1:], ds.num_classes, key=key))}
    print(f"{ds.name}: {len(xt)} train, {len(xv)} validation, {len(ds.x_test)} test images {xt.shape[1:]}; CNN conv "
          f"{FILTERS}x{KERNEL}x{KERNEL}-pool-{HIDDEN}-{ds.num_classes}, Adam {LEARNING_RATE:g}, {epochs} epochs")
    histories = {}
    for label, model in models.items():
        start = time.perf_counter()
        result = train.fit(jax.random.key(SEED), model, optim.adam(LEARNING_RATE), (xt, yt), epochs=epochs,
                           batch_size=BATCH_SIZE, validation=(xv, yv), test=test, verbose=False)
        h = histories[label] = result.history
        size = sum(a.size for a in jax.tree.leaves(result.state.params))
        print(f"{label:11s} {size:7,d} params  loss {h['train_loss'][-1]:.4f}  train {100 * h['train_acc'][-1]:5.1f}%  "
              f"val {100 * h['val_acc'][-1]:5.1f}%  test {100 * h['test_acc'][-1]:5.1f}%  "
              f"{time.perf_counter() - start:.1f}s")

    n_sweep, start = min(len(xt), SWEEP_TRAIN), time.perf_counter()
    spec = sweep.Spec(model=models["flax linen"], optimizer="adam", batch_size=BATCH_SIZE)
    trials = sweep.run_trials(jax.random.key(SEED), spec, {"learning_rate": [LEARNING_RATE] * len(SEEDS)},
                              (xt[:n_sweep], yt[:n_sweep]), epochs=epochs, validation=(xv, yv), test=test,
                              seeds=SEEDS)
    print(f"sweep: flax CNN x {len(SEEDS)} seeds vmapped, {n_sweep} train images, {epochs} epochs, "
          f"{time.perf_counter() - start:.1f}s")
    final = {k: trials.history[k][:, -1] for k in ("train_loss", "val_acc", "test_acc")}
    for seed, loss, val, acc in zip(SEEDS, *final.values()):
        print(f"  seed {seed}  loss {loss:.4f}  val {100 * val:5.1f}%  test {100 * acc:5.1f}%")
    acc = 100 * final["test_acc"]
    print(f"test accuracy over {len(SEEDS)} seeds: {acc.mean():.1f}% +- {acc.std(ddof=1):.1f} "
          f"(min {acc.min():.1f}%, max {acc.max():.1f}%)")
    os.makedirs(args.out, exist_ok=True)
    path = save_figure(histories, trials, ds.name, epochs, n_sweep, os.path.join(args.out, "bring_your_own_model.png"))
    print(f"saved {path}")
    return {"histories": histories, "trials": trials}


def save_figure(histories: dict, trials, name: str, epochs: int, n_sweep: int, path: str) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (label, h), color in zip(histories.items(), ("C0", "C1")):
        window = max(1, len(h["step_loss"]) // 100)  # a running mean: per-step losses are noisy
        smooth = np.convolve(h["step_loss"], np.ones(window) / window, mode="valid")
        steps = np.arange(window, len(h["step_loss"]) + 1) * epochs / len(h["step_loss"])  # in epochs
        left.plot(steps, smooth, color=color, alpha=0.6, lw=1, label=f"{label}: training (mean of {window} steps)")
        left.plot(h["epoch"], h["val_eval_loss"], color=color, marker="o", label=f"{label}: validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", yscale="log",
             title="train.fit: the flax and the equinox CNN\n(full training set)")
    seeds = np.asarray(trials.seeds)
    for metric, marker, color, shift in (("val_acc", "s", "C2", -0.05), ("test_acc", "o", "C3", 0.05)):
        final = 100 * trials.history[metric][:, -1]
        right.scatter(seeds + shift, final, marker=marker, color=color, s=50,
                      label=f"{metric[:-4]} (mean {final.mean():.1f}%)")
        right.axhline(final.mean(), color=color, ls="--", lw=1)
    right.set(xlabel="seed", ylabel="accuracy after the last epoch (%)", xticks=seeds,
              title=f"sweep.run_trials: flax CNN from {len(seeds)} seeds, vmapped\n({n_sweep} training images)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: conv {FILTERS}x{KERNEL}x{KERNEL} - pool - {HIDDEN} - 10, Adam {LEARNING_RATE:g}, "
                 f"{epochs} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
