"""Our optimizers where optax's are expected: the extra-arguments protocol of ``update``."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import optim


@pytest.fixture(autouse=True)
def standard_promotion():
    """optax relies on implicit dtype promotion; these tests call it, so they run with the default rules."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def _params(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,))}


def _plateau():
    return optax.contrib.reduce_on_plateau(factor=0.5, patience=3, cooldown=1)


# A loss that improves for 10 steps, then stalls: the plateau rule halves the scale several times.
VALUES = [1.0 / (t + 1) for t in range(10)] + [0.1] * 30


def _run(opt, params, key, **extra):
    """Updates and states of ``opt`` over len(VALUES) steps, ``value=`` each step. The gradients
    do not depend on the parameters, so float differences between implementations stay at rounding."""
    state, out = opt.init(params), []
    step = jax.jit(opt.update)
    for t, v in enumerate(VALUES):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(key, t), p.shape), params)
        updates, state = step(grads, state, params, value=jnp.float32(v), **extra)
        params = optax.apply_updates(params, updates)
        out.append((updates, state))
    return out


def test_chain_passes_value_to_reduce_on_plateau_as_optax_chain_does(key):
    params = _params(key)
    ours = _run(optim.chain(optim.adam(0.01, eps=1e-8), _plateau()), params, key)
    ref = _run(optax.chain(optax.adam(0.01, eps=1e-8), _plateau()), params, key)
    for t, ((u, s), (ur, sr)) in enumerate(zip(ours, ref)):
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ur)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8, err_msg=f"step {t}")
        assert float(s[1].scale) == float(sr[1].scale), t
    assert float(ours[-1][1][1].scale) <= 0.125  # the plateau really triggered, three times or more
    assert float(ours[9][1][1].scale) == 1.0


def test_every_wrapper_passes_extra_arguments_through(key):
    """apply_if_finite, inject_hyperparams and nested chains hand ``value`` on; optax's plain
    transforms (clip_by_global_norm) inside our chain never receive it."""
    params = _params(key)
    ref = _run(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01, eps=1e-8), _plateau()), params, key)

    def factory(learning_rate):
        return optim.chain(optax.clip_by_global_norm(1.0), optim.adam(learning_rate, eps=1e-8), _plateau())

    wrapped = [
        optim.chain(optim.chain(optax.clip_by_global_norm(1.0), optim.adam(0.01, eps=1e-8)), _plateau()),
        optim.apply_if_finite(factory(0.01)),
        optim.inject_hyperparams(factory)(learning_rate=0.01),
    ]
    for opt in wrapped:
        out = _run(opt, params, key)
        for (u, _), (ur, _) in zip(out, ref):
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ur)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_our_updates_accept_and_ignore_extra_arguments(name, key):
    params = _params(key)
    grads = jax.tree.map(jnp.sin, params)
    opt = optim.OPTIMIZERS[name]()
    plain, _ = opt.update(grads, opt.init(params), params)
    extra, _ = opt.update(grads, opt.init(params), params, value=jnp.float32(1.0), unknown="ignored")
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(extra)):
        np.testing.assert_array_equal(a, b)
    for wrapper in (optim.clip_by_global_norm(1.0), optim.add_decayed_weights(0.1)):
        wrapper.update(grads, wrapper.init(params), params, value=1.0)
