"""Property-based tests (hypothesis): the IDX reader, the optimizers' contract, the CLI's flags.

Deadlines are off (the first call of a jitted function compiles) and the example database is
off, so nothing is written into the repository and every run draws afresh.
"""
import argparse
import atexit
import contextlib
import gzip
import io
import math
import re
import shutil
import struct
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.extra import numpy as hnp

from jaxscratch import _flags, cli, data, optim
from jaxscratch.data import DataError

SCRATCH = Path(tempfile.mkdtemp(prefix="jaxscratch-properties-"))
atexit.register(shutil.rmtree, SCRATCH, True)
set_hypothesis_home_dir(SCRATCH / "hypothesis")  # its caches too stay out of the repository
settings.register_profile("jaxscratch", deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("jaxscratch")


# ---------------------------------------------------------------- the IDX reader
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_files(draw):
    """(raw IDX bytes, the array they hold): every IDX dtype, 1 to 4 dims, small."""
    code = draw(st.sampled_from(sorted(IDX_TYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=4)))
    array = draw(hnp.arrays(np.dtype(IDX_TYPES[code]), shape))  # floats include NaN, Inf, -0.0
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + array.tobytes(), array


def reference_idx(blob: bytes):
    """The IDX format as its spec reads (gzip found by its magic bytes); None where invalid."""
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except Exception:  # noqa: BLE001 (whatever stops gzip makes the file invalid)
            return None
    if len(blob) < 4 or blob[0] or blob[1] or blob[2] not in IDX_TYPES or not 1 <= blob[3] <= 4:
        return None
    ndim = blob[3]
    if len(blob) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", blob[4: 4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[blob[2]])
    payload = blob[4 + 4 * ndim:]
    if len(payload) != math.prod(dims) * dtype.itemsize:
        return None
    return np.frombuffer(payload, dtype).reshape(dims)


def read(blob: bytes):
    path = SCRATCH / "file.idx"
    path.write_bytes(blob)
    return data.read_idx(path)


def assert_same_array(out, expected):
    assert out.dtype == expected.dtype.newbyteorder("=") and out.dtype.isnative
    assert out.shape == expected.shape
    assert out.tobytes() == expected.astype(out.dtype).tobytes()  # bit for bit: NaN payloads, -0.0


@given(idx_files(), st.booleans())
@settings(max_examples=150)
def test_idx_round_trip(file, gz):
    blob, array = file
    assert_same_array(read(gzip.compress(blob, mtime=0) if gz else blob), array)


@given(idx_files(), st.booleans(), st.data())
@settings(max_examples=150)
def test_idx_truncated_anywhere_is_a_data_error(file, gz, draw):
    blob = gzip.compress(file[0], mtime=0) if gz else file[0]
    cut = draw.draw(st.integers(0, len(blob) - 1), label="cut")
    with pytest.raises(DataError):
        read(blob[:cut])


@given(idx_files(), st.booleans(), st.data())
@settings(max_examples=200)
def test_idx_any_corrupt_byte_is_refused_or_read_as_the_format_says(file, gz, draw):
    """A changed byte gives DataError, never another exception; or, where the file is still valid
    IDX (a payload byte, a dtype code of the same size, a dim of an empty array), exactly the
    array the changed file describes."""
    blob = bytearray(gzip.compress(file[0], mtime=0) if gz else file[0])
    header = 4 + 4 * file[1].ndim
    where = draw.draw(st.one_of(st.integers(0, header - 1), st.integers(0, len(blob) - 1)) if not gz
                      else st.integers(0, len(blob) - 1), label="at")
    blob[where] ^= draw.draw(st.integers(1, 255), label="xor")
    expected = reference_idx(bytes(blob))
    if expected is None:
        with pytest.raises(DataError):
            read(bytes(blob))
    else:
        assert_same_array(read(bytes(blob)), expected)


# ---------------------------------------------------------------- the optimizers' contract
shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple)
values = st.floats(-10, 10, width=32, allow_subnormal=False)


