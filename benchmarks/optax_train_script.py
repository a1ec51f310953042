"""A minimal JAX + optax script doing the work of ``jaxscratch train --dataset fashion-mnist``.

    python benchmarks/optax_train_script.py [--epochs 30] [--out runs/optax] [--data-dir DIR] [--jax-cache DIR]

The peer of workload (e), written the way a competent user would, without jaxscratch: the four IDX
files read, 10% held out for validation, MLP 784-100-100-10 (He init), Adam 1e-3 (eps 1e-7), batch
100, each epoch a fresh permutation trained in one jitted ``lax.scan``; after each epoch loss and
accuracy on train, validation and test, the best-validation parameters kept and a checkpoint
written (``np.savez``); at the end the best parameters, a JSON of metrics and a PNG of the curves.
Split, keys and initialisation are jaxscratch's (``train_val_split``, ``init_mlp``, ``fit``), so
the runs agree number for number at first (float rounding drifts them apart by a few tenths of a
point over thousands of Adam steps). Prints one line per epoch and, last, its phase timings.
"""
import argparse
import gzip
import json
import os
import struct
import time

T0 = time.perf_counter()

import jax  # noqa: E402 (timed from T0)
import jax.numpy as jnp  # noqa: E402 (timed from T0)
import numpy as np  # noqa: E402 (timed from T0)
import optax  # noqa: E402 (timed from T0)


def read_idx(path):
    opener = gzip.open if os.path.exists(path) else open
    path = path if os.path.exists(path) else path[:-len(".gz")]
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir):
    images = lambda name: read_idx(os.path.join(data_dir, name)).reshape(-1, 784).astype(np.float32) / np.float32(255)
    labels = lambda name: read_idx(os.path.join(data_dir, name)).astype(np.int32)
    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": (2.0 / m) ** 0.5 * jax.random.normal(k, (m, n)), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def forward(params, x):
    for p in params[:-1]:
        x = jax.nn.relu(x @ p["w"] + p["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default="runs/optax")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jax-cache", default=None, help="turn on JAX's persistent compilation cache in this folder")
    args = ap.parse_args()
    if args.jax_cache:  # the two lines a user adds to keep compiled programs between runs
        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    phases = {"imports": time.perf_counter() - T0}
    # Measurement only (not part of the work): the seconds JAX spends tracing, lowering and compiling.
    compiling = {"now": 0.0}
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compiling.__setitem__("now", compiling["now"] + secs)
        if event.startswith("/jax/core/compile/") and event.endswith("_duration") else None)

    t = time.perf_counter()
    x, y, x_test, y_test = load(args.data_dir)
    perm = np.random.default_rng(args.seed).permutation(len(x))
    n_val = round(0.1 * len(x))
    sets = {"train": (x[perm[n_val:]], y[perm[n_val:]]), "val": (x[perm[:n_val]], y[perm[:n_val]]),
            "test": (x_test, y_test)}
    sets = {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in sets.items()}
    xt, yt = sets["train"]
    phases["data"] = time.perf_counter() - t

    t = time.perf_counter()
    key = jax.random.key(args.seed)
    params = init_mlp(key, (784, 100, 100, 10))
    opt = optax.adam(1e-3, eps=1e-7)
    steps = xt.shape[0] // args.batch_size

    def loss_fn(params, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, xb), yb).mean()

    @jax.jit
    def train_epoch(params, opt_state, epoch, x, y):
        idx = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch), x.shape[0])
        idx = idx[:steps * args.batch_size].reshape(steps, args.batch_size)

        def step(carry, i):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, x[i], y[i])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
        return params, opt_state, losses

    @jax.jit
    def evaluate(params, x, y):
        logits = forward(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    os.makedirs(args.out, exist_ok=True)
    opt_state = opt.init(params)
    phases["init"] = time.perf_counter() - t
    history = {"step_loss": [], "epoch": [], "time": []}
    best, best_acc = params, -1.0
    phases.update(train=0.0, evaluate=0.0, checkpoint=0.0)
    compiled_before_loop = compiling["now"]
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        params, opt_state, losses = train_epoch(params, opt_state, epoch - 1, xt, yt)
        losses = np.asarray(losses)
        t1 = time.perf_counter()
        record = {}
        for name, (xe, ye) in sets.items():
            loss, acc = evaluate(params, xe, ye)
            record[f"{name}_eval_loss"], record[f"{name}_acc"] = float(loss), float(acc)
        t2 = time.perf_counter()
        if not np.isfinite(losses).all():
            raise FloatingPointError(f"loss diverged in epoch {epoch}")
        history["step_loss"].extend(losses.tolist())
        history["epoch"].append(epoch)
        history["time"].append(t2 - t)
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        if record["val_acc"] > best_acc:
            best, best_acc = params, record["val_acc"]
        leaves = {f"state_{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves((params, opt_state)))}
        leaves.update({f"best_{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(best))})
        np.savez(os.path.join(args.out, "checkpoint.npz"), step=epoch * steps, **leaves)  # not atomic: minimal
        t3 = time.perf_counter()
        phases["train"] += t1 - t
        phases["evaluate"] += t2 - t1
        phases["checkpoint"] += t3 - t2
        print(f"epoch {epoch}/{args.epochs}  loss {losses.mean():.4f}  train {100 * record['train_acc']:.1f}%  "
              f"val {100 * record['val_acc']:.1f}%  test {100 * record['test_acc']:.1f}%  {t2 - t:.1f}s", flush=True)

    t = time.perf_counter()
    np.savez(os.path.join(args.out, "best.npz"),
             **{f"p{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(best))})
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump({"test_accuracy": history["test_acc"][-1], "best_val_accuracy": best_acc, "history": history}, f)
    phases["checkpoint"] += time.perf_counter() - t

    t = time.perf_counter()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    sl = np.asarray(history["step_loss"])
    ax1.plot(sl, color="0.8", lw=0.8, label="per step")
    ax1.plot(np.convolve(sl, np.ones(11) / 11, mode="same"), color="C0", label="smoothed")
    ax1.set(xlabel="step", ylabel="training loss", yscale="log")
    ax1.legend()
    for name, style in (("train", "-"), ("val", "--"), ("test", ":")):
        ax2.plot(history["epoch"], 100 * np.asarray(history[f"{name}_acc"]), style, marker="o", ms=3, label=name)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)")
    ax2.legend()
    fig.savefig(os.path.join(args.out, "training.png"), dpi=110, bbox_inches="tight")
    phases.update(plot=time.perf_counter() - t, total_in_process=time.perf_counter() - T0,
                  compile_in_loop=compiling["now"] - compiled_before_loop, compile_total=compiling["now"])
    print(f"test accuracy {100 * history['test_acc'][-1]:.2f}%  -> {args.out}")
    print("PHASES " + json.dumps(phases))


if __name__ == "__main__":
    main()
