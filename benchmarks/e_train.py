"""Workload (e): the whole ``python -m jaxscratch train --dataset fashion-mnist`` process against
optax_train_script.py doing the same work, wall clock from start to exit; then, in fresh processes
through child.py, the command's phases timed from inside (``RUN["jaxscratch-cli"]``) and the
compilation inside one ``train.fit`` (``RUN["jaxscratch-fit"]``).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

from common import HERE, CompileClock, best_runs, run_child, run_process, run_quietly, section, table


# ----------------------------------------------------------------- the in-process children
def _cli(p):
    """``jaxscratch train`` as the command runs it (``cli.run``: one JAX device per core, the on-disk
    cache off in the benchmark), with timers around its phases (module attributes, looked up at call
    time, so the command runs unchanged)."""
    from jaxscratch import _rundir, checkpoint, cli, train
    clock, in_fit = CompileClock(), [False]
    t = dict.fromkeys(("data", "plot", "json", "checkpoint", "fit", "checkpoint_in_fit", "compile_in_fit"), 0.0)

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            start, compiled, in_fit[0] = time.perf_counter(), clock.total, in_fit[0] or name == "fit"
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - start
                t[name] += dt
                if name == "fit":
                    t["compile_in_fit"] += clock.total - compiled
                    in_fit[0] = False
                elif name == "checkpoint" and in_fit[0]:
                    t["checkpoint_in_fit"] += dt
        return wrapper

    for mod, attr, name in ((cli, "load_data", "data"), (cli, "_maybe_figure", "plot"), (_rundir, "write_json", "json"),
                            (checkpoint, "save", "checkpoint"), (train, "fit", "fit")):
        setattr(mod, attr, timed(getattr(mod, attr), name))
    sys.argv = ["jaxscratch", "train", "--dataset", "fashion-mnist", "--epochs", str(p["epochs"]), "--out",
                str(p["out"]), "--quiet"] + (["--dataset-dir", str(p["data_dir"])] if str(p["data_dir"]) else [])
    if cli.run():
        raise SystemExit("jaxscratch train failed")
    return dict(t, compile_total=clock.total)


def _fit(p):
    """The compile time inside one ``train.fit`` with the command's defaults, 2 epochs."""
    import jax
    from jaxscratch import data, nn, optim, train
    ds = data.load_fashion_mnist(str(p["data_dir"]) or None)
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    key = jax.random.key(0)  # made before the clock starts: its two small programs are the caller's, not fit's
    clock, res = CompileClock(), []
    seconds = clock.during(lambda: res.append(train.fit(
        key, nn.mlp_model((784, 100, 100, 10)), optim.adam(), (xt, yt), epochs=2, batch_size=100,
        validation=(xv, yv), test=(ds.x_test, ds.y_test), verbose=False)))
    return {"compile_in_fit": seconds, "epoch_times": np.asarray(res[0].history["time"]).tolist(),
            "programs": clock.largest(6)}


RUN = {"jaxscratch-cli": _cli, "jaxscratch-fit": _fit}


# ----------------------------------------------------------------- the data
def fashion_mnist_dir() -> str | None:
    """The folder where jaxscratch's loader finds the Fashion-MNIST IDX files (for the optax script)."""
    from jaxscratch import data
    home = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    dirs = [os.path.join(os.environ["JAXSCRATCH_DATA"], "fashion-mnist")] if "JAXSCRATCH_DATA" in os.environ else []
    for d in dirs + [os.path.join(home, "jaxscratch", "fashion-mnist"), *map(str, data.FASHION_MNIST_SYSTEM_DIRS)]:
        if any(os.path.exists(os.path.join(d, "train-images-idx3-ubyte" + ext)) for ext in (".gz", "")):
            return d
    return None


