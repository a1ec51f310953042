"""What a run knows of its data, and the inputs ``predict`` reads.

Contract: :func:`provenance` records the SHA-256 of the arrays a run trained on and their
preprocessing; :func:`check_same_data` refuses data that differ since. :func:`read_inputs` reads
numeric, finite inputs from a ``.npy`` (or an ``.npz``'s array ``x``) without unpickling;
:func:`preprocess` scales them as the run's training data were, refusing inputs far outside the
training range. Every refusal is a ``UsageError`` saying what was expected and what was found.
"""
from __future__ import annotations

import hashlib
import zipfile

import numpy as np

from jaxscratch import data
from jaxscratch._flags import UsageError


RAW_SCALE = {"digits": 16, "mnist": 255, "fashion-mnist": 255}  # what data.py divides their integer images by


def provenance(cfg, ds) -> dict:
    """What a run stores of its data, so that later commands can check it and do the same: the
    SHA-256 of the arrays it trained on (as loaded: after scaling and flattening), the
    preprocessing (integer images divided by ``scale``; the training inputs' range after it) and,
    for an ``.npz``, which arrays were used and how its test rows were chosen (``data_source``)."""
    scale = RAW_SCALE.get(cfg["dataset"]) or (255 if ds.source is not None and ds.source.integer_inputs else None)
    x = ds.x_train
    return {"data_sha256": data_digest(ds),
            "preprocessing": {"integer_inputs_divided_by": scale, "input_range": [float(x.min()), float(x.max())]},
            **({"data_source": data.npz_record(ds.source)} if ds.source is not None else {})}


def data_digest(ds) -> str:
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def check_same_data(meta, cfg, ds, during: str) -> None:
    """Refuse data whose arrays differ from those the run was trained on (runs that predate the
    checksum are not checked)."""
    stored = meta.get("data_sha256")
    if stored is not None and (now := data_digest(ds)) != stored:
        raise UsageError(f"{during}{cfg['dataset']} changed since the run was trained (SHA-256 of its arrays "
                         f"{stored[:12]}..., now {now[:12]}...); use the data it was trained on, or train a new run")


def read_inputs(path, features: int) -> np.ndarray:
    """Numeric, finite inputs ``(n, features)`` or ``(n, ...)`` from a .npy, or a .npz's array 'x'."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith((b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")):  # .npy, zip (.npz), empty zip
            raise UsageError(f"{path}: expected a .npy file, or a .npz with an array 'x'; found a file starting with {head!r}")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "x" not in loaded.files:
                    raise UsageError(f"{path} holds {loaded.files}; expected an array named 'x'")
                loaded = loaded["x"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # object arrays need pickle: ValueError
        raise UsageError(f"cannot read inputs from {path} (expected .npy, or .npz with an array 'x'): {err}") from None
    x = loaded
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"{path}: inputs must be integers or real numbers; got dtype {x.dtype}")
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != features:
        raise UsageError(f"{path}: inputs must have shape (n, {features}), or (n, ...) with {features} features, as "
                         f"the run's model expects; got {x.shape}")
    finite = np.isfinite(x.reshape(len(x), features)).all(axis=1)  # (0, -1) would be ambiguous for no rows
    if not finite.all():
        raise UsageError(f"{path}: inputs must be finite; row {int(np.argmin(finite))} holds NaN or Inf")
    return x


def preprocess(x, run, path) -> np.ndarray:
    """Inputs as the run's model saw its training data: integer images divided as the loader divided
    them; inputs far outside the training range (raw 0..255 pixels for a model trained on 0..1,
    say) refused rather than mislabelled."""
    prep = run.meta.get("preprocessing") or {}
    scale = prep.get("integer_inputs_divided_by", RAW_SCALE.get(run.cfg["dataset"]))  # older runs: the built-in sets'
    if np.issubdtype(x.dtype, np.integer) and scale and x.size:
        if x.min() < 0 or x.max() > scale:
            raise UsageError(f"{path}: integer inputs must lie in 0..{scale}, as the run's training images did "
                             f"(they are divided by {scale}); found {x.min()}..{x.max()}")
        x = x.astype(np.float32) / np.float32(scale)
    with np.errstate(over="ignore"):
        x = np.asarray(x, np.float32)
    lo, hi = prep.get("input_range") or (None, None)
    if lo is not None and x.size:
        span = max(hi - lo, 1e-6)
        mn, mx = float(x.min()), float(x.max())
        if mn < lo - span or mx > hi + span:
            how = (f"integer images 0..{scale} (divided by {scale} here) or floats scaled as in training"
                   if scale else "inputs preprocessed as in training")
            raise UsageError(f"{path}: inputs range {mn:.4g}..{mx:.4g}, far outside the {lo:.4g}..{hi:.4g} the run's "
                             f"model was trained on; pass {how}")
    return x
