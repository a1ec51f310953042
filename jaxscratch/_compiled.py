"""The library's compiled programs, kept in one place.

Contract:
  * :func:`program` ``(build, *config)`` returns ``build(*config)``, a jitted function, building
    it once per ``(build, config)``: the configuration is hashable (models, tasks, optimizer
    update functions, specs, meshes, shapes and flags are), and equal configurations share one
    program, so JAX compiles it once per input shape. Every module that keeps programs keeps
    them here, in one bounded LRU (:data:`MAX_PROGRAMS`); :func:`clear` empties it and
    :func:`info` counts builds, hits and misses (the tests read it).
  * :func:`once` ``(fn, *static)`` is for programs that run once per configuration
    (initialisation, a run's draws): on a CPU they are compiled at LLVM's first level without
    XLA:CPU's (MLIR) fusion emitters (:func:`one_off_options`), which compiles them in about half
    the time of XLA's defaults, runs them about as fast, and gives the defaults' values to the
    bit (tested; level 0, used before, changed some by an ulp and ran the 100-trial search's
    initial draws 3x slower). Called with traced arguments (inside
    the caller's ``jit`` or ``vmap``) it traces ``fn`` into the caller's program; with concrete
    arguments inside someone else's trace it still runs as its own program, its results
    constants of that trace (an executable compiled ahead of time, since JAX refuses compiler
    options on a nested jit); one executable per argument signature.
  * Functions a configuration holds are compared as they compare themselves: by identity,
    unless they define equality (``optim.inject_hyperparams``'s update functions compare equal
    when built from the same factory, static arguments and schedules, so a new learning rate
    reuses the program).
"""
from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["MAX_PROGRAMS", "ONE_OFF", "TRAINING", "clear", "info", "jit", "once", "one_off_options", "precompile",
           "program"]

MAX_PROGRAMS = 256
ONE_OFF = {"xla_backend_optimization_level": 0}  # compiler options of one-off programs off a CPU
# On a CPU: XLA:CPU's older emitters at LLVM's first level. Measured on a 2-core CPU, against XLA's
# defaults and the level-0 options used before (compile s / run s): the 104-trial search's MLP
# draws (13.4M normals) 0.39 / 0.37 against 0.79 / 0.38 and 0.45 / 0.87; a 784-100-100-10 MLP's
# initialisation compiles in 0.08-0.09 s (0.03-0.05 s at level 0). Values: the defaults' to the bit (uniforms, normals, initial
# weights: tests/test_compiled.py), where level 0 moved some by an ulp (no fused multiply-add).
# Training programs keep the fusion emitters: without them an epoch ran ~20% slower.
_CPU_ONE_OFF = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
# A one-off program whose floating-point arithmetic is one operation per value (a product, a
# copy) leaves LLVM nothing to contract into a multiply-add, so level 0 gives the same bits; the
# sweeps' MLP states (weights = std * unit normals) compile there in ~0.05 s instead of ~0.08 s.
_CPU_ONE_OP = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def one_off_options(platform: str | None = None, *, one_op: bool = False) -> dict:
    """The compiler options of a one-off program on ``platform`` (default: JAX's default backend);
    ``one_op``: its floating-point arithmetic is a single operation per value (tested to the bit)."""
    if (platform or jax.default_backend()) != "cpu":
        return dict(ONE_OFF)
    return dict(_CPU_ONE_OP if one_op else _CPU_ONE_OFF)


def _training_options() -> dict:
    """:data:`TRAINING`: ``JAXSCRATCH_XLA_OPT_LEVEL`` (0-3; default 1) or ``default`` (XLA's own)."""
    level = os.environ.get("JAXSCRATCH_XLA_OPT_LEVEL", "1").strip()
    if level == "default":
        return {}
    if level not in ("0", "1", "2", "3"):
        raise ValueError(f"JAXSCRATCH_XLA_OPT_LEVEL must be 0, 1, 2, 3 or default; got {level!r}")
    return {"xla_backend_optimization_level": int(level)}


