"""Try every bad input in CASES and write docs/errors.md: what was tried and the error it gives.

    python tools/make_errors_table.py            # run the cases, rewrite docs/errors.md
    python tools/make_errors_table.py --check    # exit 1 when docs/errors.md is out of date

Each case is a ``jaxscratch`` command line (run in-process through ``cli.main``) or a Python
call into the library, run in a scratch folder that ``setup`` fills with damaged and
mismatched files; downloads go to a local HTTP server on 127.0.0.1, never to the internet.
The table records the exit status, the exact error line (paths are relative to the scratch
folder; ports read ``PORT``) and every file the case left behind. ``tests/test_bad_inputs.py``
runs the same cases, checks each is one line with no traceback and leaves nothing behind, and
fails when docs/errors.md differs from what the cases give now.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import http.server
import io
import json
import os
import platform
import re
import shlex
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402 (after the sys.path insert: this checkout's jaxscratch)
import jax.numpy as jnp  # noqa: E402 (after the sys.path insert: this checkout's jaxscratch)

from jaxscratch import _rundir, checkpoint, cli, data, nn, optim, train  # noqa: E402 (after the sys.path insert: this checkout's jaxscratch)

TINY = "--epochs 2 --hidden 8 --batch-size 128 --quiet"  # a finished run in a second or two


class Case(NamedTuple):
    section: str
    what: str
    how: str               # a jaxscratch command line, or "python: <expression>"
    env: dict = {}         # environment variables for the case ({server} is the local server)
    stop_at_save: int = 0  # raise KeyboardInterrupt (as Ctrl-C or SIGTERM do) in the n-th checkpoint save
    leaves: tuple = ()     # files the case is expected to leave behind


class Result(NamedTuple):
    case: Case
    status: str            # the exit status, or the exception's type for a Python call
    message: str
    left: tuple            # files and folders created or changed


F, D, N, M, C, S, I, P = ("Flags", "Data files (IDX, through `--dataset-dir`)", "Your own .npz data set",
                          "Your own model and loss (`--model`, `--loss`)", "Run folders and checkpoints", "Downloads",
                          "Interruptions and divergence", "Python API")
CASES = [
    Case(F, "unknown subcommand", "fit"),
    Case(F, "unknown flag", "train --epohcs 3"),
    Case(F, "abbreviated flag (abbreviations are refused)", "train --epoch 3"),
    Case(F, "int flag given a float", "train --epochs 1.5"),
    Case(F, "int flag given a word", "train --epochs ten"),
    Case(F, "int flag out of range", "train --epochs 0"),
    Case(F, "batch size out of range", "train --batch-size -5"),
    Case(F, "batch size larger than the training set", "train --batch-size 5000 --out x"),
    Case(F, "seed out of range", "train --seed -1"),
    Case(F, "seed beyond 32 bits", "train --seed 4294967296"),
    Case(F, "number flag given NaN", "train --learning-rate nan"),
    Case(F, "number flag given infinity", "train --weight-decay inf"),
    Case(F, "number beyond float32 (inf in training)", "train --learning-rate 1e39"),
    Case(F, "number below float32's smallest normal (0 in training)", "train --weight-decay 1e-50"),
    Case(F, "negative learning rate", "train --learning-rate -0.1"),
    Case(F, "fraction out of range", "train --validation-fraction 1"),
    Case(F, "validation split leaving no training data", "train --validation-fraction 0.9999 --out x"),
    Case(F, "dropout out of range", "train --dropout 1.5"),
    Case(F, "decay factor out of range", "train --schedule exponential --decay-factor 0"),
    Case(F, "warm-up out of range", "train --schedule warmup-cosine --warmup-epochs -1"),
    Case(F, "unknown optimizer", "train --optimizer adamm"),
    Case(F, "unknown activation", "train --activation gelu"),
    Case(F, "unknown schedule", "train --schedule linear"),
    Case(F, "unknown dropout mode", "train --dropout-mode scaled"),
    Case(F, "unknown sampling", "train --sampling shuffle"),
    Case(F, "unknown dataset", "train --dataset cifar"),
    Case(F, "bad weight init", "train --weight-init 0"),
    Case(F, "bad hidden widths", "train --hidden 100,,100"),
    Case(F, "a switch given a value (switches are --flag / --no-flag)", "train --optimizer adagrad --eps-in-sqrt true"),
    Case(F, "optimizer flag for another optimizer", "train --momentum 0.5"),
    Case(F, "optimizer hyperparameter out of range", "train --b1 1.5 --out x"),
    Case(F, "optimizer hyperparameter out of range", "train --optimizer momentum --momentum 1 --out x"),
    Case(F, "schedule flag for another schedule", "train --decay-factor 0.5"),
    Case(F, "device count out of range", "train --devices 0"),
    Case(F, "device count given a word", "train --devices two"),
    Case(F, "batch size not a multiple of the device count", "train --devices 3"),
    Case(F, "more devices than the machine has", "train --devices 50"),
    Case(F, "unknown precision", "train --precision float16"),
    Case(F, "non-finite skip limit out of range", "train --skip-nonfinite -1"),
    Case(F, "--dataset-dir for the digits", "train --dataset-dir idx/good"),
    Case(F, "--dataset-dir that does not exist", "train --dataset mnist --dataset-dir nowhere"),
    Case(F, "--out is a file", "train --out notes.txt"),
    Case(F, "--out cannot be created", "train --out notes.txt/run --epochs 1"),
    Case(F, "compare: unknown optimizer in the list", "compare --optimizers sgd,adamm"),
    Case(F, "compare: iterations out of range", "compare --iterations 0"),
    Case(F, "compare: batch size larger than the data", "compare --batch-size 5000"),
    Case(F, "evaluate: no run argument", "evaluate"),
    Case(F, "evaluate: --json into a missing folder", "evaluate run --json nowhere/report.json"),
    Case(F, "predict: --output into a missing folder", "predict run inputs/good.npy --output nowhere/labels.npy"),
    Case(F, "predict: --output onto an existing file, without --force", "predict run inputs/good.npy --output notes.txt"),
    Case(F, "predict: --output onto the run's own checkpoint, even with --force",
         "predict run inputs/good.npy --output run/best.npz --force"),
    Case(F, "predict: --output onto its own input file", "predict run inputs/good.npy --output inputs/good.npy --force"),
    Case(F, "evaluate: --json onto the run's own metrics.json", "evaluate run --json run/metrics.json --force"),
    Case(F, "more steps than the 32-bit step counter holds", "train --epochs 1000000000 --schedule cosine --out x"),
    Case(F, "a model too large for this machine's memory (M: what it has free)", "train --hidden 1000000,1000000 --out x"),
    Case(D, "corrupt gzip", "train --dataset mnist --dataset-dir idx/gzip-corrupt"),
    Case(D, "gzip cut short", "train --dataset mnist --dataset-dir idx/gzip-truncated"),
    Case(D, "not an IDX file (bad magic bytes)", "train --dataset mnist --dataset-dir idx/bad-magic"),
    Case(D, "unknown IDX dtype code", "train --dataset mnist --dataset-dir idx/bad-dtype"),
    Case(D, "header announces more data than the file holds", "train --dataset mnist --dataset-dir idx/payload-short"),
    Case(D, "trailing bytes after the data", "train --dataset mnist --dataset-dir idx/payload-long"),
    Case(D, "images of the wrong size", "train --dataset mnist --dataset-dir idx/wrong-shape"),
    Case(D, "image and label counts differ", "train --dataset mnist --dataset-dir idx/count-mismatch"),
    Case(D, "label out of range", "train --dataset mnist --dataset-dir idx/label-10"),
    Case(D, "a file missing", "train --dataset mnist --dataset-dir idx/missing-file"),
    Case(N, "file does not exist", "train --dataset nowhere.npz"),
    Case(N, "not an .npz at all", "train --dataset npz/text.npz"),
    Case(N, "half a test pair (x_test without y_test)", "train --dataset npz/missing-array.npz"),
    Case(N, "two different pairs of arrays (X/y and x/y)", "train --dataset npz/ambiguous.npz"),
    Case(N, "no pair of the accepted names", "train --dataset npz/no-pair.npz"),
    Case(N, "image and label counts differ", "train --dataset npz/count-mismatch.npz"),
    Case(N, "negative label", "train --dataset npz/negative-label.npz"),
    Case(N, "float labels", "train --dataset npz/float-labels.npz"),
    Case(N, "1-D images", "train --dataset npz/flat-images.npz"),
    Case(N, "train and test samples of different shapes", "train --dataset npz/shape-mismatch.npz"),
    Case(N, "NaN in the images", "train --dataset npz/nan.npz"),
    Case(N, "integer images outside 0..255", "train --dataset npz/big-ints.npz"),
    Case(N, "no training samples", "train --dataset npz/empty.npz"),
    Case(N, "pickled (object) arrays: refused, never unpickled", "train --dataset npz/pickle.npz"),
    Case(N, "one bit of an .npy header flipped (240 rows read as 140)", "train --dataset npz/header-bit.npz"),
    Case(N, "an 11 KB file whose header declares 233 TiB", "train --dataset npz/terabytes.npz"),
    Case(N, "a single class", "train --dataset npz/one-class.npz"),
    Case(N, "a test label that training never has", "train --dataset npz/unseen-test-label.npz"),
    Case(N, "a label of 10**9", "train --dataset npz/huge-label.npz"),
    Case(M, "--model without :FUNCTION", "train --model models/good.py"),
    Case(M, "--model file does not exist", "train --model nowhere.py:make"),
    Case(M, "--model function not in the file", "train --model models/good.py:make_cnn"),
    Case(M, "--model file that raises while it is imported", "train --model models/raises.py:make"),
    Case(M, "--model file with a syntax error", "train --model models/syntax.py:make"),
    Case(M, "--model function that does not return a Model", "train --model models/good.py:not_a_model"),
    Case(M, "--model whose network does not fit the data", "train --model models/good.py:wrong_input --out x"),
    Case(M, "an MLP flag with --model", "train --model models/good.py:make --hidden 10"),
    Case(M, "evaluate after the model file changed", "evaluate run-model"),
    Case(M, "--resume after the model file changed", "train --out run-model --resume --epochs 3"),
    Case(M, "unknown loss", "train --loss hinge"),
    Case(M, "--loss mse on a data set of class labels", "train --loss mse"),
    Case(M, "--loss mse with non-finite targets", "train --loss mse --dataset npz/nan-targets.npz"),
    Case(C, "no finished run in the folder", "evaluate nowhere"),
    Case(C, "a run killed before it wrote best.npz", "evaluate killed"),
    Case(C, "checkpoint with a flipped byte", "evaluate ckpt/flipped-byte"),
    Case(C, "checkpoint with an array changed, zip CRCs valid", "evaluate ckpt/changed-array"),
    Case(C, "checkpoint cut short", "evaluate ckpt/truncated"),
    Case(C, "not a zip file", "evaluate ckpt/random-bytes"),
    Case(C, "a plain NumPy .npz", "evaluate ckpt/plain-npz"),
    Case(C, "a pickled manifest: refused, never unpickled", "evaluate ckpt/pickled-manifest"),
    Case(C, "a checkpoint from a newer jaxscratch", "evaluate ckpt/newer-version"),
    Case(C, "a jaxscratch checkpoint that is not a run's", "evaluate ckpt/no-config"),
    Case(C, "a run whose stored configuration was edited", "evaluate ckpt/edited-config"),
    Case(C, "evaluate after the dataset changed shape", "evaluate run-npz"),
    Case(C, "predict: inputs with the wrong number of features", "predict run inputs/wide.npy"),
    Case(C, "predict: inputs holding NaN", "predict run inputs/nan.npy"),
    Case(C, "predict: complex inputs", "predict run inputs/complex.npy"),
    Case(C, "predict: pickled (object) inputs", "predict run inputs/objects.npy"),
    Case(C, "predict: .npz without an array x", "predict run inputs/no-x.npz"),
    Case(C, "predict: input file missing", "predict run inputs/nowhere.npy"),
    Case(C, "an existing run without --resume", "train --out run"),
    Case(C, "--resume with nothing to resume", "train --out nowhere --resume"),
    Case(C, "--resume with a different configuration", "train --out run --resume --hidden 16"),
    Case(C, "--resume with --skip-nonfinite the run did not have", "train --out run --resume --skip-nonfinite 3"),
    Case(C, "--resume with fewer epochs than already run", "train --out run --resume --epochs 1"),
    Case(C, "--resume with no epoch left to train", "train --out run --resume --epochs 2"),
    Case(C, "--resume of a damaged checkpoint", "train --out ckpt/flipped-byte --resume --epochs 3"),
    Case(C, "--resume of a checkpoint whose arrays are another model's", "train --out ckpt/other-model --resume --epochs 3"),
    Case(C, "--resume after the dataset changed shape", "train --out run-npz --resume --epochs 3"),
    Case(C, "a run folder another jaxscratch train is using (its pid reads PID)", f"train --out locked {TINY}"),
    Case(S, "no network (connection refused); the first download creates the empty cache folder",
         "train --dataset mnist", {"JAXSCRATCH_MNIST_MIRRORS": "{closed}"}, leaves=("cache", "cache/mnist")),
    Case(S, "every mirror answers 404", "train --dataset mnist", {"JAXSCRATCH_MNIST_MIRRORS": "{server}/gone/"}),
    Case(S, "connection dropped half way", "train --dataset mnist", {"JAXSCRATCH_MNIST_MIRRORS": "{server}/cut/"}),
    Case(S, "wrong file served (checksum mismatch)", "train --dataset mnist", {"JAXSCRATCH_MNIST_MIRRORS": "{server}/evil/"}),
    Case(S, "a mirror that is not http(s)", "train --dataset mnist", {"JAXSCRATCH_MNIST_MIRRORS": "file:///etc/"}),
    Case(I, "Ctrl-C or SIGTERM in epoch 2 (here: during its checkpoint save)", f"train --out stopped {TINY}",
         stop_at_save=2, leaves=("stopped", "stopped/best.npz", "stopped/checkpoint.npz",
                                        "stopped/metrics.json", "stopped/metrics.jsonl")),
    Case(I, "Ctrl-C or SIGTERM before the first epoch is saved", f"train --out stopped-early {TINY}", stop_at_save=1),
    Case(I, "training diverges", f"train --optimizer sgd --learning-rate 1e12 --out diverged {TINY}"),
    Case(P, "read_idx: header cut short", "python: data.read_idx('idx/bad-header.idx')"),
    Case(P, "load_mnist: a mirror that stalls", "python: data.load_mnist(mirrors=['{server}/stall/'], timeout=0.5)"),
    Case(P, "restore into a model of another shape",
         "python: checkpoint.restore('run/best.npz', like={'w': jnp.zeros((64, 9))})"),
    Case(P, "load_npz: pickled arrays", "python: data.load_npz('npz/pickle.npz')"),
    Case(P, "an optimizer given a string for a number", "python: optim.adam(learning_rate='0.01')"),
    Case(P, "rmsprop: nesterov without a momentum", "python: optim.rmsprop(0.01, nesterov=True)"),
    Case(P, "complex hyperparameter", "python: optim.sgd(learning_rate=0.1 + 0.1j)"),
    Case(P, "fit: parameters where the model goes",
         "python: train.fit(jax.random.key(0), nn.init_mlp(jax.random.key(0), (3, 2)), optim.sgd(), "
         "(np.zeros((4, 3), np.float32), np.zeros(4, np.int32)), epochs=1, batch_size=2)"),
    Case(P, "fit: float targets with cross-entropy",
         "python: train.fit(jax.random.key(0), nn.mlp_model((3, 1)), optim.sgd(), "
         "(np.zeros((4, 3), np.float32), np.ones((4, 1), np.float32)), epochs=1, batch_size=2)"),
    Case(P, "fit: a label beyond the model's outputs",
         "python: train.fit(jax.random.key(0), nn.mlp_model((3, 2)), optim.sgd(), "
         "(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1])), epochs=1, batch_size=2)"),
    Case(P, "fit: mse targets of another shape than the outputs",
         "python: train.fit(jax.random.key(0), nn.mlp_model((3, 2)), optim.sgd(), "
         "(np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32)), epochs=1, batch_size=2, loss='mse')"),
    Case(P, "fit: inputs the model cannot take",
         "python: train.fit(jax.random.key(0), nn.mlp_model((5, 2)), optim.sgd(), "
         "(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])), epochs=1, batch_size=2)"),
]


# ---------------------------------------------------------------- the scratch folder
def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _mnist(n_train=20, n_test=5) -> dict:
    """Small fake MNIST files {name: raw IDX bytes}, the same every time."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}
    return {data.IDX_FILES[k]: _idx(a) for k, a in arrays.items()}


