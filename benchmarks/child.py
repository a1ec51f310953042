"""One implementation of one end-to-end workload, in a fresh interpreter (run by bench.py).

    python benchmarks/child.py WORKLOAD IMPL PREP.npz REPORT.json

WORKLOAD is ``compare`` (b), ``search`` (c) or ``bngrid`` (d); IMPL one of IMPLS[WORKLOAD].
Two more serve (e): ``cli jaxscratch EPOCHS:OUT:DATADIR`` runs ``jaxscratch train`` in this
process with timers around its phases, and ``fit jaxscratch EPOCHS:-:DATADIR`` measures the
compilation inside one ``train.fit`` (DATADIR empty: wherever jaxscratch finds Fashion-MNIST). PREP.npz holds the inputs every implementation shares (data, initial weights, hyperparameters,
the PRNG key, and the mini-batch indices drawn from it), written by bench.py. jaxscratch and the
optax peers draw their mini-batches themselves from the key, inside the timed span, with the same
draws; the NumPy peer reads the indices (drawing them with NumPy's generator costs milliseconds,
but could not reproduce JAX's numbers). The timed span ("work") starts once the modules are
imported and PREP is loaded into NumPy arrays and ends when the results are NumPy arrays on the
host: it includes moving data to the device, tracing and compiling. The process wall time
(interpreter start to exit) is measured by the parent. The NumPy implementation never imports
JAX. The report also gives the compile time (JAX's own compile events: tracing, lowering and
XLA compilation) and persistent-cache hits.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IMPLS = {
    "compare": ["jaxscratch", "optax-scan", "optax-loop", "numpy"],
    "search": ["jaxscratch-search", "jaxscratch-halving", "optax-serial", "numpy-serial", "numpy-halving"],
    "bngrid": ["jaxscratch", "optax-serial", "numpy-serial"],
    "cli": ["jaxscratch"],
    "fit": ["jaxscratch"],
}
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def params_from(prep, prefix: str, index=None, scale=None) -> list[dict]:
    """The parameter list stored as ``{prefix}{layer}_{name}`` arrays (optionally ``[index]``, ``* scale``)."""
    layers = []
    i = 0
    while f"{prefix}{i}_w" in prep:
        layer = {}
        for name in ("w", "b", "gamma", "beta"):
            key = f"{prefix}{i}_{name}"
            if key in prep:
                a = prep[key] if index is None else prep[key][index]
                layer[name] = a * np.float32(scale) if (scale is not None and name == "w") else a
        layers.append(layer)
        i += 1
    return layers


# ----------------------------------------------------------------- (b) optimizer comparison
def compare(impl, p):
    names = [str(n) for n in p["names"]]
    params = params_from(p, "p")
    if impl == "numpy":
        import numpy_peer
        return numpy_peer.compare_optimizers(params, p["x"], p["y"], p["batches"], names)
    if impl.startswith("optax"):
        import jax
        import optax_peer
        return optax_peer.compare_optimizers(names, params, p["x"], p["y"], jax.random.wrap_key_data(p["batch_key"]),
                                             int(p["iterations"]), int(p["batch_size"]), impl.split("-")[1])
    import jax
    from jaxscratch import optim, sweep
    res = sweep.compare_optimizers(jax.random.wrap_key_data(p["batch_key"]), {n: optim.OPTIMIZERS[n]() for n in names},
                                   params, p["x"], p["y"], iterations=int(p["iterations"]), batch_size=int(p["batch_size"]))
    return {n: res[n][1] for n in names}


def compare_summary(out):
    return {n: {"first": np.asarray(v[:20], np.float64).tolist(), "last100": float(np.mean(v[-100:]))}
            for n, v in out.items()}


# ----------------------------------------------------------------- (c) hyperparameter search
def search(impl, p):
    lrs, wds = p["lrs"], p["wds"]
    data = (p["xt"], p["yt"], p["xv"], p["yv"])
    if impl.startswith("numpy"):
        import numpy_peer
        inits = lambda i: params_from(p, "p", i)
        if impl == "numpy-halving":
            best, acc, spent, rungs = numpy_peer.successive_halving(
                inits, lrs, wds, *data, p["batches"], max_epochs=int(p["epochs"]),
                min_epochs=int(p["min_epochs"]), eta=int(p["eta"]))
            return {"winner": best, "winner_val_acc": acc, "epochs_trained": spent, "rungs": rungs}
        val, _ = numpy_peer.search(inits, lrs, wds, *data, p["batches"])
        return _ranked(val[:, -1])
    if impl == "optax-serial":
        import optax_peer
        val, _ = optax_peer.search(lambda i: params_from(p, "p", i), _trial_keys(p["key"], len(lrs)), lrs, wds, *data,
                                   epochs=int(p["epochs"]), batch_size=int(p["batch_size"]))
        return _ranked(val[:, -1])
    import jax
    from jaxscratch import sweep
    spec = sweep.Spec(sizes=tuple(int(s) for s in p["sizes"]), optimizer="sgd", batch_size=int(p["batch_size"]))
    ranges = {"learning_rate": tuple(p["lr_range"]), "weight_decay": tuple(p["wd_range"])}
    key = jax.random.wrap_key_data(p["key"])
    if impl == "jaxscratch-search":
        trials, rows = sweep.random_search(key, spec, ranges, data[:2], data[2:], n_trials=len(lrs), epochs=int(p["epochs"]))
        out = _ranked(trials.history["val_acc"][:, -1])
        out["lrs"] = np.asarray(trials.hparams["learning_rate"]).tolist()
        out["table_winner"] = rows[0]["trial"]
        return out
    trials, rows, summary = sweep.successive_halving(key, spec, ranges, data[:2], data[2:], n_trials=len(lrs),
                                                     max_epochs=int(p["epochs"]), min_epochs=int(p["min_epochs"]),
                                                     eta=int(p["eta"]))
    return {"winner": int(rows[0]["seed"]), "winner_val_acc": float(rows[0]["val_acc"]),
            "epochs_trained": summary["epochs_trained"], "rungs": [(r["epochs"], r["trials"]) for r in summary["rungs"]]}


def _trial_keys(key_data, n):
    """Trial ``i``'s key, ``fold_in(key, i)``: what jaxscratch's sweeps give trial ``i`` (seed ``i``)."""
    import jax
    key = jax.random.wrap_key_data(key_data)
    return [jax.random.fold_in(key, i) for i in range(n)]


def _ranked(final_val):
    final_val = np.asarray(final_val, np.float64)
    winner = int(np.argsort(-final_val, kind="stable")[0])  # ties: the lower trial index, as sweep.table
    return {"winner": winner, "winner_val_acc": float(final_val[winner]), "final_val_acc": final_val.tolist()}


# ----------------------------------------------------------------- (d) batch-norm grid
def bngrid(impl, p):
    scales, lr = p["scales"], float(p["lr"])
    out = {}
    for variant in ("bn", "plain"):
        if impl == "numpy-serial":
            import numpy_peer
            acc = numpy_peer.batchnorm_grid(lambda i: params_from(p, variant, i, scales[i]), p["x"], p["y"], p["batches"], lr)
        elif impl == "optax-serial":
            import optax_peer
            acc = optax_peer.batchnorm_grid(lambda i: params_from(p, variant, i, scales[i]), _trial_keys(p["key"], len(scales)),
                                            p["x"], p["y"], lr, epochs=int(p["epochs"]), batch_size=int(p["batch_size"]))
        else:
            import jax
            from jaxscratch import sweep
            spec = sweep.Spec(sizes=tuple(int(s) for s in p["sizes"]), optimizer="sgd", batchnorm=variant == "bn",
                              batch_size=int(p["batch_size"]), sampling="replacement")
            trials = sweep.run_trials(jax.random.wrap_key_data(p["key"]), spec,
                                      {"learning_rate": [lr] * len(scales), "init_scale": scales},
                                      (p["x"], p["y"]), epochs=int(p["epochs"]))
            acc = trials.history["train_acc"]
        out[variant] = np.asarray(acc, np.float64).tolist()
    return out


# ----------------------------------------------------------------- (e) phases of `jaxscratch train`, compile of fit
def _timed(fn, name, timers, hook=None):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - start
            timers[name] = timers.get(name, 0.0) + dt
            if hook is not None:
                hook(dt)
    return wrapper


def cli(arg):
    """``jaxscratch train`` on Fashion-MNIST with timers patched around its phases (module attributes,
    looked up at call time, so the command runs unchanged)."""
    epochs, out, data_dir = arg.split(":", 2)
    start = time.perf_counter()
    import jax
    from jaxscratch import checkpoint, cli as jcli, train
    timers = {"imports": time.perf_counter() - start}
    in_fit, inside = [False], {"compile_in_fit": 0.0, "checkpoint_in_fit": 0.0, "compile_total": 0.0}

    def on_duration(event, duration, **_):
        if event in COMPILE_EVENTS:
            inside["compile_total"] += duration
            if in_fit[0]:
                inside["compile_in_fit"] += duration

    def ckpt_hook(dt):
        if in_fit[0]:
            inside["checkpoint_in_fit"] += dt

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    for mod, attr, name in ((jcli, "load_data", "data"), (jcli, "_maybe_figure", "plot"), (jcli, "_write_json", "json")):
        if hasattr(mod, attr):
            setattr(mod, attr, _timed(getattr(mod, attr), name, timers))
    checkpoint.save = _timed(checkpoint.save, "checkpoint", timers, ckpt_hook)
    fit = train.fit

    def timed_fit(*args, **kwargs):
        in_fit[0] = True
        try:
            return fit(*args, **kwargs)
        finally:
            in_fit[0] = False

    train.fit = _timed(timed_fit, "fit", timers)
    rc = jcli.main(["train", "--dataset", "fashion-mnist", "--epochs", epochs, "--out", out, "--quiet"]
                   + (["--dataset-dir", data_dir] if data_dir else []))
    if rc:
        raise SystemExit(f"jaxscratch train exited with {rc}")
    timers["total"] = time.perf_counter() - start
    for k in ("data", "plot", "json", "checkpoint", "fit"):
        timers.setdefault(k, float("nan"))
    return dict(timers, **inside)


def fit(arg):
    """Compile time inside one ``train.fit`` (cli defaults, Fashion-MNIST), fresh process."""
    import jax
    from jaxscratch import data, nn, optim, train
    epochs, _, data_dir = arg.split(":", 2)
    ds = data.load_fashion_mnist(data_dir or None)
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    model = nn.mlp_model((784, 100, 100, 10))  # model.init(key) is nn.init_mlp(key, sizes): the cli's weights
    seconds, programs = [0.0], {}

    def on_duration(event, duration, fun_name="?", **_):
        if event in COMPILE_EVENTS:
            seconds[0] += duration
            programs[fun_name] = programs.get(fun_name, 0.0) + duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    start = time.perf_counter()
    res = train.fit(jax.random.key(0), model, optim.adam(), (xt, yt), epochs=int(epochs), batch_size=100,
                    validation=(xv, yv), test=(ds.x_test, ds.y_test), verbose=False)
    return {"compile_in_fit": seconds[0], "fit_s": time.perf_counter() - start,
            "epoch_times": np.asarray(res.history["time"]).tolist(),
            "programs": dict(sorted(programs.items(), key=lambda kv: -kv[1]))}


# ----------------------------------------------------------------- main
def main(workload, impl, prep_path, report_path):
    if workload not in IMPLS or impl not in IMPLS[workload]:
        raise SystemExit(f"unknown workload/implementation {workload}/{impl}")
    if workload in ("cli", "fit"):
        start = time.perf_counter()
        result = globals()[workload](prep_path)
        with open(report_path, "w") as f:
            json.dump({"work_s": time.perf_counter() - start, "compile_s": None, "result": result}, f)
        return
    compile_s, cache_hits, programs = [0.0], [0], {}
    if not impl.startswith("numpy"):
        import jax

        def on_duration(event, duration, fun_name="?", **_):
            if event in COMPILE_EVENTS:
                compile_s[0] += duration
                programs[fun_name] = programs.get(fun_name, 0.0) + duration

        def on_event(event, **_):
            if event == "/jax/compilation_cache/cache_hits":
                cache_hits[0] += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)
        if impl.startswith("jaxscratch"):
            import jaxscratch  # noqa: F401  (imported before the clock starts, as the peers' modules)
        else:
            import optax  # noqa: F401
            import optax_peer  # noqa: F401
    else:
        import numpy_peer  # noqa: F401
    with np.load(prep_path) as f:
        prep = {k: f[k] for k in f.files}
    start = time.perf_counter()
    result = globals()[workload](impl, prep)
    work = time.perf_counter() - start
    if workload == "compare":
        result = compare_summary(result)
    report = {"work_s": work, "compile_s": None if impl.startswith("numpy") else compile_s[0],
              "cache_hits": cache_hits[0], "result": result, "jax_loaded": "jax" in sys.modules,
              "programs": dict(sorted(programs.items(), key=lambda kv: -kv[1])[:5])}
    with open(report_path, "w") as f:
        json.dump(report, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


if __name__ == "__main__":
    main(*sys.argv[1:5])
