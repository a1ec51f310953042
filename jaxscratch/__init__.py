"""jaxscratch: a pure-functional JAX training library for *Deep Learning from Scratch*.

Modules (imports point one way, downward): ``nn`` (MLP init and forward), ``losses``,
``optim`` (optimizers as ``(init, update)`` pairs), ``schedules``, ``gradcheck``
(numerical gradients), ``landscapes`` (2-D test functions and optimizer paths).
"""
__version__ = "0.1.0"

from jaxscratch import gradcheck, landscapes, losses, nn, optim, schedules

__all__ = ["__version__", "gradcheck", "landscapes", "losses", "nn", "optim", "schedules"]
