"""Chapter 6: random hyperparameter search, then successive halving (the book's Figure 6-24).

    python examples/hyperparameter_search.py [--dataset digits|fashion-mnist|mnist]
                                             [--dataset-dir DIR] [--trials N] [--quick] [--out figures]

The book's protocol: the first 500 training samples, 20% of them held out for validation,
MLP [100 x6], SGD, batch 100, 50 epochs, 100 trials with lr = 10^U(-6,-2) and weight decay
= 10^U(-8,-4), every trial ``vmap``-ed in one program (``sweep.random_search``). Then
successive halving (``sweep.successive_halving``, same key: the same sampled trials) stops the
bad ones early. Both winners are retrained on all 500 samples and tested. Writes
figures/hyperparameter_search.png (the best 20: validation solid, train dashed). Expected
output, full mode on Fashion-MNIST (2-core CPU shared with other jobs; times include
compilation, 2-3 minutes in all; digits: ~80 s, best val 93.0%, both winners test 88.0%):

    fashion-mnist: first 500 samples (400 train / 100 val), 784-[100 x6]-10, SGD, batch 100
    random search: 100 trials x 50 epochs in 77.5s
    rank  lr        weight decay  val acc  train acc
       1  0.00638   4.74e-06       75.0%      82.2%
       2  0.00931   7.08e-07       74.0%      83.2%
       3  0.00811   2.18e-08       71.0%      84.5%
    ...
    successive halving: 100 -> 34 -> 12 -> 4 trials at 5/15/45/50 epochs in 45.9s, 24% of the epochs
    halving winner lr 0.00638 wd 4.74e-06 val 75.0%: within 1 point of the full search's best (75.0%)
    retrained on all 500 samples, 50 epochs: search winner test 72.6%, halving winner test 72.6%
    saved figures/hyperparameter_search.png

Only the learning rate matters here: the best ten all have lr > 0.003, whatever the weight
decay. Halving finds the same winner for a quarter of the epochs (its wall time saves less:
each rung compiles its own program), the DESIGN's point that doing less work is what wins on
a CPU.
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

TRAIN_SIZE = 500           # the book's x_train[:500]: a search must be cheap
VALIDATION = 0.2           # the book's validation_rate
HIDDEN = (100,) * 6        # the book's hidden_size_list=[100] * 6
BATCH_SIZE = 100           # the book's mini_batch_size
EPOCHS, TRIALS = 50, 100   # the book's epochs and optimization_trial
QUICK_EPOCHS, QUICK_TRIALS = 3, 12  # the test suite's mode: each compiled program costs seconds
RANGES = {"learning_rate": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}  # the book's 10^U(-6,-2), 10^U(-8,-4)
MIN_EPOCHS, ETA = 5, 3     # halving: the first cut after 5 epochs, keep the best third
QUICK_MIN_EPOCHS = 1       # two rungs (1 and 3 epochs): the fewest programs that still halve
SHOWN = 20                 # the book plots the best 20
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def save_figure(trials: sweep.Trials, rows: list, title: str, path: str) -> str:
    shown = rows[:SHOWN]
    rows = -(-len(shown) // 4)  # 5 x 4 for the book's best 20
    fig, axes = plt.subplots(rows, 4, figsize=(12, 2.4 * rows), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for rank, (row, ax) in enumerate(zip(shown, axes.flat), start=1):
        i = row["trial"]
        epochs = np.arange(1, trials.history["val_acc"].shape[1] + 1)
        ax.plot(epochs, trials.history["val_acc"][i], "-", color="tab:blue", label="val")
        ax.plot(epochs, trials.history["train_acc"][i], "--", color="tab:orange", label="train")
        ax.set_title(f"Best-{rank} (val acc {row['val_acc']:.2f})", fontsize=9)
        ax.text(0.03, 0.97, f"lr {row['learning_rate']:.2g}\nwd {row['weight_decay']:.1g}",
                transform=ax.transAxes, va="top", fontsize=7)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes.flat[0].legend(loc="lower right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder holding the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--trials", type=int, default=None, help=f"number of trials (default {TRIALS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_TRIALS} trials x {QUICK_EPOCHS} epochs (the test suite's mode)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    ds = load(args)
    epochs, n_trials = (QUICK_EPOCHS, QUICK_TRIALS) if args.quick else (EPOCHS, TRIALS)
    n_trials = args.trials or n_trials
    x, y = ds.x_train[:TRAIN_SIZE], ds.y_train[:TRAIN_SIZE]
    x_tr, y_tr, x_val, y_val = data.train_val_split(x, y, VALIDATION, seed=SEED)
    spec = sweep.Spec(sizes=(ds.x_train.shape[1], *HIDDEN, ds.num_classes), optimizer="sgd", batch_size=BATCH_SIZE)
    sizes = f"{ds.x_train.shape[1]}-[100 x{len(HIDDEN)}]-{ds.num_classes}"
    print(f"{ds.name}: first {len(x)} samples ({len(x_tr)} train / {len(x_val)} val), {sizes}, SGD, batch {BATCH_SIZE}")
    key = jax.random.key(SEED)

    start = time.perf_counter()
    trials, rows = sweep.random_search(key, spec, RANGES, (x_tr, y_tr), (x_val, y_val), n_trials=n_trials, epochs=epochs)
    full_s = time.perf_counter() - start
    print(f"random search: {n_trials} trials x {epochs} epochs in {full_s:.1f}s")
    print("rank  lr        weight decay  val acc  train acc")
    for rank, r in enumerate(rows[:10], start=1):
        print(f"{rank:4d}  {r['learning_rate']:<8.3g}  {r['weight_decay']:<10.3g}  "
              f"{100 * r['val_acc']:7.1f}%  {100 * r['train_acc']:8.1f}%")

    start = time.perf_counter()
    min_epochs = QUICK_MIN_EPOCHS if args.quick else MIN_EPOCHS
    _, halving_rows, summary = sweep.successive_halving(key, spec, RANGES, (x_tr, y_tr), (x_val, y_val),
                                                        n_trials=n_trials, max_epochs=epochs,
                                                        min_epochs=min_epochs, eta=ETA)
    halving_s = time.perf_counter() - start
    rungs = summary["rungs"]
    print(f"successive halving: {' -> '.join(str(r['trials']) for r in rungs)} trials at "
          f"{'/'.join(str(r['epochs']) for r in rungs)} epochs in {halving_s:.1f}s, "
          f"{100 * summary['fraction_of_full']:.0f}% of the epochs")
    best, won = rows[0], halving_rows[0]
    gap = best["val_acc"] - won["val_acc"]
    verdict = "within" if gap <= 0.01 else "NOT within"
    print(f"halving winner lr {won['learning_rate']:.3g} wd {won['weight_decay']:.3g} val {100 * won['val_acc']:.1f}%: "
          f"{verdict} 1 point of the full search's best ({100 * best['val_acc']:.1f}%)")

    # Retrain both winners on all 500 samples (train + val), same initial weights (seed), one program.
    winners = {k: [best[k], won[k]] for k in RANGES}
    final = sweep.run_trials(key, spec, winners, (x, y), epochs=epochs, test=(ds.x_test, ds.y_test),
                             seeds=[best["seed"], won["seed"]])
    test_acc = final.history["test_acc"][:, -1]
    print(f"retrained on all {len(x)} samples, {epochs} epochs: search winner test {100 * test_acc[0]:.1f}%, "
          f"halving winner test {100 * test_acc[1]:.1f}%")

    os.makedirs(args.out, exist_ok=True)
    title = f"{ds.name}: best {min(SHOWN, len(rows))} of {n_trials} trials, {sizes}, SGD, {epochs} epochs"
    print(f"saved {save_figure(trials, rows, title, os.path.join(args.out, 'hyperparameter_search.png'))}")
    return {"rows": rows, "halving_rows": halving_rows, "summary": summary, "test_acc": test_acc,
            "seconds": (full_s, halving_s)}


if __name__ == "__main__":
    main()
