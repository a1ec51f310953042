"""Chapter 6: training loss for weight std 0.01, Xavier and He (the book's Figure 6-15).

    python examples/weight_init_comparison.py [--dataset digits|fashion-mnist|mnist]
                                              [--dataset-dir DIR] [--quick] [--out figures]

The book's protocol: MLP 784-[100 x4]-10 (64-[100 x4]-10 on the 8x8 digits), ReLU, SGD with
learning rate 0.01, batch 128, 2,000 iterations; the three inits draw the same Gaussian
weights (only the scale differs) and train on the very same batches. Writes the smoothed
loss curves to figures/weight_init_comparison.png. Expected output, full mode on
Fashion-MNIST ("loss": the last smoothed training loss; times include compiling; 36 s in
all on a 2-core CPU shared with other jobs):

    fashion-mnist: 784-[100 x4]-10, ReLU, SGD lr 0.01, batch 128, 2000 iterations, same batches
    std 0.01          loss 2.303   test acc 10.0%  16.5s
    Xavier sqrt(1/n)  loss 0.5618  test acc 79.4%  6.9s
    He sqrt(2/n)      loss 0.4884  test acc 82.6%  7.2s
    saved figures/weight_init_comparison.png

With std 0.01 the activations (and so the gradients) vanish layer by layer and nothing is
learnt: the loss stays at ln 10 = 2.303 and the net guesses one class. Xavier learns, He
learns fastest, as in the book. (He's run is the optimizer comparison's SGD run: same
weights, same batches.) On the 8x8 digits (the default; 24 s):

    digits: 64-[100 x4]-10, ReLU, SGD lr 0.01, batch 128, 2000 iterations, same batches
    std 0.01          loss 2.303   test acc 10.0%  11.5s
    Xavier sqrt(1/n)  loss 0.131   test acc 93.6%  3.7s
    He sqrt(2/n)      loss 0.0622  test acc 95.5%  4.2s
    saved figures/weight_init_comparison.png

--quick (200 iterations) on digits: std 0.01 loss 2.302 10.0%, Xavier 2.188 47.6% (still on
the plateau), He 0.8518 84.4%.
"""
import argparse
import os
import time

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import data, nn, optim, plot, sweep, train  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

HIDDEN = (100,) * 4       # the book's 784-100-100-100-100-10, as in the optimizer comparison
LEARNING_RATE = 0.01      # the book's SGD(lr=0.01)
BATCH_SIZE = 128          # the book's batch_size
ITERATIONS = 2000         # the book's max_iterations
QUICK_ITERATIONS = 200    # Xavier and He already part from std 0.01; a few seconds on a CPU
INITS = {"std 0.01": 0.01, "Xavier sqrt(1/n)": "xavier", "He sqrt(2/n)": "he"}  # Figure 6-15
SEED = 0


def load(args) -> data.Dataset:
    kwargs = {"path": args.dataset_dir} if args.dataset_dir and args.dataset != "digits" else {}
    return data.load_dataset(args.dataset, **kwargs)


def compare(ds: data.Dataset, iterations: int) -> dict:
    """label -> (step losses, test accuracy, seconds) for each init, same batches."""
    key_init, key_batches = jax.random.split(jax.random.key(SEED))
    sizes = (ds.x_train.shape[1], *HIDDEN, ds.num_classes)
    model = nn.mlp_model(sizes)  # compare_optimizers' default model for these params: ReLU, no batch norm
    evaluate = jax.jit(lambda p, s, x, y: train.evaluate(model, p, s, x, y))
    results = {}
    for label, weight_init in INITS.items():
        start = time.perf_counter()
        params = nn.init_mlp(key_init, sizes, weight_init=weight_init)  # same draws, scaled
        # The same key_batches for every init: the very same batches.
        state, losses = sweep.compare_optimizers(key_batches, {"sgd": optim.sgd(LEARNING_RATE)}, params,
                                                 ds.x_train, ds.y_train, iterations=iterations,
                                                 batch_size=BATCH_SIZE)["sgd"]
        acc = evaluate(state.params, state.model_state, ds.x_test, ds.y_test)["acc"]
        results[label] = (losses, float(acc), time.perf_counter() - start)
    return results


def save_figure(results: dict, title: str, path: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, (losses, _, _)) in enumerate(results.items()):
        ax.plot(plot.smooth_curve(losses), color=f"C{i}", lw=1.3, label=label)
    ax.set(xlabel="iteration", ylabel="training loss (smoothed)", ylim=(0, 2.5), title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or mnist")
    parser.add_argument("--dataset-dir", default=None, help="folder with the IDX files (mnist, fashion-mnist)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ITERATIONS} iterations (for the tests)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    ds = load(args)
    iterations = QUICK_ITERATIONS if args.quick else ITERATIONS
    sizes = f"{ds.x_train.shape[1]}-[100 x{len(HIDDEN)}]-{ds.num_classes}"
    print(f"{ds.name}: {sizes}, ReLU, SGD lr {LEARNING_RATE:g}, batch {BATCH_SIZE}, "
          f"{iterations} iterations, same batches")
    results = compare(ds, iterations)
    for label, (losses, acc, seconds) in results.items():
        print(f"{label:17s} loss {plot.smooth_curve(losses)[-1]:<7.4g} test acc {100 * acc:.1f}%  {seconds:.1f}s")
    os.makedirs(args.out, exist_ok=True)
    title = f"{ds.name}, MLP {sizes}, ReLU, SGD lr {LEARNING_RATE:g}, batch {BATCH_SIZE}"
    print(f"saved {save_figure(results, title, os.path.join(args.out, 'weight_init_comparison.png'))}")
    return results


if __name__ == "__main__":
    main()
