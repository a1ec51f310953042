"""Checkpoints: bit-identical round trips, errors that name the leaf, damaged and foreign
files refused, and saves that never leave a partial file behind."""
import io
import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import checkpoint, optim
from jaxscratch.checkpoint import CheckpointError


def training_state(key):
    """What a training loop carries: params, Adam state after one step, batch-norm statistics,
    PRNG keys of both kinds, a step counter, odd dtypes and empty subtrees."""
    k1, k2 = jax.random.split(key)
    params = [{"w": jax.random.normal(k1, (4, 3)), "b": jnp.zeros(3)},
              {"w": jax.random.normal(k2, (3, 2)), "b": jnp.zeros(2)}]
    opt = optim.adam(1e-3)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt.init(params), params)
    return {
        "params": params,
        "opt_state": opt_state,
        "bn": {"running_mean": jnp.full(3, 0.5), "running_var": jnp.ones(3)},
        "key": jax.random.key(0),
        "keys": jax.random.split(jax.random.key(3), 4),
        "rbg_key": jax.random.key(5, impl="rbg"),
        "old_key": jax.random.PRNGKey(1),
        "step": jnp.int32(7),
        "half": jnp.arange(5, dtype=jnp.bfloat16) / 3,
        "specials": jnp.array([jnp.nan, -0.0, jnp.inf, 1e-45, -1e-39], jnp.float32),
        "counts": jnp.arange(4, dtype=jnp.uint8),
        "flag": jnp.array(True),
        "empty": {}, "nothing": (), "none": None,
    }


def raw(x) -> bytes:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x).tobytes()


def assert_bit_identical(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert isinstance(y, jax.Array)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert raw(x) == raw(y)


@pytest.fixture
def state(key):
    return training_state(key)


@pytest.fixture
def ckpt(tmp_path, state):
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, state, metadata={"lr": 1e-3})
    return path


# ---------------------------------------------------------------- round trips
def test_round_trip_is_bit_identical(ckpt, state):
    restored = checkpoint.restore(ckpt, state)
    assert_bit_identical(state, restored)
    assert type(restored["opt_state"]) is optim.AdamState
    assert restored["opt_state"].count.dtype == jnp.int32
    assert str(restored["key"].dtype) == "key<fry>" and str(restored["rbg_key"].dtype) == "key<rbg>"
    assert restored["old_key"].dtype == jnp.uint32
    def draws(s):  # the same random numbers follow from each restored key
        return [jax.random.uniform(k, (3,)) for k in (s["key"], s["keys"][2], s["rbg_key"], s["old_key"])]

    for x, y in zip(draws(state), draws(restored)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_file_gets_the_usual_permissions(ckpt):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_template_of_shape_dtype_structs(ckpt, state):
    like = jax.eval_shape(lambda: state)
    assert isinstance(like["key"], jax.ShapeDtypeStruct)
    assert_bit_identical(state, checkpoint.restore(ckpt, like))


def test_resumed_training_continues_identically(ckpt, state):
    restored = checkpoint.restore(ckpt, state)
    opt = optim.adam(1e-3)

    def step(s):
        grads = jax.tree.map(lambda w: jnp.sin(w), s["params"])
        updates, opt_state = opt.update(grads, s["opt_state"], s["params"])
        noise = jax.random.normal(s["key"], (3,))
        return optim.apply_updates(s["params"], updates), opt_state, noise

    assert_bit_identical(step(state), step(restored))


def test_python_numbers_come_back_as_jax_arrays(tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, {"step": 3, "lr": 0.5, "done": False, "np": np.float32(2.0)})
    restored = checkpoint.restore(path, {"step": 0, "lr": 0.0, "done": True, "np": np.float32(0)})
    assert {k: (v.dtype, v.item()) for k, v in restored.items()} == {
        "step": (jnp.int32, 3), "lr": (jnp.float32, 0.5), "done": (jnp.bool_, False), "np": (jnp.float32, 2.0)}


def test_float64_leaves_need_x64(tmp_path):
    path = tmp_path / "ckpt.npz"
    tree = {"w": np.array([1 / 3, 1e-300])}
    checkpoint.save(path, tree)
    with pytest.raises(CheckpointError, match=r"leaf \['w'\] is float64.*enable_x64"):
        checkpoint.restore(path, tree)
    with jax.enable_x64(True):
        restored = checkpoint.restore(path, tree)
        assert restored["w"].dtype == jnp.float64 and raw(restored["w"]) == tree["w"].tobytes()


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    meta = {"model": {"hidden_sizes": [100, 100], "activation": "relu", "drop_rate": 0.5},
            "optimizer": {"name": "adam", "learning_rate": 1e-3, "b1": 0.9},
            "seed": 0, "note": "Grüße, 日本", "batch_norm": True, "weight_decay": None}
    checkpoint.save(path, {"w": jnp.ones(2)}, metadata=meta)
    assert checkpoint.load_metadata(path) == meta
    assert checkpoint.load_metadata(path, verify=True) == meta
    checkpoint.save(path, {"w": jnp.ones(2)})
    assert checkpoint.load_metadata(path) == {}


@pytest.mark.parametrize("meta", [{"f": object()}, ["not", "a", "dict"]])
def test_bad_metadata_is_refused_before_writing(tmp_path, meta):
    with pytest.raises(TypeError, match="metadata must be"):
        checkpoint.save(tmp_path / "ckpt.npz", {"w": jnp.ones(2)}, metadata=meta)
    assert os.listdir(tmp_path) == []


def test_unsupported_leaf_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"leaf \['name'\]: cannot save a str.*metadata"):
        checkpoint.save(tmp_path / "ckpt.npz", {"name": "mnist", "w": jnp.ones(2)})
    assert os.listdir(tmp_path) == []


