"""One implementation of one workload in a fresh interpreter (started by common.run_child).

    python benchmarks/child.py MODULE IMPL PREP.npz REPORT.json

``MODULE.RUN[IMPL](prep)`` does the work; PREP.npz holds the inputs every implementation shares.
The implementation's libraries are imported first, as a user's script does: jaxscratch's children
then call ``jaxscratch.devices.use_cpu_cores()`` (one JAX device per core, before anything starts
JAX's backends, as the examples do); the peers keep JAX's single default device; NumPy's never
import JAX. "work" is timed from PREP loaded into NumPy arrays to the results on the host.
"""
import importlib
import json
import os
import sys
import time

T0 = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(module, impl, prep_path, report_path):
    clock = None
    if impl.startswith("numpy"):
        importlib.import_module("numpy_peer")
    else:
        import common
        if impl.startswith("jaxscratch"):
            import jaxscratch
            jaxscratch.devices.use_cpu_cores()
        else:
            import optax  # noqa: F401 (imported before the work, as a user's script does)
            import optax_peer  # noqa: F401
        clock = common.CompileClock()
    import numpy as np
    mod = importlib.import_module(module)
    imports_s = time.perf_counter() - T0
    with np.load(prep_path) as f:
        prep = {k: f[k] for k in f.files}
    start = time.perf_counter()
    result = mod.RUN[impl](prep)
    work = time.perf_counter() - start
    jax = sys.modules.get("jax")
    report = {"work_s": work, "imports_s": imports_s, "result": result, "compile_s": clock and clock.total,
              "programs": clock.largest() if clock else {}, "devices": jax.device_count() if jax else None}
    with open(report_path, "w") as f:
        json.dump(report, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


if __name__ == "__main__":
    main(*sys.argv[1:5])
