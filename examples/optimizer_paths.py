"""Chapter 6: the paths of SGD, Momentum, AdaGrad and Adam on f(x, y) = x^2/20 + y^2.

    python examples/optimizer_paths.py [--function textbook] [--quick] [--out figures]

The book's experiment (Figure 6-8): start (-7, 2), 30 updates, SGD lr 0.95, Momentum 0.1,
AdaGrad 1.5, Adam 0.3 (the book's Adam, bias correction folded into the learning rate).
Writes a 2x2 contour plot, figures/optimizer_paths_<function>.png. Expected output (float32):

    textbook: start (-7.0, 2.0), 30 steps, minimum 0 at (0, 0)
    sgd       lr 0.95   end (-0.3504,  0.0848)  f 0.01333
    momentum  lr 0.1    end ( 0.8964,  0.0881)  f 0.04794
    adagrad   lr 1.5    end (-0.1202,  0.0000)  f 0.000722
    adam      lr 0.3    end ( 0.1360,  0.3182)  f 0.1022
    saved figures/optimizer_paths_textbook.png

SGD zig-zags across the narrow valley, Momentum rolls past the minimum like a ball,
AdaGrad damps the steep y direction at once, Adam does a bit of both.
``--function NAME`` draws the same four optimizers on any function in
``jaxscratch.landscapes.FUNCTIONS`` with the start, steps and learning rates in VIEWS below.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
import numpy as np  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import landscapes, optim  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

OPTIMIZERS = {  # name -> factory(learning_rate); Adam in the book's folded form
    "sgd": optim.sgd,
    "momentum": optim.momentum,
    "adagrad": optim.adagrad,
    "adam": lambda lr: optim.adam(lr, fold_bias_correction=True),
}
# name -> (start, steps, (sgd, momentum, adagrad, adam) learning rates, xlim, ylim).
# textbook is the book's setting; for the others the rates were measured to converge without
# blowing up (SGD and Momentum diverge on Rosenbrock and Beale above ~1e-2), except Rastrigin,
# whose local minima trap every optimizer: that is its point.
VIEWS = {
    "textbook": ((-7.0, 2.0), 30, (0.95, 0.1, 1.5, 0.3), (-10, 10), (-5, 5)),
    "polynomial": ((-4.0, 3.0), 50, (0.1, 0.01, 1.5, 0.3), (-6, 4), (-7, 5)),
    "sphere": ((-3.0, 4.0), 30, (0.1, 0.1, 1.0, 0.3), (-5, 5), (-5, 5)),
    "rosenbrock": ((-1.2, 1.0), 200, (0.003, 0.001, 1.0, 0.3), (-2, 2), (-1, 3)),
    "beale": ((1.0, 1.5), 100, (0.01, 0.001, 1.0, 0.1), (-1, 4.5), (-1.5, 2)),
    "himmelblau": ((0.0, 0.0), 50, (0.01, 0.003, 0.3, 0.3), (-5, 5), (-5, 5)),
    "booth": ((-5.0, -5.0), 50, (0.03, 0.01, 1.5, 1.0), (-10, 10), (-10, 10)),
    "rastrigin": ((2.5, -2.2), 50, (0.001, 0.001, 0.3, 0.01), (-5.12, 5.12), (-5.12, 5.12)),
}


def run(name: str) -> dict:
    """Each optimizer's (learning rate, path) on function ``name``, paths of shape (steps + 1, 2)."""
    start, steps, rates, _, _ = VIEWS[name]
    f = landscapes.FUNCTIONS[name]
    x0 = np.array(start, np.float32)
    return {opt: (lr, np.asarray(landscapes.trajectory(OPTIMIZERS[opt](lr), f, x0, steps)))
            for opt, lr in zip(OPTIMIZERS, rates)}


def plot(name: str, paths: dict, out: str, n: int) -> str:
    start, steps, _, xlim, ylim = VIEWS[name]
    f = landscapes.FUNCTIONS[name]
    X, Y, Z = (np.asarray(a) for a in landscapes.grid(f, xlim, ylim, n))
    # Levels at quantiles of Z: evenly spaced contours for bowls and steep valleys alike.
    levels = np.unique(np.quantile(Z, np.linspace(0.0, 0.95, 16)))
    minima, _ = landscapes.MINIMA[name]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True, sharey=True)
    for ax, (opt, (lr, path)) in zip(axes.flat, paths.items()):
        ax.contour(X, Y, Z, levels=levels, colors="0.6", linewidths=0.8, negative_linestyles="solid")
        ax.plot(path[:, 0], path[:, 1], "o-", color="tab:red", markersize=3, linewidth=1)
        ax.plot(*zip(*minima), "+", color="black", markersize=12, markeredgewidth=2)
        ax.set(xlim=xlim, ylim=ylim, title=f"{opt} (lr {lr:g})")
    for ax in axes[1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("y")
    fig.suptitle(f"{name}: {steps} steps from {start}")
    os.makedirs(out, exist_ok=True)
    file = os.path.join(out, f"optimizer_paths_{name}.png")
    fig.savefig(file, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return file


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--function", default="textbook", choices=sorted(VIEWS),
                        help="the landscape (default: the book's x^2/20 + y^2)")
    parser.add_argument("--quick", action="store_true", help="coarser contour grid (the test suite's mode)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    args = parser.parse_args(argv)

    name = args.function
    start, steps, _, _, _ = VIEWS[name]
    (x_min, y_min), *_ = landscapes.MINIMA[name][0]
    print(f"{name}: start {start}, {steps} steps, "
          f"minimum {landscapes.MINIMA[name][1]:.4g} at ({x_min:.4g}, {y_min:.4g})")
    paths = run(name)
    f = landscapes.FUNCTIONS[name]
    for opt, (lr, path) in paths.items():
        end = path[-1]
        f_end = float(f(end))
        print(f"{opt:9s} lr {lr:<6g} end ({end[0]: .4f}, {end[1]: .4f})  f {f_end:.4g}")
    print(f"saved {plot(name, paths, args.out, n=80 if args.quick else 300)}")
    return paths


if __name__ == "__main__":
    main()
