"""Tests for jaxscratch.data: IDX parsing, the loaders, downloads, splits and batch indices.

Downloads run against a local HTTP server on 127.0.0.1 that serves small fake IDX files the
tests write; an autouse fixture empties the default mirror lists and points the cache at a
temporary folder, so no test can reach the internet or touch the user's cache.
"""
import gzip
import hashlib
import http.server
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import require_files
from jaxscratch import data
from jaxscratch.data import DataError

FILES = list(data.IDX_FILES.values())
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRRORS = data.MNIST_MIRRORS + data.FASHION_MNIST_MIRRORS  # before `offline` empties them


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No default mirror, no mirror env var, and a cache under tmp_path."""
    monkeypatch.setattr(data, "MNIST_MIRRORS", ())
    monkeypatch.setattr(data, "FASHION_MNIST_MIRRORS", ())
    monkeypatch.delenv("JAXSCRATCH_MNIST_MIRRORS", raising=False)
    monkeypatch.delenv("JAXSCRATCH_FASHION_MNIST_MIRRORS", raising=False)
    monkeypatch.setenv("JAXSCRATCH_DATA", str(tmp_path / "data_home"))


# ---------------------------------------------------------------------------- fake IDX files
def idx_bytes(array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_mnist(seed=0, n_train=50, n_test=10, labels_max=9, n_train_labels=None):
    """{file name: gzipped IDX bytes} and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, labels_max + 1, n_train_labels or n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, labels_max + 1, n_test, dtype=np.uint8),
    }
    arrays["y_train"][0] = labels_max
    files = {data.IDX_FILES[k]: gzip.compress(idx_bytes(a, 0x08), mtime=0) for k, a in arrays.items()}
    return files, arrays


def write_dir(directory, files, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        if gz:
            (directory / name).write_bytes(blob)
        else:
            (directory / name.removesuffix(".gz")).write_bytes(gzip.decompress(blob))
    return directory


def md5_table(files):
    return {name: hashlib.md5(blob).hexdigest() for name, blob in files.items()}


# ---------------------------------------------------------------------------- read_idx
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                        (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 2)])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, code, dtype, shape, gz):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    blob = idx_bytes(array, code)
    path = tmp_path / "a.idx"  # no .gz suffix either way: gzip is found by its magic bytes
    path.write_bytes(gzip.compress(blob) if gz else blob)
    out = data.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, array)


def test_read_idx_big_endian_int32_values(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + bytes([0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFE]))
    np.testing.assert_array_equal(data.read_idx(path), [256, -2])


@pytest.mark.parametrize("blob,match", [
    (bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]), r"truncated: shape \(3,\) of uint8 needs 3 bytes; found 2"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3, 4]), r"too long: .* needs 3 bytes; found 4"),
    (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), r"expected magic bytes 00 00; found 01 00"),
    (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]), r"dtype code among 0x08.*found 0x0A"),
    (bytes([0, 0, 8, 0]), r"1 to 4 dimensions .* found 0"),
    (bytes([0, 0, 8, 5]) + bytes(20) + bytes(1), r"1 to 4 dimensions .* found 5"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), r"header truncated: expected 16 bytes; found 8"),
    (bytes([0, 0]), r"at least 4 bytes; found 2"),
])
def test_read_idx_rejects_bad_files(tmp_path, blob, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_and_truncated_gzip(tmp_path):
    payload = idx_bytes(np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8), 8)
    blob = bytearray(gzip.compress(payload))
    mid = len(blob) // 2
    blob[mid: mid + 8] = bytes(b ^ 0xFF for b in blob[mid: mid + 8])
    (tmp_path / "corrupt.gz").write_bytes(bytes(blob))
    (tmp_path / "short.gz").write_bytes(gzip.compress(payload)[: mid])
    for name in ("corrupt.gz", "short.gz"):
        with pytest.raises(DataError, match=rf"{name}: corrupt or truncated gzip"):
            data.read_idx(tmp_path / name)
    with pytest.raises(DataError, match="cannot read IDX file"):
        data.read_idx(tmp_path / "absent")


