"""Live metrics and the files of a run: metrics.jsonl per epoch (kept through a SIGKILL, cut back
on --resume), runs stopped by Ctrl-C, SIGTERM or divergence that evaluate and predict accept, and
the one file writer's modes and permissions."""
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxscratch import _files, cli, data, nn, optim, plot, runlog, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "4", "--hidden", "16", "--quiet"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- the one writer
def test_every_file_of_a_run_gets_a_plain_writes_permissions(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), *TINY]) == 0
    plain = 0o666 & ~_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes) == {"best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl", "training.png"}
    assert set(modes.values()) == {plain}, modes  # training.png was 0600 (mkstemp) while metrics.json was 0644


def test_replace_keeps_an_existing_files_mode_and_cleans_up_on_error(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("old")
    f.chmod(0o640)
    _files.replace(f, "new")
    assert f.read_text() == "new" and stat.S_IMODE(f.stat().st_mode) == 0o640
    with pytest.raises(ZeroDivisionError):
        with _files.replacing(f) as (out, _):
            out.write(b"half")
            raise ZeroDivisionError("a write that fails half way")
    assert f.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]  # no temporary file left
    link = tmp_path / "link"
    link.symlink_to(f)
    _files.replace(link, b"through")
    assert link.is_symlink() and f.read_text() == "through"


def test_append_line_and_keep_lines(tmp_path):
    f = tmp_path / "m.jsonl"
    for i in range(1, 4):
        _files.append_line(f, json.dumps({"epoch": i}))
    assert f.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'
    with open(f, "a") as g:
        g.write('{"epoch": 4')  # a line a kill cut
    assert _files.keep_lines(f, lambda line: json.loads(line)["epoch"] < 3) == 2
    assert f.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert _files.keep_lines(tmp_path / "none", lambda line: True) == 0 and not (tmp_path / "none").exists()


