"""The notebooks run top to bottom in their quick mode and print what their text promises;
the committed files carry no outputs.

Each notebook runs as a reader would run it: in a fresh ``python3`` ipykernel (jupyter_client
starts a kernelspec whose command is ``python`` with this very interpreter, which the test
checks), in a temporary working directory where it writes its figures, with matplotlib's Agg
backend and JAX's strict dtype promotion and raising rank promotion. The quick mode
(``TEXTBOOK_SIZE = False``) is what the notebooks are committed with, so that is what runs.
"""
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIRST_CODE_CELL = "TEXTBOOK_SIZE = False"


def numbers(pattern: str, text: str) -> list[float]:
    """The groups of the first match of ``pattern`` in ``text`` as floats (fails if none)."""
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in the notebook's output:\n{text[-4000:]}"
    return [float(g) for g in match.groups()]


def check_chapter4(text: str) -> None:
    for point, grad in (("3.0, 4.0", "6.000000, 8.000000"), ("0.0, 2.0", r"-?0.000000, 4.000000"),
                        ("3.0, 0.0", r"6.000000, -?0.000000")):
        assert re.search(rf"x = \({point}\)  numerical gradient \[{grad}\]", text), point
    (field_gap,) = numbers(r"largest difference from jax\.vmap\(jax\.grad\(f\)\): (\S+)", text)
    assert field_gap < 1e-6
    assert re.search(r"step 20  x = \(-0\.0346, \+0\.0461\)", text)  # (-3, 4) * 0.8**20
    assert numbers(r"lr 10: x after 20 steps = \((\S+), (\S+)\)", text) == [-1.128e26, 1.504e26]  # times (-19)**20
    assert numbers(r"lr 1e-10: x after 20 steps = \((\S+), (\S+)\)", text) == [-3, 4]
    (worst,) = numbers(r"max relative error (\S+)", text)
    assert worst < 1e-7, "jax.grad and the float64 numerical gradient disagree"
    first, last = numbers(r"mean loss of the first 100 steps (\S+), of the last 100 steps (\S+)", text)
    assert first > 2.0 and last < first / 2, (first, last)


def check_chapter6(text: str) -> None:
    ends = {name: numbers(rf"{name}\s+end \((\S+), (\S+)\)", text) for name in ("SGD", "Momentum", "AdaGrad", "Adam")}
    for name, expected in {"SGD": (-0.3504, 0.0848), "Momentum": (0.8964, 0.0881),
                           "AdaGrad": (-0.1202, 0.0), "Adam": (0.1360, 0.3182)}.items():  # the book's Figure 6-8
        assert ends[name] == pytest.approx(expected, abs=2e-3), name
    loss = {name: numbers(rf"{name}\s+final smoothed loss (\S+)", text)[0] for name in ("SGD", "Momentum", "AdaGrad", "Adam")}
    assert max(loss["Momentum"], loss["AdaGrad"], loss["Adam"]) < loss["SGD"], loss
    he = numbers(r"relu\s+He\s+std of activations per layer: (\S+) (\S+) (\S+) (\S+) (\S+)", text)
    tiny = numbers(r"relu\s+std 0\.01\s+std of activations per layer: (\S+) (\S+) (\S+) (\S+) (\S+)", text)
    assert 0.5 < he[-1] / he[0] < 2 and tiny[-1] < 1e-3, (he, tiny)  # He keeps the spread; 0.01 kills it
    plain, bn = numbers(r"mean final train accuracy: plain (\S+)%, batch norm (\S+)%", text)
    assert bn > plain + 20, (plain, bn)
    gaps = {name: numbers(rf"{name}\s+\d+ epochs  train\s+(\S+)%  test\s+(\S+)%  gap\s+(\S+)", text)
            for name in ("plain", "weight decay 0.1", "dropout 0.2")}
    assert gaps["plain"][0] > 95, "300 samples should be learnt by heart"
    assert gaps["plain"][2] > max(gaps["weight decay 0.1"][2], gaps["dropout 0.2"][2]), gaps
    top = [numbers(rf"\n\s+{rank}  (\S+)  (\S+)\s+(\S+)%", text) for rank in (1, 2)]
    assert top[0][2] >= top[1][2] and top[0][2] > 30, top  # ranked by validation accuracy
    trained, full = numbers(r"epochs trained (\d+) of (\d+)", text)
    assert trained < full / 2
    cv = [numbers(rf"lr {lr}\s+validation loss (\S+)", text)[0] for lr in ("0.001", "0.01", "0.1")]
    (best,) = numbers(r"\nbest: lr (\S+)\n", text)
    assert best == [0.001, 0.01, 0.1][cv.index(min(cv))]
    (ensemble,) = numbers(r"ensemble of the 5 (\S+)%", text)
    assert ensemble > 80


# notebook -> (checks on its printed output, figures it writes under figures/)
CASES = {
    "chapter4_gradients.ipynb": (check_chapter4, ["ch4_gradient_field.png", "ch4_gradient_descent.png",
                                                  "ch4_training_loss.png"]),
    "chapter6_training_techniques.ipynb": (check_chapter6, [
        "ch6_optimizer_paths.png", "ch6_optimizer_comparison.png", "ch6_activation_histograms.png",
        "ch6_batchnorm.png", "ch6_overfitting.png", "ch6_hyperparameter_search.png"]),
}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_is_committed_clean(name):
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert "".join(code[0]["source"]).strip() == FIRST_CODE_CELL, "the first code cell is the size switch"
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"code cell {i} has outputs: clear them"
    for cell in nb["cells"]:
        assert not cell.get("attachments"), "no attachments: figures are written when the notebook runs"


def stream_text(nb, name: str) -> str:
    return "".join(out["text"] for cell in nb.cells for out in cell.get("outputs", [])
                   if out["output_type"] == "stream" and out["name"] == name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs_quick(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_NUMPY_DTYPE_PROMOTION", "strict")
    monkeypatch.setenv("JAX_NUMPY_RANK_PROMOTION", "raise")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel prefix:', sys.prefix)"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    text = stream_text(nb, "stdout")
    assert f"kernel prefix: {sys.prefix}\n" in text, "the kernel must run this environment's Python"
    warnings = re.findall(r"^.*\w+Warning\b.*$", stream_text(nb, "stderr"), flags=re.M)
    assert not warnings, warnings
    check, figures = CASES[name]
    check(text)
    for figure in figures:
        path = tmp_path / "figures" / figure
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