# ---------------------------------------------------------------------------- digits
def test_load_digits_shapes_and_ranges():
    d = data.load_digits()
    assert d.name == "digits" and d.num_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.shape[1:] == (64,) and d.x_train.dtype == np.float32
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert d.y_train.dtype == np.int32 and set(np.unique(d.y_test)) == set(range(10))
    raw = data.load_digits(normalize=False, flatten=False)
    assert raw.x_train.shape[1:] == (1, 8, 8) and raw.x_train.dtype == np.uint8
    assert raw.x_train.max() == 16
    np.testing.assert_allclose(raw.x_train.reshape(len(raw.x_train), -1) / 16, d.x_train, rtol=1e-6)


def test_load_digits_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.datasets").load_digits()
    d = data.load_digits(normalize=False)
    ours = np.concatenate([np.column_stack([d.x_train, d.y_train]), np.column_stack([d.x_test, d.y_test])])
    theirs = np.column_stack([sk.data, sk.target]).astype(np.int64)
    sort = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_array_equal(sort(ours.astype(np.int64)), sort(theirs))


def test_load_digits_split_is_seeded_and_stratified():
    a, b, c = data.load_digits(seed=0), data.load_digits(seed=0), data.load_digits(seed=1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_test, c.y_test)
    counts_test = np.bincount(a.y_test, minlength=10)
    counts_all = counts_test + np.bincount(a.y_train, minlength=10)
    np.testing.assert_array_equal(counts_test, np.round(0.2 * counts_all))
    assert len(data.load_digits(test_fraction=0.5).x_test) == pytest.approx(1797 / 2, abs=6)
    for bad in (0, 1, -0.1, "0.2"):
        with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\)"):
            data.load_digits(test_fraction=bad)


def test_load_digits_one_hot():
    d, h = data.load_digits(), data.load_digits(one_hot=True)
    assert h.y_train.shape == (len(d.y_train), 10) and h.y_train.dtype == np.float32
    np.testing.assert_array_equal(h.y_train.sum(axis=1), 1.0)
    np.testing.assert_array_equal(h.y_train.argmax(axis=1), d.y_train)


def test_one_hot_helper():
    np.testing.assert_array_equal(data.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    out = data.one_hot(jnp.array([1, 2]), 3)
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"0\.\.2; found 0\.\.3"):
        data.one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="must be integers"):
        data.one_hot(np.array([0.5]), 3)


