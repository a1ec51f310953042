"""Chapter 4: gradient descent on f(x0, x1) = x0^2 + x1^2 from (-3, 4).

    python examples/gradient_descent.py [--quick] [--out figures] [--no-plot]

Each step is x <- x - lr * grad f(x) = (1 - 2 lr) x, so with lr 0.1 the point shrinks by
0.8 per step and ends at (-3, 4) * 0.8^20. Expected output (float32):

    step   0  x (-3.0000, 4.0000)  f 25
    step   5  x (-0.9830, 1.3107)  f 2.684
    ...
    step  20  x (-0.0346, 0.0461)  f 0.003323
    lr 10:     x (-1.128e+26, 1.504e+26)  diverges: each step multiplies x by 1 - 2*10 = -19
    lr 1e-10:  x (-3.0000, 4.0000)  barely moves (in float32 not at all: the step is below an ulp)
    saved figures/gradient_descent.png

then, on a terminal (or with --plot), f per step drawn in text (the seed's print_graph).

(The book prints (-2.58e13, -1.29e12) for lr 10 because its numerical gradient breaks down
at such sizes; jax.grad is exact.) The figure needs matplotlib and is skipped without it.
"""
import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

import jaxscratch
from jaxscratch import landscapes, plot

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

START = (-3.0, 4.0)  # the book's init_x
LEARNING_RATE = 0.1  # the book's lr; 10 and 1e-10 show too large and too small
STEPS = 20  # the book's step_num
PRINT_EVERY = 5


def fmt(x) -> str:
    return f"({x[0]:.4f}, {x[1]:.4f})" if np.abs(x).max() < 1e4 else f"({x[0]:.4g}, {x[1]:.4g})"


def save_figure(path: np.ndarray, out: str, n: int) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no figure (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, Y, Z = landscapes.grid(landscapes.sphere, (-4.5, 4.5), (-4.5, 4.5), n)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.contour(X, Y, Z, levels=12, colors="0.7", linewidths=0.8)
    ax.plot(path[:, 0], path[:, 1], "o-", color="tab:blue", markersize=4, label=f"lr {LEARNING_RATE}")
    ax.plot(0, 0, "+", color="black", markersize=12)
    ax.set(xlabel="x0", ylabel="x1", title="Gradient descent on $x_0^2 + x_1^2$", aspect="equal")
    ax.legend()
    os.makedirs(out, exist_ok=True)
    file = os.path.join(out, "gradient_descent.png")
    fig.savefig(file, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {file}")


def main(argv=None) -> np.ndarray:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coarser contour grid (the test suite's mode)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                        help="draw f per step in the terminal (default: when stdout is a terminal)")
    args = parser.parse_args(argv)

    x0 = jnp.array(START)
    path = np.asarray(landscapes.gradient_descent(landscapes.sphere, x0, LEARNING_RATE, STEPS))  # (21, 2)
    f = np.sum(path**2, axis=1)
    for step in range(0, STEPS + 1, PRINT_EVERY):
        print(f"step {step:3d}  x {fmt(path[step])}  f {f[step]:.4g}")

    for lr, verdict in [(10.0, "diverges: each step multiplies x by 1 - 2*10 = -19"),
                        (1e-10, "barely moves (in float32 not at all: the step is below an ulp)")]:
        end = np.asarray(landscapes.gradient_descent(landscapes.sphere, x0, lr, STEPS))[-1]
        print(f"{f'lr {lr:g}:':10s} x {fmt(end)}  {verdict}")

    save_figure(path, args.out, n=60 if args.quick else 200)
    if args.plot if args.plot is not None else sys.stdout.isatty():
        print("\n".join(plot.text_plot({f"f(x) per step, lr {LEARNING_RATE}": f}, title="gradient descent")))
    return path


if __name__ == "__main__":
    main()
