"""Chapter 6: every optimizer trains the same MLP on the same batches (the book's Figure 6-9).

    python examples/optimizer_comparison.py [--dataset digits|fashion-mnist|mnist]
        [--dataset-dir DIR] [--optimizers sgd,adam,...] [--init same|own] [--quick] [--out figures]

The book's setup: MLP 784-[100 x4]-10 (64-[100 x4]-10 on the 8x8 digits), ReLU, He init,
batch 128, 2,000 iterations, every optimizer with its default hyperparameters, the very same
batches (``sweep.compare_optimizers``). Initial weights: by default every optimizer starts
from the same ones (``--init same``: only the optimizer differs between two curves); the book's
``ch06/optimizer_compare_mnist.py`` gives each optimizer its own freshly initialised network
(``--init own``), so its curves also differ by the luck of the draw. The figure in the README
and the numbers below are ``--init same``. Writes the
smoothed loss curves to figures/optimizer_comparison.png (left: the book's four; right: all,
log scale). All the optimizers train in one compiled program, split over the CPU's cores.
Expected output, full mode on Fashion-MNIST ("loss": the last smoothed training loss):

    fashion-mnist: 784-[100 x4]-10, batch 128, 2000 iterations, same batches, same initial weights
    sgd        loss 0.4889     test acc 82.8%
    momentum   loss 0.3855     test acc 84.9%
    nesterov   loss 0.3726     test acc 86.1%
    adagrad    loss 0.3453     test acc 86.7%
    rmsprop    loss 0.5197     test acc 83.8%
    adam       loss 0.3407     test acc 86.0%
    adamw      loss 0.3505     test acc 86.1%
    nadam      loss 0.3383     test acc 86.8%
    adamax     loss 0.3648     test acc 85.8%
    lion       loss 0.3284     test acc 87.0%
    adadelta   loss 0.3801     test acc 86.0%
    11 optimizers trained and evaluated in 19.9s (one program, compiling included)
    saved figures/optimizer_comparison.png

(23 s for the whole process on a 2-core CPU; training the optimizers one program at a time, as
this example did before, took 29.4 s of training and 32 s in all, measured just before.) SGD is
the slowest by far, Momentum, AdaGrad and Adam all beat it, as in the book; RMSProp's default
rate 0.01 is too large here (spikes, and a last loss that moves with rounding). The last digits
of every loss depend on how the optimizers are grouped over the cores: chaotic runs amplify
rounding. On the 8x8 digits (the default; 11 s) SGD ends at loss 0.062 and 95.5%, every other
optimizer near 0 (1e-3 to 1e-7) and 95.3% (RMSProp) to 98.1% (AdamW, NAdam, Adamax); Adam
97.8%. --quick (200 iterations, the book's four) on digits: sgd 0.8517 84.1%, momentum 0.05693
95.5%, adagrad 0.008897 96.7%, adam 0.01294 96.4%.
"""
import argparse
import os
import time

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from matplotlib import ticker  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import data, nn, optim, plot, sweep, train  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

HIDDEN = (100,) * 4       # the book's 784-100-100-100-100-10
BATCH_SIZE = 128          # the book's batch_size
ITERATIONS = 2000         # the book's max_iterations
QUICK_ITERATIONS = 200    # enough for the curves to separate; a few seconds on a CPU
# Figure 6-9's optimizers: drawn solid (the others dashed), and all --quick runs (the test suite
# wants seconds).
BOOK_FOUR = ("sgd", "momentum", "adagrad", "adam")
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def compare(ds: data.Dataset, names, iterations: int, init: str = "same") -> tuple[dict, float]:
    """``(name -> (step losses, test accuracy), seconds)``: every optimizer from the same start
    (``init="same"``) or each from its own (``"own"``, the book's: optimizer i of
    ``optim.OPTIMIZERS`` gets the i-th draw, whichever subset runs), all trained in one program
    (``sweep.compare_optimizers``: side by side on the CPU's cores)."""
    key_init, key_batches = jax.random.split(jax.random.key(SEED))
    sizes = (ds.x_train.shape[1], *HIDDEN, ds.num_classes)
    order = list(optim.OPTIMIZERS)

    def initial_weights(name):
        key = key_init if init == "same" else jax.random.fold_in(key_init, order.index(name))
        return nn.init_mlp(key, sizes, weight_init="he")

    model = nn.mlp_model(sizes)  # compare_optimizers' default model for these params: ReLU, no batch norm
    evaluate = jax.jit(lambda p, s, x, y: train.evaluate(model, p, s, x, y))
    start = time.perf_counter()
    # One key: the very same batches for everyone.
    runs = sweep.compare_optimizers(key_batches, {name: optim.OPTIMIZERS[name]() for name in names}, initial_weights,
                                    ds.x_train, ds.y_train, iterations=iterations, batch_size=BATCH_SIZE)
    results = {name: (losses, float(evaluate(state.params, state.model_state, ds.x_test, ds.y_test)["acc"]))
               for name, (state, losses) in runs.items()}
    return results, time.perf_counter() - start


