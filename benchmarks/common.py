"""Shared pieces of the benchmark: FLOP counts, timers, fresh-process runs, machine facts, tables.

Importing this module imports NumPy only (the NumPy peer's child process never loads JAX).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------- FLOPs
def mlp_flops(sizes, batch: int) -> dict:
    """FLOPs of one training step of an MLP, matmuls only (2*m*k*n each).

    ``model``: the usual convention, forward + backward = 3x the forward matmuls (it counts
    the first layer's input gradient, which no implementation here computes: nothing needs it).
    ``needed``: forward, every weight gradient, and the input gradients of layers 2..L only.
    Elementwise work (activations, softmax, the optimizer update) is not counted.
    """
    fwd = sum(2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    first_dx = 2 * batch * sizes[0] * sizes[1]
    return {"forward": fwd, "model": 3 * fwd, "needed": 3 * fwd - first_dx}


# ----------------------------------------------------------------- timing
def best_interleaved(fns: dict, repeats: int, *, before=None) -> dict:
    """name -> list of wall times, the functions called in turn A B C A B C ... ``repeats`` times."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if before is not None:
                before()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def maxrss_mib_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# A tiny launcher between the benchmark and each measured process. On Linux a child's ru_maxrss
# includes the high-water RSS of the address space it was forked (or vforked) from, i.e. the
# benchmark's own ~1 GiB; forking from this ~10 MiB launcher instead makes the number the
# measured process's own (plus at most the launcher's few MiB).
_LAUNCHER = r"""
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump({"wall_s": time.perf_counter() - start, "maxrss_kib": usage.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_process(argv, *, env=None, cwd=ROOT) -> dict:
    """Run ``argv`` in a fresh process; its wall time (fork to exit), its own peak RSS, its output.

    Output goes to temporary files, so a chatty child never blocks on a pipe.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open_tmp_json() as report:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, report, *map(str, argv)], stdout=out, stderr=err,
                              env=env, cwd=cwd)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        try:
            with open(report) as f:
                r = json.load(f)
        except (OSError, ValueError):
            r = {"rc": proc.returncode}
    if proc.returncode != 0 or r["rc"] != 0:
        raise RuntimeError(f"exit status {r['rc']}: {_error_line(stderr)}\n{' '.join(map(str, argv))}\n{stderr[-3000:]}")
    return {"wall_s": r["wall_s"], "maxrss_mib": r["maxrss_kib"] / 1024, "stdout": stdout, "stderr": stderr}


def _error_line(stderr: str) -> str:
    """The exception line of a Python traceback (the last line that looks like ``SomeError: ...``)."""
    for line in reversed(stderr.strip().splitlines()):
        head = line.split(":", 1)[0].strip()
        if head and " " not in head and (head.endswith(("Error", "Exception", "Exit", "Interrupt")) or "." in head):
            return line.strip()[:400]
    return (stderr.strip().splitlines() or ["(no output)"])[-1][:400]


def run_child(workload: str, impl: str, prep: str) -> dict:
    """``child.py`` in a fresh interpreter; returns its JSON report plus the process wall and RSS."""
    with open_tmp_json() as path:
        r = run_process([sys.executable, os.path.join(HERE, "child.py"), workload, impl, prep, path])
        with open(path) as f:
            report = json.load(f)
    report.update(process_s=r["wall_s"], maxrss_mib=r["maxrss_mib"])
    return report


class open_tmp_json:
    def __enter__(self):
        fd, self.path = tempfile.mkstemp(suffix=".json", prefix="bench-")
        os.close(fd)
        return self.path

    def __exit__(self, *exc):
        if os.path.exists(self.path):
            os.remove(self.path)


class Contention:
    """How much of the machine other processes used while a workload ran (a shared machine's noise).

    ``/proc/stat``'s busy CPU time minus this process's and its reaped children's; ``fraction`` is
    the average share of all cores they took (0: a quiet machine). Linux only; ``None`` elsewhere.
    """

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        end = self._sample()
        self.fraction = None
        if self.start and end:
            wall = end[2] - self.start[2]
            other = (end[0] - self.start[0]) - (end[1] - self.start[1])
            self.fraction = max(0.0, other / max(wall, 1e-9) / (os.cpu_count() or 1))

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
    """``fn()`` under :class:`Contention`; if other processes took more than ``threshold`` of the CPU
    meanwhile, wait (up to ``wait_s``) for a quiet machine and run it again, at most ``tries`` times
    in all. Returns ``(result, share taken by others during the run kept)``: the last run's, which
    is the quietest one on offer; the caller still takes the best time over its own repeats."""
    for attempt in range(1, tries + 1):
        with Contention() as busy:
            result = fn()
        if busy.fraction is None or busy.fraction <= threshold or attempt == tries:
            return result, busy.fraction
        if log:
            log(f"    (other processes took {100 * busy.fraction:.0f}% of the CPU: waiting for quiet, then again)")
        wait_quiet(wait_s, threshold)


