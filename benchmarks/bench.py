"""jaxscratch against the textbook's NumPy and hand-written JAX + optax, on identical workloads, in
one invocation; the goals of issue 12 judged from the run (benchmarks/README.md).

    python benchmarks/bench.py [--quick | --gpu] [--only a,b,c,d,e] [--out FILE] [--wait-quiet S] ...

(a) the training step (a_step.py); (b) the 4-optimizer comparison (b_compare.py); (c) the 100-trial
search and successive halving (c_search.py); (d) the batch-norm grid (d_bngrid.py); (e) the whole
``jaxscratch train`` process (e_train.py). Full mode writes benchmarks/RESULTS.md; ``--quick``
shrinks everything (a smoke test) and writes only to ``--out``; ``--gpu`` runs (a), (b), (c) with
the JAX implementations only and writes benchmarks/RESULTS-gpu.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # a GPU shared with the children it starts

import common  # noqa: E402 (after the sys.path insert that finds it)

FULL = {"repeats": 5, "a_steps": 1000, "a_threads": True, "e2e_repeats": 2, "c_repeats": 1, "e_repeats": 3,
        "b_optimizers": ["sgd", "momentum", "adagrad", "adam"], "b_iterations": 2000, "c_trials": 100,
        "c_epochs": 50, "c_min_epochs": 5, "d_epochs": 20, "d_scales": 16, "e_epochs": 10, "e_subset": None,
        "peak_sizes": (1024, 2048, 3072)}
QUICK = dict(FULL, repeats=2, a_steps=40, a_threads=False, e2e_repeats=1, e_repeats=1, b_optimizers=["sgd", "adam"],
             b_iterations=50, c_trials=6, c_epochs=3, c_min_epochs=1, d_epochs=2, d_scales=4, e_epochs=1,
             e_subset=(6000, 1000), peak_sizes=(512, 1024))


# ----------------------------------------------------------------- goals
def speed(w, js, peer, faster=None, at_most=None, winner=False):
    """A goal on work time: ``peer / js >= faster`` or ``js / peer <= at_most``; the detail splits
    compile and run and, when missed, says which of them holds it back. ``winner``: (c) also needs a
    winner as good as the NumPy serial search's (validation accuracy)."""
    def judge(m):
        (jw, pw), (jc, pc) = ([m[w][key][k] for k in (js, peer)] for key in ("work_s", "compile_s"))
        jr, pr = max(jw - (jc or 0.0), 1e-9), max(pw - (pc or 0.0), 1e-9)
        ratio, run_ratio = (pw / jw, pr / jr) if faster else (jw / pw, jr / pr)
        ok = (lambda r: r >= faster) if faster else (lambda r: r <= at_most)
        fmt = (lambda r: f"{r:.2f}x as fast") if faster else (lambda r: f"{r:.2f}x the time")
        detail = (f"{fmt(ratio)}: {js} {jw:.1f} s ({jc or 0:.1f} compile, {jr:.1f} run), {peer} {pw:.1f} s"
                  + (f" ({pc:.1f} compile, {pr:.1f} run)" if pc is not None else ""))
        if not ok(ratio):
            detail += (f"; compile holds it back: running alone would be {fmt(run_ratio)}" if ok(run_ratio) else
                       f"; running holds it back (running alone: {fmt(run_ratio)})")
        flops, peak = m[w].get("flops", {}).get(js), m.get("peaks", {}).get("jax")
        if faster and flops and peak:  # what the hardware allows: the matmuls alone at the measured peak
            floor, budget = flops / (peak * 1e9), pw / faster
            detail += (f"; the goal allows {budget:.1f} s, the matmuls alone take {floor:.1f} s at the matmul peak"
                       + (" (out of reach on this machine)" if floor > budget else ""))
        if not winner:
            return ok(ratio), detail
        acc, numpy = m["c"]["winner_val_acc"][js], m["c"]["winner_val_acc"]["numpy-serial"]
        return ok(ratio) and acc >= numpy, f"{detail}; winner {100 * acc:.0f}% (NumPy's {100 * numpy:.0f}%)"
    return judge