def test_figures_are_written_by_the_one_writer(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot.training_figure({"step_loss": np.linspace(2, 1, 30), "epoch": np.arange(1, 4),
                                 "train_loss": np.array([2.0, 1.5, 1.0])}, tmp_path / "f.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["f.png"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()


# ---------------------------------------------------------------- metrics.jsonl from a script
@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    return (xt, yt), (xv, yv)


def _fit(digits, epochs, **kw):
    tr, va = digits
    return train.fit(jax.random.key(0), nn.mlp_model((64, 16, 10)), optim.sgd(0.1), tr, epochs=epochs,
                     validation=va, verbose=False, **kw)


def test_metrics_logger_writes_one_line_per_epoch_and_resume_cuts_back(digits, tmp_path):
    full = _fit(digits, 3, on_epoch=runlog.metrics_logger(tmp_path))
    records = runlog.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for i, r in enumerate(records):
        for k in ("train_loss", "val_acc", "train_acc", "val_eval_loss", "time"):
            assert r[k] == float(full.history[k][i]), k
        assert r["steps"] == (i + 1) * (len(digits[0][0]) // 100)
    # a run that stopped after epoch 1 but logged epoch 2: resuming from epoch 1 cuts epoch 2 back
    first = _fit(digits, 1)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    for r in records[:2]:
        _files.append_line(resumed_dir / "metrics.jsonl", json.dumps(r))
    _fit(digits, 3, state=first.state, best=first.best, history=first.history,
         on_epoch=runlog.metrics_logger(resumed_dir))
    again = runlog.read_metrics(resumed_dir / "metrics.jsonl")
    assert [r["epoch"] for r in again] == [1, 2, 3]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(again) == strip(records)


def _records(path: Path) -> list[bytes]:
    """The TFRecord payloads of an event file, each frame's length and masked CRC-32Cs checked."""
    raw, i, out = path.read_bytes(), 0, []
    masked = lambda data: ((((c := runlog.crc32c(data)) >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    while i < len(raw):
        length = raw[i:i + 8]
        n = int.from_bytes(length, "little")
        assert int.from_bytes(raw[i + 8:i + 12], "little") == masked(length)
        data = raw[i + 12:i + 12 + n]
        assert int.from_bytes(raw[i + 12 + n:i + 16 + n], "little") == masked(data)
        out.append(data)
        i += 16 + n
    assert i == len(raw)
    return out


def test_crc32c_matches_the_reference_check_values():
    assert runlog.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720, B.4)
    assert runlog.crc32c(b"") == 0 and runlog.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720's 32 zero bytes


def test_tensorboard_event_files_hold_the_same_scalars(digits, tmp_path):
    full = _fit(digits, 2, on_epoch=runlog.metrics_logger(tmp_path, tensorboard=True))
    files = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 1
    records = _records(files[0])  # a header, then one event per epoch
    assert len(records) == 3 and b"brain.Event:2" in records[0]
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")  # decoded by TensorBoard's own message
    events = [event_pb2.Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    for epoch, event in ((1, events[1]), (2, events[2])):
        got = {v.tag: v.simple_value for v in event.summary.value}
        assert event.step == epoch and set(got) == {"train_loss", "train_eval_loss", "train_acc", "val_eval_loss",
                                                     "val_acc", "time"}
        for tag in ("val_acc", "train_loss"):
            assert got[tag] == pytest.approx(float(full.history[tag][epoch - 1]), rel=1e-6)


# ---------------------------------------------------------------- stopped runs stay usable
@pytest.mark.parametrize("stop", [KeyboardInterrupt, FloatingPointError])
def test_a_stopped_run_is_evaluable_and_marked(stop, tmp_path, capsys, monkeypatch):
    """Ctrl-C (or SIGTERM, which raises the same) or a divergence after epoch 2 of 4: the folder
    holds epoch 2's checkpoint, best.npz and metrics.json marked as stopped; evaluate and predict
    work on it; --resume finishes it as an uninterrupted run."""
    real_fit = cli.train.fit

    def fit(*args, on_epoch, **kwargs):
        def stop_after_two(epoch, result):
            if epoch == 3:
                raise stop("training diverged: loss nan at step 37 (epoch 3)" if stop is FloatingPointError else "")
            return on_epoch(epoch, result)
        return real_fit(*args, on_epoch=stop_after_two, **kwargs)

    monkeypatch.setattr(cli.train, "fit", fit)
    out = tmp_path / "stopped"
    code = cli.main(["train", "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert code == (130 if stop is KeyboardInterrupt else 1) and "--resume" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["interrupted"] is True and m["epochs_done"] == m["epochs_run"] == 2
    assert m["stopped_by"] == ("interrupted" if stop is KeyboardInterrupt else "diverged")
    assert len(m["history"]["epoch"]) == 2 and m["test_accuracy"] == m["history"]["test_acc"][-1]
    assert [r["epoch"] for r in runlog.read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert cli.main(["evaluate", str(out)]) == 0
    assert "test " in capsys.readouterr().out
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 64), np.float32))
    assert cli.main(["predict", str(out), str(x)]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    monkeypatch.setattr(cli.train, "fit", real_fit)
    assert cli.main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert cli.main(["train", "--out", str(tmp_path / "whole"), *TINY]) == 0
    resumed, whole = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "whole"))
    assert "interrupted" not in resumed and resumed["history"]["step_loss"] == whole["history"]["step_loss"]
    assert [r["epoch"] for r in runlog.read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_sigkill_mid_run_keeps_every_finished_epoch_in_metrics_jsonl(tmp_path):
    out = tmp_path / "k"
    env = {**os.environ, "JAXSCRATCH_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "jaxscratch", "train", "--epochs", "10000", "--hidden", "16",
                             "--out", str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    records = runlog.read_metrics(out / "metrics.jsonl")  # whole lines only: a cut last line is left out
    epochs = [r["epoch"] for r in records]
    assert len(epochs) >= 3 and epochs == list(range(1, len(epochs) + 1))
    from jaxscratch import checkpoint
    saved = len(checkpoint.load_metadata(out / "checkpoint.npz")["history"]["epoch"])
    assert saved <= len(epochs) <= saved + 1  # at most the epoch in flight is missing from the checkpoint
    done = subprocess.run([sys.executable, "-m", "jaxscratch", "train", "--out", str(out), "--resume", "--epochs",
                           str(saved + 2), "--quiet"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in runlog.read_metrics(out / "metrics.jsonl")] == list(range(1, saved + 3))


def test_a_tensorboard_run_stopped_before_its_first_checkpoint_leaves_no_out(tmp_path, capsys, monkeypatch):
    """The first epoch's metrics are logged before its checkpoint: a stop in between takes them
    back with the folder (a run that saved nothing leaves nothing)."""
    monkeypatch.setattr(cli.checkpoint, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "a" / "early"
    assert cli.main(["train", "--out", str(out), "--tensorboard", *TINY]) == 130
    assert "nothing was saved" in capsys.readouterr().err and not (tmp_path / "a").exists()
