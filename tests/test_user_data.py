"""Data a user brings (issue 15): the `.npz` names people use, train-only files with a seeded,
stated test split that evaluate and --resume find again, and float64 NumPy arrays that `fit` casts
on the host once, without JAX's truncation warning."""
import contextlib
import io
import json
import warnings

import jax
import numpy as np
import pytest

from jaxscratch import checkpoint, cli, data, nn, optim, train
from jaxscratch.data import DataError

N, F = 200, 6
TINY = ["--epochs", "2", "--hidden", "8", "--batch-size", "32"]


def rows(n=N, classes=4, seed=0):
    """Inputs whose column 0 is the row number (exact in float32: rows can be traced through a
    split) and labels with every class, float64 and int64 as NumPy makes them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F))
    x[:, 0] = np.arange(n)
    return x, np.arange(n) % classes


def row_ids(x) -> np.ndarray:
    return x[:, 0].astype(np.int64)


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------- which arrays
@pytest.mark.parametrize("xk, yk", [("x_train", "y_train"), ("X", "y"), ("x", "y"), ("images", "labels")])
def test_every_accepted_pair_loads_and_is_named(tmp_path, xk, yk):
    x, y = rows()
    np.savez(tmp_path / "d.npz", **{xk: x, yk: y})
    ds = data.load_npz(tmp_path / "d.npz", normalize=False)
    assert [a[0] for a in ds.source.arrays] == [xk, yk]
    assert ds.source.arrays[0][1:] == ((N, F), "float64") and ds.source.arrays[1][1:] == ((N,), "int64")
    ids = np.concatenate([row_ids(ds.x_train), row_ids(ds.x_test)])
    assert sorted(ids) == list(range(N))  # every row once, train or test
    np.testing.assert_array_equal(ds.x_train, x[row_ids(ds.x_train)].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, y[row_ids(ds.x_test)])
    assert ds.num_classes == 4 and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def test_a_file_with_a_test_pair_is_used_as_it_is(tmp_path):
    x, y = rows()
    np.savez(tmp_path / "d.npz", x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:], notes=np.zeros(2))
    ds = data.load_npz(tmp_path / "d.npz", normalize=False)
    np.testing.assert_array_equal(row_ids(ds.x_train), np.arange(150))  # not shuffled, nothing held out
    np.testing.assert_array_equal(row_ids(ds.x_test), np.arange(150, 200))
    assert ds.source.held_out == 0 and ds.source.test_fraction is None and ds.source.seed is None
    assert data.describe_npz(ds.source) == ("d.npz: x_train (150, 6) float64, y_train (150,) int64, "
                                            "x_test (50, 6) float64, y_test (50,) int64; not used: notes")


def test_the_same_arrays_under_two_names_use_the_first_pair(tmp_path):
    x, y = rows()
    np.savez(tmp_path / "d.npz", x=x, y=y, X=x)
    ds = data.load_npz(tmp_path / "d.npz")
    assert [a[0] for a in ds.source.arrays] == ["X", "y"] and ds.source.unused == ("x",)


@pytest.mark.parametrize("arrays, both", [
    ({"X": 1, "x": 2, "y": 0}, "X/y and x/y"),
    ({"x_train": 0, "y_train": 0, "images": 0, "labels": 1}, "x_train/y_train and images/labels"),
])
def test_two_different_pairs_are_refused_naming_both(tmp_path, arrays, both):
    x, y = rows()
    np.savez(tmp_path / "d.npz", **{k: (x + v if k[0] in "xXi" else (y + v) % 4) for k, v in arrays.items()})
    with pytest.raises(DataError, match=f"ambiguous: it holds two different pairs of arrays, {both}; keep one pair"):
        data.load_npz(tmp_path / "d.npz")


def test_a_file_without_a_usable_pair_lists_what_it_holds_and_what_is_accepted(tmp_path):
    x, y = rows()
    np.savez(tmp_path / "d.npz", data=x, target=y, X=x)
    with pytest.raises(DataError, match=r"expected a pair of arrays, inputs and targets, named x_train/y_train, X/y, "
                                        r"x/y, images/labels \(with x_test/y_test for a test set\); "
                                        r"found \['X', 'data', 'target'\]"):
        data.load_npz(tmp_path / "d.npz")


def test_half_a_test_pair_is_refused(tmp_path):
    x, y = rows()
    np.savez(tmp_path / "d.npz", X=x, y=y, y_test=y[:5])
    with pytest.raises(DataError, match=r"missing arrays \['x_test'\]; found \['X', 'y', 'y_test'\] \(a test set "
                                        r"needs both x_test and y_test"):
        data.load_npz(tmp_path / "d.npz")


def test_damaged_test_pair_names_cannot_pass_for_a_train_only_file(tmp_path):
    """A bit flipped in the zip's directory renames x_test and y_test (their own headers keep the
    names): refused, not loaded as a train-only file with 20% of its rows held out."""
    x, y = rows()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    raw = bytearray((tmp_path / "d.npz").read_bytes())
    directory = raw.index(b"PK\x01\x02")
    for name in (b"x_test.npy", b"y_test.npy"):
        raw[raw.index(name, directory) + 2] ^= 0x20  # x_test -> x_Test
    (tmp_path / "d.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"corrupt \.npz archive: BadZipFile: File name in directory 'x_Test.npy'"):
        data.load_npz(tmp_path / "d.npz")


# ---------------------------------------------------------------------------- the split
def test_train_only_split_is_seeded_disjoint_complete_and_stratified(tmp_path):
    x, y = rows(n=203, classes=3)  # classes of 68, 68, 67 rows: 14, 14, 13 held out
    np.savez(tmp_path / "d.npz", X=x, y=y)
    a, b = data.load_npz(tmp_path / "d.npz"), data.load_npz(tmp_path / "d.npz")
    train, test = row_ids(a.x_train), row_ids(a.x_test)
    assert len(set(train) & set(test)) == 0 and sorted([*train, *test]) == list(range(203))
    assert [int(np.sum(a.y_test == c)) for c in range(3)] == [14, 14, 13] and a.source.held_out == 41
    for u, v in zip(a[:4], b[:4]):  # identical on every load
        np.testing.assert_array_equal(u, v)
    assert (a.source.test_fraction, a.source.seed, a.source.stratified) == (0.2, 0, True)
    other = data.load_npz(tmp_path / "d.npz", seed=1)
    assert set(row_ids(other.x_test)) != set(test) and other.source.seed == 1
    quarter = data.load_npz(tmp_path / "d.npz", test_fraction=0.25)
    assert len(quarter.x_test) == 17 + 17 + 17
    assert data.describe_npz(a.source) == ("d.npz: X (203, 6) float64, y (203,) int64; no test set: 41 of 203 rows "
                                           "held out as test (20% of each class, seed 0)")


def test_regression_targets_split_by_a_seeded_permutation(tmp_path):
    x, _ = rows(n=101)
    np.savez(tmp_path / "r.npz", x=x, y=x[:, :2] * 3.0)
    ds = data.load_npz(tmp_path / "r.npz", targets="values")
    assert len(ds.x_test) == 20 and not ds.source.stratified  # round(0.2 * 101)
    expected = np.random.default_rng(0).permutation(101)[:20]
    np.testing.assert_array_equal(row_ids(ds.x_test), expected)
    np.testing.assert_array_equal(ds.y_test, (x[expected, :2] * 3.0).astype(np.float32))


@pytest.mark.parametrize("kwargs, match", [({"test_fraction": 0}, r"test_fraction must be a number in \(0, 1\)"),
                                           ({"seed": -1}, r"seed must be an int >= 0; got -1")])
def test_split_settings_are_checked(tmp_path, kwargs, match):
    np.savez(tmp_path / "d.npz", X=rows()[0], y=rows()[1])
    with pytest.raises(ValueError, match=match):
        data.load_npz(tmp_path / "d.npz", **kwargs)


def test_a_stored_record_gives_back_its_split(tmp_path):
    x, y = rows()
    np.savez(tmp_path / "d.npz", X=x, y=y)
    ds = data.load_npz(tmp_path / "d.npz", test_fraction=0.3, seed=7)
    record = json.loads(json.dumps(data.npz_record(ds.source)))  # as a run stores it
    assert data.npz_split(record) == {"test_fraction": 0.3, "seed": 7} and data.npz_split(None) == {}
    cfg = dict(cli.DEFAULTS, dataset=str(tmp_path / "d.npz"), validation_fraction=0.1, seed=0)
    again, _, _ = cli.load_data(cfg, record)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert not np.array_equal(cli.load_data(cfg)[0].x_test, ds.x_test)  # the default split differs
    with pytest.raises(DataError, match=r"a stored data_source must hold .* found 0\.3 and -2"):
        data.npz_split(dict(record, seed=-2))


# ---------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def xy_run(tmp_path_factory):
    """`jaxscratch train` on a train-only X/y file of float64 and int64, as NumPy saves them."""
    root = tmp_path_factory.mktemp("xy")
    x, y = rows()
    x[:, 1:] += y[:, None]  # learnable
    np.savez(root / "runs.npz", X=x, y=y)
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.filterwarnings("error", message=".*will be truncated")  # JAX's float64 warning, and only it
        code = cli.main(["train", "--dataset", str(root / "runs.npz"), "--out", str(root / "run"), *TINY])
    assert code == 0
    return root, buf.getvalue()


def test_train_names_the_arrays_and_the_split(xy_run):
    root, out = xy_run
    line = ("data: runs.npz: X (200, 6) float64, y (200,) int64; no test set: 40 of 200 rows held out as test "
            "(20% of each class, seed 0)")
    assert out.splitlines()[:2] == [f"loading {root / 'runs.npz'}", line]  # what it loads, then what it found
    meta = checkpoint.load_metadata(root / "run" / "best.npz")
    source = meta["data_source"]
    assert source["summary"] == line[len("data: "):] and source["path"] == str(root / "runs.npz")
    assert (source["held_out"], source["test_fraction"], source["seed"]) == (40, 0.2, 0)
    assert source["arrays"] == [{"name": "X", "shape": [200, 6], "dtype": "float64"},
                                {"name": "y", "shape": [200], "dtype": "int64"}]


def test_evaluate_uses_the_same_held_out_rows(xy_run, capsys, tmp_path):
    root, _ = xy_run
    code, out, err = run(["evaluate", root / "run", "--last", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert report["test"]["examples"] == 40
    assert report["test"]["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)  # the rows training tested on
    assert report["test"]["accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_resume_finds_the_same_split(xy_run, capsys):
    root, _ = xy_run
    code, out, err = run(["train", "--out", root / "run", "--resume", "--epochs", "3", "--quiet"], capsys)
    assert code == 0, err
    assert len(json.loads((root / "run" / "metrics.json").read_text())["history"]["epoch"]) == 3


def test_changed_split_data_are_refused_by_evaluate(tmp_path, capsys):
    x, y = rows()
    np.savez(tmp_path / "d.npz", X=x, y=y)
    assert run(["train", "--dataset", tmp_path / "d.npz", "--out", tmp_path / "run", *TINY, "--quiet"], capsys)[0] == 0
    x[5, 3] += 1.0  # one value of one row
    np.savez(tmp_path / "d.npz", X=x, y=y)
    code, _, err = run(["evaluate", tmp_path / "run"], capsys)
    assert code == 2 and "changed since the run was trained" in err


def test_integer_images_of_a_train_only_file_record_their_scale(tmp_path, capsys):
    """The run's preprocessing reads the dtype of the pair used (here `images`), not `x_train`'s."""
    x, y = rows()
    images = (np.abs(x) * 10 % 256).astype(np.uint8)
    np.savez(tmp_path / "pix.npz", images=images, labels=y)
    code, out, err = run(["train", "--dataset", tmp_path / "pix.npz", "--out", tmp_path / "run", *TINY], capsys)
    assert code == 0, err
    assert out.splitlines()[1].startswith("data: pix.npz: images (200, 6) uint8, labels (200,) int64; no test set: "
                                          "40 of 200")
    meta = checkpoint.load_metadata(tmp_path / "run" / "best.npz")
    assert meta["preprocessing"]["integer_inputs_divided_by"] == 255


def test_quiet_train_prints_no_data_line(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", X=rows()[0], y=rows()[1])
    code, out, _ = run(["train", "--dataset", tmp_path / "d.npz", "--out", tmp_path / "run", *TINY, "--quiet"], capsys)
    assert code == 0 and len(out.splitlines()) == 1 and out.startswith("test accuracy ")  # the result alone


# ---------------------------------------------------------------------------- float64 in fit
def test_fit_on_float64_casts_on_the_host_without_a_warning():
    x, y = rows(n=64)  # float64, int64
    model = nn.mlp_model([F, 8, 4])
    kwargs = dict(epochs=2, batch_size=16, verbose=False, validation=(x[:16], y[:16]), test=(x[16:32], y[16:32]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = train.fit(jax.random.key(0), model, optim.sgd(0.1), (x, y), **kwargs)
    ref = train.fit(jax.random.key(0), model, optim.sgd(0.1), (x.astype(np.float32), y.astype(np.int32)),
                    **dict(kwargs, validation=(x[:16].astype(np.float32), y[:16].astype(np.int32)),
                           test=(x[16:32].astype(np.float32), y[16:32].astype(np.int32))))
    for a, b in zip(jax.tree.leaves(got.state.params), jax.tree.leaves(ref.state.params)):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)  # exactly what float32 inputs give
    np.testing.assert_array_equal(got.history["test_acc"], ref.history["test_acc"])


def test_fit_on_float64_regression_targets_and_one_hot_labels_gives_no_warning():
    x, y = rows(n=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.fit(jax.random.key(0), nn.mlp_model([F, 2]), optim.sgd(0.01), (x, x[:, :2] * 0.1), loss="mse",
                  epochs=1, batch_size=16, verbose=False)
        train.fit(jax.random.key(0), nn.mlp_model([F, 4]), optim.sgd(0.01), (x, np.eye(4)[y]), epochs=1,
                  batch_size=16, verbose=False)