def _idx_folders(root: Path) -> None:
    gz = lambda b: gzip.compress(b, mtime=0)
    good = {k: gz(v) for k, v in _mnist().items()}
    labels, images = "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"
    raw_images = _mnist()[images]
    corrupt = bytearray(good[images])
    corrupt[len(corrupt) // 2] ^= 0xFF
    changes = {
        "good": {}, "gzip-corrupt": {images: bytes(corrupt)}, "gzip-truncated": {images: good[images][:-20]},
        "bad-magic": {images: gz(b"\x01" + raw_images[1:])}, "bad-dtype": {images: gz(raw_images[:2] + b"\x0a" + raw_images[3:])},
        "payload-short": {images: gz(raw_images[:-10])}, "payload-long": {images: gz(raw_images + b"\0")},
        "wrong-shape": {images: gz(_idx(np.zeros((5, 8, 8), np.uint8)))},
        "count-mismatch": {labels: gz(_idx(np.zeros(19, np.uint8)))},
        "label-10": {labels: gz(_idx(np.full(20, 10, np.uint8)))}, "missing-file": {labels: None},
    }
    for name, change in changes.items():
        folder = root / "idx" / name
        folder.mkdir(parents=True)
        for filename, blob in {**good, **change}.items():
            if blob is not None:
                (folder / filename).write_bytes(blob)
    (root / "idx" / "bad-header.idx").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1]))


