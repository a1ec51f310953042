"""The process-level workloads of the benchmark (issue 5). Each prepares identical inputs, runs
every implementation in fresh processes, checks that they agree, and returns a section (text
lines and metrics). Workload (a), the training step timed in process, is in step_bench.py.

  (b) compare  the 4-optimizer comparison end to end (compilation included)
  (c) search   the book's 100-trial hyperparameter search, and successive halving
  (d) bngrid   the book's batch-norm grid (16 weight scales x BN / plain)
  (e) train    the whole ``jaxscratch train`` process against a minimal JAX + optax script
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np

from common import (HERE, fashion_mnist_dir, fmt_table, ratio_matrix, run_child, run_process, run_quietly, s, section,
                    write_idx_subset)
from jaxscratch import data, nn
from step_bench import STEP_BATCH, STEP_SIZES


def save_params(prefix, params_list, out: dict, *, stack=True):
    """Parameter lists as ``{prefix}{layer}_{name}`` arrays: stacked (T, ...) over a list of them
    (one per trial), or the one list given as is (``stack=False``)."""
    if not stack:
        params_list = [params_list]
    for i, layer in enumerate(params_list[0]):
        for name in layer:
            arrays = [np.asarray(p[i][name]) for p in params_list]
            out[f"{prefix}{i}_{name}"] = np.stack(arrays) if stack else arrays[0]

# ----------------------------------------------------------------- helpers for the process-level workloads
def _run_children(workload, impls, prep_path, repeats, log):
    """Every implementation ``repeats`` times, interleaved. Returns ``(best, works, failed)``: name ->
    the report of its fastest run (peak RSS: the largest of its runs), name -> all work times, and
    name -> error message for implementations that crashed (they are not run again)."""
    best, works, failed = {}, {k: [] for k in impls}, {}
    for r in range(repeats):
        for impl in impls:
            if impl in failed:
                continue
            try:
                rep, busy = run_quietly(lambda: run_child(workload, impl, prep_path), log)
                rep["contention"] = busy
            except RuntimeError as err:
                failed[impl] = str(err).splitlines()[0][:400]
                log(f"  [{workload}] {impl:20s} FAILED: {failed[impl]}")
                continue
            works[impl].append(rep["work_s"])
            log(f"  [{workload}] {impl:20s} run {r + 1}/{repeats}: work {rep['work_s']:.2f}s "
                f"(compile {s(rep['compile_s'])}s) process {rep['process_s']:.2f}s  rss {rep['maxrss_mib']:.0f} MiB")
            _keep_best(best, impl, rep, "work_s")
            if rep.get("cache_hits"):
                log(f"  note: {impl} hit the persistent compilation cache {rep['cache_hits']} times")
    return {k: best[k] for k in impls if k in best}, works, failed


def _keep_best(best: dict, name: str, rep: dict, time_key: str) -> None:
    """Keep in ``best[name]`` the fastest run by ``time_key``, with the peak RSS of every run."""
    rss = max(rep["maxrss_mib"], best[name]["maxrss_mib"]) if name in best else rep["maxrss_mib"]
    if name not in best or rep[time_key] < best[name][time_key]:
        best[name] = rep
    best[name]["maxrss_mib"] = rss


def _process_table(best, works, failed, extra_cols=None):
    extra_cols = extra_cols or {}
    headers = ["implementation", "work s (best)", "all runs s", "compile s", "process s", "peak RSS MiB"] + list(extra_cols)
    rows = []
    for name, rep in best.items():
        rows.append([name, f"{rep['work_s']:.2f}", " ".join(f"{w:.1f}" for w in works[name]), s(rep["compile_s"]),
                     f"{rep['process_s']:.2f}", f"{rep['maxrss_mib']:.0f}"] + [f(rep) for f in extra_cols.values()])
    lines = fmt_table(headers, rows)
    lines += ["", *[f"FAILED {name}: {msg}" for name, msg in failed.items()]] if failed else []
    lines += ["", "Compile time by program (s; tracing + lowering + XLA, the largest three):"]
    lines += [f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(rep.get("programs", {}).items())[:3])
              for name, rep in best.items() if rep.get("programs")]
    return lines + ["", "Each ratio of work time (row / column; below 1: the row is faster):", ""] + \
        fmt_table(*ratio_matrix({k: v["work_s"] for k, v in best.items()}))


def _timing_note():
    return ("'work': timed inside a fresh process from the moment its inputs are NumPy arrays in memory "
            "(modules imported, shared inputs loaded) until the results are back on the host: it includes "
            "moving data to the device, tracing and compiling; 'compile': JAX's own compile events (tracing, "
            "lowering, XLA) within it. 'process': the child's whole wall time (interpreter start, imports, "
            "loading the shared inputs). Peak RSS: the child's ru_maxrss.")


# ----------------------------------------------------------------- (b) the 4-optimizer comparison
def compare(ds, cfg, tmp, log) -> dict:
    names, iters = cfg["b_optimizers"], cfg["b_iterations"]
    key_init, key_batches = jax.random.split(jax.random.key(0))  # as examples/optimizer_comparison.py
    params = nn.init_mlp(key_init, STEP_SIZES)
    batches = np.asarray(jax.random.randint(key_batches, (iters, STEP_BATCH), 0, len(ds.x_train)))
    prep = {"x": ds.x_train, "y": ds.y_train, "batches": batches, "batch_key": np.asarray(jax.random.key_data(key_batches)),
            "iterations": iters, "batch_size": STEP_BATCH, "names": np.asarray(names)}
    save_params("p", params, prep, stack=False)
    path = os.path.join(tmp, "compare.npz")
    np.savez(path, **prep)
    impls = ["jaxscratch", "optax-scan", "optax-loop", "numpy"]
    best, works, failed = _run_children("compare", impls, path, cfg["e2e_repeats"], log)
    lines = [f"{len(names)} optimizers ({', '.join(names)}, the book's defaults), MLP 784-100x4-10, batch {STEP_BATCH}, "
             f"{iters} iterations each, the same initial weights and batches for every optimizer and implementation; "
             f"best of {cfg['e2e_repeats']} runs per implementation, interleaved.", ""]
    lines += _process_table(best, works, failed, {"final loss (" + "/".join(names) + ")": lambda r: " / ".join(
        f"{r['result'][n]['last100']:.3f}" for n in names)})
    if "jaxscratch" in best:
        ref = best["jaxscratch"]["result"]
        lines += ["", "Equivalence, max |loss difference| over the first 20 steps against jaxscratch, per optimizer:"]
        for impl in [k for k in best if k != "jaxscratch"]:
            diffs = {n: np.abs(np.asarray(best[impl]["result"][n]["first"]) - ref[n]["first"]).max() for n in names}
            lines.append(f"- {impl}: " + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()))
        lines += ["- SGD and Momentum agree to float rounding. AdaGrad and Adam divide by the root of an accumulator "
                  "that starts at 0 with eps 1e-7, so their first updates are about +-lr for every weight however "
                  "small its gradient: rounding differences in near-zero gradients grow into visible loss differences "
                  "within a few steps. On top of that optax's AdaGrad puts eps inside the square root and NumPy's Adam "
                  "is the book's folded form (DESIGN.md). Same work; (a) checks the arithmetic tightly."]
    lines += ["", _timing_note(), "'final loss': mean of the last 100 step losses."]
    return section("(b) 4-optimizer comparison, end to end (compilation included)", lines,
                    {"work_s": {k: v["work_s"] for k, v in best.items()},
                     "compile_s": {k: v["compile_s"] for k, v in best.items()}})


# ----------------------------------------------------------------- (c) hyperparameter search
SEARCH_SIZES = (784,) + (100,) * 6 + (10,)
RANGES = {"learning_rate": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}


def _epoch_batches(keys, n, batch, epochs, replace):
    """Batch indices (T, epochs, steps, batch) exactly as jaxscratch.train.make_epoch draws them for a
    run whose key is ``keys[t]``: epoch e uses ``fold_in(fold_in(key, 0), e)``."""
    def one(k, e):
        return data.epoch_indices(jax.random.fold_in(jax.random.fold_in(k, 0), e), n, batch, replace=replace)
    return np.asarray(jax.vmap(lambda k: jax.vmap(lambda e: one(k, e))(jnp.arange(epochs)))(keys))


def search(ds, cfg, tmp, log) -> dict:
    T, E = cfg["c_trials"], cfg["c_epochs"]
    x, y = ds.x_train[:500], ds.y_train[:500]
    xt, yt, xv, yv = data.train_val_split(x, y, 0.2, seed=0)
    key = jax.random.key(0)
    # sweep.random_search's sampling: 10 ** U(log10 low, log10 high), names in sorted order.
    hp_key = jax.random.fold_in(key, 1)
    hp = {name: 10.0 ** jax.random.uniform(jax.random.fold_in(hp_key, i), (T,), minval=np.log10(lo), maxval=np.log10(hi))
          for i, (name, (lo, hi)) in enumerate(sorted(RANGES.items()))}
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(T))
    inits = [nn.init_mlp(keys[i], SEARCH_SIZES) for i in range(T)]
    prep = {"xt": xt, "yt": yt, "xv": xv, "yv": yv, "lrs": np.asarray(hp["learning_rate"]),
            "wds": np.asarray(hp["weight_decay"]), "batches": _epoch_batches(keys, len(xt), 100, E, False),
            "epochs": E, "min_epochs": cfg["c_min_epochs"], "eta": 3, "sizes": np.asarray(SEARCH_SIZES), "batch_size": 100,
            "key": np.asarray(jax.random.key_data(key)), "lr_range": RANGES["learning_rate"], "wd_range": RANGES["weight_decay"]}
    save_params("p", inits, prep)
    path = os.path.join(tmp, "search.npz")
    np.savez(path, **prep)
    impls = ["jaxscratch-search", "jaxscratch-halving", "optax-serial", "numpy-serial", "numpy-halving"]
    best, works, failed = _run_children("search", impls, path, cfg["c_repeats"], log)
    lines = [f"The book's protocol: first 500 Fashion-MNIST training samples (400 train / 100 validation), MLP "
             f"784-[100 x6]-10, SGD, batch 100, {E} epochs, {T} trials, lr = 10^U(-6,-2), weight decay = 10^U(-8,-4); "
             f"every implementation gets the same sampled hyperparameters, initial weights and batches, and evaluates "
             f"train and validation accuracy after every epoch. Halving: min {cfg['c_min_epochs']} epochs, eta 3 "
             f"(jaxscratch's schedule; the same schedule run serially in NumPy). {cfg['c_repeats']} run(s) per "
             f"implementation.", ""]

    def winner(r):
        res = r["result"]
        return f"trial {res['winner']}: {100 * res['winner_val_acc']:.0f}%"

    lines += _process_table(best, works, failed, {"winner (val acc)": winner,
                                                  "epochs trained": lambda r: str(r["result"].get("epochs_trained", T * E))})
    full = {k: np.asarray(best[k]["result"]["final_val_acc"]) for k in ("jaxscratch-search", "optax-serial", "numpy-serial")
            if k in best}
    same_hp = None
    if "jaxscratch-search" in best:
        same_hp = bool(np.allclose(best["jaxscratch-search"]["result"]["lrs"], prep["lrs"], rtol=1e-6))
        ref = full["jaxscratch-search"]
        agree = "; ".join(f"{k}: max |difference| {np.abs(v - ref).max():.3f}, equal in {np.mean(np.abs(v - ref) < 1e-6):.0%} of trials"
                          for k, v in full.items() if k != "jaxscratch-search")
        lines += ["", f"Equivalence: jaxscratch sampled the same hyperparameters as the peers: {same_hp}. Final "
                  f"validation accuracy per trial against jaxscratch's: {agree}."]
    lines += ["", _timing_note()]
    metrics = {"work_s": {k: v["work_s"] for k, v in best.items()},
               "compile_s": {k: v["compile_s"] for k, v in best.items()},
               "programs": {k: v.get("programs", {}) for k, v in best.items()},
               "winner_val_acc": {k: v["result"]["winner_val_acc"] for k, v in best.items()}, "same_hp": same_hp}
    return section("(c) Hyperparameter search, the book's protocol, end to end", lines, metrics)


# ----------------------------------------------------------------- (d) batch-norm grid
BN_SIZES = (784,) + (100,) * 5 + (10,)


def bngrid(ds, cfg, tmp, log) -> dict:
    E, scales = cfg["d_epochs"], np.logspace(0, -4, 16).astype(np.float32)[:cfg["d_scales"]]
    x, y = ds.x_train[:1000], ds.y_train[:1000]
    key = jax.random.key(0)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(scales)))
    prep = {"x": x, "y": y, "scales": scales, "lr": 0.01, "epochs": E, "sizes": np.asarray(BN_SIZES), "batch_size": 100,
            "key": np.asarray(jax.random.key_data(key)), "batches": _epoch_batches(keys, 1000, 100, E, True)}
    for variant in ("bn", "plain"):  # unit-normal weights; every implementation multiplies by the scale
        save_params(variant, [nn.init_mlp(keys[i], BN_SIZES, weight_init=1.0, batchnorm=variant == "bn")
                              for i in range(len(scales))], prep)
    path = os.path.join(tmp, "bngrid.npz")
    np.savez(path, **prep)
    impls = ["jaxscratch", "optax-serial", "numpy-serial"]
    best, works, failed = _run_children("bngrid", impls, path, cfg["e2e_repeats"], log)

    def summary(r):
        bn, plain = np.asarray(r["result"]["bn"])[:, -1], np.asarray(r["result"]["plain"])[:, -1]
        return f"{int(np.sum(bn > plain))}/{len(bn)}, {100 * plain.mean():.1f}% / {100 * bn.mean():.1f}%"

    lines = [f"The book's protocol: first 1,000 training samples, MLP 784-[100 x5]-10, SGD 0.01, batch 100 drawn with "
             f"replacement, {E} epochs of 10 steps, {len(scales)} weight scales from logspace(0, -4, 16), batch norm and "
             f"plain (train accuracy evaluated after every epoch); the same initial weights and batches everywhere; "
             f"best of {cfg['e2e_repeats']} runs per implementation, interleaved.", ""]
    lines += _process_table(best, works, failed, {"BN wins, mean final acc plain / BN": summary})
    if "jaxscratch" in best:
        ref = {v: np.asarray(best["jaxscratch"]["result"][v])[:, -1] for v in ("bn", "plain")}
        diffs = ", ".join(f"{impl} {max(np.abs(np.asarray(best[impl]['result'][v])[:, -1] - ref[v]).max() for v in ref):.3f}"
                          for impl in best if impl != "jaxscratch")
        lines += ["", f"Equivalence: max |final train accuracy difference| from jaxscratch over the grid: {diffs} "
                  "(chaotic runs at the extreme scales may differ by rounding)."]
    lines += ["", _timing_note()]
    return section("(d) Batch-norm grid, end to end", lines, {"work_s": {k: v["work_s"] for k, v in best.items()},
                                                              "compile_s": {k: v["compile_s"] for k, v in best.items()}})


# ----------------------------------------------------------------- (e) the whole train process
def train_process(ds, cfg, tmp, log) -> dict:
    E, repeats = cfg["e_epochs"], cfg["e_repeats"]
    py = sys.executable
    if cfg["e_subset"]:  # quick mode: the first rows of Fashion-MNIST, written as IDX files
        data_dir = write_idx_subset(ds, os.path.join(tmp, "fashion-subset"), *cfg["e_subset"])
        where = ["--dataset-dir", data_dir]
    else:  # jaxscratch finds the files itself, as for a user; the script is told where they are
        data_dir, where = fashion_mnist_dir(), []
    jax_cache, our_cache = os.path.join(tmp, "cache-jax"), os.path.join(tmp, "cache-jaxscratch")
    train_cmd = lambda out: [py, "-m", "jaxscratch", "train", "--dataset", "fashion-mnist", "--epochs", str(E),
                             "--out", out] + where
    script_cmd = lambda out: [py, os.path.join(HERE, "optax_train_script.py"), "--epochs", str(E), "--out", out,
                              "--data-dir", data_dir]
    cmds = {  # name: (argv, JAXSCRATCH_COMPILE_CACHE); the first two compile everything (the goal's measure)
        "jaxscratch train": (train_cmd, "off"),
        "optax script": (script_cmd, "off"),
        "jaxscratch train, cached": (train_cmd, our_cache),
        "optax script, JAX cache": (lambda out: script_cmd(out) + ["--jax-cache", jax_cache], "off"),
    }
    for name in ("jaxscratch train, cached", "optax script, JAX cache"):  # fill the caches (untimed)
        cmd, cache = cmds[name]
        try:
            run_process(cmd(os.path.join(tmp, "run-warm-up")), env={**os.environ, "JAXSCRATCH_COMPILE_CACHE": cache})
        except RuntimeError as err:
            log(f"  [train] warm-up of {name} FAILED: {str(err).splitlines()[0]}")
        shutil.rmtree(os.path.join(tmp, "run-warm-up"), ignore_errors=True)
    best, walls, accs, failed = {}, {k: [] for k in cmds}, {}, {}
    for r in range(repeats):
        for i, (name, (cmd, cache)) in enumerate(cmds.items()):
            if name in failed:
                continue
            out = os.path.join(tmp, f"run-{i}-{r}")
            def once():
                shutil.rmtree(out, ignore_errors=True)  # a retried run starts afresh
                return run_process(cmd(out), env={**os.environ, "JAXSCRATCH_COMPILE_CACHE": cache})
            try:
                rep, _ = run_quietly(once, log)
                missing = [f for f in ("checkpoint.npz", "best.npz", "metrics.json", "training.png")
                           if not os.path.exists(os.path.join(out, f))]
                if missing:
                    raise RuntimeError(f"did not write {', '.join(missing)}")
            except RuntimeError as err:
                failed[name] = str(err).splitlines()[0]
                log(f"  [train] {name:16s} FAILED: {failed[name]}")
                continue
            walls[name].append(rep["wall_s"])
            with open(os.path.join(out, "metrics.json")) as f:
                accs[name] = json.load(f)["test_accuracy"]
            log(f"  [train] {name:16s} run {r + 1}/{repeats}: {rep['wall_s']:.2f}s  rss {rep['maxrss_mib']:.0f} MiB  "
                f"test acc {100 * accs[name]:.2f}%")
            _keep_best(best, name, rep, "wall_s")
    lines = [f"`python -m jaxscratch train --dataset fashion-mnist --epochs {E} --out DIR` (defaults: MLP 784-100-100-10, "
             f"Adam 1e-3, batch 100, 10% validation, evaluation of train/val/test after each epoch, a checkpoint each "
             f"epoch, best.npz, metrics.json, training.png) against benchmarks/optax_train_script.py doing the same work "
             f"(same split, initial weights and batch order). Whole processes, wall clock from start to exit, best of "
             f"{repeats}, interleaved. The first two rows compile every program (the goal's measure); the "
             f"'cached' rows read the programs compiled by an earlier, untimed run: jaxscratch's on-disk store "
             f"(on by default in the command; JAXSCRATCH_COMPILE_CACHE) and JAX's persistent cache switched on in "
             f"the script (--jax-cache, two lines of config)."
             + (f" Quick mode: the first {cfg['e_subset'][0]} training and {cfg['e_subset'][1]} test images only."
                if cfg["e_subset"] else ""), ""]
    peer = {"jaxscratch train": "optax script", "jaxscratch train, cached": "optax script, JAX cache"}
    refs = {n: best.get(peer.get(n, n), {}).get("wall_s") for n in best}
    rows = [[n, f"{b['wall_s']:.2f}", " ".join(f"{w:.1f}" for w in walls[n]), f"{b['maxrss_mib']:.0f}",
             f"{100 * accs[n]:.2f}%", f"{b['wall_s'] / refs[n]:.2f}x" if refs[n] else "n/a"] for n, b in best.items()]
    lines += fmt_table(["process", "wall s (best)", "all runs s", "peak RSS MiB", "test acc",
                        "vs its optax peer (cold vs cold, cached vs cached)"], rows)
    lines += ["", *[f"FAILED {name}: {msg}" for name, msg in failed.items()]] if failed else []
    metrics = {"wall_s": {k: v["wall_s"] for k, v in best.items()}, "test_acc": accs}

    sub = data_dir if cfg["e_subset"] else ""
    try:
        def profile():
            shutil.rmtree(os.path.join(tmp, "run-profile"), ignore_errors=True)  # a retried run starts afresh
            return run_child("cli", "jaxscratch", f"{E}:{os.path.join(tmp, 'run-profile')}:{sub}")
        prof = run_quietly(profile, log)[0]["result"]
        ox = json.loads(best["optax script"]["stdout"].rsplit("PHASES ", 1)[1]) if "optax script" in best else None
    except RuntimeError as err:
        prof = None
        lines += ["", f"(profile of jaxscratch train FAILED: {str(err).splitlines()[0]})"]
    if prof and ox:
        known = ("imports", "data", "fit", "plot", "json")
        setup = prof["total"] - sum(prof[k] for k in known) - (prof["checkpoint"] - prof["checkpoint_in_fit"])
        ph_rows = [["imports", prof["imports"], ox["imports"]],
                   ["data (read IDX, split)", prof["data"], ox["data"]],
                   ["model init, setup, other", setup, ox["init"]],
                   ["train + evaluate, all epochs", prof["fit"] - prof["checkpoint_in_fit"], ox["train"] + ox["evaluate"]],
                   ["  of which compiling", prof["compile_in_fit"], ox["compile_in_loop"]],
                   ["checkpoints (each epoch, final)", prof["checkpoint"], ox["checkpoint"]],
                   ["metrics.json + figure", prof["plot"] + prof["json"], ox["plot"]],
                   ["total in process (after interpreter start)", prof["total"], ox["total_in_process"]],
                   ["  of which compiling (whole process)", prof["compile_total"], ox["compile_total"]]]
        lines += ["", "Where the time goes (one more run of each, timed inside the process; seconds):", ""]
        lines += fmt_table(["phase", "jaxscratch train", "optax script"], [[a, f"{b:.2f}", f"{c:.2f}"] for a, b, c in ph_rows])
        metrics.update(profile=prof, phases_optax=ox)
    try:
        fitc = run_quietly(lambda: run_child("fit", "jaxscratch", f"2:-:{sub}"), log)[0]["result"]
        progs = ", ".join(f"{k} {v:.2f}" for k, v in list(fitc["programs"].items())[:6])
        lines += ["", f"Compilation of a `fit` (fresh process, the defaults above, 2 epochs): JAX compile events (tracing, "
                  f"lowering, XLA) inside fit: {fitc['compile_in_fit']:.2f} s; first epoch {fitc['epoch_times'][0]:.2f} s, "
                  f"second {fitc['epoch_times'][-1]:.2f} s (difference {fitc['epoch_times'][0] - fitc['epoch_times'][-1]:.2f} s). "
                  f"Largest programs (s): {progs}."]
        metrics.update(fit_compile_s=fitc["compile_in_fit"], fit_programs=fitc["programs"])
    except RuntimeError as err:
        lines += ["", f"(compile measurement of fit FAILED: {str(err).splitlines()[0]})"]
    return section("(e) `jaxscratch train` as a whole process vs an equivalent JAX + optax script", lines, metrics)
