"""The benchmark suite of issue 5: jaxscratch against the textbook's NumPy, JAX + optax in a Python
loop, and JAX + optax in ``lax.scan``, on identical workloads, in one invocation.

    python benchmarks/bench.py [--quick] [--only a,b,c,d,e] [--repeats N] [--e2e-repeats N]
                               [--search-repeats N] [--train-epochs E] [--out benchmarks/RESULTS.md]

Workloads: (a) the optimizer-comparison training step; (b) the 4-optimizer comparison end to end;
(c) the book's 100-trial hyperparameter search and successive halving; (d) the batch-norm grid;
(e) the whole ``jaxscratch train`` process on Fashion-MNIST. See benchmarks/README.md for what is
measured and how. Full mode (the default) writes the results table to benchmarks/RESULTS.md;
``--quick`` shrinks every workload for a smoke test (well under a minute of compute) and writes
nothing unless ``--out`` is given. Runs unchanged on a GPU: JAX uses its default device.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FULL = {"repeats": 5, "a_steps": 1000, "e2e_repeats": 2, "c_repeats": 1, "e_repeats": 3,
        "b_optimizers": ["sgd", "momentum", "adagrad", "adam"], "b_iterations": 2000,
        "c_trials": 100, "c_epochs": 50, "c_min_epochs": 5, "d_epochs": 20, "d_scales": 16, "e_epochs": 10, "e_subset": None,
        "peak_sizes": (1024, 2048, 3072)}
QUICK = {"repeats": 2, "a_steps": 40, "e2e_repeats": 1, "c_repeats": 1, "e_repeats": 1,
         "b_optimizers": ["sgd", "adam"], "b_iterations": 50,
         "c_trials": 6, "c_epochs": 3, "c_min_epochs": 1, "d_epochs": 2, "d_scales": 4, "e_epochs": 1, "e_subset": (6000, 1000),
         "peak_sizes": (512, 1024)}
GPU_PEAK_SIZES = (4096, 8192)

GOALS = [  # id, text
    ("step-optax", "Training step: at most 1.05x the JAX + optax lax.scan peer"),
    ("step-numpy", "Training step: at least 3x faster than the NumPy peer"),
    ("step-peak", "Training step: at least 60% of the measured matmul peak"),
    ("train-process", "`jaxscratch train` whole process: at most 1.25x the equivalent JAX + optax script"),
    ("compare-numpy", "4-optimizer comparison end to end: at least 3x faster than NumPy, compilation included"),
    ("search-numpy", "Hyperparameter search: at least 10x faster than the NumPy serial search, with a winner as good"),
    ("fit-compile", "Compilation of a `fit`: under 2 s"),
]


GOAL_WORKLOAD = {"step-optax": "a", "step-numpy": "a", "step-peak": "a", "train-process": "e", "fit-compile": "e",
                 "compare-numpy": "b", "search-numpy": "c"}


def assess(results: dict) -> list[tuple[str, str, str]]:
    """(goal, PASS / MISS / not run / incomplete, the numbers)."""
    out = []
    m = {k: results[k]["metrics"] for k in results}
    for gid, text in GOALS:
        try:
            verdict, detail = _verdict(gid, m)
        except KeyError as err:  # an implementation the goal needs crashed (its error is in the section)
            verdict, detail = "incomplete", f"no result for {err}"
        busy = m.get(GOAL_WORKLOAD[gid], {}).get("contention")
        if busy is not None and busy > 0.1:
            detail += f" [noisy: other processes took {100 * busy:.0f}% of the CPU]"
        out.append((text, verdict if isinstance(verdict, str) else ("PASS" if verdict else "MISS"), detail))
    return out


def _verdict(gid, m):
    if gid.startswith("step"):
        if "a" not in m:
            return "not run", ""
        t = m["a"]["per_step"]
        if gid == "step-optax":
            r = t["jaxscratch"] / t["optax scan"]
            return r <= 1.05, f"{r:.3f}x ({t['jaxscratch'] * 1e3:.3f} vs {t['optax scan'] * 1e3:.3f} ms/step)"
        if gid == "step-numpy":
            r = t["numpy"] / t["jaxscratch"]
            return r >= 3, (f"{r:.2f}x as fast as NumPy float32 ({t['numpy'] * 1e3:.3f} ms/step); "
                            f"{t['numpy float64'] / t['jaxscratch']:.2f}x as fast as NumPy float64 (the book's dtype)")
        a = m["a"]
        return a["peak_fraction"] >= 0.6, (f"{100 * a['peak_fraction']:.0f}% ({a['gflops_jaxscratch']:.1f} GFLOP/s; the "
                                           f"step's matmuls alone reach {100 * a['floor_fraction']:.0f}%)")
    if gid in ("train-process", "fit-compile"):
        if "e" not in m:
            return "not run", ""
        e = m["e"]
        if gid == "fit-compile":
            return e["fit_compile_s"] < 2, f"{e['fit_compile_s']:.2f} s of compile events inside fit"
        w = e["wall_s"]
        r = w["jaxscratch train"] / w["optax script"]
        return r <= 1.25, f"{r:.2f}x ({w['jaxscratch train']:.1f} s vs {w['optax script']:.1f} s)"
    if gid == "compare-numpy":
        if "b" not in m:
            return "not run", ""
        w = m["b"]["work_s"]
        r = w["numpy"] / w["jaxscratch"]
        return r >= 3, f"{r:.2f}x as fast ({w['jaxscratch']:.1f} s vs {w['numpy']:.1f} s)"
    if gid == "search-numpy":
        if "c" not in m:
            return "not run", ""
        w, acc = m["c"]["work_s"], m["c"]["winner_val_acc"]
        parts, ok = [], False
        for impl in ("jaxscratch-search", "jaxscratch-halving"):
            r = w["numpy-serial"] / w[impl]
            good = acc[impl] >= acc["numpy-serial"]
            ok |= r >= 10 and good
            parts.append(f"{impl.split('-')[1]} {r:.2f}x as fast, winner {100 * acc[impl]:.0f}% "
                         f"(NumPy's {100 * acc['numpy-serial']:.0f}%)")
        return ok, "; ".join(parts)
    raise ValueError(gid)


def diagnose(results: dict) -> list[str]:
    """Where the time goes, computed from this run's numbers (one line per workload run)."""
    m, out = {k: results[k]["metrics"] for k in results}, []
    if "a" in m:
        t = m["a"]["per_step"]
        out.append(f"(a) The step is matmul-bound: its 14 matmuls alone take {1e3 * t['XLA matmuls only']:.3f} ms in XLA and "
                   f"{1e3 * t['NumPy matmuls only']:.3f} ms in NumPy (OpenBLAS is the faster of the two on these small "
                   f"shapes), against {1e3 * t['jaxscratch']:.3f} ms for jaxscratch's whole step and {1e3 * t['numpy']:.3f} ms "
                   f"for NumPy's: XLA fuses everything else away, NumPy spends "
                   f"{1e3 * (t['numpy'] - t['NumPy matmuls only']):.3f} ms/step outside its matmuls.")
    for w, label, impls in (("b", "(b)", ("jaxscratch", "optax-scan", "numpy")),
                            ("c", "(c)", ("jaxscratch-search", "jaxscratch-halving", "optax-serial", "numpy-serial")),
                            ("d", "(d)", ("jaxscratch", "optax-serial", "numpy-serial"))):
        if w not in m or "compile_s" not in m[w]:
            continue
        work, comp = m[w]["work_s"], m[w]["compile_s"]
        parts = [f"{k} {work[k]:.1f} s" + (f" ({comp[k]:.1f} s compiling, {work[k] - comp[k]:.1f} s running)"
                                           if comp.get(k) is not None else "") for k in impls if k in work]
        out.append(f"{label} Work split: " + "; ".join(parts) + ".")
    if "e" in m and "profile" in m["e"]:
        p, o = m["e"]["profile"], m["e"]["phases_optax"]
        out.append(f"(e) Inside the processes: jaxscratch compiles {p['compile_total']:.1f} s (optax script "
                   f"{o['compile_total']:.1f} s), trains and evaluates {p['fit'] - p['checkpoint_in_fit'] - p['compile_in_fit']:.1f} s "
                   f"besides compiling (script {o['train'] + o['evaluate'] - o['compile_in_loop']:.1f} s), writes checkpoints "
                   f"{p['checkpoint']:.2f} s (script {o['checkpoint']:.2f} s).")
    if "e" in m and "fit_programs" in m["e"]:
        progs = ", ".join(f"{k} {v:.2f} s" for k, v in list(m["e"]["fit_programs"].items())[:4])
        out.append(f"(e) Compilation inside fit, largest programs: {progs}.")
    return out


