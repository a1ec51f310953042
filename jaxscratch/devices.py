"""Every core of a CPU as a JAX device, so sweeps use them all.

XLA:CPU runs the small matrix products of these networks on one thread, so on a CPU a vmapped
group of trials keeps one core busy however many the machine has. JAX can present the CPU as
several devices (``jax_num_cpu_devices``); :mod:`jaxscratch.sweep` splits its trials over
``jax.local_devices()``, each device running its share on a core of its own with no
communication between them (measured in benchmarks/RESULTS.md). One model is not split: data
parallelism over CPU devices was slower than one device, so ``train.fit`` stays on the default
device unless given a ``mesh``.

Contract:
  * :func:`use_cpu_cores` sets the number of CPU devices to the number of cores this process
    may run on, or ``n``; it must run before JAX starts its backends (before the first array is
    made or ``jax.devices()`` is called), as JAX itself requires. The environment variable
    ``JAX_NUM_CPU_DEVICES=N``, set before Python starts, does the same from outside; when it is
    set, :func:`use_cpu_cores` leaves it alone.
  * The library never calls it by itself (importing jaxscratch changes none of JAX's settings);
    the ``jaxscratch`` command and the examples do.
  * Nothing else changes: GPUs and TPUs are devices of their own already, and a program that runs
    on one CPU device gives the same results with several.
"""
from __future__ import annotations

import os

import jax

__all__ = ["cpu_cores", "use_cpu_cores"]


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> int:
    """Make JAX's CPU backend ``n`` devices (default: :func:`cpu_cores`); returns the number set.

    Call it right after ``import jax`` (or ``import jaxscratch``), before any computation::

        import jaxscratch
        jaxscratch.devices.use_cpu_cores()   # or: JAX_NUM_CPU_DEVICES=2 python script.py

    Raises:
      RuntimeError: JAX has already started its backends (say where to call it instead).
      ValueError: ``n`` is not a positive int.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int (CPU devices); got {n!r}")
    if n is None and os.environ.get("JAX_NUM_CPU_DEVICES", "").strip():
        return int(jax.config.jax_num_cpu_devices)  # the caller's choice, from outside
    n = cpu_cores() if n is None else n
    if jax.config.jax_num_cpu_devices == n:
        return n
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as err:
        raise RuntimeError(f"use_cpu_cores() must run before JAX starts its backends (before the first array or "
                           f"jax.devices()); call it right after the imports, or set JAX_NUM_CPU_DEVICES={n} "
                           f"before Python starts") from err
    return n


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable on Linux), or None when unknown;
    what the readers and the command check a declared size against before allocating (private)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