def wait_quiet(limit_s: float, threshold=0.1, window_s=5.0) -> tuple[float, float]:
    """Wait until other processes use less than ``threshold`` of the CPU over ``window_s``, at most
    ``limit_s`` seconds; returns (seconds waited, the last share measured)."""
    start = time.perf_counter()
    while True:
        with Contention() as c:
            time.sleep(window_s)
        if c.fraction is None or c.fraction < threshold or time.perf_counter() - start > limit_s:
            return time.perf_counter() - start, c.fraction or 0.0


def fashion_mnist_dir() -> str | None:
    """The folder where jaxscratch's loader finds the Fashion-MNIST IDX files (for the optax script)."""
    from jaxscratch import data
    home = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    candidates = [os.path.join(os.environ["JAXSCRATCH_DATA"], "fashion-mnist")] if "JAXSCRATCH_DATA" in os.environ else []
    candidates += [os.path.join(home, "jaxscratch", "fashion-mnist"), *map(str, data.FASHION_MNIST_SYSTEM_DIRS)]
    for d in candidates:
        if any(os.path.exists(os.path.join(d, "train-images-idx3-ubyte" + ext)) for ext in (".gz", "")):
            return d
    return None


def write_idx_subset(ds, folder: str, n_train: int, n_test: int) -> str:
    """The first rows of a loaded data set written back as the four gzipped IDX files (quick mode)."""
    import gzip
    import struct
    os.makedirs(folder, exist_ok=True)

    def write(name, a):
        header = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        with gzip.open(os.path.join(folder, name), "wb", compresslevel=1) as f:
            f.write(header + np.ascontiguousarray(a, np.uint8).tobytes())

    img = lambda x: np.rint(np.asarray(x) * 255).astype(np.uint8).reshape(-1, 28, 28)
    write("train-images-idx3-ubyte.gz", img(ds.x_train[:n_train]))
    write("train-labels-idx1-ubyte.gz", np.asarray(ds.y_train[:n_train]))
    write("t10k-images-idx3-ubyte.gz", img(ds.x_test[:n_test]))
    write("t10k-labels-idx1-ubyte.gz", np.asarray(ds.y_test[:n_test]))
    return folder


# ----------------------------------------------------------------- machine
def machine_info(jax_module=None) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "memory": mem,
            "python": platform.python_version(), "numpy": np.__version__,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    try:
        info["blas"] = _numpy_blas()
    except Exception:  # informational only
        info["blas"] = "?"
    if jax_module is not None:
        import jaxlib
        info.update(jax=jax_module.__version__, jaxlib=jaxlib.__version__,
                    device=str(jax_module.devices()[0]), device_kind=jax_module.devices()[0].device_kind,
                    platform=jax_module.default_backend(), device_count=jax_module.device_count())
        try:
            import optax
            info["optax"] = optax.__version__
        except ImportError:
            info["optax"] = "missing"
    return info


def _numpy_blas() -> str:
    cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
    blas = cfg.get("Build Dependencies", {}).get("blas", {})
    return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()


# ----------------------------------------------------------------- tables
def section(title, lines, metrics) -> dict:
    """A workload's result: its title, its text (Markdown-compatible lines) and its numbers."""
    return {"title": title, "lines": lines, "metrics": metrics}



def fmt_table(headers, rows, align=None) -> list[str]:
    """Plain-text table lines (also valid as the body of a Markdown table)."""
    cols = [[str(h)] + [str(r[i]) for r in rows] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in col) for col in cols]
    align = align or ["<"] + [">"] * (len(headers) - 1)

    def line(cells):
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"

    sep = "|" + "|".join((":" if a == "<" else "-") + "-" * w + (":" if a == ">" else "-")
                         for a, w in zip(align, widths)) + "|"
    return [line(headers), sep] + [line([str(c) for c in r]) for r in rows]


def ratio_matrix(times: dict) -> tuple[list, list]:
    """Headers and rows of ``time[row] / time[col]`` for every pair (< 1: the row is faster)."""
    names = list(times)
    headers = ["row / column"] + names
    rows = [[a] + ["1" if a == b else f"{times[a] / times[b]:.2f}x" for b in names] for a in names]
    return headers, rows


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f}"