TRAINING = _training_options()  # compiler options of the training programs, on a CPU (see jit)
_programs: collections.OrderedDict = collections.OrderedDict()
_counts = {"builds": 0, "hits": 0}
_precompiled: set = set()
_executables: collections.OrderedDict = collections.OrderedDict()  # once's, by signature


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


def jit(fn: Callable, *, evaluation: bool = False, **kwargs) -> Any:
    """``jax.jit(fn, **kwargs)`` for a training program (an epoch, a chunk of steps, an evaluation,
    a sweep's trials): on a CPU compiled with :data:`TRAINING`, LLVM's first optimisation level
    instead of XLA's default third. Their time is in the matmuls, which XLA:CPU hands to its
    library kernels whatever the level; the levels differ in the code generated for the small
    elementwise fusions around them. Measured on a 2-core AVX-512 CPU (benchmarks/RESULTS.md): the
    batch-norm grid's vmapped 16-trial program compiles in 0.64-0.77x the time, and it and the
    optimizer comparison's programs run in 0.94-1.04x the time; results differ from the default
    level's in the last bits (4.8e-7 in a loss after 2,000 steps), as any change of fusion does.
    Every training program of the library is compiled alike, so ``fit``, its chunks, a resumed run
    and the sweeps agree with each other as before. Other platforms keep their defaults.
    ``JAXSCRATCH_XLA_OPT_LEVEL=default`` (or 0-3), read at import, chooses another level.

    ``evaluation``: a program of forward passes only (``fit``'s evaluation chunks), also compiled
    without XLA:CPU's fusion emitters: ``fit``'s 784-100-100-10 evaluation chunk compiled in 0.10
    s instead of 0.14 s and ran as fast (2-core CPU; an epoch, by contrast, ran ~20% slower)."""
    if "compiler_options" not in kwargs and TRAINING and jax.default_backend() == "cpu":
        kwargs["compiler_options"] = {**TRAINING, **({"xla_cpu_use_fusion_emitters": False} if evaluation else {})}
    return jax.jit(fn, **kwargs)


def _signature(leaves) -> tuple:
    return tuple((jax.typeof(a).shape, jax.typeof(a).dtype, getattr(a, "sharding", None)) for a in leaves)


def once(fn: Callable, *args, static_argnums: tuple = ()) -> Any:
    """``fn(*args)`` as a one-off program (see the module docstring); ``static_argnums`` as ``jax.jit``'s."""
    static = tuple(args[i] for i in static_argnums)
    dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
    leaves, treedef = jax.tree.flatten(dynamic)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return fn(*args)  # part of the caller's program
    # An executable compiled ahead of time runs on concrete arguments even inside someone else's
    # trace (its results become constants there), where JAX refuses a nested jit with options.
    key = (fn, tuple(static_argnums), static, treedef, _signature(leaves))
    executable = _executables.get(key)
    if executable is None:
        lowered = jax.jit(fn, static_argnums=static_argnums).lower(*args)
        executable = lowered.compile(compiler_options=one_off_options())
        _executables[key] = executable
        _counts["builds"] += 1
        if len(_executables) > MAX_PROGRAMS:
            _executables.popitem(last=False)
    else:
        _executables.move_to_end(key)
        _counts["hits"] += 1
    return executable(*dynamic)


def precompile(fn, *args) -> None:
    """Compile the jitted ``fn`` for arguments like ``args`` (arrays or ``jax.ShapeDtypeStruct``s,
    with their shardings) now, once per signature, so that its first call does not compile; JAX
    keeps the executable for that call. Callers use it to compile before they block on a
    computation already running (sweeps: while the trials initialise), or before an epoch runs
    beside the compiler (``fit``)."""
    signature = (fn, jax.tree.structure(args), _signature(jax.tree.leaves(args)))
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
    _executables.clear()


def info() -> dict:
    """``{"programs": kept now, "builds": built so far, "hits": reused so far}``."""
    return {"programs": len(_programs) + len(_executables), **_counts}