def compiles(w, impls, peer):
    def judge(m):
        c = m[w]["compile_s"]
        return all(c[k] <= c[peer] for k in impls), (", ".join(f"{k} {c[k]:.2f} s" for k in impls)
                                                     + f" vs {peer} {c[peer]:.2f} s")
    return judge


def step_goal(limit):
    def judge(m):
        a, t = m["a"], m["a"]["per_step"]
        r = t["jaxscratch"] / t["optax scan"]
        return r <= limit, (f"{r:.3f}x ({1e3 * t['jaxscratch']:.3f} vs {1e3 * t['optax scan']:.3f} ms/step); "
                            f"{100 * a['peak_fraction']:.0f}% of the matmul peak ({a['gflops']:.1f} GFLOP/s), "
                            f"{100 * a['floor_fraction']:.0f}% of the speed of the step's own 14 matmuls")
    return judge


GOALS = [  # (workload, goal, judge(metrics) -> (ok, detail))
    ("a", "Step: at most 1.0x the optax-scan peer", step_goal(1.0)),
    ("b", "Comparison: at least 2x faster than NumPy", speed("b", "jaxscratch", "numpy", faster=2)),
    ("b", "Comparison: at most 0.7x the optax-scan peer's time", speed("b", "jaxscratch", "optax-scan", at_most=0.7)),
    ("c", "Search: at least 4x faster than NumPy serial, winner as good",
     speed("c", "jaxscratch-search", "numpy-serial", faster=4, winner=True)),
    ("c", "Halving: at least 10x faster than NumPy serial, winner as good",
     speed("c", "jaxscratch-halving", "numpy-serial", faster=10, winner=True)),
    ("c", "Halving: at least 1.5x faster than NumPy halving, winner as good",
     speed("c", "jaxscratch-halving", "numpy-halving", faster=1.5, winner=True)),
    ("c", "Search: at most 0.6x the optax-serial peer's time, winner as good",
     speed("c", "jaxscratch-search", "optax-serial", at_most=0.6, winner=True)),
    ("d", "Batch-norm grid: at least 2x faster than NumPy serial", speed("d", "jaxscratch", "numpy-serial", faster=2)),
    ("d", "Batch-norm grid: at most 0.7x the optax-serial peer's time",
     speed("d", "jaxscratch", "optax-serial", at_most=0.7)),
    ("b", "Compile (b): at most optax-scan's", compiles("b", ["jaxscratch"], "optax-scan")),
    ("c", "Compile (c): search and halving at most optax-serial's",
     compiles("c", ["jaxscratch-search", "jaxscratch-halving"], "optax-serial")),
    ("d", "Compile (d): at most optax-serial's", compiles("d", ["jaxscratch"], "optax-serial")),
    ("e", "Compile (e): `jaxscratch train` at most the optax script's",
     compiles("e", ["jaxscratch train"], "optax script")),
    ("e", "Compile of a `fit`: at most 1 s",
     lambda m: (m["e"]["fit_compile_s"] <= 1.0, f"{m['e']['fit_compile_s']:.2f} s of compile events inside fit")),
]
GPU_GOALS = [
    ("c", "100-trial search, vmapped: at least 20x faster than the same trials one after another (optax-serial)",
     speed("c", "jaxscratch-search", "optax-serial", faster=20)),
    ("a", "Step: at most 1.1x the optax-scan peer", step_goal(1.1)),
]


