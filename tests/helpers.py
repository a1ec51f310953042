"""Helpers shared by test modules."""
import os
from pathlib import Path

import jax
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


class CompileCounter:
    """Counts XLA compilations through JAX's monitoring events (one per compiled program), and
    records the compiled functions' names: ``with COMPILES as c: ...; c.count, c.names``."""

    def __init__(self):
        self.names, self.active = [], False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **kwargs):
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.names.append(kwargs.get("fun_name", ""))

    @property
    def count(self) -> int:
        return len(self.names)

    def __enter__(self):
        self.names, self.active = [], True
        return self

    def __exit__(self, *exc):
        self.active = False


COMPILES = CompileCounter()  # listeners cannot be removed: one per test process
