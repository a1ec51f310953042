"""One-off programs (``_compiled.once`` and the sweeps' initialisation) are compiled with their own
options on a CPU, faster than XLA's defaults; their values are the defaults' to the bit."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import _compiled, nn, sweep

SIZES = (784, 100, 100, 100, 10)


def _both(fn, *args, one_op=False):
    """``fn(*args)`` compiled with the one-off options and with XLA's defaults: leaves as NumPy."""
    data = lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a
    run = lambda options: [np.asarray(data(a)) for a in jax.tree.leaves(
        jax.jit(fn).lower(*args).compile(compiler_options=options)(*args))]
    return run(_compiled.one_off_options(one_op=one_op)), run({})


@pytest.mark.parametrize("case", ["layers_from_bits", "init_layers", "mlp_draws", "mlp_state", "mlp_state_sgd",
                                  "log_uniform"])
def test_one_off_programs_give_xla_defaults_values_to_the_bit(case):
    rng = np.random.default_rng(0)
    if case == "layers_from_bits":
        bits = rng.integers(0, 2**32, sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])), dtype=np.uint32)
        fn, args = lambda b: nn._layers_from_bits(b, SIZES, "he", True), (bits,)
    elif case == "init_layers":
        fn, args = lambda k: nn._init_layers(k, SIZES, "he", False, jnp.float32), (jax.random.key(3),)
    elif case == "mlp_draws":
        fn, args = jax.vmap(functools.partial(sweep._mlp_draws, SIZES), in_axes=(None, 0)), (jax.random.key(0),
                                                                                              jnp.arange(3))
    elif case == "mlp_state":
        spec = sweep.Spec(sizes=SIZES, optimizer="adam", batchnorm=True)
        k, normals = jax.vmap(functools.partial(sweep._mlp_draws, SIZES), in_axes=(None, 0))(jax.random.key(0),
                                                                                           jnp.arange(3))
        hp = {"learning_rate": jnp.full(3, 1e-3), "init_scale": jnp.asarray([1.0, 0.1, 3e-3])}
        fn, args = jax.vmap(functools.partial(sweep._mlp_state, spec)), (k, normals, hp)
    elif case == "mlp_state_sgd":  # the He scale, a constant of the program
        k, normals = jax.vmap(functools.partial(sweep._mlp_draws, SIZES), in_axes=(None, 0))(jax.random.key(1),
                                                                                           jnp.arange(3))
        spec = sweep.Spec(sizes=SIZES, optimizer="sgd", weight_init="he")
        fn, args = jax.vmap(functools.partial(sweep._mlp_state, spec)), (k, normals, {"learning_rate": jnp.ones(3)})
    else:  # the multiply-add of jax.random.uniform's scaling: fused by the defaults, and by the one-off options
        bounds = np.asarray([[math.log10(0.3), math.log10(7.0)], [-6.0, -2.0]], np.float32)
        fn, args = sweep._log_uniform_of_bits, (rng.integers(0, 2**32, (2, 4000), dtype=np.uint32), bounds)
    got, want = _both(fn, *args, one_op=case.startswith("mlp_state"))  # as sweep._build_mlp_states compiles it
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))