def assess(m, goals) -> list[list[str]]:
    """[goal, verdict, measured] rows from the sections' metrics ``m`` (workload -> metrics)."""
    out = []
    for w, text, judge in goals:
        if w not in m:
            out.append([text, "not run", ""])
            continue
        try:
            ok, detail = judge(m)
            ok = "PASS" if ok else "MISS"
        except (KeyError, TypeError) as err:  # an implementation it needs failed (its error is in the section)
            ok, detail = "incomplete", f"no result for {err}"
        busy = m[w].get("contention")
        detail += f" [noisy: others took {100 * busy:.0f}% of the CPU]" if busy and busy > 0.1 else ""
        out.append([text, ok, detail])
    return out


def diagnose(m, peaks) -> list[str]:
    """Where the time goes, from this run's numbers (``m``: workload -> metrics)."""
    out = []
    if "a" in m:
        t = m["a"]["per_step"]
        line = (f"(a) The step is matmul-bound: jaxscratch's step {1e3 * t['jaxscratch']:.3f} ms, its 14 matmuls "
                f"alone {1e3 * t['XLA matmuls only']:.3f} ms in XLA")
        if "numpy" in t:
            line += (f", {1e3 * t['NumPy matmuls only']:.3f} ms in NumPy, whose step spends "
                     f"{1e3 * (t['numpy'] - t['NumPy matmuls only']):.3f} ms outside them")
        out.append(line + ".")
        th = {f: r for f, r in m["a"].get("threads", {}).items() if "ms" in r}
        if "" in th and len(th) > 1:
            f, r = min(((f, r) for f, r in th.items() if f), key=lambda fr: fr[1]["ms"])
            out.append(f"(a) One model on every core: the best flag, `{f}`, takes {r['ms'] / th['']['ms']:.2f}x "
                       f"the default's time per step, keeping {r['cores']:.2f} cores busy (default "
                       f"{th['']['cores']:.2f}).")
    for w in "bcd":
        if w in m:
            work, comp = m[w]["work_s"], {k: c or 0 for k, c in m[w]["compile_s"].items()}
            parts = [f"{k} {work[k]:.1f} = {comp[k]:.1f} + {work[k] - comp[k]:.1f}"
                     + (f" on {m[w]['devices'][k]} devices" if k.startswith("jaxscratch") else "") for k in work]
            out.append(f"({w}) Work = compile + the rest, s: " + "; ".join(parts) + ".")
            if m[w].get("flops"):
                rates = [f"{k} {f / 1e9 / max(work[k] - comp[k], 1e-9):.0f}" for k, f in m[w]["flops"].items()]
                out.append(f"({w}) Matmul GFLOP/s while running (work - compile; the matmul peak is "
                           f"{peaks['jax']:.0f} at n={peaks['jax_n']}): " + ", ".join(rates) + ".")
    if "profile" in m.get("e", {}):
        p, o = m["e"]["profile"], m["e"]["phases_optax"]
        out.append(f"(e) jaxscratch train compiles {p['compile_total']:.1f} s (script {o['compile_total']:.1f} s) "
                   f"and trains + evaluates {p['fit'] - p['checkpoint_in_fit'] - p['compile_in_fit']:.1f} s besides "
                   f"(script {o['train'] + o['evaluate'] - o['compile_in_loop']:.1f} s).")
    if "fit_programs" in m.get("e", {}):
        out.append("(e) Compilation inside fit, largest programs: "
                   + ", ".join(f"{k} {v:.2f} s" for k, v in list(m["e"]["fit_programs"].items())[:4]) + ".")
    return out


def goals_lines(m, goals, peaks) -> list[str]:
    """The goals' table and where the time goes, as printed and as in RESULTS.md."""
    return (["## Goals (issue 12)", "", "Ratios of work time measured side by side in this run, cold processes.", ""]
            + common.table(["goal", "verdict", "measured"], assess(dict(m, peaks=peaks), goals), "<<<")
            + ["", "Where the time goes:", ""] + [f"- {d}" for d in diagnose(m, peaks)])


