"""A run stores what inference needs of its data: the preprocessing (so `predict` on the raw
images that training read gives the labels training's own inputs give), an absolute data path
(so `evaluate` from another folder reads the same file) and a checksum (so changed data are
refused, not quietly evaluated or resumed on)."""
import json
import os

import numpy as np
import pytest

from jaxscratch import cli, data

TINY = ["--epochs", "2", "--hidden", "16", "--batch-size", "64", "--quiet"]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _uint8_digits(path, shift=0):
    """The 8x8 digits as uint8 pixels 0..240 in an .npz (which the loader divides by 255)."""
    ds = data.load_digits(normalize=False)
    img = lambda x: ((x * 15 + shift) % 241).astype(np.uint8)
    np.savez(path, x_train=img(ds.x_train), y_train=ds.y_train, x_test=img(ds.x_test), y_test=ds.y_test)
    return img(ds.x_test)


@pytest.fixture(scope="module")
def uint8_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prov")
    x_test = _uint8_digits(root / "pix.npz")
    cwd = os.getcwd()
    os.chdir(root)
    try:  # a relative --dataset, as a user types it
        assert cli.main(["train", "--dataset", "pix.npz", "--out", "run", *TINY]) == 0
    finally:
        os.chdir(cwd)
    return root, x_test


def test_predict_applies_the_training_preprocessing(uint8_run, capsys, tmp_path):
    root, x_test = uint8_run
    np.save(tmp_path / "raw.npy", x_test)                                     # what the .npz held
    np.save(tmp_path / "scaled.npy", x_test.astype(np.float32) / np.float32(255))  # what training saw
    labels = {}
    for name in ("raw", "scaled"):
        code, out, err = run(["predict", root / "run", tmp_path / f"{name}.npy"], capsys)
        assert code == 0, err
        labels[name] = np.array(out.split(), int)
    np.testing.assert_array_equal(labels["raw"], labels["scaled"])
    metrics = json.loads((root / "run" / "metrics.json").read_text())  # the best state's own test accuracy
    assert abs(np.mean(labels["raw"] == data.load_digits().y_test) - metrics["test_accuracy"]) < 0.05


def test_predict_refuses_inputs_far_outside_the_training_range(uint8_run, capsys, tmp_path):
    root, x_test = uint8_run
    np.save(tmp_path / "float255.npy", x_test.astype(np.float32))  # raw pixels as floats: not divided
    code, out, err = run(["predict", root / "run", tmp_path / "float255.npy"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "far outside the 0..0.9412 the run's model was trained on" in err
    np.save(tmp_path / "big.npy", np.full_like(x_test, 250))  # integers beyond training's 0..255 are fine...
    assert run(["predict", root / "run", tmp_path / "big.npy"], capsys)[0] == 0
    np.save(tmp_path / "neg.npy", x_test.astype(np.int16) - 1)  # ...negative ones are not pixels
    code, _, err = run(["predict", root / "run", tmp_path / "neg.npy"], capsys)
    assert code == 2 and "integer inputs must lie in 0..255" in err


def test_the_run_stores_an_absolute_data_path(uint8_run, capsys, tmp_path):
    root, _ = uint8_run
    here = run(["evaluate", root / "run"], capsys)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    _uint8_digits(elsewhere / "pix.npz", shift=7)  # another file of the same name
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        there = run(["evaluate", root / "run"], capsys)
    finally:
        os.chdir(cwd)
    assert here[0] == there[0] == 0 and here[1] == there[1]


def test_changed_data_are_refused(tmp_path, capsys):
    _uint8_digits(tmp_path / "pix.npz")
    assert run(["train", "--dataset", tmp_path / "pix.npz", "--out", tmp_path / "run", *TINY], capsys)[0] == 0
    _uint8_digits(tmp_path / "pix.npz", shift=3)  # same shapes, other pixels
    for argv in (["evaluate", tmp_path / "run"],
                 ["train", "--out", tmp_path / "run", "--resume", "--epochs", "3", "--quiet"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "pix.npz changed since the run was trained (SHA-256 of its arrays" in err
