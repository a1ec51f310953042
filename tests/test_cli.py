"""The `jaxscratch` command end to end on the 8x8 digits."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxscratch import cli

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`jaxscratch train --out DIR` with nothing else."""
    out = tmp_path_factory.mktemp("run") / "digits"
    assert cli.main(["train", "--out", str(out), "--quiet"]) == 0
    return out


def test_default_train_reaches_95_percent_and_writes_everything(default_run):
    metrics = json.loads((default_run / "metrics.json").read_text())
    assert 0.95 <= metrics["test_accuracy"] <= 1.0
    assert metrics["config"]["dataset"] == "digits" and metrics["config"]["optimizer"] == "adam"
    assert len(metrics["history"]["epoch"]) == metrics["config"]["epochs"]
    assert len(metrics["history"]["train_loss"]) == metrics["config"]["epochs"]
    assert metrics["wall_time_s"] > 0 and metrics["steps_per_second"] > 0
    for name in ("checkpoint.npz", "best.npz", "training.png"):
        assert (default_run / name).exists(), name
    assert (default_run / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in os.listdir(default_run) if p.startswith(".tmp")]


def test_existing_run_is_never_overwritten(default_run, capsys):
    before = (default_run / "metrics.json").read_bytes()
    code, _, err = run(["train", "--out", default_run], capsys)
    assert code == 2 and "already holds a run; pass --resume" in err
    assert (default_run / "metrics.json").read_bytes() == before


def test_evaluate_and_predict(default_run, capsys, tmp_path):
    code, out, _ = run(["evaluate", default_run], capsys)
    assert code == 0 and "test " in out and "accuracy" in out
    from jaxscratch import data

    ds = data.load_digits()
    np.save(tmp_path / "x.npy", ds.x_test[:20])
    code, out, _ = run(["predict", default_run, tmp_path / "x.npy", "--output", tmp_path / "labels.npy"], capsys)
    assert code == 0
    labels = np.load(tmp_path / "labels.npy")
    assert labels.shape == (20,) and np.mean(labels == ds.y_test[:20]) >= 0.85
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    code, _, err = run(["predict", default_run, tmp_path / "bad.npy"], capsys)
    assert code == 2 and "64 features" in err
    np.savez(tmp_path / "x.npz", x=ds.x_test[:5].reshape(5, 8, 8).astype(np.float64))  # (n, ...) and .npz work too
    code, out, _ = run(["predict", default_run, tmp_path / "x.npz"], capsys)
    assert code == 0 and out.split() == [str(v) for v in np.load(tmp_path / "labels.npy")[:5]]


def test_resume_continues_to_the_same_result(tmp_path, capsys):
    common = ["--epochs", 4, "--batchnorm", "--dropout", 0.1, "--optimizer", "momentum", "--quiet"]
    assert run(["train", "--out", tmp_path / "a", *common], capsys)[0] == 0
    half = [a if a != 4 else 2 for a in common]
    assert run(["train", "--out", tmp_path / "b", *half], capsys)[0] == 0
    code, _, err = run(["train", "--out", tmp_path / "b", "--resume", "--epochs", 4, "--quiet"], capsys)
    assert code == 0, err
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["history"]["step_loss"] == b["history"]["step_loss"]
    assert a["test_accuracy"] == b["test_accuracy"]


def test_resume_errors(tmp_path, default_run, capsys):
    code, _, err = run(["train", "--out", tmp_path / "nothing", "--resume"], capsys)
    assert code == 2 and "no checkpoint" in err
    code, _, err = run(["train", "--out", default_run, "--resume", "--optimizer", "sgd"], capsys)
    assert code == 2 and "--optimizer 'sgd' conflicts with the run's 'adam'" in err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "checkpoint.npz").write_bytes(b"not a checkpoint")
    code, _, err = run(["train", "--out", damaged, "--resume"], capsys)
    assert code == 2 and "checkpoint" in err.lower()


