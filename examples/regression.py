"""Regression: an MLP fitted with the mean squared error, by ``train.fit`` and by the command.

    python examples/regression.py [--quick] [--out figures] [--work DIR]

Makes a seeded regression set, ``y = sin(2 x0) + 0.5 x1 + noise`` on ``x`` uniform in
[-2, 2]^2, saves it as ``regression.npz`` (``x_train, y_train, x_test, y_test``) in ``--work``
(default: a temporary folder, deleted at the end), trains ``nn.mlp_model((2, 64, 1))`` on it
with ``train.fit(..., loss="mse")`` (train/val/test RMSE after every epoch), then trains the
same file with the same configuration through the command,

    python -m jaxscratch train --dataset regression.npz --loss mse --hidden 64 ...
    python -m jaxscratch evaluate RUN

and checks the two agree. They do to the last digit: the command initialises and trains from
``key(seed)`` and splits off the validation set with ``data.train_val_split(..., seed=seed)``,
which is what the script does. Writes figures/regression.png (test predictions against targets;
the loss curves). Expected output, full mode (2-core CPU shared with other jobs, 13 s in all):

    regression.npz: 1000 train (900 + 100 validation), 500 test, x in [-2, 2]^2, noise std 0.1
    epoch 1/40  loss 5.5815  train rmse 1.198  val rmse 1.291  test rmse 1.243  0.0s
    ...
    epoch 40/40  loss 0.0131  train rmse 0.1148  val rmse 0.1173  test rmse 0.1194  0.0s
    train.fit    40 epochs  last test rmse 0.11935  best-val test rmse 0.11964  2.7s
      $ jaxscratch train --dataset regression.npz --loss mse --hidden 64 ... --out run
      test rmse 0.1194  (720 steps, 2.0s, 359 steps/s)  -> /tmp/.../run, training.png
    command      40 epochs  last test rmse 0.11935  best-val test rmse 0.11964  8.2s
    fit and command agree: test rmse 0.11935 and 0.11935 (last), 0.11964 and 0.11964 (best-val); ...
    saved figures/regression.png

The test RMSE ends near the noise's standard deviation 0.1, the floor no model can beat; the
command's last and best-validation states (``evaluate`` reads the best) match ``fit``'s
bit for bit. --quick (20 epochs): test rmse 0.185, the command agreeing as exactly.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
import numpy as np  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

import jaxscratch  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)
from jaxscratch import data, nn, optim, train  # noqa: E402 (below matplotlib.use, which must run before pyplot is imported)

jaxscratch.devices.use_cpu_cores()  # one JAX device per CPU core: sweeps split their trials over them
jaxscratch.compile_cache.enable()  # compiled programs kept on disk between runs (JAXSCRATCH_COMPILE_CACHE=off)

N_TRAIN, N_TEST = 1000, 500  # small enough for seconds, enough to see the noise floor
NOISE = 0.1                  # noise std: the best test RMSE any model can reach
HIDDEN = 64                  # one hidden layer of 64 ReLUs fits sin(2 x0) + 0.5 x1 easily
LEARNING_RATE = 0.01         # Adam: 1e-3 (the default) needs ~4x the epochs on this small set
BATCH_SIZE = 50              # 18 steps an epoch on the 900 training rows
EPOCHS, QUICK_EPOCHS = 40, 20  # 40: the noise floor; 20: the tests' few seconds, halfway there
VALIDATION_FRACTION = 0.1    # the command's default, so the split is the same as its own
SEED = 0


def make_npz(path: str) -> str:
    """The regression set, seeded: float32 ``x (n, 2)``, ``y (n,)``."""
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-2, 2, size=(N_TRAIN + N_TEST, 2)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + NOISE * rng.normal(size=len(x))).astype(np.float32)
    np.savez(path, x_train=x[:N_TRAIN], y_train=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:])
    return path


def fit(path: str, epochs: int):
    """``train.fit`` configured as the command will be: same split, key, model and optimizer."""
    ds = data.load_npz(path, targets="values")
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, VALIDATION_FRACTION, seed=SEED)
    model = nn.mlp_model((ds.x_train.shape[1], HIDDEN, 1))
    result = train.fit(jax.random.key(SEED), model, optim.adam(LEARNING_RATE), (xt, yt), epochs=epochs,
                       batch_size=BATCH_SIZE, loss="mse", validation=(xv, yv), test=(ds.x_test, ds.y_test))
    best = train.evaluate(model, result.best.params, result.best.model_state, ds.x_test, ds.y_test, loss="mse")
    predictions, _ = model.apply(result.state.params, result.state.model_state, ds.x_test, train=False)
    return result.history, float(best["rmse"]), ds.y_test, np.asarray(predictions)[:, 0]


def command(path: str, run_dir: str, epochs: int) -> tuple[float, float]:
    """The same training through ``python -m jaxscratch``: (last test RMSE, best-val test RMSE)."""
    flags = ["--loss", "mse", "--hidden", str(HIDDEN), "--optimizer", "adam", "--learning-rate", str(LEARNING_RATE),
             "--epochs", str(epochs), "--batch-size", str(BATCH_SIZE), "--seed", str(SEED),
             "--validation-fraction", str(VALIDATION_FRACTION)]
    def jaxscratch(*argv):
        done = subprocess.run([sys.executable, "-m", "jaxscratch", *argv], capture_output=True, text=True)
        if done.returncode:  # e.g. --work holding an earlier run: the command's own one-line error
            raise SystemExit(done.stderr.strip().splitlines()[-1])
        return done.stdout

    trained = jaxscratch("train", "--dataset", path, *flags, "--out", run_dir)
    print(f"  $ jaxscratch train --dataset {os.path.basename(path)} {' '.join(flags)} --out run\n"
          f"  {trained.strip().splitlines()[-1]}")  # its summary line
    report = os.path.join(run_dir, "evaluate.json")  # full precision: the printout rounds to 4 digits
    jaxscratch("evaluate", run_dir, "--json", report)
    with open(os.path.join(run_dir, "metrics.json")) as f, open(report) as g:
        return json.load(f)["test_rmse"], json.load(g)["test"]["rmse"]


def save_figure(history: dict, y: np.ndarray, predictions: np.ndarray, path: str) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(y, predictions, s=8, alpha=0.6)
    lo, hi = float(min(y.min(), predictions.min())), float(max(y.max(), predictions.max()))
    left.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = target")
    left.set(xlabel="test target y", ylabel="prediction",
             title=f"test set: rmse {history['test_rmse'][-1]:.3f} (noise std {NOISE})")
    left.legend(loc="upper left")
    steps = np.arange(1, len(history["step_loss"]) + 1) / (len(history["step_loss"]) / len(history["epoch"]))
    right.plot(steps, history["step_loss"], color="C0", alpha=0.4, lw=0.8, label="training loss per step")
    for name, color in (("train", "C0"), ("val", "C1"), ("test", "C2")):
        right.plot(history["epoch"], history[f"{name}_eval_loss"], color=color, marker=".", label=f"{name} mse")
    right.axhline(NOISE**2, color="gray", ls=":", label="noise variance")
    right.set(xlabel="epoch", ylabel="mean squared error", yscale="log", title="loss")
    right.legend(loc="upper right", fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"y = sin(2 x0) + 0.5 x1 + noise: MLP 2-{HIDDEN}-1, Adam lr {LEARNING_RATE:g}, mse")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs (the test suite's mode)")
    parser.add_argument("--out", default="figures", help="folder for the PNG (default: figures)")
    parser.add_argument("--work", default=None, help="folder to keep the .npz and the command's run in "
                                                     "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    epochs = QUICK_EPOCHS if args.quick else EPOCHS

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        os.makedirs(work, exist_ok=True)
        path = make_npz(os.path.join(work, "regression.npz"))
        print(f"regression.npz: {N_TRAIN} train ({N_TRAIN - round(VALIDATION_FRACTION * N_TRAIN)} + "
              f"{round(VALIDATION_FRACTION * N_TRAIN)} validation), {N_TEST} test, x in [-2, 2]^2, noise std {NOISE}")
        start = time.perf_counter()
        history, fit_best, y, predictions = fit(path, epochs)
        fit_last, seconds = float(history["test_rmse"][-1]), time.perf_counter() - start
        print(f"train.fit   {epochs:3d} epochs  last test rmse {fit_last:.5f}  best-val test rmse {fit_best:.5f}  "
              f"{seconds:.1f}s")
        start = time.perf_counter()
        cmd_last, cmd_best = command(path, os.path.join(work, "run"), epochs)
        print(f"command     {epochs:3d} epochs  last test rmse {cmd_last:.5f}  best-val test rmse {cmd_best:.5f}  "
              f"{time.perf_counter() - start:.1f}s")
    gap = max(abs(cmd_last - fit_last), abs(cmd_best - fit_best))
    print(f"fit and command {'agree' if gap < 1e-6 else 'DISAGREE'}: test rmse {fit_last:.5f} and "
          f"{cmd_last:.5f} (last), {fit_best:.5f} and {cmd_best:.5f} (best-val); largest difference {gap:.1e}")
    os.makedirs(args.out, exist_ok=True)
    print(f"saved {save_figure(history, y, predictions, os.path.join(args.out, 'regression.png'))}")
    return {"history": history, "fit": (fit_last, fit_best), "command": (cmd_last, cmd_best)}


if __name__ == "__main__":
    main()
