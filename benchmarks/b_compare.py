"""Workload (b): the book's 4-optimizer comparison end to end, compilation included, each
implementation in a fresh process (child.py runs ``RUN[impl]``).

Every implementation trains the same initial weights with each optimizer on the same batches
(drawn with replacement, as the book's ``np.random.choice``): jaxscratch and the JAX peers draw
them from the same key inside the timed span, the NumPy peer reads them precomputed.
"""
from __future__ import annotations

import os

import numpy as np

from common import WORK_NOTE, metrics_of, mlp_flops, process_table, run_children, section

IMPLS = ["jaxscratch", "optax-scan", "optax-loop", "numpy"]
GPU_IMPLS = ["jaxscratch", "optax-scan"]


def params_from(p, prefix, index=None, scale=None) -> list[dict]:
    """The parameter list stored as ``{prefix}{layer}_{name}`` arrays (row ``index``, weights ``* scale``)."""
    layers, i = [], 0
    while f"{prefix}{i}_w" in p:
        layer = {n: p[f"{prefix}{i}_{n}"] if index is None else p[f"{prefix}{i}_{n}"][index]
                 for n in ("w", "b", "gamma", "beta") if f"{prefix}{i}_{n}" in p}
        if scale is not None:
            layer["w"] = layer["w"] * np.float32(scale)
        layers.append(layer)
        i += 1
    return layers


def save_params(prefix, params_list, out: dict) -> None:
    """Parameter lists (one per trial) stacked as ``{prefix}{layer}_{name}`` arrays (T, ...)."""
    for i, layer in enumerate(params_list[0]):
        for name in layer:
            out[f"{prefix}{i}_{name}"] = np.stack([np.asarray(p[i][name]) for p in params_list])


# ----------------------------------------------------------------- the implementations (in the child)
def _jaxscratch(p):
    import jax
    from jaxscratch import optim, sweep
    names = [str(n) for n in p["names"]]
    res = sweep.compare_optimizers(jax.random.wrap_key_data(p["key"]), {n: optim.OPTIMIZERS[n]() for n in names},
                                   params_from(p, "p", 0), p["x"], p["y"], iterations=int(p["iterations"]),
                                   batch_size=int(p["batch_size"]))
    return _summary({n: res[n][1] for n in names})


def _optax(style):
    def run(p):
        import jax
        import jax.numpy as jnp
        import optax_peer
        x, y = jnp.asarray(p["x"]), jnp.asarray(p["y"])
        batches = jax.random.randint(jax.random.wrap_key_data(p["key"]), (int(p["iterations"]), int(p["batch_size"])),
                                     0, x.shape[0])  # as jaxscratch draws them
        if style == "loop":
            batches = np.asarray(batches)  # the loop sends each step's indices from the host
        out = {}
        for name in map(str, p["names"]):
            opt = optax_peer.OPTIMIZERS[name]()
            runner = optax_peer.loop_runner(opt)[0] if style == "loop" else optax_peer.scan_runner(opt)
            out[name] = np.asarray(runner(params_from(p, "p", 0), x, y, batches)[1])
        return _summary(out)
    return run


def _numpy(p):
    import numpy_peer
    return _summary({str(n): numpy_peer.run_steps(numpy_peer.MultiLayerNet(params_from(p, "p", 0)),
                                                  numpy_peer.OPTIMIZERS[str(n)](), p["x"], p["y"], p["batches"])
                     for n in p["names"]})


def _summary(losses):
    return {n: {"first": np.asarray(v[:20], np.float64).tolist(), "last100": float(np.mean(v[-100:]))}
            for n, v in losses.items()}


RUN = {"jaxscratch": _jaxscratch, "optax-scan": _optax("scan"), "optax-loop": _optax("loop"), "numpy": _numpy}


# ----------------------------------------------------------------- prep, runs, checks (in the parent)
def compare(ds, cfg, tmp, log) -> dict:
    import jax
    from a_step import STEP_BATCH, STEP_SIZES
    from jaxscratch import nn
    names, iters = cfg["b_optimizers"], cfg["b_iterations"]
    key_init, key_batches = jax.random.split(jax.random.key(0))  # as examples/optimizer_comparison.py
    prep = {"x": ds.x_train, "y": ds.y_train, "key": np.asarray(jax.random.key_data(key_batches)),
            "batches": np.asarray(jax.random.randint(key_batches, (iters, STEP_BATCH), 0, len(ds.x_train))),
            "iterations": iters, "batch_size": STEP_BATCH, "names": np.asarray(names)}
    save_params("p", [nn.init_mlp(key_init, STEP_SIZES)], prep)
    np.savez(path := os.path.join(tmp, "compare.npz"), **prep)
    best, works, failed = run_children("b_compare", GPU_IMPLS if cfg["gpu"] else IMPLS, path, cfg["e2e_repeats"], log)
    lines = [f"{len(names)} optimizers ({', '.join(names)}, the book's defaults), MLP 784-100x4-10, batch {STEP_BATCH}, "
             f"{iters} iterations each, the same initial weights and batches everywhere; best of {cfg['e2e_repeats']} "
             "run(s) per implementation, interleaved.", ""]
    lines += process_table(best, works, failed, "optax-scan", {"final loss (" + "/".join(names) + ")": lambda r: " / ".join(
        f"{r['result'][n]['last100']:.3f}" for n in names)})
    if "jaxscratch" in best:
        ref = best["jaxscratch"]["result"]
        lines += ["", "Equivalence, max |loss difference| from jaxscratch over the first 20 steps: " + "; ".join(
            f"{impl} " + ", ".join(f"{n} {np.abs(np.asarray(r['result'][n]['first']) - ref[n]['first']).max():.1e}"
                                   for n in names) for impl, r in best.items() if impl != "jaxscratch"),
                  "(SGD and Momentum agree to rounding; AdaGrad and Adam start from a zero accumulator, so rounding in "
                  "near-zero gradients grows within a few steps, and optax's AdaGrad and the book's Adam differ slightly "
                  "in form: (a) checks the arithmetic tightly.)"]
    flops = len(names) * iters * mlp_flops(STEP_SIZES, STEP_BATCH)["needed"]
    return section("(b) 4-optimizer comparison, end to end", lines + ["", WORK_NOTE],
                   metrics_of(best, {k: flops for k in best}))
