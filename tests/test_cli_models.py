"""The command with any model: `--model FILE.py:FUNCTION`, `--loss mse`, and runs written by 0.4."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxscratch import checkpoint, cli, data

ROOT = Path(__file__).resolve().parents[1]
RUN_V04 = ROOT / "tests" / "data" / "run_v0_4"  # written by jaxscratch 0.4.0: digits, 64-8-8-10, BN, dropout

MODEL_FILE = '''
import math
import jax
import jax.numpy as jnp
from jaxscratch import nn


def linear(input_shape, outputs):
    """A softmax regression written by hand as an nn.Model (takes the unflattened images)."""
    d = math.prod(input_shape)

    def init(key):
        return {"w": 0.01 * jax.random.normal(key, (d, outputs)), "b": jnp.zeros(outputs)}, {}

    def apply(params, state, x, *, train, key=None):
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None], state

    return nn.Model(init, apply)


def mlp_with_dropout(input_shape, outputs):
    return nn.mlp_model((math.prod(input_shape), 16, outputs), batchnorm=True, drop_rate=0.2)


def broken(input_shape, outputs):
    widths = [32, 16]
    return widths[5]


def not_a_model(input_shape, outputs):
    return {"w": 1}
'''


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def history(folder):
    return json.loads((Path(folder) / "metrics.json").read_text())["history"]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODEL_FILE)
    return path


def test_run_written_by_0_4_evaluates_and_resumes_bit_identically(tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(RUN_V04, old)
    code, out, err = run(["evaluate", old], capsys)
    assert code == 0, err
    assert "test " in out and "accuracy" in out
    meta = checkpoint.load_metadata(old / "checkpoint.npz")
    cfg = meta["config"]
    assert code == 0 and run(["train", "--out", old, "--resume", "--epochs", "4", "--quiet"], capsys)[0] == 0
    fresh = tmp_path / "fresh"
    flags = ["--hidden", cfg["hidden"], "--batchnorm", "--dropout", str(cfg["dropout"]), "--optimizer", cfg["optimizer"]]
    assert run(["train", "--out", fresh, "--epochs", "4", "--quiet", *flags], capsys)[0] == 0
    resumed, uninterrupted = history(old), history(fresh)
    done = len(meta["history"]["step_loss"])
    assert resumed["step_loss"][:done] == meta["history"]["step_loss"]  # 0.4's epochs kept bit for bit
    # XLA's float rounding depends on the CPU's instruction set: the fixture was written on one
    # with AVX-512. Where today's run reproduces 0.4's first epochs bit for bit (the same kind of
    # CPU), resuming must give today's uninterrupted run bit for bit; elsewhere, to rounding.
    # (the step losses alone do not show it: the last update of 0.4's epochs comes after its loss,
    # so the epoch-end evaluations must agree too)
    same_cpu = all(uninterrupted[k][:len(meta["history"][k])] == meta["history"][k] for k in meta["history"]
                   if k in uninterrupted and k != "time")
    for k in ("step_loss", "train_loss", "val_acc", "val_eval_loss", "test_acc", "test_eval_loss"):
        if same_cpu:
            assert resumed[k] == uninterrupted[k], k  # bit for bit: 0.4's first two epochs, today's last two
        else:
            atol = 0.01 if k.endswith("acc") else 2e-3  # an accuracy: a sample or two may flip
            np.testing.assert_allclose(resumed[k], uninterrupted[k], rtol=2e-3, atol=atol, err_msg=k)


def test_model_file_trains_evaluates_predicts_and_resumes(tmp_path, model_file, capsys):
    out = tmp_path / "run"
    spec = f"{model_file}:linear"
    code, _, err = run(["train", "--model", spec, "--out", out, "--epochs", "2", "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == f"{model_file.resolve()}:linear"
    assert 0 <= metrics["test_accuracy"] <= 1
    code, text, err = run(["evaluate", out], capsys)
    assert code == 0 and "accuracy" in text, err
    ds = data.load_digits()
    np.save(tmp_path / "x.npy", ds.x_test[:7])
    code, text, err = run(["predict", out, tmp_path / "x.npy"], capsys)
    assert code == 0 and len(text.split()) == 7, err
    # resumed to 4 epochs equals 4 epochs at once
    assert run(["train", "--out", out, "--resume", "--epochs", "4", "--quiet"], capsys)[0] == 0
    once = tmp_path / "once"
    assert run(["train", "--model", spec, "--out", once, "--epochs", "4", "--quiet"], capsys)[0] == 0
    assert history(out)["step_loss"] == history(once)["step_loss"]


def test_model_file_with_batchnorm_and_dropout_resumes_bit_identically(tmp_path, model_file, capsys):
    spec = f"{model_file}:mlp_with_dropout"
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["train", "--model", spec, "--out", a, "--epochs", "1", "--quiet"], capsys)[0] == 0
    assert run(["train", "--out", a, "--resume", "--epochs", "3", "--quiet"], capsys)[0] == 0
    assert run(["train", "--model", spec, "--out", b, "--epochs", "3", "--quiet"], capsys)[0] == 0
    assert history(a)["step_loss"] == history(b)["step_loss"]
    assert history(a)["test_eval_loss"] == history(b)["test_eval_loss"]


def test_a_changed_model_file_is_refused(tmp_path, model_file, capsys):
    out = tmp_path / "run"
    assert run(["train", "--model", f"{model_file}:linear", "--out", out, "--epochs", "1", "--quiet"], capsys)[0] == 0
    model_file.write_text(MODEL_FILE + "\n# edited\n")
    for argv in (["evaluate", out], ["train", "--out", out, "--resume", "--epochs", "2"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "changed since the run was trained" in err and err.count("\n") == 1


@pytest.mark.parametrize("function, message", [
    ("broken", "failed at line 27 in broken((1, 8, 8), 10): IndexError: list index out of range; pass --debug"),
    ("missing", "has no function 'missing'; it defines broken, linear, mlp_with_dropout, not_a_model"),
    ("not_a_model", "must return an nn.Model"),
])
def test_errors_in_a_model_file_are_one_line(tmp_path, model_file, capsys, function, message):
    code, _, err = run(["train", "--model", f"{model_file}:{function}", "--out", tmp_path / "r"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_debug_shows_the_model_files_traceback(tmp_path, model_file, capsys):
    code, _, err = run(["train", "--model", f"{model_file}:broken", "--out", tmp_path / "r", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "widths[5]" in err


def test_syntax_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(input_shape, outputs):\n    return (\n")
    code, _, err = run(["train", "--model", f"{bad}:f", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "SyntaxError" in err and "line" in err and err.count("\n") == 1


@pytest.mark.parametrize("flag", [["--hidden", "10"], ["--batchnorm"], ["--dropout", "0.1"], ["--activation", "tanh"]])
def test_mlp_flags_do_not_apply_to_a_model_file(tmp_path, model_file, capsys, flag):
    code, _, err = run(["train", "--model", f"{model_file}:linear", *flag, "--out", tmp_path / "r"], capsys)
    assert code == 2 and "applies only to the built-in MLP" in err


@pytest.fixture
def regression_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5)).astype(np.float32)  # a linear target
    path = tmp_path / "linear.npz"
    np.savez(path, x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    return path, x[500:], y[500:]


def test_regression_npz_trains_with_mse(tmp_path, regression_npz, capsys):
    path, x_test, y_test = regression_npz
    out = tmp_path / "reg"
    argv = ["train", "--dataset", path, "--loss", "mse", "--hidden", "32", "--learning-rate", "0.01",
            "--epochs", "40", "--batch-size", "50", "--out", out, "--quiet"]
    assert run(argv, capsys)[0] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    h = metrics["history"]
    assert metrics["test_accuracy"] is None and "train_acc" not in h
    assert h["train_loss"][-1] < 0.1 * h["train_loss"][0]  # the loss falls by more than 90%
    assert metrics["test_rmse"] == pytest.approx(np.sqrt(metrics["test_loss"]))
    code, text, _ = run(["evaluate", out], capsys)
    assert code == 0 and "rmse" in text and "accuracy" not in text
    np.save(tmp_path / "x.npy", x_test)
    assert run(["predict", out, tmp_path / "x.npy", "--output", tmp_path / "y.npy"], capsys)[0] == 0
    predicted = np.load(tmp_path / "y.npy")
    assert predicted.shape == y_test.shape
    assert np.sqrt(np.mean((predicted - y_test) ** 2)) == pytest.approx(metrics["test_rmse"], rel=1e-4)


def test_float_targets_need_mse(tmp_path, regression_npz, capsys):
    code, _, err = run(["train", "--dataset", regression_npz[0], "--out", tmp_path / "r"], capsys)
    assert code == 2 and "--loss mse" in err
    code, _, err = run(["train", "--loss", "mse", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "--loss mse needs regression data" in err
