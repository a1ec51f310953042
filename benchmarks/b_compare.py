"""Workload (b): the book's 4-optimizer comparison end to end, compilation included, each
implementation in a fresh process (child.py runs ``RUN[impl]``).

Every implementation trains the same initial weights with each optimizer on the same batches
(drawn with replacement, as the book's ``np.random.choice``): jaxscratch and the JAX peers draw
them from the same key inside the timed span, the NumPy peer reads them precomputed.
"""
from __future__ import annotations

import numpy as np

from common import e2e_section, mlp_flops, params_from, process_table, run_children, save_params

IMPLS = ["jaxscratch", "optax-scan", "optax-loop", "numpy"]
GPU_IMPLS = ["jaxscratch", "optax-scan"]


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
            runner = optax_peer.loop_runner(opt) if style == "loop" else optax_peer.scan_runner(opt)
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
    names, iters, repeats = cfg["b_optimizers"], cfg["b_iterations"], cfg["e2e_repeats"]
    key_init, key_batches = jax.random.split(jax.random.key(0))  # as examples/optimizer_comparison.py
    prep = {"x": ds.x_train, "y": ds.y_train, "key": np.asarray(jax.random.key_data(key_batches)),
            "batches": np.asarray(jax.random.randint(key_batches, (iters, STEP_BATCH), 0, len(ds.x_train))),
            "iterations": iters, "batch_size": STEP_BATCH, "names": np.asarray(names)}
    save_params("p", [nn.init_mlp(key_init, STEP_SIZES)], prep)
    best, works, failed = run_children("b_compare", GPU_IMPLS if cfg["gpu"] else IMPLS, prep, tmp, repeats, log)
    lines = [f"{len(names)} optimizers ({', '.join(names)}, the book's defaults), MLP 784-100x4-10, batch "
             f"{STEP_BATCH}, {iters} iterations each, the same initial weights and batches everywhere; best of "
             f"{repeats} run(s) per implementation, interleaved.", ""]
    final = lambda r: " / ".join(f"{r['result'][n]['last100']:.3f}" for n in names)
    lines += process_table(best, works, failed, "optax-scan", {f"final loss ({'/'.join(names)})": final})
    if "jaxscratch" in best:
        ref = best["jaxscratch"]["result"]
        diff = lambda r, n: np.abs(np.asarray(r["result"][n]["first"]) - ref[n]["first"]).max()
        lines += ["", "Equivalence, max |loss difference| from jaxscratch over the first 20 steps: " + "; ".join(
            f"{impl} " + ", ".join(f"{n} {diff(r, n):.1e}" for n in names)
            for impl, r in best.items() if impl != "jaxscratch"),
                  "(SGD and Momentum agree to rounding; AdaGrad and Adam start from a zero accumulator, so rounding "
                  "in near-zero gradients grows within a few steps, and optax's AdaGrad and the book's Adam differ "
                  "slightly in form: (a) checks the arithmetic tightly.)"]
    flops = len(names) * iters * mlp_flops(STEP_SIZES, STEP_BATCH)["needed"]
    return e2e_section("(b) 4-optimizer comparison, end to end", lines, best, {k: flops for k in best})
