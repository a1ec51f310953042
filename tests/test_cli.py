"""The `jaxscratch` command end to end on the 8x8 digits."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
    (["train", "--momentum", "0.5"], "--momentum does not apply to adam; it applies to momentum, nesterov"),
    (["train", "--hidden", "100,x"], "argument --hidden: expected comma-separated positive ints"),
    (["train", "--dropout", "1.5"], "argument --dropout: expected a number in [0, 1); got '1.5'"),
    (["train", "--learning-rate", "-1"], "argument --learning-rate: expected a number >= 0; got '-1'"),
    (["train", "--learning-rate", "-1", "--schedule", "cosine"], "expected a number >= 0; got '-1'"),
    (["train", "--b2", "1"], "--b2 must be in [0, 1); got 1.0 (--optimizer adam)"),
    (["train", "--epoch", "3"], "unrecognized arguments: --epoch 3; see jaxscratch --help"),
    (["compare", "--optimizers", "sgd,foo"], "argument --optimizers: expected all, or comma-separated names"),
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
    _, template = cli._template(cfg, meta["sizes"], cli.build_optimizer(cfg, 1))
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