@st.composite
def params_and_grads(draw):
    """A small pytree of float32 parameters (a dict holding a tuple) and gradients of each step."""
    leaf_shapes = draw(st.lists(shapes, min_size=1, max_size=3))

    def tree():
        leaves = [jnp.asarray(draw(hnp.arrays(np.float32, s, elements=values))) for s in leaf_shapes]
        return {"w": leaves[0], "more": tuple(leaves[1:])}

    return tree(), [tree() for _ in range(3)]


def structure(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
@given(trees=params_and_grads())
@settings(max_examples=6)
def test_optimizer_contract(name, trees):
    params, grads = trees
    opt = optim.OPTIMIZERS[name]()
    state = opt.init(params)
    init_structure = structure(state)
    jit_update = jax.jit(opt.update)
    jit_state, p = state, params
    for step, g in enumerate(grads):
        # jit may fuse g + mu * t into one FMA: after a cancellation the two differ by a rounding
        # of the largest operand, so the absolute tolerance is a few ulps of the largest input.
        scale = max([1.0] + [float(jnp.max(jnp.abs(x), initial=0)) for x in jax.tree.leaves((g, p, state))])
        updates, state = opt.update(g, state, p)
        assert structure(updates) == structure(params)  # tree, shapes and dtypes of the params
        assert structure(state) == init_structure       # the state keeps its form from step to step
        jit_updates, jit_state = jit_update(g, jit_state, p)
        # Lion's update is a sign: where its interpolation cancels to ~0, one rounding flips it, so
        # its updates are compared on the first step only (momentum 0: the sign of g itself).
        compared = (updates, state) if name != "lion" or step == 0 else state
        jit_compared = (jit_updates, jit_state) if name != "lion" or step == 0 else jit_state
        for a, b in zip(jax.tree.leaves(compared), jax.tree.leaves(jit_compared)):
            if jnp.issubdtype(a.dtype, jnp.floating):
                np.testing.assert_allclose(a, b, rtol=2e-6, atol=4 * np.finfo(np.float32).eps * scale)
            else:
                np.testing.assert_array_equal(a, b)
        p = optim.apply_updates(p, updates)
        assert structure(p) == structure(params)
    zero = optim.OPTIMIZERS[name](learning_rate=0.0)
    zero_state = zero.init(params)
    for g in grads:
        updates, zero_state = zero.update(g, zero_state, params)
        assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates)), "learning_rate=0 must not move"
    unchanged = optim.apply_updates(params, jax.tree.map(jnp.zeros_like, params))
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(params)))


# ---------------------------------------------------------------- the command line's flags
def python_int(text):
    """Python's own reading, restricted to plain ASCII digits (no spaces, underscores, other scripts)."""
    if not text.isascii() or "_" in text or text != text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        return None


def python_float(text):
    if not text.isascii() or "_" in text or text != text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    # training computes in float32: 0, or a size float32 holds as a normal number
    return value if value == 0 or F32_TINY <= abs(value) <= F32_MAX else None


F32_TINY, F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)

ascii_numbers = st.from_regex(r"[+-]?[0-9]{0,4}\.?[0-9]{0,4}([eE][+-]?[0-9]{1,3})?", fullmatch=True)
texts = st.one_of(st.text(max_size=12), ascii_numbers, st.sampled_from(
    ["nan", "-inf", "Infinity", "1_000", " 5", "5 ", "٣", "0x10", "1e999", "", "+", "1.", ".5", "-0", "True"]))


def accepted(parse, text):
    try:
        return parse(text)
    except Exception as err:  # noqa: BLE001 (only ArgumentTypeError may come out)
        assert isinstance(err, argparse.ArgumentTypeError), err
        assert repr(text) in str(err) and str(err).startswith("expected ")
        return None


@given(texts)
@settings(max_examples=300)
def test_int_and_float_accept_exactly_plain_finite_numbers(text):
    assert accepted(_flags._int, text) == python_int(text)
    out = accepted(_flags._float, text)
    assert (out is None and python_float(text) is None) or out == python_float(text)


