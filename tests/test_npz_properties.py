"""The ``.npz`` reader: damaged bytes are read exactly or refused with ``DataError``, never
anything else; labels that cannot mean what the user thinks are refused.

Property tests (hypothesis) damage a real archive (bit flips, cuts, overwritten and inserted
bytes, anywhere: zip headers, ``.npy`` headers, data, the central directory) and check the
library (``data.load_npz`` and ``train.fit`` on what it returns) and the command
(``jaxscratch train --dataset file.npz``: exit status 0 or 2 with one line).
"""
import contextlib
import io
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jaxscratch import cli, data, nn, optim, train
from jaxscratch.data import DataError

RNG = np.random.default_rng(0)
ARRAYS = {"x_train": RNG.integers(0, 256, (24, 3, 3), dtype=np.uint8), "y_train": np.arange(24) % 3,
          "x_test": RNG.random((6, 3, 3)).astype(np.float32), "y_test": np.arange(6) % 3}


def archive(compressed: bool, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **(arrays or ARRAYS))
    return buf.getvalue()


GOOD = {False: archive(False), True: archive(True)}


def write(tmp: Path, content: bytes, name="d.npz") -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


@st.composite
def damaged(draw):
    """A damaged copy of a good archive, and whether it was compressed."""
    compressed = draw(st.booleans())
    raw = bytearray(GOOD[compressed])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "byte", "cut", "insert", "delete"]))
        i = draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            raw[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[i:]
        elif kind == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[i:i + draw(st.integers(1, 8))]
        if not raw:
            break
    return compressed, bytes(raw)


def reference():
    """What the good archive loads as (the same for both compressions)."""
    with tempfile.TemporaryDirectory() as tmp:
        return data.load_npz(write(Path(tmp), GOOD[False]))


REFERENCE = reference()


def same_dataset(a, b) -> bool:
    return all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a[:4], b[:4])) and a[5] == b[5]


# ---------------------------------------------------------------- library level
@given(damaged())
@settings(max_examples=400, deadline=None, database=None)
def test_damaged_archive_is_read_exactly_or_refused(case):
    _, content = case
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ds = data.load_npz(write(Path(tmp), content))
        except DataError as err:
            assert str(err) and "\n" not in str(err)
            return
    # accepted: only damage that changed nothing the arrays depend on (a timestamp, a comment)
    assert same_dataset(ds, REFERENCE)


