"""Workload (a) of the benchmark: the optimizer-comparison training step (MLP 784-100x4-10, batch
128, Adam), every implementation in this process, timed per step; and the float32 matmul peak
that its GFLOP/s are compared with.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common import best_interleaved, fmt_table, mlp_flops, ms, ratio_matrix, s, section
import numpy_peer
import optax_peer
from jaxscratch import nn, optim, train

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_clock = [0.0]


def _on_duration(event, duration, **_):
    if event in COMPILE_EVENTS:
        _compile_clock[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds(fn):
    """Run ``fn`` once; the seconds JAX spent tracing, lowering and compiling during it."""
    before = _compile_clock[0]
    fn()
    return _compile_clock[0] - before


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


# ----------------------------------------------------------------- matmul peak
def matmul_peaks(sizes, repeats=5) -> dict:
    """Best GFLOP/s of a square float32 matmul, on JAX's default device and in NumPy (CPU)."""
    out = {"jax": 0.0, "numpy": 0.0, "jax_n": None, "numpy_n": None}
    dot = jax.jit(jnp.dot)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        dot(a, a).block_until_ready()
        t = min(best_interleaved({"d": lambda: dot(a, a).block_until_ready()}, repeats)["d"])
        if 2 * n**3 / t / 1e9 > out["jax"]:
            out["jax"], out["jax_n"] = 2 * n**3 / t / 1e9, n
        an = np.asarray(a)
        an @ an
        t = min(best_interleaved({"d": lambda: an @ an}, repeats)["d"])
        if 2 * n**3 / t / 1e9 > out["numpy"]:
            out["numpy"], out["numpy_n"] = 2 * n**3 / t / 1e9, n
    return out


# ----------------------------------------------------------------- (a) the training step
STEP_SIZES = (784, 100, 100, 100, 100, 10)
STEP_BATCH = 128


def _matmul_floor(x, batches):
    """The step's 14 matmuls alone (forward, weight gradients, input gradients of layers 2..5) on
    gathered batches, in one scan: what XLA achieves on these shapes with nothing else to do."""
    ws = [jnp.full((a, b), 0.01, jnp.float32) for a, b in zip(STEP_SIZES[:-1], STEP_SIZES[1:])]

    def body(ws, idx):
        hs = [jnp.take(x, idx, axis=0)]
        for w in ws:
            hs.append(hs[-1] @ w)
        d, grads = hs[-1], []
        for i in range(len(ws) - 1, -1, -1):
            grads.append(hs[i].T @ d)
            if i:
                d = d @ ws[i].T
        return [w - 1e-9 * g for w, g in zip(ws, grads[::-1])], None

    return jax.jit(lambda b: jax.lax.scan(body, ws, b)[0]), ws


def _numpy_matmul_floor(x, batches):
    """The step's 14 matmuls alone in NumPy (float32), for each batch in turn."""
    ws = [np.full((a, b), 0.01, np.float32) for a, b in zip(STEP_SIZES[:-1], STEP_SIZES[1:])]
    for idx in batches:
        hs = [x[idx]]
        for w in ws:
            hs.append(hs[-1] @ w)
        d = hs[-1]
        for i in range(len(ws) - 1, -1, -1):
            g = hs[i].T @ d
            if i:
                d = d @ ws[i].T
            ws[i] -= np.float32(1e-9) * g


