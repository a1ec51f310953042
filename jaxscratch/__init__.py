"""jaxscratch: a pure-functional JAX training library for *Deep Learning from Scratch*.

Modules (imports point one way, downward): ``cli`` (its flags in ``_flags``) -> ``sweep``
(vmapped trials) -> ``train`` (its data checks in ``_fitdata``; + ``checkpoint``) -> ``nn`` (the ``Model(init, apply)`` contract,
the book's MLP; flax and equinox adapters in ``_adapters``), ``losses``, ``optim`` (optimizers
as ``(init, update)`` pairs; their interface and wrappers in ``_transforms``), ``schedules``,
``data`` (IDX files and downloads in ``_idx``); ``gradcheck`` (numerical gradients) and
``landscapes`` (2-D test functions, optimizer paths) sit beside ``train``; ``plot``
(matplotlib) is imported only on demand; ``testing`` (cross-checks of two optimizers, pytree
assertions) sits beside ``train``; ``compile_cache`` (compiled programs on disk, enabled
by the command line only) and ``devices`` (one JAX device per CPU core, for sweeps) stand alone;
``runlog`` (``metrics.jsonl`` and TensorBoard events as ``fit``'s ``on_epoch``) sits beside
``train``; every compiled program is kept by the private ``_compiled``, every file is written
by the private ``_files``.
"""
__version__ = "0.5.0"

from jaxscratch import (checkpoint, compile_cache, data, devices, gradcheck, landscapes, losses, nn, optim, runlog, schedules,
                        sweep, testing, train)

__all__ = ["__version__", "checkpoint", "compile_cache", "data", "devices", "gradcheck", "landscapes", "losses", "nn", "optim",
           "runlog", "schedules", "sweep", "testing", "train"]
