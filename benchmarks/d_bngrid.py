"""Workload (d): the book's batch-norm grid end to end, each implementation in a fresh process
(child.py runs ``RUN[impl]``).

The book's protocol: the first 1,000 training images, MLP 784-[100 x5]-10 with and without batch
norm, SGD 0.01, batch 100 drawn with replacement, 10 steps per epoch, 16 weight scales from
logspace(0, -4, 16), train accuracy after every epoch. The same unit-normal initial weights
(times the scale) and the same batches everywhere; scale ``i`` draws epoch ``e``'s batches from
``fold_in(fold_in(fold_in(key, i), 0), e)``, as jaxscratch.
"""
from __future__ import annotations

import numpy as np

from c_search import epoch_batches
from common import e2e_section, epoch_flops, params_from, process_table, run_children, save_params

IMPLS = ["jaxscratch", "optax-serial", "numpy-serial"]
SIZES = (784,) + (100,) * 5 + (10,)


# ----------------------------------------------------------------- the implementations (in the child)
def _jaxscratch(p):  # as examples/batchnorm_grid.py
    import jax
    from jaxscratch import sweep
    out, hparams = {}, {"learning_rate": [float(p["lr"])] * len(p["scales"]), "init_scale": p["scales"]}
    for variant in ("bn", "plain"):
        spec = sweep.Spec(sizes=SIZES, optimizer="sgd", batchnorm=variant == "bn", batch_size=100,
                          sampling="replacement")
        trials = sweep.run_trials(jax.random.wrap_key_data(p["key"]), spec, hparams, (p["x"], p["y"]),
                                  epochs=int(p["epochs"]))
        out[variant] = trials.history["train_acc"]
    return out


def _optax_serial(p):
    """One scale after another: one compiled trial program per variant, called per scale."""
    import jax
    import jax.numpy as jnp
    import optax_peer
    key, x, y = jax.random.wrap_key_data(p["key"]), jnp.asarray(p["x"]), jnp.asarray(p["y"])
    return jax.device_get({variant: [
        optax_peer.train_trial(params_from(p, variant, i, s), jnp.float32(p["lr"]), jnp.float32(0),
                               jax.random.fold_in(key, i), x, y, {"train": (x, y)}, epochs=int(p["epochs"]),
                               batch_size=100, replace=True, wd=False)[1]["train"]
        for i, s in enumerate(p["scales"])] for variant in ("bn", "plain")})


def _numpy_serial(p):
    import numpy_peer
    return {variant: [numpy_peer.train_epochs(numpy_peer.MultiLayerNet(params_from(p, variant, i, s)),
                                              numpy_peer.SGD(float(p["lr"])), p["x"], p["y"], p["batches"][i],
                                              {"train": (p["x"], p["y"])})["train"] for i, s in enumerate(p["scales"])]
            for variant in ("bn", "plain")}


RUN = {"jaxscratch": _jaxscratch, "optax-serial": _optax_serial, "numpy-serial": _numpy_serial}


# ----------------------------------------------------------------- prep, runs, checks (in the parent)
def bngrid(ds, cfg, tmp, log) -> dict:
    import jax
    import jax.numpy as jnp
    from jaxscratch import nn
    E, scales = cfg["d_epochs"], np.logspace(0, -4, 16).astype(np.float32)[:cfg["d_scales"]]
    key = jax.random.key(0)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(scales)))
    prep = {"x": ds.x_train[:1000], "y": ds.y_train[:1000], "scales": scales, "lr": 0.01, "epochs": E,
            "key": np.asarray(jax.random.key_data(key)), "batches": epoch_batches(keys, 1000, 100, E, True)}
    for variant in ("bn", "plain"):  # unit-normal weights; every implementation multiplies them by the scale
        save_params(variant, [nn.init_mlp(k, SIZES, weight_init=1.0, batchnorm=variant == "bn") for k in keys], prep)
    best, works, failed = run_children("d_bngrid", IMPLS, prep, tmp, cfg["e2e_repeats"], log)
    final = {k: {v: np.asarray(r["result"][v])[:, -1] for v in ("bn", "plain")} for k, r in best.items()}
    lines = [f"{len(scales)} weight scales x (BN, plain), {E} epochs; best of {cfg['e2e_repeats']} run(s) per "
             "implementation, interleaved.", ""]

    def wins(r):
        bn, pl = np.asarray(r["result"]["bn"])[:, -1], np.asarray(r["result"]["plain"])[:, -1]
        return f"{int(np.sum(bn > pl))}/{len(bn)}, {100 * pl.mean():.1f}% / {100 * bn.mean():.1f}%"
    lines += process_table(best, works, failed, "optax-serial", {"BN wins, mean final acc plain / BN": wins})
    if "jaxscratch" in final:
        diffs = ", ".join(f"{k} {max(np.abs(f[v] - final['jaxscratch'][v]).max() for v in f):.3f}"
                          for k, f in final.items() if k != "jaxscratch")
        lines += ["", f"Equivalence: max |final train accuracy difference| from jaxscratch over the grid: {diffs} "
                      "(chaotic runs at the extreme scales may differ by rounding)."]
    flops = 2 * len(scales) * E * epoch_flops(SIZES, 100, 10, 1000)  # + train accuracy; BN's few FLOPs left out
    return e2e_section("(d) Batch-norm grid, end to end", lines, best, {k: flops for k in best})
