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
log scale). Expected output, full mode on Fashion-MNIST ("loss": the last smoothed training
loss; times include compiling; 104 s in all on a 2-core CPU shared with other jobs):

    fashion-mnist: 784-[100 x4]-10, batch 128, 2000 iterations, same batches, same initial weights
    sgd        loss 0.4884     test acc 82.6%  6.9s
    momentum   loss 0.3972     test acc 84.7%  6.4s
    nesterov   loss 0.3623     test acc 86.2%  8.5s
    adagrad    loss 0.3519     test acc 86.5%  8.0s
    rmsprop    loss 0.4871     test acc 82.9%  8.1s
    adam       loss 0.356      test acc 85.7%  9.9s
    adamw      loss 0.3459     test acc 86.4%  9.2s
    nadam      loss 0.3448     test acc 86.8%  9.2s
    adamax     loss 0.3605     test acc 86.3%  8.9s
    lion       loss 0.3414     test acc 87.1%  9.8s
    adadelta   loss 0.3719     test acc 85.3%  10.7s
    saved figures/optimizer_comparison.png

SGD is the slowest by far, Momentum, AdaGrad and Adam all beat it, as in the book; RMSProp's
default rate 0.01 is too large here (spikes). On the 8x8 digits (the default; 68 s) SGD ends
at loss 0.062 and 95.5%, every other optimizer near 0 (1e-3 to 1e-7) and 94.7% (Lion) to
98.1% (NAdam, Adamax); Adam 97.8%. --quick (200 iterations, the book's four) on digits:
sgd 0.8518 84.4%, momentum 0.05693 95.5%, adagrad 0.008863 96.7%, adam 0.01294 96.4%.
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
# Figure 6-9's optimizers: drawn solid (the others dashed), and all --quick runs, since each
# optimizer compiles its own program (~1 s on a CPU) and the test suite wants seconds.
BOOK_FOUR = ("sgd", "momentum", "adagrad", "adam")
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def compare(ds: data.Dataset, names, iterations: int, init: str = "same") -> dict:
    """name -> (step losses, test accuracy, seconds); every optimizer from the same start
    (``init="same"``) or each from its own (``"own"``, the book's: optimizer i of
    ``optim.OPTIMIZERS`` gets the i-th draw, whichever subset runs)."""
    key_init, key_batches = jax.random.split(jax.random.key(SEED))
    sizes = (ds.x_train.shape[1], *HIDDEN, ds.num_classes)
    order = list(optim.OPTIMIZERS)

    def initial_weights(name):
        key = key_init if init == "same" else jax.random.fold_in(key_init, order.index(name))
        return nn.init_mlp(key, sizes, weight_init="he")

    model = nn.mlp_model(sizes)  # compare_optimizers' default model for these params: ReLU, no batch norm
    evaluate = jax.jit(lambda p, s, x, y: train.evaluate(model, p, s, x, y))
    results = {}
    for name in names:
        start = time.perf_counter()
        # One optimizer per call (to time each), the same key: the very same batches for everyone.
        state, losses = sweep.compare_optimizers(key_batches, {name: optim.OPTIMIZERS[name]()}, initial_weights,
                                                 ds.x_train, ds.y_train, iterations=iterations,
                                                 batch_size=BATCH_SIZE)[name]
        acc = evaluate(state.params, state.model_state, ds.x_test, ds.y_test)["acc"]
        results[name] = (losses, float(acc), time.perf_counter() - start)
    return results


def save_figure(results: dict, title: str, path: str) -> str:
    """Left: the book's four on a linear scale (Figure 6-9); right: everything, log scale."""
    fig, (ax_book, ax_all) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (name, (losses, _, _)) in enumerate(results.items()):
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
    results = compare(ds, names, iterations, args.init)
    for name, (losses, acc, seconds) in results.items():
        print(f"{name:10s} loss {plot.smooth_curve(losses)[-1]:<10.4g} test acc {100 * acc:.1f}%  {seconds:.1f}s")
    os.makedirs(args.out, exist_ok=True)
    title = (f"{ds.name}, MLP {sizes}, ReLU, He init, batch {BATCH_SIZE}: default hyperparameters, "
             f"same batches, {inits}")
    print(f"saved {save_figure(results, title, os.path.join(args.out, 'optimizer_comparison.png'))}")
    return results


if __name__ == "__main__":
    main()