@given(st.binary(max_size=300), st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06"]))
@settings(max_examples=300, deadline=None, database=None)
def test_any_bytes_are_refused_with_data_error(tail, head):
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(DataError):
            data.load_npz(write(Path(tmp), head + tail))


@given(damaged())
@example((True, GOOD[True]))
@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_fit_on_whatever_the_reader_accepts_trains_like_the_original(case):
    _, content = case
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ds = data.load_npz(write(Path(tmp), content))
        except DataError:
            return
    model = nn.mlp_model((9, 4, ds.num_classes))
    a = train.fit(jax.random.key(0), model, optim.sgd(0.1), (ds.x_train, ds.y_train), epochs=1, batch_size=8, verbose=False)
    b = train.fit(jax.random.key(0), model, optim.sgd(0.1), (REFERENCE.x_train, REFERENCE.y_train), epochs=1, batch_size=8,
                  verbose=False)
    np.testing.assert_array_equal(a.history["step_loss"], b.history["step_loss"])


# ---------------------------------------------------------------- command level
CLI_ROOT = Path(tempfile.mkdtemp(prefix="jaxscratch-npz-cli-"))


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@given(damaged())
@example((False, GOOD[False]))  # undamaged: it trains
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_train_on_a_damaged_archive_exits_0_or_2_with_one_line(case):
    _, content = case
    folder = Path(tempfile.mkdtemp(dir=CLI_ROOT))
    try:
        path = write(folder, content)
        code, err = run_cli(["train", "--dataset", str(path), "--epochs", "1", "--hidden", "4", "--batch-size", "8",
                             "--quiet", "--out", str(folder / "run")])
        assert code in (0, 2), (code, err)
        if code == 2:
            assert len(err.splitlines()) == 1 and err.startswith("jaxscratch train: error: ") and "Traceback" not in err
            assert not (folder / "run").exists()  # refused before anything was written
        else:
            assert (folder / "run" / "best.npz").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- named damage
def member_offsets(content: bytes, name: str) -> tuple[int, int]:
    """Where member ``name``'s stored bytes start in the archive, and their length."""
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        info = zf.getinfo(name)
    n, e = struct.unpack("<HH", content[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + n + e, info.compress_size


def test_a_flipped_bit_in_an_npy_header_is_refused(tmp_path):
    """NumPy alone reads the shifted pixels and never reaches the CRC; the reader refuses."""
    x = RNG.integers(0, 256, (240, 10, 10), dtype=np.uint8)  # large enough that NumPy stops reading early
    content = bytearray(archive(False, **dict(ARRAYS, x_train=x, y_train=np.arange(240) % 3)))
    start, length = member_offsets(bytes(content), "x_train.npy")
    header = bytes(content[start:start + 128])
    i = start + header.index(b"(240, 10, 10)") + 1  # the 2 of 240: "140" declares fewer rows
    content[i] ^= 0b11
    path = write(tmp_path, bytes(content))
    with np.load(path) as npz:
        assert npz["x_train"].shape == (140, 10, 10)  # what a plain np.load would train on
    with pytest.raises(DataError, match=r"x_train.npy: its header declares uint8 \(140, 10, 10\), 14000 bytes, but "
                                        r"the member holds 24000"):
        data.load_npz(path)


def test_a_flipped_bit_in_the_data_is_refused_by_the_crc(tmp_path):
    content = bytearray(GOOD[False])
    start, length = member_offsets(bytes(content), "x_train.npy")
    content[start + length - 1] ^= 1  # the last pixel
    with pytest.raises(DataError, match=r"corrupt \.npz archive: BadZipFile: Bad CRC-32"):
        data.load_npz(write(tmp_path, bytes(content)))


def test_a_header_declaring_terabytes_is_refused_before_allocating(tmp_path):
    """An 11 KB file whose header declares 233 TiB: a header check, not a MemoryError."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (64000000000000, 1000), }"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117) + b"\n" + bytes(11_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x_train.npy", npy)
        for k in ("y_train", "x_test", "y_test"):
            with zf.open(f"{k}.npy", "w") as f:
                np.save(f, ARRAYS[k])
    with pytest.raises(DataError, match=r"x_train.npy: its header declares float32 \(64000000000000, 1000\)"):
        data.load_npz(write(tmp_path, buf.getvalue()))


def test_memory_is_checked_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr("jaxscratch._npz.available_memory", lambda: 100)
    with pytest.raises(DataError, match=r"member x_train.npy declares uint8 \(24, 3, 3\), .* GiB, more than the .* GiB "
                                        r"of memory available"):
        data.load_npz(write(tmp_path, GOOD[True]))


def test_a_member_stored_twice_is_refused(tmp_path):
    buf = io.BytesIO(GOOD[False])
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buf, "a") as zf, \
            zf.open("y_train.npy", "w") as f:
        np.save(f, np.zeros(24, int))
    with pytest.raises(DataError, match=r"expected one member per array; found \['y_train'\] twice"):
        data.load_npz(write(tmp_path, buf.getvalue()))


def test_fortran_order_and_compression_read_exactly(tmp_path):
    arrays = dict(ARRAYS, x_train=np.asfortranarray(ARRAYS["x_train"]))
    for compressed in (False, True):
        ds = data.load_npz(write(tmp_path, archive(compressed, **arrays)))
        assert same_dataset(ds, REFERENCE)


@pytest.mark.parametrize("y_train, y_test, match", [
    (np.zeros(24, int), np.zeros(6, int), r"y_train must hold at least two classes for a classifier; found only \[0\]"),
    (np.arange(24) % 3, np.array([0, 1, 2, 40, 1, 0]),
     r"y_test holds labels \[40\] that y_train never has \(its classes are 0\.\.2\)"),
    (np.where(np.arange(24) % 2, 10**9, 0), np.zeros(6, int),
     r"y_train must hold every class 0\.\.1000000000 \(1000000001 outputs\); found 2 distinct labels, so classes "
     r"such as \[1, 2, 3, 4, 5\] never occur"),
    (np.arange(24) % 3 + 1, np.ones(6, int), r"classes such as \[0\] never occur: number the classes 0\.\.2"),
])
def test_labels_that_cannot_mean_what_the_user_thinks_are_refused(tmp_path, y_train, y_test, match):
    path = write(tmp_path, archive(False, **dict(ARRAYS, y_train=y_train, y_test=y_test)))
    with pytest.raises(DataError, match=match):
        data.load_npz(path)
    code, err = run_cli(["train", "--dataset", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_file_without_test_rows_trains_evaluates_and_resumes(tmp_path):
    path = write(tmp_path, archive(False, **dict(ARRAYS, x_test=np.zeros((0, 3, 3), np.float32),
                                                 y_test=np.zeros(0, int))))
    out = tmp_path / "run"
    common = ["--dataset", str(path), "--hidden", "4", "--batch-size", "8", "--out", str(out)]
    code, err = run_cli(["train", *common, "--epochs", "1"])
    assert code == 0, err
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["train", *common, "--epochs", "2", "--resume"]) == 0
    assert "validation (no test rows) accuracy" in buf.getvalue()
    assert run_cli(["evaluate", str(out)])[0] == 0
