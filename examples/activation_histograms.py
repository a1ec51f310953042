"""Chapter 6: histograms of hidden-layer activations for four weight scales (Figures 6-10 to 6-14).

    python examples/activation_histograms.py [--quick] [--out figures]

The book's experiment, no training and no data set: 1,000 Gaussian inputs ``randn(1000, 100)``
go through 5 layers of 100 units, weights ``std * randn(100, 100)`` with std 1, 0.01, Xavier
``sqrt(1/100)`` and He ``sqrt(2/100)``, no biases, for sigmoid, tanh and ReLU. Every combination
uses the same inputs and the same Gaussian draws, only scaled. Writes one 4x5 grid
(rows = init, columns = layers) per activation: figures/activation_histograms_<activation>.png.
Each row shares its x range, so shrinking or exploding activations show across the layers.
Prints, per activation and init, the std of each layer's activations and the fraction that is
saturated (sigmoid within 0.01 of 0 or 1, tanh within 0.01 of -1 or 1: gradient nearly 0)
or exactly zero (ReLU). No data set is read (there is no --dataset option). Expected output
(about 10 s on a 2-core CPU, mostly drawing; --quick prints the same numbers, smaller PNGs):

    activation init                              std of layers 1..5  saturated/zero
    sigmoid    1          0.459    0.436    0.433    0.435    0.437          51.4%
    sigmoid    0.01      0.0251   0.0113   0.0112    0.012   0.0136           0.0%
    sigmoid    xavier     0.209    0.117     0.11    0.117    0.127           0.0%
    sigmoid    he         0.262    0.165    0.153    0.162    0.171           0.0%
    tanh       1          0.959    0.958    0.957    0.958    0.958          78.5%
    tanh       0.01      0.0997  0.00989 0.000974 9.91e-05 1.01e-05           0.0%
    tanh       xavier     0.629    0.484    0.402    0.358    0.325           0.2%
    tanh       he         0.722    0.632     0.59    0.579    0.571           1.6%
    relu       1           5.91     40.2      268 2.01e+03 1.57e+04          48.4%
    relu       0.01      0.0591  0.00402 0.000268 2.01e-05 1.57e-06          48.4%
    relu       xavier     0.591    0.402    0.268    0.201    0.157          48.4%
    relu       he         0.836    0.803    0.759    0.806     0.89          48.4%
    saved figures/activation_histograms_sigmoid.png
    saved figures/activation_histograms_tanh.png
    saved figures/activation_histograms_relu.png

Std 1 pushes sigmoid and tanh into their flat ends (vanishing gradients); std 0.01 collapses
sigmoid to 0.5 and tanh and ReLU towards 0 (every unit alike: no expressive power); Xavier
keeps sigmoid and tanh spread out; with ReLU, Xavier shrinks layer by layer (std x0.71 per
layer) while He keeps the scale. ReLU is homogeneous, so its rows differ only in scale.
"""
import argparse
import os

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
import numpy as np  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import nn  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

SAMPLES, WIDTH, LAYERS = 1000, 100, 5      # the book's randn(1000, 100) through 5 x 100 units
INITS = (1.0, 0.01, "xavier", "he")        # the book's four scales (Figures 6-10 to 6-14)
ACTIVATION_NAMES = ("sigmoid", "tanh", "relu")
SATURATION = 0.01                          # sigmoid/tanh this close to an asymptote: gradient < ~1%
BINS = 30                                  # the book's hist(bins=30)
SEED = 0


def forward(activation: str, weight_init, x, keys) -> list:
    """Activations of each layer, ``(SAMPLES, WIDTH)`` each: z = act(z @ (std * randn))."""
    act = nn.ACTIVATIONS[activation]
    std = nn.weight_scale(weight_init, WIDTH)
    zs = []
    for k in keys:
        x = act(x @ (std * jax.random.normal(k, (WIDTH, WIDTH))))  # (SAMPLES, WIDTH)
        zs.append(np.asarray(x))
    return zs


def saturated(activation: str, zs) -> float:
    """Fraction of all activations saturated (sigmoid, tanh) or exactly zero (ReLU)."""
    z = np.stack(zs)
    if activation == "sigmoid":
        return float(np.mean((z < SATURATION) | (z > 1 - SATURATION)))
    if activation == "tanh":
        return float(np.mean(np.abs(z) > 1 - SATURATION))
    return float(np.mean(z == 0))


def label(weight_init) -> str:
    if isinstance(weight_init, str):
        return {"xavier": "Xavier sqrt(1/n)", "he": "He sqrt(2/n)"}[weight_init]
    return f"std {weight_init:g}"


def save_figure(activation: str, runs: dict, path: str, dpi: int) -> str:
    """4 rows (inits) x 5 columns (layers); each row shares its x range."""
    fig, axes = plt.subplots(len(runs), LAYERS, figsize=(14, 2.3 * len(runs)), sharey="row")
    for row, (weight_init, zs) in zip(axes, runs.items()):
        # ReLU: about half the values are exactly 0; leaving them out shows the rest (the book
        # clips the y axis instead). Its row ends at the 99th percentile of the widest layer.
        shown = [z[z > 0] if activation == "relu" else z.ravel() for z in zs]
        lo, hi = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}.get(
            activation, (0.0, max(float(np.percentile(v, 99)) for v in shown)))
        for layer, (ax, z, v) in enumerate(zip(row, zs, shown), 1):
            counts, edges = np.histogram(v, bins=BINS, range=(lo, hi))
            ax.stairs(counts, edges, fill=True, color="tab:blue")  # ax.hist's look, far faster
            ax.set_title(f"layer {layer}  (std {z.std():.2g})", fontsize=9)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel(f"{label(weight_init)}\ncount", fontsize=9)
    fig.suptitle(f"{activation}: activations of 5 layers x {WIDTH} units on randn({SAMPLES}, {WIDTH})"
                 + (" (zeros, about half, left out)" if activation == "relu" else ""))
    fig.subplots_adjust(left=0.07, right=0.99, top=0.92, bottom=0.04, wspace=0.15, hspace=0.45)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lower-resolution figures (for the tests)")
    parser.add_argument("--out", default="figures", help="folder for the PNGs (default: figures)")
    args = parser.parse_args(argv)

    key_x, key_w = jax.random.split(jax.random.key(SEED))
    x = jax.random.normal(key_x, (SAMPLES, WIDTH))  # (1000, 100)
    keys = jax.random.split(key_w, LAYERS)  # the same draws for every init: only the scale differs
    os.makedirs(args.out, exist_ok=True)
    print(f"{'activation':10s} {'init':7s} {'std of layers 1..' + str(LAYERS):>44s}  saturated/zero")
    results = {}
    for activation in ACTIVATION_NAMES:
        results[activation] = {w: forward(activation, w, x, keys) for w in INITS}
        for weight_init, zs in results[activation].items():
            stds = " ".join(f"{z.std():8.3g}" for z in zs)
            name = weight_init if isinstance(weight_init, str) else f"{weight_init:g}"
            print(f"{activation:10s} {name:7s} {stds}  {100 * saturated(activation, zs):12.1f}%")
    for activation, runs in results.items():
        path = os.path.join(args.out, f"activation_histograms_{activation}.png")
        print(f"saved {save_figure(activation, runs, path, dpi=60 if args.quick else 100)}")
    return results


if __name__ == "__main__":
    main()