def step(ds, cfg, peaks) -> dict:
    K, B, repeats = cfg["a_steps"], STEP_BATCH, cfg["repeats"]
    flops = mlp_flops(STEP_SIZES, B)
    key_init, key_batches = jax.random.split(jax.random.key(0))
    params = nn.init_mlp(key_init, STEP_SIZES)
    params_np = to_numpy(params)
    x_np, y_np = ds.x_train, ds.y_train
    batches_np = np.asarray(jax.random.randint(key_batches, (K, B), 0, len(x_np)))
    x, y, batches = jnp.asarray(x_np), jnp.asarray(y_np), jnp.asarray(batches_np)
    x_f64 = x_np.astype(np.float64)
    adam = optim.adam()
    model, model_state = nn.mlp_model(STEP_SIZES), nn.init_bn_state(params)  # ReLU, no batch norm

    js_run = jax.jit(lambda p, x, y, b: train.run_steps(model, adam, p, model_state, x, y, b))
    js_book = jax.jit(lambda p, x, y, b: train.run_steps(model, optim.adam(fold_bias_correction=True), p, model_state,
                                                         x, y, b))
    epoch = jax.jit(train.make_epoch(model, adam, batch_size=B, use_weight_decay=False),  # as fit with wd 0
                    donate_argnums=0)
    K_ep = min(K, len(x_np) // B)  # make_epoch runs len(x) // B steps: K of them if the data allow
    x_ep, y_ep = x[:K_ep * B], y[:K_ep * B]
    state0 = train.init_state(jax.random.key(1), params, adam, model_state)
    ox_scan = optax_peer.scan_runner(optax_peer.OPTIMIZERS["adam"]())
    ox_loop = optax_peer.loop_runner(optax_peer.OPTIMIZERS["adam"]())[0]
    floor, ws = _matmul_floor(x, batches)
    fresh = {}

    impls = {  # name -> a call that runs K steps and returns the losses (blocked)
        "jaxscratch": lambda: js_run(params, x, y, batches)[1].block_until_ready(),
        "jaxscratch make_epoch": lambda: epoch(fresh["state"], x_ep, y_ep, train.Hyper())[1].block_until_ready(),
        "optax scan": lambda: ox_scan(params, x, y, batches)[1].block_until_ready(),
        "optax loop": lambda: ox_loop(params, x, y, batches_np)[1],  # returns host losses: synced
        "numpy": lambda: numpy_peer.run_steps(numpy_peer.MultiLayerNet(params_np), numpy_peer.Adam(), x_np, y_np, batches_np),
        "numpy float64": lambda: numpy_peer.run_steps(numpy_peer.MultiLayerNet(params_np, dtype=np.float64),
                                                      numpy_peer.Adam(), x_f64, y_np, batches_np),
        "XLA matmuls only": lambda: jax.block_until_ready(floor(batches)),
        "NumPy matmuls only": lambda: _numpy_matmul_floor(x_np, batches_np),
    }

    def before():
        fresh["state"] = jax.tree.map(jnp.copy, state0)  # make_epoch donates its state

    compile_s = {}
    for name, fn in impls.items():
        before()
        compile_s[name] = None if name.lower().startswith("numpy") else compile_seconds(fn)
        if compile_s[name] is None:
            fn()  # warm-up

    # Equivalence: the same init and batches give the same losses. Adam divides by sqrt(v), so float
    # rounding in near-zero gradients grows step by step: its tight check covers the first 5 steps; SGD's
    # (no such amplification) 20 steps.
    n_check = min(K, 20)
    diff = lambda a, b, n: float(np.abs(np.asarray(a)[:n] - np.asarray(b)[:n]).max())
    ref = np.asarray(js_run(params, x, y, batches)[1])
    book = np.asarray(js_book(params, x, y, batches)[1])
    sub = batches_np[:n_check]
    np_adam = numpy_peer.run_steps(numpy_peer.MultiLayerNet(params_np), numpy_peer.Adam(), x_np, y_np, sub)
    np64_adam = numpy_peer.run_steps(numpy_peer.MultiLayerNet(params_np, dtype=np.float64), numpy_peer.Adam(), x_f64,
                                     y_np, sub)
    js_sgd = np.asarray(jax.jit(lambda p, x, y, b: train.run_steps(model, optim.sgd(), p, model_state, x, y, b))(
        params, x, y, batches[:n_check])[1])
    ox_sgd = np.asarray(optax_peer.scan_runner(optax_peer.OPTIMIZERS["sgd"]())(params, x, y, batches[:n_check])[1])
    np_sgd = numpy_peer.run_steps(numpy_peer.MultiLayerNet(params_np), numpy_peer.SGD(), x_np, y_np, sub)
    ox_scan_l, ox_loop_l = ox_scan(params, x, y, batches)[1], ox_loop(params, x, y, batches_np)[1]
    check = [
        ("Adam, 5 steps: optax scan vs jaxscratch", diff(ox_scan_l, ref, 5), 1e-4),
        ("Adam, 5 steps: optax loop vs jaxscratch", diff(ox_loop_l, ref, 5), 1e-4),
        (f"Adam, {n_check} steps: optax scan vs jaxscratch (info)", diff(ox_scan_l, ref, n_check), None),
        (f"Adam, {n_check} steps: numpy (the book's Adam) vs jaxscratch adam(fold_bias_correction=True)",
         diff(np_adam, book, n_check), 1e-3),
        (f"Adam, {n_check} steps: numpy float64 vs jaxscratch adam(fold_bias_correction=True)",
         diff(np64_adam, book, n_check), 1e-3),
        ("Adam, 5 steps: numpy (the book's Adam) vs jaxscratch's default Adam (info: eps placement differs)",
         diff(np_adam, ref, 5), None),
        (f"SGD, {n_check} steps: optax scan vs jaxscratch", diff(ox_sgd, js_sgd, n_check), 1e-5),
        (f"SGD, {n_check} steps: numpy vs jaxscratch", diff(np_sgd, js_sgd, n_check), 1e-4),
    ]

    times = best_interleaved(impls, repeats, before=before)
    per_step = {k: min(v) / (K_ep if k == "jaxscratch make_epoch" else K) for k, v in times.items()}
    again = matmul_peaks(cfg["peak_sizes"])  # the peak once more, right after: the best of both counts
    for lib in ("jax", "numpy"):
        if again[lib] > peaks[lib]:
            peaks[lib], peaks[f"{lib}_n"] = again[lib], again[f"{lib}_n"]
    lines = [f"MLP {'-'.join(map(str, STEP_SIZES))}, batch {B}, Adam; {K} steps per timed run ({K_ep} for make_epoch: "
             f"one epoch of {K_ep * B} rows), best of {repeats} "
             f"runs interleaved; compile excluded (warm-up first). FLOPs per step: {flops['model'] / 1e6:.1f} M "
             f"(matmuls, forward + 2x backward; the {flops['needed'] / 1e6:.1f} M actually needed leave out the "
             f"first layer's input gradient). Matmul peak in this run: JAX {peaks['jax']:.1f} GFLOP/s "
             f"(n={peaks['jax_n']}), NumPy {peaks['numpy']:.1f} GFLOP/s (n={peaks['numpy_n']}).", ""]
    lines.append("Equivalence (the same initial weights and batches; max |loss difference| over the first steps):")
    ok = True
    for what, diff, tol in check:
        verdict = "" if tol is None else ("ok" if diff <= tol else "FAIL") + f" (tol {tol:g})"
        ok &= tol is None or diff <= tol
        lines.append(f"- {what}: {diff:.2e} {verdict}")
    lines.append("")
    rows = []
    for name, t in per_step.items():
        peak = peaks["numpy"] if name.lower().startswith("numpy") else peaks["jax"]
        gf = flops["model"] / t / 1e9
        rows.append([name, ms(t), f"{gf:.1f}", f"{100 * gf / peak:.0f}%", s(compile_s[name]),
                     f"{t / per_step['jaxscratch']:.2f}x"])
    lines += fmt_table(["implementation", "ms/step", "GFLOP/s", "% of matmul peak", "compile s", "vs jaxscratch"], rows)
    lines += ["", "Each ratio (time of row / time of column; below 1: the row is faster):", ""]
    lines += fmt_table(*ratio_matrix({k: v for k, v in per_step.items()}))
    lines += ["", "% of matmul peak: JAX rows against the JAX peak, NumPy rows against the NumPy peak. "
              "'jaxscratch' is train.run_steps (what sweep.compare_optimizers runs); 'make_epoch' is fit's "
              "epoch program (its own permutation batches); 'XLA matmuls only' and 'NumPy matmuls only' run just the "
              "step's 14 matmuls (forward, weight gradients, input gradients of layers 2-5) on the gathered batches: "
              "floors for these shapes, not peers."]
    gf_js = flops["model"] / per_step["jaxscratch"] / 1e9
    metrics = {"per_step": per_step, "compile_s": compile_s, "gflops_jaxscratch": gf_js,
               "peak_fraction": gf_js / peaks["jax"], "equivalent": ok,
               "floor_fraction": flops["model"] / per_step["XLA matmuls only"] / 1e9 / peaks["jax"]}
    return section("(a) Training step: MLP 784-100x4-10, batch 128, Adam", lines, metrics)
