"""Workload (a): the optimizer-comparison training step (MLP 784-100x4-10, batch 128, Adam), every
implementation in this process, timed per step; the float32 matmul peak its GFLOP/s are compared
with; and (full mode, CPU) one attempt at using every core for ONE model: the jaxscratch step in
fresh processes under XLA:CPU flags of this jaxlib.

    python benchmarks/a_step.py --thread-child STEPS REPEATS   # one flag variant (XLA_FLAGS set by the caller)
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from common import CompileClock, best_interleaved, mlp_flops, run_process, section, table

STEP_SIZES = (784, 100, 100, 100, 100, 10)
STEP_BATCH = 128
THREAD_FLAGS = {  # XLA_FLAGS -> what it tries (each exists in this jaxlib: `strings` on libjax_common.so)
    "": "the default",
    "--xla_cpu_multi_thread_eigen=false": "Eigen's matmuls on one thread",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true": "schedule independent ops to run concurrently",
    "--xla_cpu_use_onednn=true": "oneDNN's (multithreaded) matmuls",
    "--xla_cpu_use_xnnpack=true": "XNNPACK's matmuls",
}


def matmul_peaks(sizes, with_numpy=True, out=None, repeats=5) -> dict:
    """Best GFLOP/s of a square float32 matmul on JAX's default device (and in NumPy); ``out``: an
    earlier measurement, updated where this one is faster."""
    import jax
    import jax.numpy as jnp
    out = out or {"jax": 0.0, "numpy": 0.0, "jax_n": None, "numpy_n": None}
    dot = jax.jit(jnp.dot)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        an = np.asarray(a)
        for lib, fn in (("jax", lambda: dot(a, a).block_until_ready()), ("numpy", lambda: an @ an))[:1 + with_numpy]:
            fn()
            rate = 2 * n**3 / min(best_interleaved({"d": fn}, repeats)["d"]) / 1e9
            if rate > out[lib]:
                out[lib], out[f"{lib}_n"] = rate, n
    return out


def _jax_matmuls(x):
    """The step's 14 matmuls alone (forward, weight gradients, input gradients of layers 2-5) in one
    scan over gathered batches: what XLA reaches on these shapes with nothing else to do."""
    import jax
    import jax.numpy as jnp
    ws = [jnp.full((a, b), 0.01, jnp.float32) for a, b in zip(STEP_SIZES[:-1], STEP_SIZES[1:])]

    def body(ws, idx):
        hs = [jnp.take(x, idx, axis=0)]
        for w in ws:
            hs.append(hs[-1] @ w)
        d, grads = hs[-1], []
        for i in range(len(ws) - 1, -1, -1):
            grads.append(hs[i].T @ d)
            d = d @ ws[i].T if i else d
        return [w - 1e-9 * g for w, g in zip(ws, grads[::-1])], None

    return jax.jit(lambda b: jax.lax.scan(body, ws, b)[0])


def _numpy_matmuls(x, batches):
    ws = [np.full((a, b), 0.01, np.float32) for a, b in zip(STEP_SIZES[:-1], STEP_SIZES[1:])]
    for idx in batches:
        hs = [x[idx]]
        for w in ws:
            hs.append(hs[-1] @ w)
        d = hs[-1]
        for i in range(len(ws) - 1, -1, -1):
            g = hs[i].T @ d
            d = d @ ws[i].T if i else d
            ws[i] -= np.float32(1e-9) * g


def _programs(x, y, steps):
    """The jaxscratch step program (train.run_steps: one model, one optimizer, compiled as the library compiles
    its training programs) and its inputs."""
    import jax
    from jaxscratch import _compiled, nn, train
    key_init, key_batches = jax.random.split(jax.random.key(0))
    params = nn.init_mlp(key_init, STEP_SIZES)
    batches = jax.random.randint(key_batches, (steps, STEP_BATCH), 0, len(x))
    model, state = nn.mlp_model(STEP_SIZES), nn.init_bn_state(params)  # ReLU, no batch norm
    run = lambda opt: _compiled.jit(lambda p, x, y, b: train.run_steps(model, opt, p, state, x, y, b))
    return params, batches, run, model, state


def step(ds, cfg, peaks) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy_peer
    import optax_peer
    from jaxscratch import optim, train
    K, B, repeats, with_numpy = cfg["a_steps"], STEP_BATCH, cfg["repeats"], not cfg["gpu"]
    flops = mlp_flops(STEP_SIZES, B)
    x_np, y_np = ds.x_train, ds.y_train
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    params, batches, run, model, model_state = _programs(x, y, K)
    params_np, batches_np, x64 = jax.tree.map(np.asarray, params), np.asarray(batches), x_np.astype(np.float64)
    adam = optim.adam()
    js = run(adam)
    epoch = jax.jit(train.make_epoch(model, adam, batch_size=B, use_weight_decay=False), donate_argnums=0)
    K_ep = min(K, len(x_np) // B)  # make_epoch runs len(x) // B steps (its own permutation batches)
    state0 = train.init_state(jax.random.key(1), params, adam, model_state)
    ox_scan = optax_peer.scan_runner(optax_peer.OPTIMIZERS["adam"]())
    ox_loop = optax_peer.loop_runner(optax_peer.OPTIMIZERS["adam"]())
    floor, fresh = _jax_matmuls(x), {}
    np_run = lambda opt, dtype=np.float32, xs=x_np, b=batches_np: numpy_peer.run_steps(
        numpy_peer.MultiLayerNet(params_np, dtype=dtype), opt, xs, y_np, b)
    impls = {  # name -> K steps, blocked until done
        "jaxscratch": lambda: js(params, x, y, batches)[1].block_until_ready(),
        "jaxscratch make_epoch": lambda: epoch(fresh["state"], x[:K_ep * B], y[:K_ep * B],
                                               train.Hyper())[1].block_until_ready(),
        "optax scan": lambda: ox_scan(params, x, y, batches)[1].block_until_ready(),
        "optax loop": lambda: ox_loop(params, x, y, batches_np)[1],  # host losses: synced
        "numpy": lambda: np_run(numpy_peer.Adam()),
        "numpy float64": lambda: np_run(numpy_peer.Adam(), np.float64, x64),
        "XLA matmuls only": lambda: jax.block_until_ready(floor(batches)),
        "NumPy matmuls only": lambda: _numpy_matmuls(x_np, batches_np),
    }
    is_numpy = lambda name: name.lower().startswith("numpy")
    impls = {k: v for k, v in impls.items() if with_numpy or not is_numpy(k)}

    def before():
        fresh["state"] = jax.tree.map(jnp.copy, state0)  # make_epoch donates its state

    clock, compile_s = CompileClock(), {}
    for name, fn in impls.items():  # the first call compiles (JAX) or warms up (NumPy)
        before()
        compile_s[name] = None if is_numpy(name) else clock.during(fn)
        if is_numpy(name):
            fn()

    # Equivalence: the same weights and batches give the same losses. Adam divides by sqrt(v), so
    # rounding in near-zero gradients grows step by step: its tight check covers 5 steps, SGD's 20.
    n = min(K, 20)
    diff = lambda a, b, k=n: float(np.abs(np.asarray(a)[:k] - np.asarray(b)[:k]).max())
    ref = js(params, x, y, batches)[1]
    js_sgd = run(optim.sgd())(params, x, y, batches[:n])[1]
    ox_sgd = optax_peer.scan_runner(optax_peer.OPTIMIZERS["sgd"]())(params, x, y, batches[:n])[1]
    checks = [("Adam, 5 steps: optax scan vs jaxscratch", diff(ox_scan(params, x, y, batches)[1], ref, 5), 1e-4),
              ("Adam, 5 steps: optax loop vs jaxscratch", diff(ox_loop(params, x, y, batches_np)[1], ref, 5), 1e-4),
              (f"SGD, {n} steps: optax scan vs jaxscratch", diff(ox_sgd, js_sgd), 1e-5)]
    if with_numpy:
        book = run(optim.adam(fold_bias_correction=True))(params, x, y, batches)[1]
        checks += [(f"Adam, {n} steps: numpy (the book's Adam) vs jaxscratch adam(fold_bias_correction=True)",
                    diff(np_run(numpy_peer.Adam(), b=batches_np[:n]), book), 1e-3),
                   (f"Adam, {n} steps: numpy float64 vs the same",
                    diff(np_run(numpy_peer.Adam(), np.float64, x64, batches_np[:n]), book), 1e-3),
                   (f"SGD, {n} steps: numpy vs jaxscratch", diff(np_run(numpy_peer.SGD(), b=batches_np[:n]), js_sgd),
                    1e-4)]

    times = best_interleaved(impls, repeats, before=before)
    per_step = {k: min(v) / (K_ep if k == "jaxscratch make_epoch" else K) for k, v in times.items()}
    matmul_peaks(cfg["peak_sizes"], with_numpy, peaks)  # the peak once more, right after: the best counts
    peak_note = f"JAX {peaks['jax']:.1f} GFLOP/s (n={peaks['jax_n']})" + (
        f", NumPy {peaks['numpy']:.1f} GFLOP/s (n={peaks['numpy_n']})" if with_numpy else "")
    lines = [f"MLP {'-'.join(map(str, STEP_SIZES))}, batch {B}, Adam; {K} steps per timed run ({K_ep} for "
             f"make_epoch), best of {repeats} runs interleaved, compilation excluded. FLOPs per step "
             f"{flops['model'] / 1e6:.1f} M (matmuls, forward + 2x backward; {flops['needed'] / 1e6:.1f} M without "
             f"the first layer's input gradient, which nobody computes). Matmul peak: {peak_note}. 'XLA/NumPy "
             "matmuls only' run just the step's 14 matmuls on the gathered batches: floors for these shapes, not "
             "peers.", "", "Equivalence (the same initial weights and batches; max |loss difference|):"]
    lines += [f"- {what}: {d:.2e} {'ok' if d <= tol else 'FAIL'} (tol {tol:g})" for what, d, tol in checks]
    gflops = {name: flops["model"] / t / 1e9 for name, t in per_step.items()}
    rows = [[name, f"{t * 1e3:.3f}", f"{gflops[name]:.1f}",
             f"{100 * gflops[name] / peaks['numpy' if is_numpy(name) else 'jax']:.0f}%",
             "n/a" if compile_s[name] is None else f"{compile_s[name]:.2f}", f"{t / per_step['jaxscratch']:.2f}x"]
            for name, t in per_step.items()]
    lines += [""] + table(["implementation", "ms/step", "GFLOP/s", "% of matmul peak", "compile s", "vs jaxscratch"],
                          rows)
    metrics = {"per_step": per_step, "compile_s": compile_s, "gflops": gflops["jaxscratch"],
               "peak_fraction": gflops["jaxscratch"] / peaks["jax"],
               "floor_fraction": per_step["XLA matmuls only"] / per_step["jaxscratch"]}
    if cfg["a_threads"] and jax.default_backend() == "cpu":
        thread_lines, metrics["threads"] = threading(cfg)
        lines += [""] + thread_lines
    return section("(a) Training step: MLP 784-100x4-10, batch 128, Adam", lines, metrics)


def threading(cfg):
    """The jaxscratch step in a fresh process per XLA_FLAGS variant: ms/step, cores kept busy, and the
    losses against the default's (the flags must not change the numbers beyond rounding)."""
    steps, repeats, out = cfg["a_steps"], cfg["repeats"], {}
    for flags in THREAD_FLAGS:
        try:
            r = run_process([sys.executable, os.path.abspath(__file__), "--thread-child", steps, repeats],
                            XLA_FLAGS=flags)
            out[flags] = json.loads(r["stdout"].strip().splitlines()[-1])
        except (RuntimeError, ValueError, IndexError) as err:
            out[flags] = {"error": str(err).splitlines()[0][:200]}
    base = out[""]
    rows = [[f"`{f}`" if f else "(none)", THREAD_FLAGS[f]] + (
        ["failed: " + r["error"], "", "", ""] if "error" in r else
        [f"{r['ms']:.3f}", f"{r['ms'] / base['ms']:.2f}x" if "ms" in base else "n/a", f"{r['cores']:.2f}",
         f"{np.abs(np.asarray(r['losses']) - base['losses']).max():.1e}" if "losses" in base else "n/a"])
        for f, r in out.items()]
    lines = [f"One model on every core? The jaxscratch step in a fresh process per XLA_FLAGS value ({steps} steps, "
             f"best of {repeats}); 'cores busy': the process's CPU time / wall time while timed.", ""]
    return lines + table(["XLA_FLAGS", "what", "ms/step", "vs default", "cores busy", "max |loss diff|, 5 steps"],
                         rows, ["<", "<", ">", ">", ">", ">"]), out


def _thread_child(steps, repeats):
    import jax
    from jaxscratch import data, optim
    ds = data.load_fashion_mnist()
    x, y = jax.numpy.asarray(ds.x_train), jax.numpy.asarray(ds.y_train)
    params, batches, run, _, _ = _programs(x, y, steps)
    js = run(optim.adam())
    losses = np.asarray(js(params, x, y, batches)[1])[:5].tolist()
    best, c0, w0 = float("inf"), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        js(params, x, y, batches)[1].block_until_ready()
        best = min(best, time.perf_counter() - t)
    cores = (time.process_time() - c0) / (time.perf_counter() - w0)
    print(json.dumps({"ms": 1e3 * best / steps, "cores": cores, "losses": losses}))


if __name__ == "__main__" and sys.argv[1:2] == ["--thread-child"]:
    _thread_child(int(sys.argv[2]), int(sys.argv[3]))