def test_same_tree_same_bytes_and_a_plain_npz(tmp_path, state):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    checkpoint.save(a, state, metadata={"x": 1})
    checkpoint.save(b, state, metadata={"x": 1})
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as npz:  # readable without jaxscratch
        manifest = json.loads(npz["__manifest__"].tobytes())
        assert (manifest["format"], manifest["version"]) == ("jaxscratch-checkpoint", 1)
        paths = [e["path"] for e in manifest["leaves"]]
        assert paths[:2] == ["['bn']['running_mean']", "['bn']['running_var']"]
        half = manifest["leaves"][paths.index("['half']")]
        assert (half["dtype"], half["stored_dtype"]) == ("bfloat16", "uint16")
        w_index = paths.index("['params'][0]['w']")
        np.testing.assert_array_equal(npz[f"leaf_{w_index:05d}"], state["params"][0]["w"])


def test_a_0_4_train_state_restores_into_model_state(tmp_path, key):
    """jaxscratch 0.4's TrainState called the model state ``bn_state``; such checkpoints restore
    into today's ``model_state``, leaf for leaf, and other fields are not renamed."""
    from typing import Any, NamedTuple

    from jaxscratch import nn, train

    class OldTrainState(NamedTuple):  # 0.4's fields, in 0.4's order
        params: Any
        opt_state: Any
        bn_state: Any
        key: Any
        step: Any

    params = nn.init_mlp(key, (4, 3, 2), batchnorm=True)
    bn = jax.tree.map(lambda a: a + 0.25, nn.init_bn_state(params))
    assert jax.tree.leaves(bn)  # there are statistics to carry over
    opt = optim.momentum(0.1)
    old = OldTrainState(params, opt.init(params), bn, jax.random.key(1), jnp.int32(9))
    path = tmp_path / "v04.npz"
    checkpoint.save(path, old)
    restored = checkpoint.restore(path, train.init_state(key, params, opt, nn.init_bn_state(params)))
    assert isinstance(restored, train.TrainState)
    assert_bit_identical(restored.model_state, bn)
    assert_bit_identical(restored.params, params)
    assert int(restored.step) == 9
    # only that rename is forgiven: another field name still fails, naming the path
    class OtherState(NamedTuple):
        params: Any
        opt_state: Any
        bn_stats: Any
        key: Any
        step: Any

    with pytest.raises(CheckpointError, match=r"the model expects \.bn_stats\[0\]"):
        checkpoint.restore(path, OtherState(*old))