def _npz_files(root: Path) -> None:
    folder = root / "npz"
    folder.mkdir()
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1])
    good = {"x_train": x, "y_train": y, "x_test": x[:2], "y_test": y[:2]}
    bad = {
        "missing-array": {"y_test": None}, "count-mismatch": {"y_train": y[:3]}, "negative-label": {"y_train": -y},
        "float-labels": {"y_train": y.astype(np.float32)}, "flat-images": {"x_train": x[:, 0], "x_test": x[:2, 0]},
        "shape-mismatch": {"x_test": np.zeros((2, 5))}, "nan": {"x_train": np.where(y[:, None] == 2, np.nan, x)},
        "big-ints": {"x_train": np.full((4, 3), 300)}, "empty": {"x_train": x[:0], "y_train": y[:0]},
        "pickle": {"x_train": np.array([{"a": 1}] * 4, dtype=object)},
        "nan-targets": {"y_train": np.array([0.5, np.nan, 1.0, 2.0], np.float32)},
        "one-class": {"y_train": np.zeros(4, int), "y_test": np.zeros(2, int)},
        "unseen-test-label": {"y_test": np.array([0, 40])},
        "huge-label": {"y_train": np.array([0, 1, 2, 10**9])},
    }
    for name, change in bad.items():
        arrays = {k: v for k, v in {**good, **change}.items() if v is not None}
        np.savez(folder / f"{name}.npz", **arrays)
    (folder / "text.npz").write_text("x_train,y_train\n0,1\n")
    np.savez(folder / "ambiguous.npz", X=x, x=x + 1, y=y)
    np.savez(folder / "no-pair.npz", data=x, target=y)
    _damaged_npz(folder, good)