def markdown(info, cfg, mode, peaks, results, goals, wall, data_name) -> str:
    m = {k: r["metrics"] for k, r in results.items()}

    def devices_seen(jaxscratch):  # the JAX device counts that the (non-)jaxscratch children reported
        seen = {d for w in m.values() for k, d in w.get("devices", {}).items()
                if d and k.startswith("jaxscratch") == jaxscratch}
        return ", ".join(map(str, sorted(seen))) or "n/a"
    numpy_peak = f", NumPy {peaks['numpy']:.1f} GFLOP/s (n={peaks['numpy_n']})" if peaks["numpy_n"] else ""
    rows = [["CPU", f"{info['cpu']} ({info['cores']} cores, {info['affinity']} usable)"], ["memory", info["memory"]],
            ["JAX device", f"{info['device']} ({info['device_kind']}, {info['platform']})"],
            ["JAX devices", f"jaxscratch's children (jaxscratch.devices.use_cpu_cores): {devices_seen(True)}; "
                            f"the optax peers' children: {devices_seen(False)}; this process (a): {info['devices']}"],
            ["versions", f"Python {info['python']}, JAX {info['jax']}, jaxlib {info['jaxlib']}, NumPy "
                         f"{info['numpy']} ({info['blas']}), optax {info['optax']}"],
            ["data", data_name], ["date", info["date"]], ["load average before the run", info["load_before"]],
            ["matmul peak (float32)", f"JAX {peaks['jax']:.1f} GFLOP/s (n={peaks['jax_n']}){numpy_peak}"]]
    kind = "quick mode: shrunken workloads, not reference numbers" if cfg["quick"] else "full sizes"
    lines = ["# Benchmark results" + (" on a GPU" if cfg["gpu"] else ""), "",
             f"Written by `python benchmarks/bench.py{mode}` ({kind}); the run took {wall / 60:.1f} min. What is "
             "measured: [README.md](README.md).", "", "## Machine", ""]
    lines += common.table(["", ""], rows, "<<") + [""] + goals_lines(m, goals, peaks)
    for sec in results.values():
        lines += ["", f"## {sec['title']}", ""] + sec["lines"]
    return "\n".join(lines + ["", f"Settings: {', '.join(f'{k}={v}' for k, v in cfg.items())}.", ""])