# ---------------------------------------------------------------- templates that do not fit
def test_wrong_shape_names_the_leaf(ckpt, state):
    state["params"][0]["w"] = jnp.zeros((4, 5))
    with pytest.raises(CheckpointError, match=re.escape(
            "leaf ['params'][0]['w']: checkpoint has float32 (4, 3), the model expects float32 (4, 5)")):
        checkpoint.restore(ckpt, state)


def test_wrong_dtype_names_the_leaf(ckpt, state):
    state["bn"]["running_var"] = jnp.ones(3, jnp.bfloat16)
    state["old_key"] = jax.random.key(1)
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(ckpt, state)
    assert "leaf ['bn']['running_var']: checkpoint has float32 (3,), the model expects bfloat16 (3,)" in str(info.value)
    assert "leaf ['old_key']: checkpoint has uint32 (2,), the model expects key<fry> ()" in str(info.value)


def test_mismatched_leaves_are_carried_on_the_error(tmp_path):
    """Every mismatched leaf is on the exception (the message shows ten), so callers such as the
    command line count and cut them without reading the message."""
    path = tmp_path / "many.npz"
    checkpoint.save(path, [jnp.zeros(2) for _ in range(13)])
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, [jnp.zeros(3) for _ in range(13)])
    err = info.value
    assert len(err.mismatches) == 13
    assert err.mismatches[12] == "leaf [12]: checkpoint has float32 (2,), the model expects float32 (3,)"
    assert err.summary.startswith(f"{path} does not fit the model (") and "\n" not in err.summary
    assert str(err).startswith(err.summary + ":\n  " + err.mismatches[0])
    assert str(err).endswith("\n  ... and 3 more") and err.mismatches[10] not in str(err)
    with pytest.raises(CheckpointError) as info:  # other errors: no list, the summary is the message
        checkpoint.restore(path, [jnp.zeros(2)])
    assert info.value.mismatches == () and info.value.summary == str(info.value)


def test_extra_and_missing_leaves_name_the_first_difference(ckpt, state):
    n = len(jax.tree.leaves(state))
    extra = {**state, "ema": jnp.zeros(3)}
    with pytest.raises(CheckpointError, match=rf"checkpoint has {n} leaves, the model expects {n + 1}.*"
                                              r"checkpoint has \['flag'\], the model expects \['ema'\]"):
        checkpoint.restore(ckpt, extra)
    missing = {k: v for k, v in state.items() if k != "step"}
    with pytest.raises(CheckpointError, match=rf"leaf #{n - 1}: checkpoint has \['step'\], the model expects no more leaves"):
        checkpoint.restore(ckpt, missing)


