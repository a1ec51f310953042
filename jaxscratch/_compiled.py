"""The library's compiled programs, kept in one place.

Contract:
  * :func:`program` ``(build, *config)`` returns ``build(*config)``, a jitted function, building
    it once per ``(build, config)``: the configuration is hashable (models, tasks, optimizer
    update functions, specs, meshes, shapes and flags are), and equal configurations share one
    program, so JAX compiles it once per input shape. Every module that keeps programs keeps
    them here, in one bounded LRU (:data:`MAX_PROGRAMS`); :func:`clear` empties it and
    :func:`info` counts builds, hits and misses (the tests read it).
  * :func:`once` ``(fn, *static)`` is for programs that run once per configuration
    (initialisation, a run's batch draws): they are compiled without XLA's backend optimiser,
    which takes longer than such a program runs (measured: a 7-layer MLP's initialisation
    compiled in 1.8 s with it and 0.4-0.6 s without; its values differ by a few ulps, and are
    the same as 0.4's, which compiled it the same way). Called with traced arguments (inside
    the caller's ``jit`` or ``vmap``) it traces ``fn`` into the caller's program; with concrete
    arguments inside someone else's trace it runs eagerly as a constant of that trace
    (``jax.ensure_compile_time_eval``), since JAX refuses compiler options on a nested jit.
  * Functions a configuration holds are compared as they compare themselves: by identity,
    unless they define equality (``optim.inject_hyperparams``'s update functions compare equal
    when built from the same factory, static arguments and schedules, so a new learning rate
    reuses the program).
"""
from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["MAX_PROGRAMS", "clear", "info", "once", "precompile", "program"]

MAX_PROGRAMS = 256
_ONE_OFF = {"xla_backend_optimization_level": 0}
_programs: collections.OrderedDict = collections.OrderedDict()
_counts = {"builds": 0, "hits": 0}
_precompiled: set = set()


def program(build: Callable[..., Any], *config) -> Any:
    """``build(*config)``, built once per hashable ``config`` (most recently used kept)."""
    key = (build, config)
    try:
        found = _programs.get(key)
    except TypeError as err:  # an unhashable configuration: a bug in the caller, never user input
        raise TypeError(f"the configuration of {build.__qualname__} must be hashable; got {config!r}") from err
    if found is not None:
        _programs.move_to_end(key)
        _counts["hits"] += 1
        return found
    built = build(*config)
    _programs[key] = built
    _counts["builds"] += 1
    if len(_programs) > MAX_PROGRAMS:
        _programs.popitem(last=False)
    return built


def _one_off(fn, static_argnums):
    return jax.jit(fn, static_argnums=static_argnums, compiler_options=_ONE_OFF)


def once(fn: Callable, *args, static_argnums: tuple = ()) -> Any:
    """``fn(*args)`` as a one-off program (see the module docstring); ``static_argnums`` as ``jax.jit``'s."""
    dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(dynamic)):
        return fn(*args)  # part of the caller's program
    compiled = program(_one_off, fn, tuple(static_argnums))
    with jax.ensure_compile_time_eval():  # concrete inside an outer trace: evaluate now
        return compiled(*args)


def precompile(fn, *args) -> None:
    """Compile the jitted ``fn`` for arguments like ``args`` (arrays or ``jax.ShapeDtypeStruct``s,
    with their shardings) now, once per signature, so that its first call does not compile; JAX
    keeps the executable for that call. Callers use it to compile before they block on a
    computation already running (sweeps: while the trials initialise), or before an epoch runs
    beside the compiler (``fit``)."""
    signature = (fn, jax.tree.structure(args), tuple(
        (jax.typeof(a).shape, jax.typeof(a).dtype, getattr(a, "sharding", None)) for a in jax.tree.leaves(args)))
    try:
        if signature in _precompiled:
            return
    except TypeError:  # an unhashable sharding: just compile
        signature = None
    fn.lower(*args).compile()
    if signature is not None:
        if len(_precompiled) > 4 * MAX_PROGRAMS:
            _precompiled.clear()
        _precompiled.add(signature)


def clear() -> None:
    """Forget every program (JAX's own caches may still hold compiled executables)."""
    _programs.clear()
    _precompiled.clear()


def info() -> dict:
    """``{"programs": kept now, "builds": built so far, "hits": reused so far}``."""
    return {"programs": len(_programs), **_counts}
