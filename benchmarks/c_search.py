"""Workload (c): the book's 100-trial hyperparameter search, and successive halving, end to end,
each implementation in a fresh process (child.py runs ``RUN[impl]``).

The book's protocol: the first 500 Fashion-MNIST training images (400 train / 100 validation),
MLP 784-[100 x6]-10, SGD, batch 100, lr = 10^U(-6,-2), weight decay = 10^U(-8,-4), train and
validation accuracy after every epoch, trials ranked by final validation accuracy. Every
implementation gets the same sampled hyperparameters, initial weights and batches (trial ``i``
draws epoch ``e``'s permutation from ``fold_in(fold_in(fold_in(key, i), 0), e)``, as jaxscratch).
"""
from __future__ import annotations

import numpy as np

from common import e2e_section, epoch_flops, params_from, process_table, run_children, save_params

IMPLS = ["jaxscratch-search", "jaxscratch-halving", "optax-serial", "numpy-serial", "numpy-halving"]
GPU_IMPLS = ["jaxscratch-search", "optax-serial"]
SIZES = (784,) + (100,) * 6 + (10,)
RANGES = {"learning_rate": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}


# ----------------------------------------------------------------- the implementations (in the child)
def _jaxscratch(halving):
    def run(p):
        import jax
        from jaxscratch import sweep
        spec = sweep.Spec(sizes=SIZES, optimizer="sgd", batch_size=100)
        key, n, sets = jax.random.wrap_key_data(p["key"]), len(p["lrs"]), ((p["xt"], p["yt"]), (p["xv"], p["yv"]))
        if not halving:  # all trials vmapped at once on an accelerator, in groups per CPU core on a CPU
            trials, _ = sweep.random_search(key, spec, RANGES, *sets, n_trials=n, epochs=int(p["epochs"]))
            return dict(_ranked(trials.history["val_acc"][:, -1]), lrs=np.asarray(trials.hparams["learning_rate"]))
        _, rows, summary = sweep.successive_halving(key, spec, RANGES, *sets, n_trials=n, max_epochs=int(p["epochs"]),
                                                    min_epochs=int(p["min_epochs"]), eta=3)
        return {"winner": int(rows[0]["seed"]), "winner_val_acc": float(rows[0]["val_acc"]),
                "epochs_trained": summary["epochs_trained"]}
    return run


def _optax_serial(p):
    """The same trials one after another: one compiled trial program (lr, wd traced) called per trial."""
    import jax
    import jax.numpy as jnp
    import optax_peer
    key = jax.random.wrap_key_data(p["key"])
    xt, yt, xv, yv = (jnp.asarray(p[k]) for k in ("xt", "yt", "xv", "yv"))
    evals = {"train": (xt, yt), "val": (xv, yv)}
    results = [optax_peer.train_trial(params_from(p, "p", i), jnp.float32(p["lrs"][i]), jnp.float32(p["wds"][i]),
                                      jax.random.fold_in(key, i), xt, yt, evals, epochs=int(p["epochs"]),
                                      batch_size=100, replace=False)[1]
               for i in range(len(p["lrs"]))]  # dispatched asynchronously
    return _ranked(np.asarray([r["val"][-1] for r in jax.device_get(results)]))