def save_figure(results: dict, title: str, path: str) -> str:
    """Left: the book's four on a linear scale (Figure 6-9); right: everything, log scale."""
    fig, (ax_book, ax_all) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (name, (losses, _)) in enumerate(results.items()):
        style = dict(color=f"C{i % 10}", lw=1.3, label=name, ls="-" if name in BOOK_FOUR else "--")
        if name in BOOK_FOUR:
            ax_book.plot(plot.smooth_curve(losses), **style)
        ax_all.plot(plot.smooth_curve(losses), **style)
    # The loss starts near ln 10 = 2.3; RMSProp's default rate spikes far above at first.
    ax_book.set(xlabel="iteration", ylabel="training loss (smoothed)", ylim=(0, 2.5),
                title="the book's four (Figure 6-9)")
    ax_all.set(xlabel="iteration", ylabel="training loss (smoothed, log scale)", yscale="log",
               title=f"{len(results)} optimizers, log scale")
    ax_all.set_ylim(top=3)
    # Plain numbers (0.5, not 5x10^-1); of the minor ticks only 2s, 3s and 5s get a label.
    ax_all.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_all.yaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    ax_book.legend(loc="upper right")
    ax_all.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)  # outside: curves fill the panel
    for ax in (ax_book, ax_all):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder with the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--optimizers", default=None,
                        help=f"comma-separated subset of {','.join(optim.OPTIMIZERS)} (default: all)")
    parser.add_argument("--init", choices=("same", "own"), default="same",
                        help="same: every optimizer from the same initial weights (default); own: each from "
                             "its own fresh ones, as the book's ch06/optimizer_compare_mnist.py")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ITERATIONS} iterations, the book's four optimizers (for the tests)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    names = (args.optimizers.split(",") if args.optimizers
             else BOOK_FOUR if args.quick else list(optim.OPTIMIZERS))
    unknown = sorted(set(names) - set(optim.OPTIMIZERS))
    if unknown:
        parser.error(f"unknown optimizers {unknown}; choose from {','.join(optim.OPTIMIZERS)}")
    ds = load(args)
    iterations = QUICK_ITERATIONS if args.quick else ITERATIONS
    sizes = f"{ds.x_train.shape[1]}-[100 x{len(HIDDEN)}]-{ds.num_classes}"
    inits = "same initial weights" if args.init == "same" else "each its own initial weights (the book's)"
    print(f"{ds.name}: {sizes}, batch {BATCH_SIZE}, {iterations} iterations, same batches, {inits}")
    results, seconds = compare(ds, names, iterations, args.init)
    for name, (losses, acc) in results.items():
        print(f"{name:10s} loss {plot.smooth_curve(losses)[-1]:<10.4g} test acc {100 * acc:.1f}%")
    print(f"{len(names)} optimizers trained and evaluated in {seconds:.1f}s (one program, compiling included)")
    os.makedirs(args.out, exist_ok=True)
    title = (f"{ds.name}, MLP {sizes}, ReLU, He init, batch {BATCH_SIZE}: default hyperparameters, "
             f"same batches, {inits}")
    print(f"saved {save_figure(results, title, os.path.join(args.out, 'optimizer_comparison.png'))}")
    return results


if __name__ == "__main__":
    main()
