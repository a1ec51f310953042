"""The `jaxscratch` command when its outputs are dangerous or go away: --json and --output never
replace a device, the run's own files or an existing file without --force; one train per run
folder; a killed save's temporary files are cleaned; a closed pipe or a full disk on stdout does
not stop or lose a run; no rows to predict; more steps than an int32 counts."""
import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from jaxscratch import _rundir, cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--hidden", "8", "--batch-size", "128", "--quiet"]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert cli.main(["train", "--out", str(out), *TINY]) == 0
    return out


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ---------------------------------------------------------------- --json and --output
def test_json_into_dev_null_writes_in_place(tiny_run, capsys):
    code, _, err = run(["evaluate", tiny_run, "--json", os.devnull], capsys)
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # still the device, not a file renamed over it


def test_json_into_a_fifo_is_written_in_place(tiny_run, tmp_path, capsys):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    code, _, err = run(["evaluate", tiny_run, "--json", fifo], capsys)
    reader.join(30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and set(json.loads(got[0])) == {"train", "val", "test"}


def test_existing_output_needs_force_and_run_files_and_inputs_are_refused(tiny_run, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 64), np.float32))
    out = tmp_path / "labels.npy"
    out.write_bytes(b"mine")
    before = _files(tiny_run)
    code, _, err = run(["predict", tiny_run, x, "--output", out], capsys)
    assert code == 2 and err == f"jaxscratch predict: error: --output {out}: the file exists; pass --force to replace it\n"
    assert out.read_bytes() == b"mine"
    code, _, err = run(["evaluate", tiny_run, "--json", out], capsys)
    assert code == 2 and "pass --force to replace it" in err and out.read_bytes() == b"mine"
    assert run(["predict", tiny_run, x, "--output", out, "--force"], capsys)[0] == 0
    assert np.load(out).shape == (3,)
    for name in _rundir.RUN_FILES:
        for command in (["predict", tiny_run, x, "--output"], ["evaluate", tiny_run, "--json"]):
            code, _, err = run([*command, tiny_run / name, "--force"], capsys)
            assert code == 2 and f"it is the run's own {name}" in err and len(err.splitlines()) == 1, err
    link = tmp_path / "link.json"  # through a symlink, or another spelling of the path: refused too
    link.symlink_to(tiny_run / "metrics.json")
    code, _, err = run(["evaluate", tiny_run, "--json", link, "--force"], capsys)
    assert code == 2 and "run's own metrics.json" in err
    code, _, err = run(["evaluate", tiny_run, "--json", tiny_run / ".." / tiny_run.name / "metrics.json"], capsys)
    assert code == 2 and "run's own metrics.json" in err
    code, _, err = run(["predict", tiny_run, x, "--output", x, "--force"], capsys)
    assert code == 2 and "it is the input file" in err and np.load(x).shape == (3, 64)
    assert _files(tiny_run) == before and link.is_symlink()


def test_force_through_a_symlink_replaces_its_target_and_keeps_the_link(tiny_run, tmp_path, capsys):
    target, link = tmp_path / "report.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    assert run(["evaluate", tiny_run, "--json", link, "--force"], capsys)[0] == 0
    assert link.is_symlink() and "test" in json.loads(target.read_text())
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


# ---------------------------------------------------------------- one train per folder
def test_a_second_train_on_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running train holds
        os.write(fd, b"4242\n")
        code, _, err = run(["train", "--out", out, *TINY], capsys)
    finally:
        os.close(fd)
    assert code == 2
    assert err == (f"jaxscratch train: error: --out {out}: another jaxscratch train is using this run folder "
                   f"(pid 4242); wait for it or choose another --out\n")
    assert os.listdir(out) == [".lock"] and (out / ".lock").read_bytes() == b"4242\n"
    assert run(["train", "--out", out, *TINY], capsys)[0] == 0  # released (as when the holder dies): it runs
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl", "training.png"]