def _damaged_npz(folder: Path, good: dict) -> None:
    """A header's bit flipped (NumPy alone would read shifted pixels), terabytes declared in kilobytes."""
    x = np.arange(24000, dtype=np.uint32).astype(np.uint8).reshape(240, 100)
    big = {**good, "x_train": x, "y_train": np.arange(240) % 3, "x_test": x[:2]}
    np.savez(folder / "header-bit.npz", **big)
    raw = bytearray((folder / "header-bit.npz").read_bytes())
    i = raw.index(b"(240, 100)") + 1
    raw[i] ^= 0b11  # 240 rows -> 140
    (folder / "header-bit.npz").write_bytes(bytes(raw))
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (64000000000000, 1000), }"
    with zipfile.ZipFile(folder / "terabytes.npz", "w") as zf:
        zf.writestr("x_train.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117) + b"\n"
                    + bytes(11_000))
        for k in ("y_train", "x_test", "y_test"):
            with zf.open(f"{k}.npy", "w") as f:
                np.save(f, good[k])


MODEL_FILE = """
import math
from jaxscratch import nn


def make(input_shape, outputs):
    return nn.mlp_model((math.prod(input_shape), 8, outputs))


def wrong_input(input_shape, outputs):
    return nn.mlp_model((math.prod(input_shape) + 1, 8, outputs))


def not_a_model(input_shape, outputs):
    return "a model"
"""


