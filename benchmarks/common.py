"""Shared pieces: FLOP counts, timers, compile clocks, parameter files, fresh-process runs, the
contention check, machine facts, tables. Importing it imports NumPy only (the NumPy peer's children
never load JAX).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
WORK_NOTE = ("'work': timed inside a fresh process from its inputs as NumPy arrays in memory to results on the "
             "host (transfers, tracing, compiling included; interpreter start, imports and input loading "
             "excluded); 'compile': JAX's compile events within it, summed (programs compiling while others run "
             "overlap, so 'work - compile' is a lower bound on running); 'process': the child's whole wall time.")


def mlp_flops(sizes, batch: int) -> dict:
    """Matmul FLOPs of one training step (2*m*k*n each): ``model`` = forward + 2x backward;
    ``needed`` leaves out the first layer's input gradient, which nothing computes."""
    fwd = sum(2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return {"model": 3 * fwd, "needed": 3 * fwd - 2 * batch * sizes[0] * sizes[1], "forward": fwd}


def epoch_flops(sizes, batch: int, steps: int, evaluated: int) -> float:
    """Matmul FLOPs of one epoch: ``steps`` training steps and a forward pass over ``evaluated`` rows."""
    return steps * mlp_flops(sizes, batch)["needed"] + mlp_flops(sizes, evaluated)["forward"]


def best_interleaved(fns: dict, repeats: int, *, before=None) -> dict:
    """name -> wall times, the functions called in turn ``repeats`` times: the first round in the
    given order, each later one in a shuffled order (seeded: the same in every run), so that no
    implementation always runs right after the same other one. In a fixed order (a)'s first JAX
    program always followed NumPy's matmuls, after which both JAX programs ran 2-4% slower
    (measured in one process)."""
    times = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns)
        if r:
            random.Random(r).shuffle(order)
        for name in order:
            fn = fns[name]
            if before:
                before()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


class CompileClock:
    """Seconds of JAX's own compile events (tracing, lowering, XLA), in total and by program."""

    def __init__(self):
        import jax
        self.total, self.programs = 0.0, {}
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event, duration, fun_name="?", **_):
        if event in COMPILE_EVENTS:
            self.total += duration
            self.programs[fun_name] = self.programs.get(fun_name, 0.0) + duration

    def during(self, fn) -> float:
        before = self.total
        fn()
        return self.total - before

    def largest(self, n=5) -> dict:
        return dict(sorted(self.programs.items(), key=lambda kv: -kv[1])[:n])


# ----------------------------------------------------------------- parameters in the inputs' .npz
def save_params(prefix, params_list, out: dict) -> None:
    """Parameter lists (one per trial) stacked as ``{prefix}{layer}_{name}`` arrays (T, ...)."""
    for i, layer in enumerate(params_list[0]):
        for name in layer:
            out[f"{prefix}{i}_{name}"] = np.stack([np.asarray(p[i][name]) for p in params_list])


def params_from(p, prefix, index, scale=None) -> list[dict]:
    """Trial ``index``'s parameter list from the ``{prefix}{layer}_{name}`` arrays (weights ``* scale``)."""
    layers = []
    while f"{prefix}{len(layers)}_w" in p:
        i = len(layers)
        layer = {n: p[f"{prefix}{i}_{n}"][index] for n in ("w", "b", "gamma", "beta") if f"{prefix}{i}_{n}" in p}
        if scale is not None:
            layer["w"] = layer["w"] * np.float32(scale)
        layers.append(layer)
    return layers


# ----------------------------------------------------------------- fresh processes
# A tiny launcher forks each measured process, so that its ru_maxrss is its own (a child forked from
# the benchmark itself would inherit the benchmark's ~1 GiB high-water mark).
_LAUNCHER = r"""
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
json.dump({"wall_s": time.perf_counter() - start, "maxrss_kib": usage.ru_maxrss,
           "rc": os.waitstatus_to_exitcode(status)}, open(sys.argv[1], "w"))
"""


