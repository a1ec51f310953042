"""Chapter 6: overfitting on 300 samples, and what weight decay and dropout do (Figures 6-20 to 6-23).

    python examples/overfitting.py [--dataset digits|fashion-mnist|mnist]
                                   [--dataset-dir DIR] [--quick] [--out figures]

The book's protocol: the first 300 training samples, MLP [100 x6] hidden, ReLU, He init,
SGD lr 0.01, batch 100 drawn with replacement (``np.random.choice``, 3 batches an
"epoch"), 201 epochs; then the same with weight decay lambda 0.1 (``0.5 * lambda * sum W^2``
over weights only), then dropout 0.2 for 301 epochs (the book's dropout: kept units
unscaled in training, outputs times 0.8 at test time). Train accuracy is measured on the
300 samples, test accuracy on the whole test set, after every epoch. Writes the curves to
figures/overfitting.png. Expected output, full mode on Fashion-MNIST (191 s on a 2-core CPU
shared with other jobs, 83 s of it CPU time; mostly the 10,000-image test pass every epoch):

    fashion-mnist: first 300 training samples, 784-[100 x6]-10, SGD lr 0.01, batch 100
    plain              201 epochs  train 100.0%  test  74.9%  gap 25.1  47.8s
    weight decay 0.1   201 epochs  train  77.0%  test  68.8%  gap  8.2  54.1s
    dropout 0.2        301 epochs  train  53.3%  test  51.7%  gap  1.6  78.1s
    saved figures/overfitting.png

Without regularisation the net learns the 300 samples by heart (train 100%) while test
accuracy stalls near 75%: a 25-point gap. Weight decay holds training accuracy down and
narrows the gap to 8 points; dropout (which the book trains longer) closes it almost
entirely but, with plain SGD at lr 0.01, has not finished learning after 301 epochs.
On the 8x8 digits (the default; full mode, 38 s on the same shared CPU):

    digits: first 300 training samples, 64-[100 x6]-10, SGD lr 0.01, batch 100
    plain              201 epochs  train  99.3%  test  89.1%  gap 10.2  7.8s
    weight decay 0.1   201 epochs  train  66.0%  test  59.9%  gap  6.1  7.3s
    dropout 0.2        301 epochs  train  43.7%  test  39.6%  gap  4.1  11.3s
    saved figures/overfitting.png

--quick (100 epochs, 150 with dropout) on digits, train/test: plain 94.3%/84.4%, weight
decay 53.7%/49.9%, dropout 22.3%/14.8%.
"""
import argparse
import os
import time

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import data, nn, optim, train  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

TRAIN_SAMPLES = 300       # the book's x_train[:300]: small enough to overfit
HIDDEN = (100,) * 6       # the book's hidden_size_list=[100] * 6: big enough to overfit
LEARNING_RATE = 0.01      # the book's SGD(lr=0.01)
BATCH_SIZE = 100          # the book's batch_size
# label -> (model keyword arguments, fit keyword arguments, epochs, quick epochs). Dropout
# belongs to the model, weight decay to the loss. The book runs dropout 301 epochs.
# --quick: an epoch is 3 steps (~10 ms), compiling is what costs; half the epochs still
# show the gap opening.
RUNS = {
    "plain": ({}, {}, 201, 100),
    "weight decay 0.1": ({}, {"weight_decay": 0.1}, 201, 100),
    "dropout 0.2": ({"drop_rate": 0.2, "dropout_mode": "textbook"}, {}, 301, 150),
}
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def run(ds: data.Dataset, quick: bool) -> dict:
    """label -> (history, seconds); every run starts from the same weights and key (batches)."""
    key_init, key_fit = jax.random.split(jax.random.key(SEED))
    x, y = ds.x_train[:TRAIN_SAMPLES], ds.y_train[:TRAIN_SAMPLES]
    sizes = (x.shape[1], *HIDDEN, ds.num_classes)
    params = nn.init_mlp(key_init, sizes, weight_init="he")
    results = {}
    for label, (model_kwargs, fit_kwargs, epochs, quick_epochs) in RUNS.items():
        start = time.perf_counter()
        result = train.fit(key_fit, nn.mlp_model(sizes, **model_kwargs), optim.sgd(LEARNING_RATE), (x, y),
                           epochs=quick_epochs if quick else epochs, batch_size=BATCH_SIZE, params=params,
                           test=(ds.x_test, ds.y_test), sampling="replacement", verbose=False, **fit_kwargs)
        results[label] = (result.history, time.perf_counter() - start)
    return results


def save_figure(results: dict, title: str, path: str) -> str:
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True)
    for ax, (label, (history, _)) in zip(axes, results.items()):
        ax.plot(history["epoch"], 100 * history["train_acc"], color="C0", label="train (300 samples)")
        ax.plot(history["epoch"], 100 * history["test_acc"], color="C1", label="test")
        ax.set(xlabel="epoch", title=label)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="accuracy (%)", ylim=(0, 101))
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder with the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--quick", action="store_true", help="100 epochs, 150 with dropout (for the tests)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    ds = load(args)
    sizes = f"{ds.x_train.shape[1]}-[100 x{len(HIDDEN)}]-{ds.num_classes}"
    print(f"{ds.name}: first {TRAIN_SAMPLES} training samples, {sizes}, SGD lr {LEARNING_RATE:g}, "
          f"batch {BATCH_SIZE}")
    results = run(ds, args.quick)
    for label, (history, seconds) in results.items():
        train_acc, test_acc = 100 * history["train_acc"][-1], 100 * history["test_acc"][-1]
        print(f"{label:17s} {history['epoch'][-1]:4d} epochs  train {train_acc:5.1f}%  test {test_acc:5.1f}%  "
              f"gap {train_acc - test_acc:4.1f}  {seconds:.1f}s")
    os.makedirs(args.out, exist_ok=True)
    title = f"{ds.name}: {TRAIN_SAMPLES} training samples, MLP {sizes}, ReLU, He, SGD lr {LEARNING_RATE:g}"
    print(f"saved {save_figure(results, title, os.path.join(args.out, 'overfitting.png'))}")
    return results


if __name__ == "__main__":
    main()
