"""What `jaxscratch train` and `compare` show while they work: plain lines off a terminal, a
status line redrawn in place on one (a real pseudo-terminal), --quiet, and curves in text."""
import io
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxscratch import _progress, cli, plot

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--hidden", "16"]


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_display_off_a_terminal_prints_plain_lines_only():
    s = Stream(False)
    with _progress.Display(s, epochs=3) as d:
        d.phase("loading digits")
        d.steps(1, 5, 10, 0.5)  # nothing in place off a terminal
        d.epoch("epoch 1/3  loss 0.5")
    assert s.getvalue() == "loading digits\nepoch 1/3  loss 0.5\n"
    quiet = Stream(True)
    with _progress.Display(quiet, quiet=True, epochs=3) as d:
        d.phase("loading")
        d.steps(1, 5, 10, 0.5)
        d.epoch("epoch 1/3")
    assert quiet.getvalue() == ""


def test_display_on_a_terminal_redraws_in_place_with_rate_loss_and_eta():
    s = Stream(True)
    d = _progress.Display(s, epochs=2)
    d.steps(1, 10, 40, 0.75)
    time.sleep(0.05)
    d.steps(1, 20, 40, 0.5)
    line = d.status_line()
    assert line.startswith("epoch 1/2  [##########..........]") and "20/40" in line and "loss 0.5000" in line
    rate = float(re.search(r"(\d+) steps/s", line).group(1))
    assert 10 / 0.5 < rate < 10 / 0.04  # 10 steps in ~0.05 s
    eta = re.search(r"ETA (\d+):(\d\d)", line)
    assert eta and int(eta.group(1)) * 60 + int(eta.group(2)) <= 60 / rate + 1  # 60 steps left
    d.epoch("epoch 1/2  loss 0.5")
    d.close()
    out = s.getvalue()
    assert out.count("\r\x1b[K") >= 4 and "\n" not in out.replace("epoch 1/2  loss 0.5\n", "")
    assert out.endswith("\r\x1b[K")  # closed: the status line is cleared, the epoch line kept


def test_the_status_line_is_redrawn_at_least_once_a_second_while_nothing_reports():
    s = Stream(True)
    with _progress.Display(s) as d:
        d.phase("compiling the training program")
        time.sleep(2.2)
    redraws = re.findall(r"\r\x1b\[Kcompiling the training program (\d+:\d\d)", s.getvalue())
    assert len(redraws) >= 4 and redraws[-1] == "0:02"  # the clock moves while the compiler works


@pytest.mark.parametrize("width", [20, 33, 80, 211])
def test_text_plot_fits_the_width_and_draws_each_series(width):
    falling = np.linspace(2.0, 0.1, 500)
    rising = np.r_[np.nan, np.linspace(10, 90, 9)]
    lines = plot.text_plot({"loss": falling, "acc": rising / 45}, width, height=10, title="t" * 300)
    assert lines and all(len(line) <= width for line in lines)
    assert len(lines) == 1 + 10 + 2 and lines[0] == "t" * width
    rows = lines[1:11]
    assert rows[0].split("|")[0].strip() == "2" and rows[-1].split("|")[0].strip() == "0.1"
    assert rows[0].split("|")[1].startswith("*") and rows[-1].rstrip().endswith("*")  # falls left to right
    assert "o" in "".join(rows) and "* loss" in lines[-1] and ("o acc" in lines[-1] or width < 30)


def test_text_plot_draws_nothing_for_no_finite_points_or_no_room():
    assert plot.text_plot({"nan": [float("nan")] * 3}, 80) == []
    assert plot.text_plot({"a": [1, 2]}, 19) == []
    assert len(plot.text_plot({"flat": [1.0, 1.0]}, 40, height=5)) == 7


def test_text_plot_draws_every_optimizer_of_a_comparison_and_wraps_its_legend():
    names = ["adadelta", "adagrad", "adam", "adamw", "lion", "momentum", "nadam", "nesterov", "rmsprop", "sgd",
             "adamax"]
    curves = {name: np.linspace(3, 0.1 + i / 10, 50) for i, name in enumerate(names)}
    lines = plot.text_plot(curves, 60, height=8)
    legend = "\n".join(lines[9:])
    assert all(len(line) <= 60 for line in lines) and len(lines) > 10  # the legend takes several lines
    for mark, name in zip(plot.MARKS, names):
        assert f"{mark} {name}" in legend
    with pytest.raises(ValueError, match="at most 12 curves; got 13"):
        plot.text_plot({str(i): [1.0, 2.0] for i in range(13)}, 80)


def test_a_narrow_terminal_drops_the_bar_before_the_numbers(monkeypatch):
    d = _progress.Display(Stream(True), epochs=10)
    d.steps(1, 100, 540, 0.2852)
    d.steps(1, 200, 540, 0.2852)
    monkeypatch.setattr(_progress, "terminal_width", lambda default=80: 200)
    wide = d.status_line()
    monkeypatch.setattr(_progress, "terminal_width", lambda default=80: 60)
    narrow = d.status_line()
    assert "[" in wide and "[" not in narrow and "ETA" in narrow and "loss 0.2852" in narrow