def test_the_lock_is_held_during_training_and_a_killed_saves_files_are_cleaned(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run(["train", "--out", out, *TINY], capsys)[0] == 0
    leftovers = [".tmp-k3j2_x", ".tmp-abc.png", ".checkpoint.npz.0123456789ab.tmp"]
    for name in leftovers:  # what saves killed mid-way leave
        (out / name).write_bytes(b"partial")
    (out / "notes.tmp").write_text("mine")  # not a temporary file of ours: kept
    seen = []

    def fit(*args, **kwargs):  # while training runs: locked, pid inside, temporaries gone
        lock = os.open(out / ".lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)
        seen.append(((out / ".lock").read_text(), sorted(os.listdir(out))))
        return real_fit(*args, **kwargs)

    real_fit = cli.train.fit
    monkeypatch.setattr(cli.train, "fit", fit)
    assert run(["train", "--out", out, "--resume", "--epochs", "3", "--quiet"], capsys)[0] == 0
    assert seen == [(f"{os.getpid()}\n", [".lock", "best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl", "notes.tmp",
                                          "training.png"])]
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl", "notes.tmp", "training.png"]


# ---------------------------------------------------------------- stdout going away
def _env():
    return {**os.environ, "JAXSCRATCH_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _command(out):
    return [sys.executable, "-m", "jaxscratch", "train", "--epochs", "3", "--hidden", "8", "--out", str(out)]


def _check_finished(out, err):
    assert "Traceback" not in err and "Exception ignored" not in err and "Error" not in err, err
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3
    assert (out / "best.npz").exists() and not (out / ".lock").exists()


def test_train_piped_into_head_keeps_training_and_saving(tmp_path):
    out = tmp_path / "piped"
    p = subprocess.Popen(_command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    first = p.stdout.readline()  # `| head -n 1`: one line, then the pipe closes
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert first == b"loading digits (shipped with the package)\n"  # what it does first
    _check_finished(out, err)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_train_into_a_full_disk_keeps_training_and_saving(tmp_path):
    out = tmp_path / "full"
    with open("/dev/full", "wb") as full:
        done = subprocess.run(_command(out), stdout=full, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    _check_finished(out, err)


def test_a_broken_stdout_in_process_is_dropped_not_raised(tmp_path, capsys):
    class Broken:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    saved, sys.stdout = sys.stdout, Broken()
    try:
        code = cli.main(["train", "--out", str(tmp_path / "r"), "--epochs", "2", "--hidden", "8"])
    finally:
        sys.stdout = saved
    assert code == 0 and (tmp_path / "r" / "metrics.json").exists()
    assert sys.stdout is saved


# ---------------------------------------------------------------- edges
def test_predict_on_no_rows_gives_no_predictions(tiny_run, tmp_path, capsys):
    np.save(tmp_path / "none.npy", np.zeros((0, 64), np.float32))
    np.save(tmp_path / "none-images.npy", np.zeros((0, 8, 8), np.uint8))
    code, out, err = run(["predict", tiny_run, tmp_path / "none.npy"], capsys)
    assert (code, out, err) == (0, "", "")
    code, out, _ = run(["predict", tiny_run, tmp_path / "none-images.npy", "--output", tmp_path / "y.npy"], capsys)
    assert code == 0 and out.startswith("saved 0 predicted labels")
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (0,) and np.issubdtype(y.dtype, np.integer)


def test_more_steps_than_an_int32_counts_is_refused(tmp_path, capsys):
    code, _, err = run(["train", "--epochs", 1_000_000_000, "--schedule", "cosine", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "12000000000 steps" in err and "2147483647" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    code, _, err = run(["train", "--epochs", 178_956_971, "--out", tmp_path / "y", "--batch-size", "100"], capsys)
    assert code == 2 and "2147483647" in err  # 12 steps per epoch: one step over the limit, any schedule
