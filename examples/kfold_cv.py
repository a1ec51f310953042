"""Chapter 6, as the blog posts extend it: K-fold cross-validation to choose hyperparameters.

    python examples/kfold_cv.py [--dataset digits|fashion-mnist|mnist]
                                [--dataset-dir DIR] [--quick] [--out figures]

The first 1,000 training samples are cut into 5 folds; each of 9 configurations (SGD learning
rate x weight decay) trains one MLP [100 x6] per fold on the other 4 folds, all 45 models
``vmap``-ed in one program (``sweep.kfold_cv``). The configuration with the lowest mean
validation loss wins; then (a) it is retrained on all 1,000 samples and (b) its 5 fold models
vote as an ensemble (average softmax, ``sweep.ensemble_accuracy``); both are tested on the
whole test set. Writes figures/kfold_cv.png (mean +- std over folds per configuration, the
winner in red). Expected output, full mode on Fashion-MNIST (2-core CPU shared with other
jobs; times include compilation, ~75 s in all; digits: ~45 s, lr 0.1 wd 0 wins, (a) 96.4%,
(b) 96.9%):

    fashion-mnist: first 1000 samples, 5 folds of 200, 784-[100 x6]-10, SGD, batch 100, 50 epochs
    9 configurations x 5 folds trained in 54.6s
    lr      wd      val loss         val acc
    0.01    0       0.659 +- 0.063   78.3% +- 2.2
    0.01    0.01    0.656 +- 0.057   78.4% +- 2.6
    0.01    0.1     0.930 +- 0.028   69.7% +- 2.8
    0.03    0       0.769 +- 0.270   76.7% +- 7.0
    0.03    0.01    0.629 +- 0.073   79.4% +- 4.1
    0.03    0.1     1.051 +- 0.042   62.3% +- 4.4
    0.1     0       0.683 +- 0.132   77.8% +- 3.5
    0.1     0.01    0.566 +- 0.064   79.5% +- 2.7
    0.1     0.1     1.282 +- 0.041   50.1% +- 2.6
    best: lr 0.1 wd 0.01 (lowest mean validation loss 0.566)
    (a) retrained on all 1000 samples: test 79.3%
    (b) ensemble of the 5 fold models: test 79.5% (single fold models 77.1% +- 0.7)
    saved figures/kfold_cv.png

Mild weight decay gives the lowest validation loss once the rate is high enough to overfit;
0.1 underfits. The ensemble beats each of its members by ~2 points and matches retraining.
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

TRAIN_SIZE = 1000          # small enough to overfit, so weight decay can matter
FOLDS = 5                  # the usual K: 800 to train, 200 to validate, per fold
HIDDEN = (100,) * 6        # the network of the book's hyperparameter search
BATCH_SIZE = 100           # the book's mini-batch size
EPOCHS = 50                # the book's search length; long enough for the best lr to overfit
QUICK_EPOCHS, QUICK_FOLDS = 5, 3  # the test suite's mode: seconds, still every code path
LEARNING_RATES = (0.01, 0.03, 0.1)   # around the top of the book's search range 10^-2
WEIGHT_DECAYS = (0.0, 0.01, 0.1)     # none, mild, and the book's overfitting demo's 0.1
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def save_figure(cv: sweep.CVResult, labels: list, title: str, path: str) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    pos = np.arange(len(labels))
    colors = ["tab:red" if i == cv.best else "tab:blue" for i in pos]
    panels = ((axes[0], cv.val_loss, "validation loss"), (axes[1], 100 * cv.val_acc, "validation accuracy (%)"))
    for ax, values, name in panels:
        for i in pos:
            ax.errorbar(i, values[i].mean(), yerr=values[i].std(), fmt="o", color=colors[i], capsize=4)
            ax.plot(np.full(values.shape[1], i), values[i], ".", color=colors[i], alpha=0.35)  # every fold
        ax.set_xticks(pos, labels, fontsize=8)
        ax.set(ylabel=f"{name}, mean +- std over folds")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"lowest mean loss wins (red): {labels[cv.best].replace(chr(10), ', ')}")
    axes[1].set_title("accuracy of the same models")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder holding the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs, {QUICK_FOLDS} folds (the test suite's mode)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    ds = load(args)
    epochs, k = (QUICK_EPOCHS, QUICK_FOLDS) if args.quick else (EPOCHS, FOLDS)
    x, y = ds.x_train[:TRAIN_SIZE], ds.y_train[:TRAIN_SIZE]
    spec = sweep.Spec(sizes=(ds.x_train.shape[1], *HIDDEN, ds.num_classes), optimizer="sgd", batch_size=BATCH_SIZE)
    grid = [(lr, wd) for lr in LEARNING_RATES for wd in WEIGHT_DECAYS]
    hparams = {"learning_rate": [lr for lr, _ in grid], "weight_decay": [wd for _, wd in grid]}
    sizes = f"{ds.x_train.shape[1]}-[100 x{len(HIDDEN)}]-{ds.num_classes}"
    print(f"{ds.name}: first {len(x)} samples, {k} folds of {len(x) // k}, {sizes}, SGD, batch {BATCH_SIZE}, "
          f"{epochs} epochs")
    key = jax.random.key(SEED)

    start = time.perf_counter()
    cv = sweep.kfold_cv(key, spec, hparams, x, y, k=k, epochs=epochs, seed=SEED)
    print(f"{len(grid)} configurations x {k} folds trained in {time.perf_counter() - start:.1f}s")
    print("lr      wd      val loss         val acc")
    for (lr, wd), loss, acc in zip(grid, cv.val_loss, cv.val_acc):
        print(f"{lr:<6g}  {wd:<6g}  {loss.mean():.3f} +- {loss.std():.3f}   "
              f"{100 * acc.mean():.1f}% +- {100 * acc.std():.1f}")
    lr, wd = grid[cv.best]
    print(f"best: lr {lr:g} wd {wd:g} (lowest mean validation loss {cv.val_loss[cv.best].mean():.3f})")

    # (a) retrain the winner on every sample; (b) let its K fold models vote.
    final = sweep.run_trials(key, spec, {"learning_rate": [lr], "weight_decay": [wd]}, (x, y), epochs=epochs,
                             test=(ds.x_test, ds.y_test))
    retrained = float(final.history["test_acc"][0, -1])
    print(f"(a) retrained on all {len(x)} samples: test {100 * retrained:.1f}%")
    fold_models = jax.tree.map(lambda a: a[cv.best], cv.state)  # leaves (K, ...)
    ensemble = sweep.ensemble_accuracy(fold_models, ds.x_test, ds.y_test)
    singles = [sweep.ensemble_accuracy(jax.tree.map(lambda a: a[f:f + 1], fold_models), ds.x_test, ds.y_test)
               for f in range(k)]
    print(f"(b) ensemble of the {k} fold models: test {100 * ensemble:.1f}% "
          f"(single fold models {100 * np.mean(singles):.1f}% +- {100 * np.std(singles):.1f})")

    os.makedirs(args.out, exist_ok=True)
    labels = [f"lr {lr:g}\nwd {wd:g}" for lr, wd in grid]
    title = f"{ds.name}: {k}-fold CV on {len(x)} samples, {sizes}, SGD, {epochs} epochs"
    print(f"saved {save_figure(cv, labels, title, os.path.join(args.out, 'kfold_cv.png'))}")
    return {"cv": cv, "retrained": retrained, "ensemble": ensemble, "singles": singles}


if __name__ == "__main__":
    main()