# ---------------------------------------------------------------- damaged and foreign files
def rewrite(src, dst, change):
    """Copy a zip, passing each member's bytes through ``change(name, data)``: CRCs stay valid."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def npy_bytes(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_flipped_byte_in_a_leaf_is_damage(tmp_path):
    path, w = tmp_path / "ckpt.npz", jnp.arange(256, dtype=jnp.float32)
    checkpoint.save(path, {"w": w})
    data = bytearray(path.read_bytes())
    data[data.find(np.asarray(w).tobytes()) + 500] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        checkpoint.restore(path, {"w": w})


def test_checksum_catches_damage_the_zip_crc_misses(tmp_path, ckpt, state):
    bad = tmp_path / "bad.npz"
    flip = lambda name, data: data[:-1] + bytes([data[-1] ^ 1]) if name == "leaf_00003.npy" else data
    rewrite(ckpt, bad, flip)
    with pytest.raises(CheckpointError, match="is damaged: the SHA-256 checksum"):
        checkpoint.restore(bad, state)
    assert checkpoint.load_metadata(bad) == {"lr": 1e-3}  # the manifest itself is fine
    with pytest.raises(CheckpointError, match="SHA-256"):
        checkpoint.load_metadata(bad, verify=True)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_is_refused(ckpt, state, keep):
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a jaxscratch checkpoint \\(or it is truncated\\)"):
        checkpoint.restore(ckpt, state)


def _manifest(**fields):
    doc = {"format": "jaxscratch-checkpoint", "version": 1, "metadata": {}, "sha256": "", "leaves": []}
    return lambda name, data: npy_bytes(np.frombuffer(json.dumps({**doc, **fields}).encode(), np.uint8)) \
        if name == "__manifest__.npy" else data


FOREIGN = {
    "random bytes": (lambda p, c: p.write_bytes(np.random.default_rng(0).bytes(4000)),
                     r"not a jaxscratch checkpoint \(or it is truncated\): not a zip archive"),
    "npy file": (lambda p, c: np.save(open(p, "wb"), np.ones(3)), "not a zip archive"),
    "plain npz": (lambda p, c: np.savez(p, w=np.ones(3)), "not a jaxscratch checkpoint: .*without a '__manifest__'"),
    "npz of objects": (lambda p, c: np.savez(p, w=np.array([{"a": 1}], dtype=object)), "without a '__manifest__'"),
    "object manifest": (lambda p, c: np.savez(p, __manifest__=np.array(["{}"], dtype=object)),
                        "'__manifest__.npy' holds Python objects.*refuse pickle"),
    "object leaf": (lambda p, c: rewrite(c, p, lambda n, d: npy_bytes(np.array([None], object), True)
                                         if n == "leaf_00000.npy" else d), "'leaf_00000.npy' holds Python objects"),
    "manifest not bytes": (lambda p, c: np.savez(p, __manifest__=np.ones(3)), "not UTF-8 bytes"),
    "manifest not json": (lambda p, c: np.savez(p, __manifest__=np.frombuffer(b"{oops", np.uint8)), "not valid JSON"),
    "other format": (lambda p, c: rewrite(c, p, _manifest(format="orbax")),
                     "not a jaxscratch checkpoint: its manifest names the format 'orbax'"),
    "newer version": (lambda p, c: rewrite(c, p, _manifest(version=2)), "newer jaxscratch .*version 2.*upgrade"),
    "garbled manifest": (lambda p, c: rewrite(c, p, _manifest(leaves="?")), "is damaged: its manifest"),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_files_are_refused_without_pickle(tmp_path, ckpt, state, kind, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle must never run")

    make, message = FOREIGN[kind]
    path = tmp_path / "foreign.npz"
    make(path, ckpt)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore(path, state)
    with pytest.raises(CheckpointError):
        checkpoint.load_metadata(path, verify=True)


def test_missing_file(tmp_path, state):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        checkpoint.restore(tmp_path / "nowhere.npz", state)


# ---------------------------------------------------------------- atomicity
@pytest.mark.parametrize("hook", ["_after_leaf", "_before_replace"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path, ckpt, state, hook, error, monkeypatch):
    before = ckpt.read_bytes()

    def fail(*args):
        raise error("disk full")

    monkeypatch.setattr(checkpoint, hook, fail)
    with pytest.raises(error, match="disk full"):
        checkpoint.save(ckpt, {**state, "step": jnp.int32(8)})
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert ckpt.read_bytes() == before
    assert_bit_identical(state, checkpoint.restore(ckpt, state))


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_before_replace", lambda tmp: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        checkpoint.save(tmp_path / "ckpt.npz", {"w": jnp.ones(2)})
    assert os.listdir(tmp_path) == []


KILLED_SAVE = """
import os, signal, sys
import jax.numpy as jnp
from jaxscratch import checkpoint
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(checkpoint, sys.argv[2], die)
checkpoint.save(sys.argv[1], {"w": jnp.full((64, 64), 2.0), "step": jnp.int32(9)})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("hook", ["_after_leaf", "_before_replace"])
def test_killed_save_keeps_the_old_checkpoint(tmp_path, hook):
    path = tmp_path / "ckpt.npz"
    old = {"w": jnp.ones((64, 64)), "step": jnp.int32(8)}
    checkpoint.save(path, old, metadata={"epoch": 1})
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path), hook], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_bit_identical(old, checkpoint.restore(path, old))
    assert checkpoint.load_metadata(path, verify=True) == {"epoch": 1}
    # The killed process could not clean up: its temporary file stays, hidden and harmless.
    leftovers = [n for n in os.listdir(tmp_path) if n != "ckpt.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt.npz.") and leftovers[0].endswith(".tmp")
    new = {"w": jnp.full((64, 64), 3.0), "step": jnp.int32(10)}
    checkpoint.save(path, new)
    assert_bit_identical(new, checkpoint.restore(path, new))