def run_process(argv, **env) -> dict:
    """``argv`` in a fresh process (cwd: the repository), cold (``JAXSCRATCH_COMPILE_CACHE=off`` unless
    ``env`` says otherwise): wall time, own peak RSS, stdout, stderr."""
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        out, err, report = (os.path.join(d, n) for n in ("out", "err", "report.json"))
        with open(out, "wb") as fo, open(err, "wb") as fe:
            subprocess.run([sys.executable, "-c", _LAUNCHER, report, *map(str, argv)], stdout=fo, stderr=fe,
                           env={**os.environ, "JAXSCRATCH_COMPILE_CACHE": "off", **env}, cwd=ROOT)
        stdout, stderr = (open(p, errors="replace").read() for p in (out, err))
        r = json.load(open(report)) if os.path.exists(report) else {"rc": "?"}
    if r["rc"] != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln and not ln.startswith(" ")] or ["(no output)"]
        raise RuntimeError(f"exit status {r['rc']}: {lines[-1][:400]}\n{' '.join(map(str, argv))}\n{stderr[-3000:]}")
    return {"wall_s": r["wall_s"], "maxrss_mib": r["maxrss_kib"] / 1024, "stdout": stdout, "stderr": stderr}


def run_child(module: str, impl: str, prep_path: str) -> dict:
    """``child.py MODULE IMPL PREP`` in a fresh interpreter: its JSON report, process wall and RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        path = os.path.join(d, "report.json")
        r = run_process([sys.executable, os.path.join(HERE, "child.py"), module, impl, prep_path, path])
        report = json.load(open(path))
    return dict(report, process_s=r["wall_s"], maxrss_mib=r["maxrss_mib"])


def best_runs(names, repeats, run, log, tag, key, describe) -> tuple[dict, dict, dict]:
    """``run(name)`` for every name ``repeats`` times, interleaved, each run repeated while the machine is
    busy. Returns ``best`` (name -> report of its fastest run by ``key``, peak RSS the largest of its
    runs), ``times`` (name -> every run's ``key``) and ``failed`` (name -> error; not rerun)."""
    best, times, failed = {}, {k: [] for k in names}, {}
    for r in range(repeats):
        for name in names:
            if name in failed:
                continue
            try:
                rep = run_quietly(lambda: run(name), log)[0]
            except RuntimeError as err:
                failed[name] = str(err).splitlines()[0][:400]
                log(f"  [{tag}] {name:24s} FAILED: {failed[name]}")
                continue
            times[name].append(rep[key])
            log(f"  [{tag}] {name:24s} run {r + 1}/{repeats}: {describe(rep)}")
            rss = max(rep["maxrss_mib"], best.get(name, rep)["maxrss_mib"])
            if name not in best or rep[key] < best[name][key]:
                best[name] = rep
            best[name]["maxrss_mib"] = rss
    return {k: best[k] for k in names if k in best}, times, failed


def run_children(module, impls, prep, tmp, repeats, log):
    """``prep`` saved to ``tmp``, then every implementation's ``module.RUN[impl]`` in fresh processes
    (child.py), ``repeats`` times interleaved: ``best_runs``'s (best, works, failed)."""
    np.savez(path := os.path.join(tmp, f"{module}.npz"), **prep)
    describe = lambda rep: (f"work {rep['work_s']:.2f}s (compile {fmt_s(rep['compile_s'])}s) process "
                            f"{rep['process_s']:.2f}s rss {rep['maxrss_mib']:.0f} MiB"
                            + ("" if rep.get("devices") is None else f" devices {rep['devices']}"))
    return best_runs(impls, repeats, lambda impl: run_child(module, impl, path), log, module, "work_s", describe)


# ----------------------------------------------------------------- the contention check
class Contention:
    """Share of all cores that other processes used meanwhile (``/proc/stat``'s busy time minus this
    process's and its reaped children's); ``fraction`` is None off Linux."""

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        end, self.fraction = self._sample(), None
        if self.start and end:
            other = (end[0] - self.start[0]) - (end[1] - self.start[1])
            self.fraction = max(0.0, other / max(end[2] - self.start[2], 1e-9) / (os.cpu_count() or 1))

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        own = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return busy, own, time.perf_counter()


def run_quietly(fn, log=None, *, tries=3, threshold=0.1, wait_s=300):
    """``fn()``; while other processes took more than ``threshold`` of the CPU meanwhile, wait for a
    quiet machine and run it again (``tries`` in all). Returns (result, others' share in the kept run)."""
    for attempt in range(1, tries + 1):
        with Contention() as busy:
            result = fn()
        if busy.fraction is None or busy.fraction <= threshold or attempt == tries:
            return result, busy.fraction
        if log:
            log(f"    (other processes took {100 * busy.fraction:.0f}% of the CPU: waiting for quiet, then again)")
        wait_quiet(wait_s, threshold)


def wait_quiet(limit_s: float, threshold=0.1, window_s=5.0) -> tuple[float, float]:
    """Wait (at most ``limit_s``) until others use < ``threshold`` of the CPU over ``window_s``."""
    start = time.perf_counter()
    while True:
        with Contention() as c:
            time.sleep(window_s)
        if c.fraction is None or c.fraction < threshold or time.perf_counter() - start > limit_s:
            return time.perf_counter() - start, c.fraction or 0.0


# ----------------------------------------------------------------- machine, tables, sections
def machine_info(jax) -> dict:
    import jaxlib
    import optax
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    mem = "?"
    if os.path.exists("/proc/meminfo"):
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) / 2**20:.0f} GiB"
    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    except TypeError:  # NumPy 1
        blas = {}
    dev = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "memory": mem,
            "python": platform.python_version(), "numpy": np.__version__, "optax": optax.__version__,
            "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "device": str(dev), "devices": jax.device_count(),
            "device_kind": dev.device_kind, "platform": jax.default_backend(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg())}