# ---------------------------------------------------------------------------- local folders
def test_load_mnist_from_path(tmp_path):
    files, arrays = fake_mnist()
    d = data.load_mnist(write_dir(tmp_path / "mine", files))
    assert d.name == "mnist" and d.num_classes == 10
    assert d.x_train.shape == (50, 784) and d.x_test.shape == (10, 784)
    np.testing.assert_allclose(d.x_train, arrays["x_train"].reshape(50, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, arrays["y_test"])
    raw = data.load_mnist(write_dir(tmp_path / "raw", files, gz=False), normalize=False,
                          flatten=False, one_hot=True)
    assert raw.x_train.shape == (50, 1, 28, 28) and raw.x_train.dtype == np.uint8
    np.testing.assert_array_equal(raw.x_train[:, 0], arrays["x_train"])
    assert raw.y_train.shape == (50, 10)


def test_path_missing_file_names_file_and_dir(tmp_path):
    files, _ = fake_mnist()
    del files["t10k-labels-idx1-ubyte.gz"]
    folder = write_dir(tmp_path / "partial", files)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz .* not found in .*partial"):
        data.load_mnist(folder)
    with pytest.raises(DataError, match="must be a directory"):
        data.load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("kwargs,match", [
    ({"n_train_labels": 49}, r"train-images-idx3-ubyte\.gz holds 50 images but .* 49 labels"),
    ({"labels_max": 10}, r"expected labels 0\.\.9; found a label 10"),
])
def test_bad_counts_and_labels(tmp_path, kwargs, match):
    files, _ = fake_mnist(**kwargs)
    with pytest.raises(DataError, match=match):
        data.load_mnist(write_dir(tmp_path / "d", files))


def test_wrong_image_shape(tmp_path):
    files, _ = fake_mnist()
    files["t10k-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros((10, 8, 8), np.uint8), 8))
    with pytest.raises(DataError, match=r"expected uint8 images \(n, 28, 28\); found uint8 \(10, 8, 8\)"):
        data.load_mnist(write_dir(tmp_path / "d", files))


def test_fashion_mnist_from_system_dir(tmp_path, monkeypatch):
    files, arrays = fake_mnist(seed=3)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", (str(write_dir(tmp_path / "sys", files)),))
    d = data.load_fashion_mnist(mirrors=[], cache_dir=tmp_path / "empty-cache")
    assert d.name == "fashion-mnist"
    np.testing.assert_array_equal(d.y_train, arrays["y_train"])
    assert not (tmp_path / "empty-cache").exists()  # nothing downloaded, nothing written


def test_real_fashion_mnist_from_debian(tmp_path):
    require_files([DEBIAN / f for f in FILES])
    d = data.load_fashion_mnist(mirrors=[], cache_dir=tmp_path / "cache")
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
    for y in (d.y_train, d.y_test):
        np.testing.assert_array_equal(np.unique(y), np.arange(10))
    assert np.bincount(d.y_train).tolist() == [6000] * 10  # Fashion-MNIST is balanced


def test_require_files_fails_on_ci_and_skips_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_files([tmp_path / "absent"])
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_files([tmp_path / "absent"])


# ---------------------------------------------------------------------------- downloads
class Server:
    """A local HTTP server: ``files`` maps URL paths to bytes; ``modes`` can cut or stall."""

    def __init__(self):
        self.files, self.modes, self.requests = {}, {}, []
        self.release = threading.Event()
        self.barriers, lock = {}, threading.Lock()
        state = self

        def barrier(path):  # "pair": a file is sent once two clients are asking for it
            with lock:
                return self.barriers.setdefault(path, threading.Barrier(2, timeout=30))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                state.requests.append(self.path)
                body = state.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                mode = state.modes.get(self.path)
                if mode == "pair":
                    barrier(self.path).wait()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if mode in (None, "pair") else body[: len(body) // 2])
                self.wfile.flush()
                if mode == "stall":
                    state.release.wait(10)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, prefix, files, mode=None):
        for name, blob in files.items():
            self.files[f"{prefix}{name}"] = blob
            self.modes[f"{prefix}{name}"] = mode
        return f"{self.url}{prefix}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_download_caches_then_reads_cache(server, monkeypatch, tmp_path):
    files, arrays = fake_mnist()
    monkeypatch.setattr(data, "MNIST_MD5", md5_table(files))
    mirror = server.serve("/good/", files)
    d = data.load_mnist(mirrors=[mirror], timeout=5)
    cache = tmp_path / "data_home" / "mnist"  # $JAXSCRATCH_DATA/mnist
    assert sorted(os.listdir(cache)) == sorted(FILES)
    for name in FILES:
        assert (cache / name).read_bytes() == files[name]
    np.testing.assert_array_equal(d.y_train, arrays["y_train"])
    assert len(server.requests) == 4
    again = data.load_mnist(mirrors=[mirror])
    assert len(server.requests) == 4  # served from the cache
    np.testing.assert_array_equal(again.x_test, d.x_test)


def test_cache_dir_falls_back_to_xdg(server, monkeypatch, tmp_path):
    files, _ = fake_mnist()
    monkeypatch.setattr(data, "FASHION_MNIST_MD5", md5_table(files))
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", ())
    monkeypatch.delenv("JAXSCRATCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAXSCRATCH_FASHION_MNIST_MIRRORS", "," + server.serve("/f/", files))
    data.load_fashion_mnist()
    assert sorted(os.listdir(tmp_path / "xdg" / "jaxscratch" / "fashion-mnist")) == sorted(FILES)


def test_broken_cached_file_says_what_to_do(tmp_path):
    files, _ = fake_mnist()
    cache = write_dir(tmp_path / "cache", files)
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(files["t10k-images-idx3-ubyte.gz"][:-9])
    with pytest.raises(DataError, match=r"(?s)t10k-images.*corrupt or truncated gzip.*Delete or replace"):
        data.load_mnist(cache_dir=cache, mirrors=[])


def test_checksum_mismatch_leaves_nothing(server, monkeypatch, tmp_path):
    files, _ = fake_mnist(seed=0)
    other, _ = fake_mnist(seed=1)  # valid IDX files, wrong bytes
    monkeypatch.setattr(data, "MNIST_MD5", md5_table(files))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"MD5 mismatch: expected [0-9a-f]{32}; found"):
        data.load_mnist(mirrors=[server.serve("/evil/", other)], cache_dir=cache)
    assert os.listdir(cache) == []


def test_second_mirror_after_404(server, monkeypatch, tmp_path):
    files, arrays = fake_mnist()
    monkeypatch.setattr(data, "MNIST_MD5", md5_table(files))
    mirrors = [f"{server.url}/gone/", server.serve("/good/", files)]
    d = data.load_mnist(mirrors=mirrors, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(d.x_train[:, :3], arrays["x_train"].reshape(50, -1)[:, :3] / np.float32(255))
    assert sum(p.startswith("/gone/") for p in server.requests) == 4


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_connection_lost_half_way(server, monkeypatch, tmp_path, mode):
    files, _ = fake_mnist()
    monkeypatch.setattr(data, "MNIST_MD5", md5_table(files))
    cache = tmp_path / "cache"
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        data.load_mnist(mirrors=[server.serve("/half/", files, mode)], cache_dir=cache, timeout=0.5)
    assert time.monotonic() - start < 5
    expected = "connection closed after" if mode == "cut" else "timed out"
    assert expected in str(info.value)
    assert os.listdir(cache) == []


def test_offline_error_says_what_and_how(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "sysdir"),))
    mirror = closed_port_url()
    with pytest.raises(DataError) as info:
        data.load_fashion_mnist(mirrors=[mirror], cache_dir=tmp_path / "cache", timeout=2)
    message = str(info.value)
    for part in ("train-images-idx3-ubyte.gz", str(tmp_path / "cache"), str(tmp_path / "sysdir"),
                 mirror + "train-images-idx3-ubyte.gz", "path=", "JAXSCRATCH_DATA",
                 "t10k-labels-idx1-ubyte.gz"):
        assert part in message
    assert os.listdir(tmp_path / "cache") == []