# ----------------------------------------------------------------- main
def load_data(gpu):
    """Fashion-MNIST; in --gpu mode nothing is downloaded: without local files, a synthetic stand-in of
    the same shapes (the same work, so the same timings; meaningless accuracies)."""
    import numpy as np
    from jaxscratch import data
    try:
        return data.load_fashion_mnist(mirrors=() if gpu else None), "Fashion-MNIST"
    except data.DataError:
        if not gpu:
            raise
    rng = np.random.default_rng(0)
    img, lab = lambda n: rng.random((n, 784), np.float32), lambda n: rng.integers(0, 10, n).astype(np.int32)
    return (data.Dataset(img(60000), lab(60000), img(10000), lab(10000), "synthetic", 10),
            "synthetic stand-in for Fashion-MNIST (no local copy found): same shapes and work, meaningless accuracies")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shrink every workload (a smoke test)")
    p.add_argument("--gpu", action="store_true", help="(a), (b), (c) without NumPy peers; writes RESULTS-gpu.md")
    p.add_argument("--only", default=None, help="workloads among a,b,c,d,e (default: all; --gpu: a,b,c)")
    p.add_argument("--repeats", type=int, help="timed runs per implementation in (a) (full: 5)")
    p.add_argument("--e2e-repeats", type=int, help="fresh-process runs per implementation in (b), (d) (full: 2)")
    p.add_argument("--search-repeats", type=int, dest="c_repeats", help="runs per implementation in (c) (full: 1)")
    p.add_argument("--train-repeats", type=int, dest="e_repeats", help="runs per process in (e) (full: 3)")
    p.add_argument("--train-epochs", type=int, dest="e_epochs", help="epochs of the train process in (e) (full: 10)")
    p.add_argument("--threads", action="store_true", help="run (a)'s XLA_FLAGS threading variants in quick mode too")
    p.add_argument("--out", help="results file (default: RESULTS.md, or RESULTS-gpu.md with --gpu; none with --quick)")
    p.add_argument("--keep-inputs", metavar="DIR", help="write the shared inputs and runs' outputs to DIR, kept")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="first wait up to S seconds for other processes to use < 10%% of the CPU")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick, gpu=args.gpu)
    cfg.update({k: getattr(args, k) for k in ("repeats", "e2e_repeats", "c_repeats", "e_repeats", "e_epochs")
                if getattr(args, k) is not None})
    cfg["a_threads"] = (cfg["a_threads"] or args.threads) and not args.gpu
    if args.gpu:
        cfg["e2e_repeats"] = 1
    allowed = "a,b,c" if args.gpu else "a,b,c,d,e"
    only = (args.only or allowed).replace(" ", "").split(",")
    if set(only) - set(allowed.split(",")):
        p.error(f"--only takes workloads among {allowed}; got {args.only}")
    out_path = args.out or (None if args.quick else os.path.join(common.HERE, "RESULTS-gpu.md" if args.gpu
                                                                 else "RESULTS.md"))
    mode = "".join(f" --{k}" for k in ("quick", "gpu") if getattr(args, k))
    if args.wait_quiet:
        waited = common.wait_quiet(args.wait_quiet)
        print(f"waited {waited[0]:.0f} s for a quiet machine; others now use {100 * waited[1]:.0f}% of the CPU")

    start = time.perf_counter()
    import jax
    import a_step
    import b_compare
    import c_search
    import d_bngrid
    import e_train
    info = common.machine_info(jax)
    if info["platform"] != "cpu" and not args.quick:
        cfg["peak_sizes"] = (4096, 8192)
    print(f"machine: {info['cpu']}, {info['cores']} cores; JAX {info['jax']} on {info['device']} "
          f"({info['device_kind']}); NumPy {info['numpy']} ({info['blas']}); optax {info['optax']}; {info['date']}",
          flush=True)
    ds, data_name = load_data(args.gpu)
    peaks = a_step.matmul_peaks(cfg["peak_sizes"], with_numpy=not args.gpu)
    log = lambda msg: print(msg, flush=True)
    runners = {"a": lambda tmp: a_step.step(ds, cfg, peaks), "b": lambda tmp: b_compare.compare(ds, cfg, tmp, log),
               "c": lambda tmp: c_search.search(ds, cfg, tmp, log),
               "d": lambda tmp: d_bngrid.bngrid(ds, cfg, tmp, log),
               "e": lambda tmp: e_train.train_process(ds, cfg, tmp, log)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="jaxscratch-bench-") as scratch:
        tmp = args.keep_inputs or scratch
        os.makedirs(tmp, exist_ok=True)
        for w in [w for w in "abcde" if w in only]:
            t = time.perf_counter()
            print(f"\n== workload ({w}) ==", flush=True)
            with common.Contention() as busy:
                sec = runners[w](tmp)
            sec["metrics"]["contention"] = busy.fraction
            if busy.fraction is not None:
                noisy = " (a noisy measurement)" if busy.fraction > 0.1 else ""
                sec["lines"] += ["", f"Other processes used {100 * busy.fraction:.0f}% of the machine's CPU time "
                                     f"while this workload ran{noisy}."]
            results[w] = sec
            print(f"\n## {sec['title']}  [{time.perf_counter() - t:.0f} s]\n\n" + "\n".join(sec["lines"]), flush=True)
    goals = GPU_GOALS if args.gpu else GOALS
    print("\n" + "\n".join(goals_lines({k: r["metrics"] for k, r in results.items()}, goals, peaks)))
    wall = time.perf_counter() - start
    print(f"\ntotal {wall / 60:.1f} min")
    if out_path:
        with open(out_path, "w") as f:
            f.write(markdown(info, cfg, mode, peaks, results, goals, wall, data_name))
        print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