@given(st.one_of(st.booleans(), st.integers(-1, 2), st.none(), texts))
def test_a_stored_switch_is_exactly_a_boolean(value):
    assert accepted(_flags._switch, value) == (value if isinstance(value, bool) else None)


@given(st.lists(st.one_of(st.integers(-3, 300).map(str), texts), min_size=1, max_size=4).map(",".join))
def test_hidden_accepts_exactly_positive_int_lists(text):
    items = [python_int(s.strip()) for s in text.split(",")]
    valid = all(n is not None and n >= 1 for n in items)
    assert (accepted(_flags._hidden, text) == text) == valid
    if valid:
        assert _flags._widths(text) == tuple(items)


INT_FLAGS = {"--epochs": (1, None), "--batch-size": (1, None), "--warmup-epochs": (0, None),
             "--decay-epochs": (1, None), "--seed": (0, _flags.SEED_MAX)}
FLOAT_FLAGS = {"--learning-rate": (0, None, False), "--weight-decay": (0, None, False),
               "--dropout": (0, 1, True), "--validation-fraction": (0, 1, True), "--decay-factor": (0, 1, False)}
OTHER_FLAGS = ["--optimizer", "--activation", "--schedule", "--dropout-mode", "--sampling", "--dataset",
                "--weight-init", "--hidden", "--eps-in-sqrt", "--b1", "--momentum"]


def in_range(value, lo, hi, hi_open=False, lo_open=False):
    return (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))


def train_type(flag):
    return _flags.TRAIN_TYPES[flag.lstrip("-").replace("-", "_")]


@given(st.sampled_from(sorted(INT_FLAGS)), st.one_of(st.integers(-2**40, 2**40).map(str), texts))
@settings(max_examples=200)
def test_int_flags_take_exactly_ints_in_range(flag, text):
    n = python_int(text)
    assert (accepted(train_type(flag), text) is not None) == (n is not None and in_range(n, *INT_FLAGS[flag]))


@given(st.sampled_from(sorted(FLOAT_FLAGS)), st.one_of(st.floats(-5, 5).map(str), texts))
@settings(max_examples=200)
def test_number_flags_take_exactly_finite_numbers_in_range(flag, text):
    lo, hi, hi_open = FLOAT_FLAGS[flag]
    v = python_float(text)
    ok = v is not None and in_range(v, lo, hi, hi_open, lo_open=flag == "--decay-factor")
    assert (accepted(train_type(flag), text) is not None) == ok


def main_stderr(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def bad_for(flag):
    """Values ``flag`` must refuse (so no training ever starts)."""
    parse = train_type(flag)
    return texts.filter(lambda t: t not in ("-h", "--help") and accepted(parse, t) is None)


@st.composite
def bad_flag_values(draw):
    flag = draw(st.sampled_from(sorted(INT_FLAGS) + sorted(FLOAT_FLAGS) + OTHER_FLAGS))
    return flag, draw(bad_for(flag))


@given(bad_flag_values())
@settings(max_examples=150, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
def test_a_bad_value_for_any_flag_is_one_line_naming_it(flag_value):
    flag, text = flag_value
    out = SCRATCH / "never"
    code, err = main_stderr(["train", flag, text, "--out", str(out)])
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("jaxscratch") and "Traceback" not in err
    assert flag in err
    assert not out.exists()


@pytest.mark.parametrize("command, args", [("compare", ["--iterations", "0"]), ("evaluate", ["nowhere"]),
                                           ("predict", ["nowhere", "none.npy"])])
@given(junk=st.lists(st.text(min_size=1, max_size=6).filter(lambda t: not t.startswith("-")), min_size=1, max_size=3))
@settings(max_examples=30)
def test_extra_arguments_are_one_line(command, args, junk):
    code, err = main_stderr([command, *args, *junk])
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.match(rf"jaxscratch( {command})?: error: ", err)