def test_two_loads_at_once_share_the_cache(server, monkeypatch, tmp_path):
    files, arrays = fake_mnist()
    monkeypatch.setattr(data, "MNIST_MD5", md5_table(files))
    mirror, results = server.serve("/good/", files), []
    threads = [threading.Thread(target=lambda: results.append(
        data.load_mnist(mirrors=[mirror], cache_dir=tmp_path / "c"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and sorted(os.listdir(tmp_path / "c")) == sorted(FILES)
    for d in results:
        np.testing.assert_array_equal(d.y_train, arrays["y_train"])


LOAD_IN_A_PROCESS = r"""
import json, sys
from jaxscratch import data
data.MNIST_MD5 = json.loads(sys.argv[1])
d = data.load_mnist(mirrors=[sys.argv[2]], cache_dir=sys.argv[3], timeout=30)
print(d.x_train.shape, int(d.y_train.sum()), float(d.x_train.sum()))
"""


def test_two_processes_downloading_at_once_share_the_cache(server, tmp_path):
    """Two processes download every file at the same moment (the server sends each file only
    once both ask for it); each renames its own verified copy into place: the cache ends whole."""
    files, arrays = fake_mnist()
    mirror, cache = server.serve("/pair/", files, mode="pair"), tmp_path / "shared-cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-c", LOAD_IN_A_PROCESS, json.dumps(md5_table(files)), mirror, str(cache)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and outs[0][0].startswith("(50, 784)")
    assert sorted(server.requests) == sorted(f"/pair/{f}" for f in FILES for _ in range(2))  # all downloaded twice
    assert sorted(os.listdir(cache)) == sorted(FILES)  # no temporary file left
    for name in FILES:
        assert (cache / name).read_bytes() == files[name]


def test_default_mirrors_are_https():
    assert DEFAULT_MIRRORS and all(m.startswith("https://") for m in DEFAULT_MIRRORS)


def test_default_tables_are_sane():
    for table in (data.MNIST_MD5, data.FASHION_MNIST_MD5):
        assert sorted(table) == sorted(FILES)
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in table.values())
    assert data.MNIST_MD5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_non_http_mirror_is_refused(tmp_path):
    with pytest.raises(DataError, match="must be an http:// or https:// URL"):
        data.load_mnist(mirrors="file:///etc/", cache_dir=tmp_path / "c")


# ---------------------------------------------------------------------------- .npz and dispatch
def test_load_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (20, 5, 5), dtype=np.uint8), rng.integers(0, 256, (4, 5, 5), dtype=np.uint8)
    y_train, y_test = np.arange(20) % 3, np.array([0, 1, 2, 1])
    np.savez(tmp_path / "mine.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    d = data.load_dataset(tmp_path / "mine.npz")
    assert d.name == "mine" and d.num_classes == 3 and d.x_train.shape == (20, 25)
    np.testing.assert_allclose(d.x_test, x_test.reshape(4, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, y_train)
    # one-hot labels in, widths decide num_classes; flatten=False keeps the sample shape
    np.savez(tmp_path / "oh.npz", x_train=x_train, y_train=np.eye(4)[y_train], x_test=x_test,
             y_test=np.eye(4)[y_test])
    o = data.load_npz(tmp_path / "oh.npz", flatten=False, one_hot=True)
    assert o.num_classes == 4 and o.x_train.shape == (20, 5, 5) and o.y_test.shape == (4, 4)


@pytest.mark.parametrize("arrays,match", [
    ({"x_train": np.zeros((2, 3)), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 3))},
     r"missing arrays \['y_test'\]"),
    ({"x_train": np.zeros((2, 3)), "y_train": np.zeros(3, int), "x_test": np.zeros((1, 3)),
      "y_test": np.zeros(1, int)}, r"x_train holds 2 samples but y_train 3"),
    ({"x_train": np.zeros((2, 3)), "y_train": np.array([0, -1]), "x_test": np.zeros((1, 3)),
      "y_test": np.zeros(1, int)}, r"y_train must be non-negative; found a label -1"),
    ({"x_train": np.zeros(2), "y_train": np.zeros(2, int), "x_test": np.zeros(1),
      "y_test": np.zeros(1, int)}, r"at least 2 dims and a value per sample; found float64 \(2,\)"),
    ({"x_train": np.zeros((2, 0)), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 0)),
      "y_test": np.zeros(1, int)}, r"a value per sample; found float64 \(2, 0\)"),
    ({"x_train": np.zeros((0, 3)), "y_train": np.zeros(0, int), "x_test": np.zeros((1, 3)),
      "y_test": np.zeros(1, int)}, r"x_train holds no samples; expected at least one"),
    ({"x_train": np.array([[0, 1], [np.nan, 0], [np.inf, 0]]), "y_train": np.zeros(3, int),
      "x_test": np.zeros((1, 2)), "y_test": np.zeros(1, int)},
     r"x_train must hold finite numbers .* found NaN or Inf in 2 samples, the first at index 1"),
    ({"x_train": np.zeros((2, 3)), "y_train": np.zeros(2, int), "x_test": np.full((1, 3), 1e300),
      "y_test": np.zeros(1, int)}, r"x_test must hold finite numbers \(within float32's range\)"),
    ({"x_train": np.full((2, 3), 300), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 3), int),
      "y_test": np.zeros(1, int)}, r"0\.\.255 to normalize; found 300\.\.300"),
])
def test_load_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        data.load_npz(tmp_path / "bad.npz")


