"""Helpers shared by test modules."""
import os
from pathlib import Path

import pytest

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = [FASHION_MNIST_DIR / f for f in (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]


def require_files(paths):
    """Skip when a file is missing, but fail when CI is "true" (CI must have them)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if not missing:
        return
    message = f"missing {missing} (Debian package dataset-fashion-mnist)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI=true requires them")
    pytest.skip(message)
