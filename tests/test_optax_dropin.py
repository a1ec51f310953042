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


# ----------------------------------------------------------- optax.tree_utils on our states
def _sched():
    return optax.exponential_decay(0.1, 10, 0.5)


# (ours, optax's equivalent): the same updates, and their states answer tree_get/tree_set alike
PARITY = {
    "clip+adam": (lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.01, eps=1e-8)),
                  lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01))),
    "decay+sgd": (lambda: optim.chain(optim.add_decayed_weights(1e-3), optim.sgd(0.1)),
                  lambda: optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1))),
    "decay-schedule+sgd": (lambda: optim.chain(optim.add_decayed_weights(_sched()), optim.sgd(0.1)),
                           lambda: optax.chain(optax.add_decayed_weights(_sched()), optax.sgd(0.1))),
    "sgd-schedule": (lambda: optim.sgd(_sched()), lambda: optax.sgd(_sched())),
    "clip+nesterov": (lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.nesterov(0.01, 0.9)),
                      lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01, 0.9, nesterov=True))),
    "adamw-mask": (lambda: optim.adamw(0.01, eps=1e-8, weight_decay=0.1, mask={"w": True, "b": False}),
                   lambda: optax.adamw(0.01, weight_decay=0.1, mask={"w": True, "b": False})),
    "adagrad": (lambda: optim.adagrad(0.01, 0.1, 1e-7, eps_in_sqrt=True), lambda: optax.adagrad(0.01, 0.1, 1e-7)),
    "rmsprop": (lambda: optim.rmsprop(0.01, 0.9, 1e-8, eps_in_sqrt=True), lambda: optax.rmsprop(0.01, 0.9, 1e-8)),
    "adadelta": (lambda: optim.adadelta(1.0, 0.9, 1e-6), lambda: optax.adadelta(1.0, 0.9, 1e-6)),
    "adamax": (lambda: optim.adamax(0.01, eps=1e-8), lambda: optax.adamax(0.01)),
    "apply_if_finite(adam)": (lambda: optim.apply_if_finite(optim.adam(0.01, eps=1e-8), 3),
                              lambda: optax.apply_if_finite(optax.adam(0.01), 3)),
    "inject(sgd)": (lambda: optim.inject_hyperparams(optim.sgd)(learning_rate=0.1),
                    lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)),
    "inject(adam)": (lambda: optim.inject_hyperparams(optim.adam)(learning_rate=0.01, eps=1e-8),
                     lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.01)),
}
KEYS = ("count", "mu", "nu", "trace", "sum_of_squares", "e_g", "e_x", "notfinite_count", "total_notfinite",
        "learning_rate")


def _steps(opt, state, params, key, steps):
    for t in range(steps):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(key, t), p.shape), params)
        updates, state = opt.update(grads, state, params)
    return updates, state


def _close(a, b):
    """Equal trees up to float32 rounding: per leaf, relative error of the norm <= 5e-5. (Our Adam
    computes 1 - b2 in float32 after casting b2, 1 - 0.999f = 0.00099998713, where optax does it
    in Python's double, among smaller rounding differences: early updates differ by up to 1.3e-5
    relative. Over 1,000 steps the params agree to 1e-5: test_optim's comparison.)"""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= 5e-5 * max(np.linalg.norm(y), 1e-30), (x, y)


def _get(state, key):
    """``tree_get``'s answer: the value, or the KeyError's type when several values match."""
    try:
        return optax.tree_utils.tree_get(state, key)
    except KeyError:
        return KeyError


@pytest.mark.parametrize("name", sorted(PARITY))
def test_tree_get_and_tree_set_behave_as_on_the_optax_chain(name, key):
    ours_opt, ref_opt = (make() for make in PARITY[name])
    params = _params(key)
    u, ours = _steps(ours_opt, ours_opt.init(params), params, key, 3)
    ur, ref = _steps(ref_opt, ref_opt.init(params), params, key, 3)
    _close(u, ur)
    for k in KEYS:
        found = optax.tree_utils.tree_get_all_with_path(ours, k)
        found_ref = optax.tree_utils.tree_get_all_with_path(ref, k)
        assert len(found) == len(found_ref), (k, [jax.tree_util.keystr(p) for p, _ in found],
                                              [jax.tree_util.keystr(p) for p, _ in found_ref])
        got, got_ref = _get(ours, k), _get(ref, k)
        if got is None or got is KeyError:
            assert got is got_ref, k
        else:
            _close(got, got_ref)
    # tree_set: both refuse a key they lack; where both have one count, set it and step on alike
    for state in (ours, ref):
        with pytest.raises(KeyError):
            optax.tree_utils.tree_set(state, no_such_field=0)
    if len(optax.tree_utils.tree_get_all_with_path(ref, "count")) == 1:
        seven = jnp.asarray(7, jnp.int32)
        ours7 = optax.tree_utils.tree_set(ours, count=seven)
        ref7 = optax.tree_utils.tree_set(ref, count=seven)
        assert int(optax.tree_utils.tree_get(ours7, "count")) == 7
        _close(_steps(ours_opt, ours7, params, key, 1)[0], _steps(ref_opt, ref7, params, key, 1)[0])
    else:
        with pytest.raises(KeyError) if not optax.tree_utils.tree_get_all_with_path(ref, "count") else _no_error():
            optax.tree_utils.tree_set(ref, count=jnp.asarray(7, jnp.int32))
        with pytest.raises(KeyError) if not optax.tree_utils.tree_get_all_with_path(ours, "count") else _no_error():
            optax.tree_utils.tree_set(ours, count=jnp.asarray(7, jnp.int32))


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_documented_count_differences_from_optax(key):
    """Where our states deliberately hold fewer counts than optax's: Adam with a schedule reads
    its own count (optax adds the schedule's), and lion keeps none (optax's is never read)."""
    params = _params(key)
    count_paths = lambda opt: optax.tree_utils.tree_get_all_with_path(opt.init(params), "count")
    assert len(count_paths(optim.adam(_sched()))) == 1 and len(count_paths(optax.adam(_sched()))) == 2
    assert len(count_paths(optim.lion(1e-4))) == 0 and len(count_paths(optax.lion(1e-4))) == 1