UNPICKLED = []


def _unpickle_canary():
    UNPICKLED.append(True)
    return "canary"


class Canary:
    def __reduce__(self):
        return (_unpickle_canary, ())


def test_load_npz_with_no_test_samples(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((3, 2, 2)), y_train=np.array([0, 1, 1]),
             x_test=np.ones((0, 2, 2)), y_test=np.zeros(0, int))
    d = data.load_npz(tmp_path / "d.npz")
    assert d.x_test.shape == (0, 4) and d.num_classes == 2


def test_load_npz_never_unpickles(tmp_path):
    x = np.array([Canary(), Canary()], dtype=object)
    np.savez(tmp_path / "evil.npz", x_train=x, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(2, int))
    pickle.loads(pickle.dumps(Canary()))  # the canary works...
    UNPICKLED.clear()
    with pytest.raises(DataError, match="object"):
        data.load_npz(tmp_path / "evil.npz")
    assert UNPICKLED == []  # ...and the loader never ran it
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="expected an .npz archive"):
        data.load_npz(tmp_path / "single.npy")


def test_load_dataset_dispatch(tmp_path):
    assert data.load_dataset("digits", seed=1).name == "digits"
    files, _ = fake_mnist()
    assert data.load_dataset("Fashion_MNIST", path=write_dir(tmp_path / "f", files)).name == "fashion-mnist"
    with pytest.raises(DataError, match=r"unknown data set 'cifar'; expected one of \['digits', "
                                        r"'fashion-mnist', 'mnist'\] or a path ending in \.npz"):
        data.load_dataset("cifar")