def _model_files(root: Path) -> None:
    """Model files, and a run of one whose file then changes."""
    folder = root / "models"
    folder.mkdir()
    (folder / "good.py").write_text(MODEL_FILE)
    (folder / "raises.py").write_text("import math\nWIDTH = math.sqrt(-1)\n")
    (folder / "syntax.py").write_text("def make(input_shape, outputs):\n    return nn.mlp_model((\n")
    (folder / "changing.py").write_text(MODEL_FILE)
    assert cli.main(shlex.split("train --out run-model --model models/changing.py:make --epochs 2 --quiet")) == 0
    (folder / "changing.py").write_text(MODEL_FILE + "\n# edited after training\n")


def _run_folders(root: Path) -> None:
    """A finished run on the digits, a run on a .npz that then changes shape, damaged copies."""
    rng = np.random.default_rng(0)
    np.savez("mine.npz", x_train=rng.random((300, 16)), y_train=np.arange(300) % 3,
             x_test=rng.random((30, 16)), y_test=np.arange(30) % 3)
    for argv in (f"train --out run {TINY}", f"train --out run-npz --dataset mine.npz {TINY}"):
        assert cli.main(shlex.split(argv)) == 0, argv
    rng = np.random.default_rng(1)  # the data set changes shape after training: 16 -> 20 features
    np.savez("mine.npz", x_train=rng.random((300, 20)), y_train=np.arange(300) % 3,
             x_test=rng.random((30, 20)), y_test=np.arange(30) % 3)
    best = Path("run/best.npz").read_bytes()
    meta = checkpoint.load_metadata("run/checkpoint.npz")
    os.makedirs("killed")  # what a SIGKILL before the end leaves: the checkpoint alone
    shutil.copyfile("run/checkpoint.npz", "killed/checkpoint.npz")
    like = {"w": jnp.ones(3)}

    def edited(m):
        return {**m, "config": {**m["config"], "dropout": 1.5}}

    flipped = bytearray(best)
    flipped[len(best) // 3] ^= 0x01
    makers = {
        "flipped-byte": lambda p: p.write_bytes(bytes(flipped)), "truncated": lambda p: p.write_bytes(best[:len(best) // 2]),
        "random-bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)),
        "plain-npz": lambda p: np.savez(p, w=np.ones(3)),
        "pickled-manifest": lambda p: np.savez(p, __manifest__=np.array(["{}"], dtype=object)),
        "changed-array": lambda p: _rewrite(best, p, lambda n, b: b[:-1] + bytes([b[-1] ^ 1]) if n == "leaf_00003.npy" else b),
        "newer-version": lambda p: _rewrite_manifest(best, p, version=2),
        "no-config": lambda p: checkpoint.save(p, like, metadata={"note": "not a run"}),
        "edited-config": lambda p: _rewrite_manifest(best, p, metadata=edited(checkpoint.load_metadata("run/best.npz"))),
    }
    for name, make in makers.items():
        folder = root / "ckpt" / name
        folder.mkdir(parents=True)
        make(folder / "best.npz")
    last = bytearray(Path("run/checkpoint.npz").read_bytes())
    last[len(last) // 3] ^= 0x01
    (root / "ckpt" / "flipped-byte" / "checkpoint.npz").write_bytes(bytes(last))
    other = root / "ckpt" / "other-model"  # run's arrays (hidden 8) under another run's configuration (hidden 16)
    other.mkdir()
    wide = {**meta, "config": {**meta["config"], "hidden": "16"}, "sizes": [64, 16, 10]}
    _rewrite_manifest(Path("run/checkpoint.npz").read_bytes(), other / "checkpoint.npz", metadata=wide)


def _rewrite(blob: bytes, dest: Path, change) -> None:
    """Copy a checkpoint, passing each member through ``change(name, bytes)``; zip CRCs stay valid."""
    with zipfile.ZipFile(io.BytesIO(blob)) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def _rewrite_manifest(blob: bytes, dest: Path, **fields) -> None:
    def change(name, member):
        if name != "__manifest__.npy":
            return member
        manifest = json.loads(np.load(io.BytesIO(member), allow_pickle=False).tobytes())
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps({**manifest, **fields}).encode(), np.uint8))
        return buf.getvalue()

    _rewrite(blob, dest, change)


def _inputs(root: Path) -> None:
    folder = root / "inputs"
    folder.mkdir()
    np.save(folder / "good.npy", np.zeros((3, 64), np.float32))
    np.save(folder / "wide.npy", np.zeros((3, 5), np.float32))
    np.save(folder / "nan.npy", np.where(np.arange(64) == 7, np.nan, np.zeros((3, 64))))
    np.save(folder / "complex.npy", np.zeros((3, 64), np.complex64))
    np.save(folder / "objects.npy", np.array([None] * 3, dtype=object), allow_pickle=True)
    np.savez(folder / "no-x.npz", inputs=np.zeros((3, 64)))


_HELD = []  # the lock of the folder "locked", held by this process while the cases run


def _locked_folder(root: Path) -> None:
    """A run folder that a train in progress holds: its ``.lock`` locked (by this process)."""
    (root / "locked").mkdir()
    fd = os.open(root / "locked" / _rundir.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD.append(fd)


def setup(root: Path) -> None:
    """Fill ``root`` (the current folder) with every file the cases read."""
    _idx_folders(root)
    _npz_files(root)
    _inputs(root)
    (root / "notes.txt").write_text("not a folder\n")
    _run_folders(root)
    _model_files(root)
    _locked_folder(root)


# ---------------------------------------------------------------- a local server
class _Server:
    """Serves the fake MNIST under /cut/ (half, then the connection drops), /evil/ (wrong
    bytes) and /stall/ (half, then silence); anything else is 404."""

    def __init__(self):
        files = _mnist()
        stop = self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                kind, _, name = self.path.strip("/").partition("/")
                body = files.get(name)
                if body is None or kind not in ("cut", "evil", "stall"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if kind == "evil" else body[: len(body) // 2])
                self.wfile.flush()
                if kind == "stall":
                    stop.wait(10)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


# ---------------------------------------------------------------- running the cases
def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[p.relative_to(root).as_posix()] = None if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stop_at(n: int):
    """A checkpoint hook raising KeyboardInterrupt (what Ctrl-C and SIGTERM raise) in save ``n``."""
    calls = []

    def hook(index):
        if index == 0:
            calls.append(index)
            if len(calls) == n:
                raise KeyboardInterrupt

    return hook


_PLACEHOLDERS = {"server": "http://127.0.0.1:PORT", "closed": "http://127.0.0.1:PORT/"}


def _fill(text: str, urls: dict) -> str:
    for name, url in urls.items():
        text = text.replace("{" + name + "}", url)
    return text


def _run_one(case: Case, urls: dict) -> tuple[str, str]:
    how = _fill(case.how, urls)
    if how.startswith("python: "):
        try:
            eval(how.removeprefix("python: "), {"data": data, "checkpoint": checkpoint, "jnp": jnp, "np": np,
                                                "jax": jax, "nn": nn, "optim": optim, "train": train})
        except Exception as err:  # noqa: BLE001 (the point is to show what a user would see)
            return type(err).__name__, str(err)
        return "no error", ""
    err = io.StringIO()
    hook = _stop_at(case.stop_at_save) if case.stop_at_save else checkpoint._after_leaf
    saved, checkpoint._after_leaf = checkpoint._after_leaf, hook
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(shlex.split(how))
    finally:
        checkpoint._after_leaf = saved
    return str(status), err.getvalue().rstrip("\n")


def run_cases(cases=CASES) -> list[Result]:
    """Run ``cases`` in a fresh scratch folder; return what each gave and left behind."""
    start, root = os.getcwd(), Path(tempfile.mkdtemp(prefix="jaxscratch-errors-"))
    server, closed = _Server(), _closed_port_url()
    urls = {"server": server.url, "closed": closed}
    default_mirrors = data.MNIST_MIRRORS
    try:
        os.chdir(root)
        data.MNIST_MIRRORS = ()  # no case may reach the internet
        with _environ(JAXSCRATCH_DATA="cache", JAXSCRATCH_MNIST_MIRRORS=closed):
            setup(root)
            results = []
            for case in cases:
                before, t0 = _snapshot(root), time.perf_counter()
                with _environ(**{k: _fill(v, urls) for k, v in case.env.items()}):
                    status, message = _run_one(case, urls)
                after = _snapshot(root)
                if os.environ.get("ERRORS_TABLE_TIMES"):
                    print(f"{time.perf_counter() - t0:6.2f}s  {case.how}", file=sys.__stderr__)
                left = tuple(sorted(k for k in after if before.get(k, "new") != after[k]))
                message = message.replace(str(root) + os.sep, "").replace(server.url, "http://127.0.0.1:PORT")
                message = message.replace(closed, "http://127.0.0.1:PORT/")
                message = message.replace(f"(pid {os.getpid()})", "(pid PID)")
                message = re.sub(r"the [0-9.e+]+ GiB of memory available", "the M GiB of memory available", message)
                results.append(Result(case, status, message, left))
        return results
    finally:
        os.chdir(start)
        while _HELD:
            os.close(_HELD.pop())
        data.MNIST_MIRRORS = default_mirrors
        server.close()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- the document
def versions() -> str:
    """What the messages depend on: the OS's, zlib's and NumPy's own texts go into some, and
    ``--devices`` names the devices JAX sees."""
    return (f"Python {platform.python_version()}, NumPy {np.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}, "
            f"{platform.system()}, {jax.device_count()} {jax.default_backend()} device{'s' * (jax.device_count() > 1)}")


def _code(text: str) -> str:
    if not text:
        return ""
    text = text.replace("|", "\\|").replace("\n", "<br>")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render(results: list[Result]) -> str:
    lines = [
        "# Bad inputs and the errors they give",
        "",
        "Every row was produced by running it: `python tools/make_errors_table.py` tries each bad input",
        "below in a scratch folder and rewrites this file, and `tests/test_bad_inputs.py` fails when a",
        "message changes without this file being regenerated. At the command line every bad input gives",
        "one line on stderr and exit status 2 (1 for a diverging run, 130 when interrupted), no traceback,",
        "and leaves nothing behind unless the last column says so. Paths are relative to the scratch",
        f"folder; `PORT` is a local test server on 127.0.0.1. Generated with {versions()}.",
        "",
    ]
    section = None
    for r in results:
        if r.case.section != section:
            section = r.case.section
            head = "| what was tried | call | raises | message |" if section == P else \
                "| what was tried | command | exit | error line | left behind |"
            lines += [f"## {section}", "", head, "|---|---|---|---|" + ("" if section == P else "---|")]
        if section == P:
            call = _fill(r.case.how.removeprefix("python: "), _PLACEHOLDERS)
            lines.append(f"| {r.case.what} | {_code(call)} | {r.status} | {_code(r.message)} |")
        else:
            command = "".join(f"{k}={v} " for k, v in r.case.env.items()) + "jaxscratch " + r.case.how
            command = _fill(command, _PLACEHOLDERS)
            left = ", ".join(r.left) or "nothing"
            lines.append(f"| {r.case.what} | {_code(command)} | {r.status} | {_code(r.message)} | {left} |")
        if r is results[-1] or results[results.index(r) + 1].case.section != section:
            lines.append("")
    lines += [
        "## Faults with no message to show",
        "",
        "- **SIGKILL while a checkpoint is being written**: the previous checkpoint stays whole (the new",
        "  one is written to a temporary file, fsynced, then renamed). `tests/test_reliability.py` kills",
        "  `jaxscratch train` from a checkpoint hook in the middle of epoch 2's save, then checks that",
        "  `checkpoint.npz` still holds epoch 1 and that `--resume` ends bit-identical to an",
        "  uninterrupted run; it does the same for SIGINT and SIGTERM.",
        "- **Two processes loading the same data set at once**: each download lands in its own",
        "  temporary file and is renamed into the cache only once its MD5 and IDX structure check out",
        "  (`tests/test_data.py` runs two processes against one cache).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = render(run_cases())
    if check:
        stale = not DOC.exists() or DOC.read_text() != text
        print(f"{DOC} is {'out of date: run python tools/make_errors_table.py' if stale else 'up to date'}")
        return int(stale)
    DOC.write_text(text)
    print(f"wrote {DOC} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
