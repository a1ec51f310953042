"""Regenerate ``jaxscratch/datasets/digits.npz`` from scikit-learn's copy of the 8x8 digits.

Run from the repository root (needs scikit-learn, which the library itself never imports)::

    python tools/make_digits.py

Writes ``images`` (1797, 8, 8) uint8 with values 0..16 and ``labels`` (1797,) uint8 with
values 0..9, compressed, in scikit-learn's order. ``jaxscratch.data.load_digits`` reads it.
The data's licence and origin are in ``jaxscratch/datasets/DIGITS_LICENSE.txt``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "jaxscratch" / "datasets" / "digits.npz"


def main() -> None:
    digits = load_digits()
    images = digits.images  # (1797, 8, 8) float64 holding the integers 0..16
    labels = digits.target  # (1797,) int
    if images.shape != (1797, 8, 8) or labels.shape != (1797,):
        raise SystemExit(f"unexpected shapes from scikit-learn: {images.shape}, {labels.shape}")
    if not (np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise SystemExit("expected integer pixels in 0..16 from scikit-learn")
    if labels.min() < 0 or labels.max() > 9:
        raise SystemExit("expected labels 0..9 from scikit-learn")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images.astype(np.uint8), labels=labels.astype(np.uint8))
    md5 = hashlib.md5(OUT.read_bytes()).hexdigest()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, md5 {md5})")


if __name__ == "__main__":
    main()