# ---------------------------------------------------------------------------- splits and batches
def test_train_val_split():
    x, y = np.arange(100).reshape(50, 2), np.arange(50)
    xt, yt, xv, yv = data.train_val_split(x, y, 0.2, seed=3)
    assert len(xv) == 10 and len(xt) == 40
    np.testing.assert_array_equal(np.sort(np.concatenate([yt, yv])), y)
    np.testing.assert_array_equal(xt[:, 0] // 2, yt)  # rows stay paired with labels
    np.testing.assert_array_equal(data.train_val_split(x, y, 0.2, seed=3)[3], yv)
    assert not np.array_equal(data.train_val_split(x, y, 0.2, seed=4)[3], yv)
    assert data.train_val_split(x, y, 0)[2].shape == (0, 2)
    xt_j, _, xv_j, _ = data.train_val_split(jnp.asarray(x), jnp.asarray(y), 0.5)
    assert isinstance(xv_j, jax.Array) and xv_j.shape == (25, 2)
    for bad in (1.0, -0.1, None):
        with pytest.raises(ValueError, match=r"validation_fraction must be a number in \[0, 1\)"):
            data.train_val_split(x, y, bad)
    with pytest.raises(ValueError, match="same number of samples"):
        data.train_val_split(x, y[:-1], 0.1)


def test_kfold_indices_equal_folds_and_leftover_always_trained():
    """23 samples, 5 folds: validation folds of 23 // 5 = 4; the 3 left over are in every
    training set and never validated; every other sample is validated exactly once."""
    folds = data.kfold_indices(23, 5, seed=1)
    assert len(folds) == 5
    val = np.concatenate([v for _, v in folds])
    assert len(val) == 20 and len(np.unique(val)) == 20  # each validated sample exactly once
    leftover = np.setdiff1d(np.arange(23), val)
    assert len(leftover) == 23 % 5
    for train, v in folds:
        assert len(v) == 4 and len(train) == 19  # equal sizes: the folds can be stacked and vmapped
        assert np.array_equal(train, np.sort(train)) and np.array_equal(v, np.sort(v))
        assert len(np.intersect1d(train, v)) == 0
        np.testing.assert_array_equal(np.union1d(train, v), np.arange(23))  # nothing dropped
        assert set(leftover) <= set(train)  # trained on in every fold
    assert not np.array_equal(folds[0][1], data.kfold_indices(23, 5, seed=2)[0][1])
    # k divides n: no leftover, every sample validated once
    even = data.kfold_indices(20, 5, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in even])), np.arange(20))
    for n, k in ((10, 1), (10, 11), (10, 2.0)):
        with pytest.raises(ValueError, match="k must be an int in"):
            data.kfold_indices(n, k)


def test_epoch_indices_is_a_seeded_permutation(key):
    idx = data.epoch_indices(key, 103, 10)
    assert idx.shape == (10, 10) and idx.dtype == jnp.int32
    flat = np.asarray(idx).ravel()
    assert len(np.unique(flat)) == 100 and flat.min() >= 0 and flat.max() < 103
    np.testing.assert_array_equal(idx, data.epoch_indices(key, 103, 10))
    assert not np.array_equal(idx, data.epoch_indices(jax.random.fold_in(key, 1), 103, 10))
    raw_key = jax.random.PRNGKey(0)
    assert data.epoch_indices(raw_key, 10, 10).shape == (1, 10)


def test_epoch_indices_with_replacement_and_jit(key):
    idx = np.asarray(data.epoch_indices(key, 1000, 100, replace=True))
    assert idx.shape == (10, 100) and idx.min() >= 0 and idx.max() < 1000
    assert len(np.unique(idx)) < 1000  # drawn with replacement: repeats (fails with prob ~e^-400)
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: data.epoch_indices(k, 12, 4)))(keys)
    assert batched.shape == (3, 3, 4)
    np.testing.assert_array_equal(batched[1], data.epoch_indices(keys[1], 12, 4))
    with pytest.raises(ValueError, match=r"batch_size \(11\) must not exceed .* n \(10\)"):
        data.epoch_indices(key, 10, 11)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.epoch_indices(key, 10, 0)