@pytest.mark.parametrize("argv, message", [
    (["train", "--optimizer", "adamm"], "argument --optimizer: expected one of adadelta, adagrad, adam,"),
    (["train", "--activation", "gelu"], "expected one of relu, sigmoid, tanh; got 'gelu'"),
    (["train", "--dataset", "cifar"], "expected digits, mnist, fashion-mnist or a path ending in .npz; got 'cifar'"),
    (["train", "--momentum", "0.5"], "--momentum does not apply to adam; it applies to sgd, momentum, nesterov"),
    (["train", "--hidden", "100,x"], "argument --hidden: expected comma-separated positive ints"),
    (["train", "--dropout", "1.5"], "argument --dropout: expected a number in [0, 1); got '1.5'"),
    (["train", "--learning-rate", "-1"], "argument --learning-rate: expected a number >= 0; got '-1'"),
    (["train", "--learning-rate", "-1", "--schedule", "cosine"], "expected a number >= 0; got '-1'"),
    (["train", "--b2", "1"], "--b2 must be in [0, 1); got 1.0 (--optimizer adam)"),
    (["train", "--epoch", "3"], "unrecognized arguments: --epoch 3; see jaxscratch --help"),
    (["compare", "--optimizers", "sgd,foo"], "argument --optimizers: expected all, or comma-separated names"),
    (["train", "--devices", "0"], "argument --devices: expected all or an int >= 1; got '0'"),
    (["train", "--devices", "3"], "--batch-size 100 is not a multiple of --devices 3"),
    (["train", "--devices", "1000", "--batch-size", "1000"], "--devices 1000 exceeds the 1 "),
    (["train", "--precision", "fp16"], "argument --precision: expected one of float32, bfloat16; got 'fp16'"),
    (["train", "--skip-nonfinite", "-1"], "argument --skip-nonfinite: expected an int >= 0; got '-1'"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    code, _, err = run([*argv, "--out", tmp_path / "x"] if argv[0] == "train" else argv, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written, not even an empty --out


def test_stopped_before_any_checkpoint_leaves_no_out_folder(tmp_path, capsys, monkeypatch):
    """A run that dies in its first epoch removes the --out folders it created (not the ones that were there)."""
    from jaxscratch import train

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", stop)
    code, _, err = run(["train", "--out", tmp_path / "new" / "deeper", "--quiet"], capsys)
    assert code == 130 and "no epoch had finished, so nothing was saved" in err
    assert os.listdir(tmp_path) == []


def test_stored_configuration_is_checked(default_run, tmp_path, capsys):
    """A run folder whose checkpoint is not a training run's, or whose configuration was edited."""
    from jaxscratch import checkpoint

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    checkpoint.save(foreign / "best.npz", {"w": np.ones(2, np.float32)}, metadata={"lr": 0.1})
    code, _, err = run(["evaluate", foreign], capsys)
    assert code == 2 and "not one of a jaxscratch train run: its metadata lacks 'config' and 'sizes'" in err
    meta = checkpoint.load_metadata(default_run / "best.npz")
    tree = checkpoint.restore(default_run / "best.npz", like=_template_like(meta))
    edited = tmp_path / "edited"
    edited.mkdir()
    checkpoint.save(edited / "best.npz", tree, metadata={**meta, "config": {**meta["config"], "optimizer": "adamm"}})
    code, _, err = run(["predict", edited, tmp_path / "x.npy"], capsys)
    assert code == 2 and "holds an invalid configuration: --optimizer: expected one of" in err


def _template_like(meta):
    cfg = meta["config"]
    model, _ = cli._model(cfg, meta["sizes"], meta.get("input_shape") or meta["sizes"][:1])
    template = cli._template(cfg, model, cli.build_optimizer(cfg, 1))
    return {"state": template, "best": template}


def test_compare_quick(tmp_path, capsys):
    code, out, err = run(["compare", "--quick", "--out", tmp_path], capsys)
    assert code == 0, err
    for name in ("sgd", "momentum", "adagrad", "adam"):
        assert name in out
    results = json.loads((tmp_path / "compare.json").read_text())["results"]
    assert [r["optimizer"] for r in results] == ["sgd", "momentum", "adagrad", "adam"]
    by_name = {r["optimizer"]: r for r in results}
    assert by_name["adam"]["final_loss"] < by_name["sgd"]["final_loss"]  # the book's Figure 6-9 ordering
    assert (tmp_path / "compare.png").exists()


def test_console_entry_points_show_defaults():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "jaxscratch", "train", "--help"], capture_output=True, text=True, env=env)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for expected in ("(default: digits)", "(default: adam)", "(default: 30)", "(default: 100,100)"):
        assert expected in text
    bad = subprocess.run([sys.executable, "-m", "jaxscratch", "train", "--epochs", "ten"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr == "jaxscratch train: error: argument --epochs: expected an int >= 1; got 'ten'\n"


def test_divergence_is_one_clear_line(tmp_path, capsys):
    code, _, err = run(["train", "--optimizer", "sgd", "--learning-rate", "1e12", "--out", tmp_path / "d", "--quiet"], capsys)
    assert code == 1 and "training diverged" in err and "lower --learning-rate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "metrics.json").exists()


def test_sigterm_keeps_the_last_epoch_and_resume_finishes(tmp_path):
    """SIGTERM mid-run: exit 130 with the last finished epoch saved; --resume completes the run."""
    import signal
    import time

    out = tmp_path / "t"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jaxscratch", "train", "--epochs", "400", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err
    from jaxscratch import checkpoint

    done = len(checkpoint.load_metadata(out / "checkpoint.npz")["history"]["epoch"])
    assert 1 <= done < 400
    again = subprocess.run([sys.executable, "-m", "jaxscratch", "train", "--out", str(out), "--resume", "--epochs",
                            str(done + 2), "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == done + 2


# ----------------------------------------------------------------- scale flags (docs/scaling.md)
TINY = ["--epochs", 2, "--hidden", 32, "--learning-rate", 0.01, "--quiet"]  # 24 steps reach ~80%


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_bfloat16_trains_with_float32_checkpoints(tmp_path, capsys):
    from jaxscratch import checkpoint

    assert run(["train", "--out", tmp_path / "bf16", "--precision", "bfloat16", *TINY], capsys)[0] == 0
    assert run(["train", "--out", tmp_path / "f32", *TINY], capsys)[0] == 0
    bf16, f32 = _metrics(tmp_path / "bf16"), _metrics(tmp_path / "f32")
    assert bf16["config"]["precision"] == "bfloat16" and f32["config"]["precision"] == "float32"
    losses = np.array(bf16["history"]["step_loss"])
    assert np.all(np.isfinite(losses)) and bf16["test_accuracy"] > 0.7
    # bf16 really ran (not bit-identical to float32) and follows the float32 curve to bf16 rounding
    assert losses.tolist() != f32["history"]["step_loss"]
    assert np.allclose(bf16["history"]["train_loss"], f32["history"]["train_loss"], rtol=0.05)
    for name in ("checkpoint.npz", "best.npz"):  # restore checks every leaf's dtype against the float32 template
        tree = checkpoint.restore(tmp_path / "bf16" / name, like=_template_like(checkpoint.load_metadata(tmp_path / "bf16" / name)))
        floats = [leaf.dtype for leaf in jax.tree.leaves(tree) if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)]
        assert floats and set(floats) == {np.dtype(np.float32)}
    assert run(["evaluate", tmp_path / "bf16"], capsys)[0] == 0


def test_skip_nonfinite_skips_bad_steps_and_resumes(tmp_path, capsys):
    """Five training images at 3e38 overflow to Inf in the first layer: each batch holding one
    has NaN gradients and is skipped; the run goes on, and --resume rebuilds the guarded optimizer."""
    from jaxscratch import data

    ds = data.load_digits()
    x = ds.x_train.copy()
    x[:5] = 3e38  # finite float32, so the data check accepts them
    np.savez(tmp_path / "poisoned.npz", x_train=x, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    guard = ["--dataset", tmp_path / "poisoned.npz", "--validation-fraction", 0, "--skip-nonfinite", 3,
             "--hidden", 32, "--learning-rate", 0.01, "--quiet"]
    assert run(["train", "--out", tmp_path / "whole", "--epochs", 2, *guard], capsys)[0] == 0
    assert run(["train", "--out", tmp_path / "half", "--epochs", 1, *guard], capsys)[0] == 0
    code, _, err = run(["train", "--out", tmp_path / "half", "--resume", "--skip-nonfinite", 4], capsys)
    assert code == 2 and "--skip-nonfinite 4 conflicts with the run's 3" in err
    code, _, err = run(["train", "--out", tmp_path / "half", "--resume", "--epochs", 2, "--quiet"], capsys)
    assert code == 0, err
    whole, half = _metrics(tmp_path / "whole"), _metrics(tmp_path / "half")
    assert half["config"]["skip_nonfinite"] == 3
    assert half["history"]["skipped_steps"] == whole["history"]["skipped_steps"] == [5, 5]
    assert half["skipped_steps"] == 10
    np.testing.assert_array_equal(half["history"]["step_loss"], whole["history"]["step_loss"])  # null where skipped
    assert None in whole["history"]["step_loss"]  # standard JSON: a skipped step's NaN loss is written as null
    assert "NaN" not in (tmp_path / "whole" / "metrics.json").read_text()
    assert np.isfinite(half["history"]["train_loss"]).all() and half["test_accuracy"] > 0.5  # it learned


def test_a_run_stored_before_the_scale_flags_still_evaluates_and_resumes(default_run, tmp_path, capsys):
    from jaxscratch import checkpoint

    old = tmp_path / "old"
    old.mkdir()
    for name in ("checkpoint.npz", "best.npz"):
        meta = checkpoint.load_metadata(default_run / name)
        tree = checkpoint.restore(default_run / name, like=_template_like(meta))
        config = {k: v for k, v in meta["config"].items() if k not in ("devices", "precision", "skip_nonfinite")}
        checkpoint.save(old / name, tree, metadata={**meta, "config": config})
    code, _, err = run(["evaluate", old], capsys)
    assert code == 0, err
    epochs = len(checkpoint.load_metadata(old / "checkpoint.npz")["history"]["epoch"])
    code, _, err = run(["train", "--out", old, "--resume", "--epochs", epochs + 1, "--quiet"], capsys)
    assert code == 0, err
    config = _metrics(old)["config"]
    assert (config["devices"], config["precision"], config["skip_nonfinite"]) == (1, "float32", None)


_TWO_DEVICES = """
import sys
from jaxscratch import cli
common = ["--epochs", "2", "--hidden", "16", "--batch-size", "100", "--quiet"]
assert cli.main(["train", "--out", sys.argv[1], "--devices", "all", *common]) == 0
assert cli.main(["train", "--out", sys.argv[2], "--devices", "1", *common]) == 0
"""


def test_two_devices_match_one(tmp_path):
    """--devices all on 2 forced CPU devices (XLA_FLAGS must be set before JAX starts: a child)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES, str(tmp_path / "two"), str(tmp_path / "one")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    two, one = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert two["config"]["devices"] == 2 and one["config"]["devices"] == 1
    for k in ("step_loss", "train_loss", "train_eval_loss", "val_eval_loss", "test_eval_loss"):
        np.testing.assert_allclose(two["history"][k], one["history"][k], atol=1e-4, err_msg=k)
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 1 / 359  # at most one test digit flips