def write_idx_subset(ds, folder: str, n_train: int, n_test: int) -> str:
    """The first rows of a loaded data set written back as the four gzipped IDX files (quick mode)."""
    os.makedirs(folder, exist_ok=True)
    img = lambda x: np.rint(np.asarray(x) * 255).astype(np.uint8).reshape(-1, 28, 28)
    for name, a in (("train-images-idx3-ubyte.gz", img(ds.x_train[:n_train])),
                    ("t10k-images-idx3-ubyte.gz", img(ds.x_test[:n_test])),
                    ("train-labels-idx1-ubyte.gz", np.asarray(ds.y_train[:n_train], np.uint8)),
                    ("t10k-labels-idx1-ubyte.gz", np.asarray(ds.y_test[:n_test], np.uint8))):
        with gzip.open(os.path.join(folder, name), "wb", compresslevel=1) as f:
            f.write(bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())
    return folder


# ----------------------------------------------------------------- the processes (in the parent)
def train_process(ds, cfg, tmp, log) -> dict:
    E, repeats, py = cfg["e_epochs"], cfg["e_repeats"], sys.executable
    if cfg["e_subset"]:  # quick mode: the first rows of Fashion-MNIST, written as IDX files
        data_dir = write_idx_subset(ds, os.path.join(tmp, "fashion-subset"), *cfg["e_subset"])
        where, sub = ["--dataset-dir", data_dir], data_dir
    else:  # jaxscratch finds the files itself, as for a user; the script is told where they are
        data_dir, where, sub = fashion_mnist_dir(), [], ""
    jax_cache, our_cache = os.path.join(tmp, "cache-jax"), os.path.join(tmp, "cache-jaxscratch")
    train = lambda out: [py, "-m", "jaxscratch", "train", "--dataset", "fashion-mnist", "--epochs", E, "--out", out,
                         *where]
    script = lambda out: [py, os.path.join(HERE, "optax_train_script.py"), "--epochs", E, "--out", out,
                          "--data-dir", data_dir]
    cmds = {  # name: (argv, JAXSCRATCH_COMPILE_CACHE); the first two compile every program (the goals' measure)
        "jaxscratch train": (train, "off"), "optax script": (script, "off"),
        "jaxscratch train, cached": (train, our_cache),
        "optax script, JAX cache": (lambda out: script(out) + ["--jax-cache", jax_cache], "off")}
    for name in ("jaxscratch train, cached", "optax script, JAX cache"):  # fill the caches (untimed)
        try:
            run_process(cmds[name][0](os.path.join(tmp, "warm-up")), JAXSCRATCH_COMPILE_CACHE=cmds[name][1])
        except RuntimeError as err:
            log(f"  [train] warm-up of {name} FAILED: {str(err).splitlines()[0]}")

    def run(name):
        out = os.path.join(tmp, f"run-{list(cmds).index(name)}")
        shutil.rmtree(out, ignore_errors=True)  # each run (and a retried one) starts afresh
        rep = run_process(cmds[name][0](out), JAXSCRATCH_COMPILE_CACHE=cmds[name][1])
        missing = [f for f in ("checkpoint.npz", "best.npz", "metrics.json", "training.png")
                   if not os.path.exists(os.path.join(out, f))]
        if missing:
            raise RuntimeError(f"did not write {', '.join(missing)}")
        return dict(rep, test_acc=json.load(open(os.path.join(out, "metrics.json")))["test_accuracy"])

    describe = lambda r: f"{r['wall_s']:.2f}s rss {r['maxrss_mib']:.0f} MiB test acc {100 * r['test_acc']:.2f}%"
    best, walls, failed = best_runs(list(cmds), repeats, run, log, "train", "wall_s", describe)
    lines = [f"`python -m jaxscratch train --dataset fashion-mnist --epochs {E} --out DIR` (MLP 784-100-100-10, "
             "Adam 1e-3, batch 100, 10% validation, train/val/test evaluated and a checkpoint written each epoch, "
             "best.npz, metrics.json, training.png) against optax_train_script.py doing the same work (same split, "
             f"weights and batch order). Whole processes, best of {repeats}, interleaved. The 'cached' rows read "
             "programs an untimed run compiled: jaxscratch's on-disk store against JAX's persistent cache switched "
             "on in the script." + (f" Quick mode: the first {cfg['e_subset'][0]} training and {cfg['e_subset'][1]} "
                                   "test images." if cfg["e_subset"] else ""), ""]
    peer = {"jaxscratch train": "optax script", "jaxscratch train, cached": "optax script, JAX cache"}
    rows = [[n, f"{b['wall_s']:.2f}", " ".join(f"{w:.1f}" for w in walls[n]), f"{b['maxrss_mib']:.0f}",
             f"{100 * b['test_acc']:.2f}%", f"{b['wall_s'] / best[peer[n]]['wall_s']:.2f}x" if peer.get(n) in best
             else ""] for n, b in best.items()]
    lines += table(["process", "wall s", "all runs s", "peak RSS MiB", "test acc", "vs its optax peer"], rows)
    lines += [f"FAILED {name}: {msg}" for name, msg in failed.items()]
    metrics = {}

    np.savez(path := os.path.join(tmp, "train.npz"), epochs=E, out=os.path.join(tmp, "run-profile"), data_dir=sub)
    try:
        prof = run_quietly(lambda: shutil.rmtree(os.path.join(tmp, "run-profile"), ignore_errors=True)
                           or run_child("e_train", "jaxscratch-cli", path), log)[0]
        ox = json.loads(best["optax script"]["stdout"].rsplit("PHASES ", 1)[1])
        p, total = prof["result"], prof["imports_s"] + prof["work_s"]
        outside_fit = p["data"] + p["plot"] + p["json"] + p["checkpoint"] - p["checkpoint_in_fit"]
        phases = [("imports", prof["imports_s"], ox["imports"]), ("data (read IDX, split)", p["data"], ox["data"]),
                  ("model init, setup, other", prof["work_s"] - p["fit"] - outside_fit, ox["init"]),
                  ("train + evaluate, all epochs", p["fit"] - p["checkpoint_in_fit"], ox["train"] + ox["evaluate"]),
                  ("  of which compiling", p["compile_in_fit"], ox["compile_in_loop"]),
                  ("checkpoints", p["checkpoint"], ox["checkpoint"]),
                  ("metrics.json + figure", p["plot"] + p["json"], ox["plot"]),
                  ("total in process (after interpreter start)", total, ox["total_in_process"]),
                  ("  of which compiling (whole process)", p["compile_total"], ox["compile_total"])]
        lines += ["", f"Where the time goes (one more run of each, timed inside the process, s; jaxscratch saw "
                      f"{prof['devices']} JAX devices, the script 1):", ""]
        lines += table(["phase", "jaxscratch train", "optax script"],
                       [[a, f"{b:.2f}", f"{c:.2f}"] for a, b, c in phases])
        metrics.update(profile=p, phases_optax=ox, devices={"jaxscratch train": prof["devices"]},
                       compile_s={"jaxscratch train": p["compile_total"], "optax script": ox["compile_total"]})
    except (RuntimeError, KeyError, IndexError, ValueError) as err:
        lines += ["", f"(profile of jaxscratch train FAILED: {str(err).splitlines()[0]})"]
    try:
        fit = run_quietly(lambda: run_child("e_train", "jaxscratch-fit", path), log)[0]["result"]
        lines += ["", f"Compilation inside one `fit` (fresh process, the defaults above, 2 epochs; JAX compile "
                      f"events): {fit['compile_in_fit']:.2f} s; first epoch {fit['epoch_times'][0]:.2f} s, second "
                      f"{fit['epoch_times'][-1]:.2f} s. Largest programs (s): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in fit["programs"].items()) + "."]
        metrics.update(fit_compile_s=fit["compile_in_fit"], fit_programs=fit["programs"])
    except RuntimeError as err:
        lines += ["", f"(compile measurement of fit FAILED: {str(err).splitlines()[0]})"]
    return section("(e) `jaxscratch train` as a whole process vs an equivalent JAX + optax script", lines, metrics)