def markdown(info, cfg, args, peaks, results, goals, wall) -> str:
    from common import fmt_table
    lines = ["# Benchmark results", "",
             f"Written by `python benchmarks/bench.py{' --quick' if args.quick else ''}` "
             f"({'quick mode: shrunken workloads, not the reference numbers' if args.quick else 'full mode'}); "
             f"the whole run took {wall / 60:.1f} min. How to run it and what is measured: "
             "[benchmarks/README.md](README.md).", "", "## Machine", ""]
    rows = [["CPU", f"{info['cpu']} ({info['cores']} cores, {info['affinity']} usable)"], ["memory", info["memory"]],
            ["JAX device", f"{info['device']} ({info['device_kind']}, {info['platform']})"],
            ["versions", f"Python {info['python']}, JAX {info['jax']}, jaxlib {info['jaxlib']}, NumPy {info['numpy']} "
                         f"({info['blas']}), optax {info['optax']}"],
            ["date", info["date"]], ["load average before the run", info["load_before"]],
            ["matmul peak (float32, this run)", f"JAX {peaks['jax']:.1f} GFLOP/s (n={peaks['jax_n']}), NumPy "
                                                f"{peaks['numpy']:.1f} GFLOP/s (n={peaks['numpy_n']})"]]
    lines += fmt_table(["", ""], rows, ["<", "<"]) + ["", "## Goals of issue 5", ""]
    lines += fmt_table(["goal", "verdict", "measured"], [[g, v, d] for g, v, d in goals], ["<", "<", "<"])
    lines += ["", "Where the time goes (computed from this run):", ""] + [f"- {d}" for d in diagnose(results)]
    for sec in results.values():
        lines += ["", f"## {sec['title']}", ""] + sec["lines"]
    lines += ["", "## Notes", "",
              "- Times on a shared machine drift; ratios taken in the same run, with the implementations "
              "interleaved, are the numbers to compare.",
              "- The NumPy peer computes in float32 (the book's arrays are float64), so that FLOP rates compare like "
              "with like; (a) also shows the float64 variant for reference.",
              f"- Settings: {', '.join(f'{k}={v}' for k, v in cfg.items())}.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shrink every workload (smoke test); writes nothing unless --out")
    p.add_argument("--only", default="a,b,c,d,e", help="comma-separated workloads among a,b,c,d,e (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per implementation in (a) (full: 5)")
    p.add_argument("--e2e-repeats", type=int, default=None, help="fresh-process runs per implementation in (b), (d) (full: 2)")
    p.add_argument("--search-repeats", type=int, default=None, help="runs per implementation in (c) (full: 1)")
    p.add_argument("--train-repeats", type=int, default=None, help="runs per process in (e) (full: 3)")
    p.add_argument("--train-epochs", type=int, default=None, help="epochs of the train process in (e) (full: 10)")
    p.add_argument("--out", default=None, help="results file (full mode default: benchmarks/RESULTS.md)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for other processes to use < 10%% of the CPU (a shared machine)")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for flag, key in (("repeats", "repeats"), ("e2e_repeats", "e2e_repeats"), ("search_repeats", "c_repeats"),
                      ("train_repeats", "e_repeats"), ("train_epochs", "e_epochs")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    if set(only) - set("abcde"):
        p.error(f"--only takes workloads among a,b,c,d,e; got {args.only}")
    out_path = args.out or (None if args.quick else os.path.join(HERE, "RESULTS.md"))

    import common
    if args.wait_quiet:
        waited = common.wait_quiet(args.wait_quiet)
        print(f"waited {waited[0]:.0f} s for a quiet machine; other processes now use {100 * waited[1]:.0f}% of the CPU")
    start = time.perf_counter()
    import jax
    import step_bench
    import workloads
    from jaxscratch import data

    info = common.machine_info(jax)
    if info["platform"] != "cpu":
        cfg["peak_sizes"] = GPU_PEAK_SIZES
    print(f"machine: {info['cpu']}, {info['cores']} cores; JAX {info['jax']} on {info['device']} "
          f"({info['device_kind']}); NumPy {info['numpy']} ({info['blas']}); optax {info['optax']}; {info['date']}")
    ds = data.load_fashion_mnist()
    peaks = step_bench.matmul_peaks(cfg["peak_sizes"])
    print(f"matmul peak (float32): JAX {peaks['jax']:.1f} GFLOP/s (n={peaks['jax_n']}), "
          f"NumPy {peaks['numpy']:.1f} GFLOP/s (n={peaks['numpy_n']})", flush=True)
    log = lambda msg: print(msg, flush=True)
    results = {}
    runners = {"a": lambda tmp: step_bench.step(ds, cfg, peaks), "b": lambda tmp: workloads.compare(ds, cfg, tmp, log),
               "c": lambda tmp: workloads.search(ds, cfg, tmp, log), "d": lambda tmp: workloads.bngrid(ds, cfg, tmp, log),
               "e": lambda tmp: workloads.train_process(ds, cfg, tmp, log)}
    with tempfile.TemporaryDirectory(prefix="jaxscratch-bench-") as tmp:
        for w in "abcde":
            if w not in only:
                continue
            t = time.perf_counter()
            print(f"\n== workload ({w}) ==", flush=True)
            with common.Contention() as busy:
                sec = runners[w](tmp)
            sec["metrics"]["contention"] = busy.fraction
            if busy.fraction is not None:
                sec["lines"].append("")
                sec["lines"].append(f"Other processes used {100 * busy.fraction:.0f}% of the machine's CPU time while "
                                    f"this workload ran" + (" (a noisy measurement)." if busy.fraction > 0.1 else "."))
            results[w] = sec
            print(f"\n## {sec['title']}  [{time.perf_counter() - t:.0f} s]\n")
            print("\n".join(sec["lines"]), flush=True)
    goals = assess(results)
    print("\n## Goals of issue 5\n")
    print("\n".join(common.fmt_table(["goal", "verdict", "measured"], [list(g) for g in goals], ["<", "<", "<"])))
    print("\nWhere the time goes:\n" + "\n".join(f"- {d}" for d in diagnose(results)))
    wall = time.perf_counter() - start
    print(f"\ntotal {wall / 60:.1f} min")
    if out_path:
        with open(out_path, "w") as f:
            f.write(markdown(info, cfg, args, peaks, results, goals, wall))
        print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
