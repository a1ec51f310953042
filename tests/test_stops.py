"""How `jaxscratch train` ends when asked to stop or given nothing to do, and what it leaves:
an interrupt Python swallowed still stops the run at the next epoch, a resume with no epoch
left changes nothing, a resume stopped before its first epoch leaves no metrics line its
checkpoint lacks, and a run killed before best.npz points to --resume and --last."""
import json
import os

import pytest

from jaxscratch import _progress, cli, runlog, train

TINY = ["--hidden", "16", "--batch-size", "50"]


def _train(out, *extra):
    return cli.main(["train", *TINY, "--out", str(out), *extra])


def test_a_swallowed_interrupt_stops_the_run_after_the_epoch_it_came_in(tmp_path, monkeypatch, capsys):
    """Python drops a KeyboardInterrupt raised inside a callback (JAX runs one at each garbage
    collection): the request is remembered and honoured at the next epoch or chunk."""
    epoch = _progress.Display.epoch

    def epoch_then_signal(self, line):
        epoch(self, line)
        cli._STOP.set()  # what _interrupt leaves when its exception is lost

    monkeypatch.setattr(_progress.Display, "epoch", epoch_then_signal)
    assert _train(tmp_path / "r", "--epochs", "3") == 130
    assert "interrupted; the last finished epoch is saved" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["interrupted"] and metrics["stopped_by"] == "interrupted" and metrics["epochs_done"] == 1
    assert [r["epoch"] for r in runlog.read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1]
    assert (tmp_path / "r" / "best.npz").is_file()
    monkeypatch.setattr(_progress.Display, "epoch", epoch)
    assert _train(tmp_path / "r", "--resume") == 0  # the stop request ended with its command
    assert [r["epoch"] for r in runlog.read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3]


def test_stop_point_raises_only_once_a_stop_was_requested():
    cli._STOP.clear()
    cli._stop_point()
    cli._STOP.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            cli._stop_point()
    finally:
        cli._STOP.clear()


def test_a_resume_with_no_epoch_left_is_refused_and_changes_nothing(tmp_path, capsys):
    assert _train(tmp_path / "r", "--epochs", "2") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    for epochs in ("2", "1"):
        assert _train(tmp_path / "r", "--resume", "--epochs", epochs) == 2
        err = capsys.readouterr().err
        assert f"has 2 epochs already and --epochs {epochs} asks for no more" in err
        assert "--epochs greater than 2" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before


def test_a_resume_stopped_before_its_first_epoch_keeps_only_the_checkpoints_lines(tmp_path, monkeypatch):
    assert _train(tmp_path / "r", "--epochs", "2") == 0
    jsonl = tmp_path / "r" / "metrics.jsonl"
    with open(jsonl, "a") as f:  # an epoch logged after the last checkpoint, before a kill
        f.write(json.dumps({"epoch": 3, "train_loss": 1.0}) + "\n")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", stopped)
    assert _train(tmp_path / "r", "--resume", "--epochs", "4") == 130
    assert [r["epoch"] for r in runlog.read_metrics(jsonl)] == [1, 2]


def test_evaluating_a_run_killed_before_best_npz_names_resume_and_last(tmp_path, capsys):
    assert _train(tmp_path / "r", "--epochs", "1") == 0
    for name in ("best.npz", "metrics.json"):  # what a SIGKILL before the end leaves out
        os.unlink(tmp_path / "r" / name)
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run (best.npz missing" in err
    assert f"jaxscratch train --out {tmp_path / 'r'} --resume" in err and "--last" in err
    assert cli.main(["evaluate", str(tmp_path / "r"), "--last"]) == 0