def table(headers, rows, align=None) -> list[str]:
    """Markdown table lines, padded so that they read as plain text too; ``align``: "<" or ">" per
    column (default: the first left, the others right)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    align = align or "<" + ">" * (len(headers) - 1)
    line = lambda cells: "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"
    sep = "|".join((":" if a == "<" else "-") + "-" * w + (":" if a == ">" else "-") for a, w in zip(align, widths))
    return [line(headers), f"|{sep}|"] + [line(r) for r in rows]


def process_table(best, works, failed, ref, extra=None) -> list[str]:
    """The table of fresh-process runs (work, compile, run, process, RSS, devices, vs ``ref``, then the
    ``extra`` columns: header -> fn(report)) and the largest compiled programs."""
    extra = extra or {}
    rows = [[name, f"{r['work_s']:.2f}", " ".join(f"{w:.1f}" for w in works[name]), fmt_s(r["compile_s"]),
             f"{max(0.0, r['work_s'] - (r['compile_s'] or 0)):.2f}", f"{r['process_s']:.2f}",
             f"{r['maxrss_mib']:.0f}", r.get("devices") or "-",
             f"{r['work_s'] / best[ref]['work_s']:.2f}x" if ref in best else "n/a"]
            + [f(r) for f in extra.values()] for name, r in best.items()]
    lines = table(["implementation", "work s", "all runs s", "compile s", "work - compile s", "process s",
                   "peak RSS MiB", "JAX devices", f"vs {ref}", *extra], rows)
    lines += [f"FAILED {name}: {msg}" for name, msg in failed.items()]
    return lines + ["", "Largest compiled programs (s): " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(r["programs"].items())[:3])
        for name, r in best.items() if r.get("programs"))]


def section(title, lines, metrics) -> dict:
    return {"title": title, "lines": lines, "metrics": metrics}


def e2e_section(title, lines, best, flops, **metrics) -> dict:
    """A section of fresh-process runs: ``lines`` then WORK_NOTE; the metrics the goals read (work,
    compile and devices per implementation; ``flops``: impl -> the matmul FLOPs of its work)."""
    metrics.update(work_s={k: v["work_s"] for k, v in best.items()}, flops=flops,
                   compile_s={k: v["compile_s"] for k, v in best.items()},
                   devices={k: v.get("devices") for k, v in best.items()})
    return section(title, lines + ["", WORK_NOTE], metrics)


def fmt_s(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f}"