def _numpy(halving):
    def run(p):
        """The book's serial search (each trial trained then evaluated, epoch by epoch); halving: the
        same rung schedule as jaxscratch (min_epochs * 3**i epochs, keep the best third)."""
        import numpy_peer
        n, epochs, data = len(p["lrs"]), int(p["epochs"]), {"train": (p["xt"], p["yt"]), "val": (p["xv"], p["yv"])}
        nets = [numpy_peer.MultiLayerNet(params_from(p, "p", i), weight_decay=p["wds"][i]) for i in range(n)]
        opts = [numpy_peer.SGD(p["lrs"][i]) for i in range(n)]
        val, alive, done, budget, spent = np.zeros((n, epochs)), list(range(n)), 0, int(p["min_epochs"]), 0
        budget = budget if halving else epochs
        while True:
            budget = min(budget, epochs)
            for i in alive:
                h = numpy_peer.train_epochs(nets[i], opts[i], p["xt"], p["yt"], p["batches"][i][done:budget], data)
                val[i, done:budget] = h["val"]
            spent, done = spent + (budget - done) * len(alive), budget
            if budget >= epochs or len(alive) == 1:
                break
            keep = -(-len(alive) // 3)  # ceil(alive / eta)
            alive = sorted(alive, key=lambda i: -val[i, done - 1])[:keep]  # stable: ties keep their order
            budget *= 3
        if not halving:
            return _ranked(val[:, -1])
        best = max(alive, key=lambda i: (val[i, done - 1], -alive.index(i)))
        return {"winner": best, "winner_val_acc": float(val[best, done - 1]), "epochs_trained": spent}
    return run


def _ranked(final_val):
    final_val = np.asarray(final_val, np.float64)
    winner = int(np.argsort(-final_val, kind="stable")[0])  # ties: the lower trial index, as sweep.table
    return {"winner": winner, "winner_val_acc": float(final_val[winner]), "final_val_acc": final_val.tolist()}


RUN = {"jaxscratch-search": _jaxscratch(False), "jaxscratch-halving": _jaxscratch(True), "optax-serial": _optax_serial,
       "numpy-serial": _numpy(False), "numpy-halving": _numpy(True)}


# ----------------------------------------------------------------- prep, runs, checks (in the parent)
def epoch_batches(keys, n, batch, epochs, replace):
    """Batch indices (T, epochs, steps, batch) as jaxscratch draws them for trial keys ``keys``."""
    import jax
    import jax.numpy as jnp
    from jaxscratch import data
    one = lambda k, e: data.epoch_indices(jax.random.fold_in(jax.random.fold_in(k, 0), e), n, batch, replace=replace)
    return np.asarray(jax.vmap(lambda k: jax.vmap(lambda e: one(k, e))(jnp.arange(epochs)))(keys))


def search(ds, cfg, tmp, log) -> dict:
    import jax
    import jax.numpy as jnp
    from jaxscratch import data, nn
    T, E = cfg["c_trials"], cfg["c_epochs"]
    xt, yt, xv, yv = data.train_val_split(ds.x_train[:500], ds.y_train[:500], 0.2, seed=0)
    key = jax.random.key(0)
    hp_key = jax.random.fold_in(key, 1)  # sweep.random_search's sampling: 10 ** U(log10 lo, log10 hi), sorted names
    lr, wd = (10.0 ** jax.random.uniform(jax.random.fold_in(hp_key, i), (T,), minval=np.log10(lo), maxval=np.log10(hi))
              for i, (lo, hi) in enumerate(RANGES[k] for k in sorted(RANGES)))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(T))
    prep = {"xt": xt, "yt": yt, "xv": xv, "yv": yv, "lrs": np.asarray(lr), "wds": np.asarray(wd), "epochs": E,
            "batches": epoch_batches(keys, len(xt), 100, E, False), "min_epochs": cfg["c_min_epochs"],
            "key": np.asarray(jax.random.key_data(key))}
    save_params("p", [nn.init_mlp(keys[i], SIZES) for i in range(T)], prep)
    best, works, failed = run_children("c_search", GPU_IMPLS if cfg["gpu"] else IMPLS, prep, tmp, cfg["c_repeats"], log)
    lines = [f"{T} trials, {E} epochs; halving: min {cfg['c_min_epochs']} epochs, eta 3 (jaxscratch's schedule, run "
             f"serially in NumPy too). {cfg['c_repeats']} run(s) per implementation.", ""]
    lines += process_table(best, works, failed, "optax-serial", {
        "winner (val acc)": lambda r: f"trial {r['result']['winner']}: {100 * r['result']['winner_val_acc']:.0f}%",
        "epochs trained": lambda r: str(r["result"].get("epochs_trained", T * E))})
    if "jaxscratch-search" in best:
        ref = np.asarray(best["jaxscratch-search"]["result"]["final_val_acc"])
        same = np.allclose(best["jaxscratch-search"]["result"]["lrs"], prep["lrs"], rtol=1e-6)
        diffs = {k: np.asarray(best[k]["result"]["final_val_acc"]) - ref for k in ("optax-serial", "numpy-serial")
                 if k in best}
        agree = "; ".join(f"{k}: max |difference| {np.abs(d).max():.3f}, equal in {np.mean(np.abs(d) < 1e-6):.0%} "
                          "of trials" for k, d in diffs.items())
        lines += ["", f"Equivalence: jaxscratch sampled the peers' hyperparameters: {same}. Final validation accuracy "
                      f"per trial against jaxscratch's: {agree or 'no peer ran'}."]
    per_epoch = epoch_flops(SIZES, 100, len(xt) // 100, len(xt) + len(xv))  # train and validation accuracy
    flops = {k: per_epoch * r["result"].get("epochs_trained", T * E) for k, r in best.items()}
    return e2e_section("(c) Hyperparameter search and successive halving, end to end", lines, best, flops,
                       winner_val_acc={k: v["result"]["winner_val_acc"] for k, v in best.items()})