@pytest.mark.parametrize("plot_flag, quiet, tty, drawn", [(None, False, True, True), (None, True, True, False),
                                                          (None, False, False, False), (True, True, False, True),
                                                          (False, False, True, False)])
def test_curves_are_drawn_on_a_terminal_unless_quiet_or_asked(monkeypatch, plot_flag, quiet, tty, drawn):
    import argparse
    monkeypatch.setattr(sys, "stdout", Stream(tty))
    assert cli._plotting(argparse.Namespace(plot=plot_flag, quiet=quiet)) is drawn


# ---------------------------------------------------------------- the command
def _env():
    return {**os.environ, "JAXSCRATCH_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu", "COLUMNS": "100",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_train_off_a_terminal_says_what_it_does_in_plain_lines(tmp_path, capsys):
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\r" not in out and lines[0] == "loading digits (shipped with the package)"
    assert lines[1] == "compiling the training program (MLP 64-16-10, adam, batch 100)"
    assert lines[2].startswith("epoch 1/2  loss ") and lines[3].startswith("epoch 2/2  loss ")
    assert lines[4].startswith("test accuracy ") and len(lines) == 5  # no curves off a terminal


def test_quiet_prints_only_the_result_and_plot_forces_the_curves(tmp_path, capsys):
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "q"), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("test accuracy ") and out[0].endswith(", training.png")
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "p"), "--quiet", "--plot"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("test accuracy ") and out[1] == "loss"
    assert any(line.strip() == "* training loss per step" for line in out)
    assert "accuracy per epoch" in out


def test_compare_draws_one_curve_per_optimizer(tmp_path, capsys):
    assert cli.main(["compare", "--quick", "--optimizers", "sgd,adam", "--out", str(tmp_path / "c"), "--plot",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "training sgd" not in out  # --quiet: no progress
    assert out.splitlines()[0].startswith("optimizer  final loss")
    assert "* sgd   o adam" in out


def test_train_on_a_pseudo_terminal_redraws_a_status_line_in_place(tmp_path):
    """A real terminal: the status line (epoch, bar, steps/s, loss, ETA) is redrawn with \\r, the
    epoch lines stay, and the curves are drawn at the end."""
    main, sub = pty.openpty()
    cmd = [sys.executable, "-m", "jaxscratch", "train", "--epochs", "3", "--hidden", "16", "--batch-size", "10",
           "--out", str(tmp_path / "tty")]
    proc = subprocess.Popen(cmd, stdout=sub, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    os.close(main)
    out = b"".join(chunks).decode()
    status = re.findall(r"\r\x1b\[K(epoch \d/3  \[[#.]{20}\]  \d+/129  loss \d\.\d{4}[^\r\n]*)", out)
    assert len(status) >= 3 * 2  # 129 steps per epoch in chunks of 50: three reports per epoch
    assert any(re.search(r"\d+ steps/s  ETA \d+:\d\d", s) for s in status)
    assert "\r\x1b[Kcompiling the training program (MLP 64-16-10, adam, batch 10)" in out
    for e in (1, 2, 3):
        assert re.search(rf"\r\x1b\[Kepoch {e}/3  loss [^\r]*\r?\n", out)
    assert "* training loss per step" in out and max(len(line) for line in out.splitlines()) <= 200


def test_loading_says_which_files_and_from_where(tmp_path, monkeypatch):
    from jaxscratch import data
    names = list(data.IDX_FILES.values())
    monkeypatch.setenv("JAXSCRATCH_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "system"),))
    (tmp_path / "system").mkdir()
    for name in names:
        (tmp_path / "system" / name).write_bytes(b"")
    files = ", ".join(names)
    assert cli._loading_text({"dataset": "fashion-mnist"}) == f"loading fashion-mnist from {tmp_path / 'system'} ({files})"
    (tmp_path / "system" / names[2]).unlink()
    assert cli._loading_text({"dataset": "fashion-mnist"}) == (
        f"loading fashion-mnist: {files}, downloading what is missing into {tmp_path / 'cache' / 'fashion-mnist'}")
    assert cli._loading_text({"dataset": "mnist", "dataset_dir": "/d"}) == f"loading mnist from /d ({files})"


def test_the_rate_holds_between_reports_and_the_eta_counts_down(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    d = _progress.Display(Stream(False), epochs=10)  # off a terminal: no timer, no drawing
    d.tty = True  # but it keeps the status as a terminal's display does
    d.steps(1, 100, 540, 0.5)   # at t=100
    now[0] = 110.0
    d.steps(1, 200, 540, 0.4)   # at t=110: 10 steps/s; 5,200 steps left
    assert d.status_line(110.0).endswith("10 steps/s  ETA 8:40")
    assert d.status_line(140.0).endswith("10 steps/s  ETA 8:10")  # no sag while the next chunk runs
    d.close()