# ----------------------------------------------------------- optax's signatures
def _random_tree(key, lead=()):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w": jax.random.normal(k1, lead + (3, 4)), "b": jax.random.normal(k2, lead + (4,)),
            "s": jax.random.normal(k3, lead)}


def _path(opt, params, grads_seq, every=100):
    """Params every ``every`` steps of ``opt`` over ``grads_seq`` (gradients independent of the
    params, so differences between implementations grow only linearly), in one scan."""

    @jax.jit
    def go(params, grads_seq):
        def body(carry, g):
            p, s = carry
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p

        return jax.tree.map(lambda x: x[every - 1::every], jax.lax.scan(body, (params, opt.init(params)), grads_seq)[1])

    return go(params, grads_seq)


@pytest.mark.parametrize("args", [(0.01, 0.9, False), (0.01, 0.9, True), (0.05, 0.5, True), (0.3, None, False),
                                  ("schedule", 0.8, False), ("schedule", 0.7, True)], ids=str)
def test_sgd_equals_optax_sgd_with_the_same_arguments_over_1000_steps(args, key):
    lr, mu, nesterov = args
    lr = optax.exponential_decay(0.05, 100, 0.5) if lr == "schedule" else lr
    params = _random_tree(key)
    grads = _random_tree(jax.random.fold_in(key, 1), lead=(1000,))
    ours = _path(optim.sgd(lr, mu, nesterov), params, grads)  # positionally, as optax takes them
    ref = _path(optax.sgd(lr, mu, nesterov), params, grads)
    for a, b, p in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), jax.tree.leaves(params)):
        for k in range(10):
            d = np.linalg.norm(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))
            assert d <= 1e-5 * np.linalg.norm(np.asarray(b[k], np.float64)), ((k + 1) * 100, d)
        assert np.linalg.norm(np.asarray(a[-1]) - np.asarray(p)) > 1e-2 * np.linalg.norm(np.asarray(p))  # it moved
    same = jax.tree.structure(optim.sgd(lr, mu, nesterov).init(params))
    if mu is not None and nesterov:  # nesterov() is sgd's nesterov form, state aside
        book = _path(optim.nesterov(lr, mu), params, grads)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(book)):
            np.testing.assert_array_equal(a, b)
        assert same != jax.tree.structure(optim.nesterov(lr, mu).init(params))  # NesterovState vs SgdState


def test_sgd_refuses_nesterov_without_momentum():
    with pytest.raises(ValueError, match=r"sgd: nesterov=True needs a momentum; got momentum=None"):
        optim.sgd(0.1, nesterov=True)
    with pytest.raises(TypeError, match=r"sgd: nesterov must be True or False; found str 'yes'"):
        optim.sgd(0.1, 0.9, "yes")


def test_arguments_optax_takes_elsewhere_are_keyword_only():
    """adamw's fifth positional is eps_root in optax, lion's fourth mu_dtype: ours refuse them."""
    with pytest.raises(TypeError, match="positional"):
        optim.adamw(1e-3, 0.9, 0.999, 1e-8, 1e-2)
    with pytest.raises(TypeError, match="positional"):
        optim.lion(1e-4, 0.9, 0.99, 1e-3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'mask'"):
        optim.adadelta(1.0, mask=None)  # optax's name is weight_decay_mask


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "adamax", "lion", "adadelta",
                                  "add_decayed_weights", "clip_by_global_norm", "apply_if_finite"])
def test_positional_parameters_are_a_prefix_of_optaxs(name):
    import inspect

    def positional(f):
        return [p.name for p in inspect.signature(f).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    ours, theirs = positional(getattr(optim, name)), positional(getattr(optax, name))
    assert ours == theirs[:len(ours)], (ours, theirs)
    keyword = set(inspect.signature(getattr(optim, name)).parameters) - set(ours)
    ours_only = {"eps_in_sqrt", "fold_bias_correction"}
    assert keyword - ours_only <= set(inspect.signature(getattr(optax, name)).parameters), keyword


def test_adadelta_weight_decay_mask_equals_optaxs(key):
    params = _random_tree(key)
    grads = _random_tree(jax.random.fold_in(key, 1), lead=(200,))
    mask = {"w": True, "b": False, "s": True}
    ours = _path(optim.adadelta(0.5, 0.95, 1e-6, 0.05, mask), params, grads)
    ref = _path(optax.adadelta(0.5, 0.95, 1e-6, 0.05, mask), params, grads)
    unmasked = _path(optim.adadelta(0.5, 0.95, 1e-6, 0.05), params, grads)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours["b"], unmasked["b"])  # the mask matters
