"""Generic optimizer checks, driven by the one table in ``optimizer_table.py``."""
import inspect
import math
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import landscapes, losses, nn, optim, schedules
from optimizer_table import CASES, SHAPES

STEPS = 1000
OPTAX_CASES = [c for c in CASES if c.optax is not None]
NUMPY_CASES = [c for c in CASES if c.numpy is not None]


def _seed(key) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def random_tree(key, dtype=jnp.float32, lead=()):
    """A pytree shaped like SHAPES with standard-normal leaves (NumPy's generator: drawing
    1,000 steps of gradients with jax.random under vmap compiles for ~20 s on this CPU)."""
    rng = np.random.default_rng(_seed(key))
    shapes, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    return jax.tree.unflatten(treedef, [jnp.asarray(rng.standard_normal(lead + s), dtype) for s in shapes])


def gradient_sequence(key, steps, dtype=jnp.float32):
    """``steps`` random gradient trees stacked on a leading axis (independent of params, so
    that float differences between implementations grow only linearly)."""
    return random_tree(key, dtype, lead=(steps,))


def run(opt, params, grads_seq, every=100):
    """Run ``opt`` over ``grads_seq`` in one scan; return params at every ``every`` steps."""

    @jax.jit
    def go(params, grads_seq):
        def body(carry, g):
            p, s = carry
            u, s = opt.update(g, s, p)
            p = optim.apply_updates(p, u)
            return (p, s), p

        _, path = jax.lax.scan(body, (params, opt.init(params)), grads_seq)
        return jax.tree.map(lambda x: x[every - 1 :: every], path)

    return go(params, grads_seq)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=str)
def test_matches_optax_over_1000_steps(case, key):
    params = random_tree(key)
    grads = gradient_sequence(jax.random.fold_in(key, 1), STEPS)
    ours = run(case.ours(), params, grads)
    with jax.numpy_dtype_promotion("standard"):  # optax itself relies on implicit promotion
        ref = run(case.optax(), params, grads)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for (path, a), b in zip(jax.tree.leaves_with_path(ours), jax.tree.leaves(ref)):
        for k in range(a.shape[0]):  # every 100 steps
            assert rel_err(a[k], b[k]) <= 1e-5, (jax.tree_util.keystr(path), (k + 1) * 100)
    # and the path really moved: the check is not vacuous
    moved = [rel_err(a[-1], p) for a, p in zip(jax.tree.leaves(ours), jax.tree.leaves(params))]
    assert max(moved) > 1e-3


@pytest.mark.parametrize("case", NUMPY_CASES, ids=str)
def test_matches_float64_textbook_formula(case, key, x64):
    params = random_tree(key, jnp.float64)
    grads = gradient_sequence(jax.random.fold_in(key, 2), STEPS, jnp.float64)
    ours = run(case.ours(), params, grads)

    ref_opt = case.numpy()
    np_params = [np.array(p, np.float64) for p in jax.tree.leaves(params)]
    np_grads = [np.asarray(g) for g in jax.tree.leaves(grads)]
    ours_leaves = jax.tree.leaves(ours)
    assert ours_leaves[0].dtype == jnp.float64
    for t in range(STEPS):
        ref_opt.update(np_params, [g[t] for g in np_grads])
        if (t + 1) % 100 == 0:
            for i, p in enumerate(np_params):
                assert rel_err(ours_leaves[i][t // 100], p) <= 1e-10, (i, t + 1)


def counts(state) -> list:
    """Every step count in ``state``, each checked to be an int32 scalar."""
    found = [c for _, c in optax.tree_utils.tree_get_all_with_path(state, "count")]
    assert all(c.dtype == jnp.int32 and c.shape == () for c in found)
    return found


def case_counts(case) -> int:
    """How many counts a case's state holds: one for the Adam family (its bias correction) or a
    schedule, none otherwise."""
    return int(case.name.startswith(("adam", "nadam")) or "schedule" in case.name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_structure_and_dtype_kept(case, key):
    for dtype in (jnp.float32, jnp.bfloat16):
        params = random_tree(key, dtype)
        grads = random_tree(jax.random.fold_in(key, 3), dtype)
        opt = case.ours()
        state = opt.init(params)
        assert [int(c) for c in counts(state)] == [0] * case_counts(case)
        updates, new_state = opt.update(grads, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(grads)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
            assert u.shape == g.shape and u.dtype == g.dtype
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
            assert a.shape == b.shape and a.dtype == b.dtype
        assert [int(c) for c in counts(new_state)] == [1] * case_counts(case)
        new_params = optim.apply_updates(params, updates)
        assert all(p.dtype == dtype for p in jax.tree.leaves(new_params))
        zeros = jax.tree.map(jnp.zeros_like, params)
        assert jax.tree.all(jax.tree.map(jnp.array_equal, optim.apply_updates(params, zeros), params))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_empty_pytree(case):
    opt = case.ours()
    for empty in ({}, [], ()):
        state = opt.init(empty)
        updates, state = opt.update(empty, state, empty)
        assert updates == empty and [int(c) for c in counts(state)] == [1] * case_counts(case)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_jit_equals_eager(case, key):
    opt = case.ours()
    params = random_tree(key)
    state = opt.init(params)
    eager_p, jit_p, eager_s, jit_s = params, params, state, state
    step = jax.jit(opt.update)
    for t in range(5):
        g = random_tree(jax.random.fold_in(key, 10 + t))
        u, eager_s = opt.update(g, eager_s, eager_p)
        eager_p = optim.apply_updates(eager_p, u)
        u, jit_s = step(g, jit_s, jit_p)
        jit_p = optim.apply_updates(jit_p, u)
    for a, b in zip(jax.tree.leaves(jit_p), jax.tree.leaves(eager_p)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


FACTORIES = {name: f for name, f in optim.OPTIMIZERS.items()}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_recompile_when_traced_learning_rate_changes(name, key):
    factory = FACTORIES[name]

    @jax.jit
    def step(params, state, grads, lr):
        u, state = factory(learning_rate=lr).update(grads, state, params)
        return optim.apply_updates(params, u), state

    params = random_tree(key)
    state = factory().init(params)
    grads = random_tree(jax.random.fold_in(key, 1))
    p1, s1 = step(params, state, grads, jnp.float32(0.01))
    p2, s2 = step(p1, s1, grads, jnp.float32(0.02))  # second call, new value
    step(p2, s2, grads, jnp.float32(0.5))
    assert step._cache_size() == 1
    # the traced value is really used: a different learning rate gives a different result
    p_other, _ = step(params, state, grads, jnp.float32(0.03))
    assert not np.allclose(jax.tree.leaves(p_other)[0], jax.tree.leaves(p1)[0])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_vmap_over_learning_rates_equals_separate_runs(name, key):
    factory = FACTORIES[name]
    params = random_tree(key)
    grads = gradient_sequence(jax.random.fold_in(key, 4), 20)

    def final(lr):
        opt = factory(learning_rate=lr)
        return jax.tree.map(lambda x: x[-1], run(opt, params, grads, every=20))

    lrs = jnp.array([0.001, 0.01, 0.1], jnp.float32)
    batched = jax.jit(jax.vmap(final))(lrs)
    single_run = jax.jit(final)
    for i, lr in enumerate(lrs):
        single = single_run(lr)
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)


# Hyperparameters under which each optimizer must converge; chosen by hand, generous steps.
CONVERGENCE = {
    "sgd": ({"learning_rate": 0.04}, {"learning_rate": 1e-3}),  # curvature 20: lr < 0.1 to converge
    "momentum": ({"learning_rate": 0.05}, {"learning_rate": 1e-4}),
    "nesterov": ({"learning_rate": 0.05}, {"learning_rate": 1e-4}),
    "adagrad": ({"learning_rate": 0.5}, {"learning_rate": 0.5}),
    "rmsprop": ({"learning_rate": 0.01}, {"learning_rate": 1e-3}),
    "adam": ({"learning_rate": 0.05}, {"learning_rate": 0.01}),
    "adamw": ({"learning_rate": 0.05, "weight_decay": 0.0}, {"learning_rate": 0.01, "weight_decay": 0.0}),
    "nadam": ({"learning_rate": 0.05}, {"learning_rate": 0.01}),
    "adamax": ({"learning_rate": 0.05}, {"learning_rate": 0.01}),
    "lion": ({"learning_rate": 0.003, "weight_decay": 0.0}, {"learning_rate": 3e-4, "weight_decay": 0.0}),
    "adadelta": ({"learning_rate": 1.0}, {"learning_rate": 0.05}),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_converges_on_quadratic_and_rosenbrock(name):
    quad_kw, rosen_kw = CONVERGENCE[name]
    target = jnp.array([1.0, -2.0])
    quadratic = lambda x: jnp.sum(jnp.array([1.0, 10.0]) * (x - target) ** 2)
    path = landscapes.trajectory(FACTORIES[name](**quad_kw), quadratic, jnp.array([4.0, 3.0]), 3000)
    assert float(quadratic(path[-1])) < 1e-3, path[-1]
    path = landscapes.trajectory(FACTORIES[name](**rosen_kw), landscapes.rosenbrock, jnp.array([-1.2, 1.0]), 20000)
    assert float(jnp.linalg.norm(path[-1] - jnp.array([1.0, 1.0]))) < 0.05, path[-1]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_schedule_brings_one_count_and_is_evaluated_at_it(name):
    params, grads = {"w": jnp.linspace(-1.0, 1.0, 4)}, {"w": jnp.ones(4)}
    lr = lambda count: jnp.where(count < 2, 0.1, 0.01)
    opt = FACTORIES[name](learning_rate=lr)
    state, ref_state = opt.init(params), FACTORIES[name](learning_rate=0.1).init(params)
    assert [int(c) for c in counts(state)] == [0]
    assert len(counts(ref_state)) == int(name in ("adam", "adamw", "nadam", "adamax"))
    for t in range(3):  # the reference: constant learning rates, 0.1 twice then 0.01
        updates, state = opt.update(grads, state, params)
        ref_updates, ref_state = FACTORIES[name](learning_rate=0.1 if t < 2 else 0.01).update(grads, ref_state, params)
        np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=1e-6)
    assert [int(c) for c in counts(state)] == [3]


# ----------------------------------------------------------- interoperability with optax
@pytest.fixture
def standard_promotion():
    """optax relies on implicit dtype promotion; run tests that call it with the default rules."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def test_ours_inside_optax_chain_and_optax_inside_ours(key, standard_promotion):
    params = random_tree(key)
    grads = gradient_sequence(jax.random.fold_in(key, 5), 50)
    ref = run(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01, eps=1e-7)), params, grads, every=50)
    mixed1 = run(optax.chain(optax.clip_by_global_norm(1.0), optim.adam(0.01)), params, grads, every=50)
    mixed2 = run(optim.chain(optax.clip_by_global_norm(1.0), optim.adam(0.01)), params, grads, every=50)
    ours = run(optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.01)), params, grads, every=50)
    for tree in (mixed1, mixed2, ours):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)):
            assert rel_err(a, b) <= 1e-5


def test_optax_tree_utils_read_and_write_our_states(key, standard_promotion):
    params = random_tree(key)
    opt = optim.adam(0.01)
    state = opt.init(params)
    _, state = opt.update(random_tree(jax.random.fold_in(key, 1)), state, params)
    assert int(optax.tree_utils.tree_get(state, "count")) == 1
    mu = optax.tree_utils.tree_get(state, "mu")
    assert jax.tree.structure(mu) == jax.tree.structure(params)
    reset = optax.tree_utils.tree_set(state, count=jnp.zeros([], jnp.int32))
    assert int(reset.count) == 0 and isinstance(reset, type(state))
    assert optax.tree_utils.tree_norm(state.nu) > 0


def test_add_decayed_weights_with_weights_mask_is_the_textbooks_l2(key, standard_promotion):
    """SGD on loss + 0.5*lambda*sum(W**2) equals chain(add_decayed_weights(lambda, mask), sgd)."""
    params = nn.init_mlp(key, (6, 5, 3))
    x = jax.random.normal(jax.random.fold_in(key, 1), (8, 6))
    y = jnp.arange(8) % 3
    wd = 0.1
    data_loss = lambda p: losses.softmax_cross_entropy(nn.mlp(p, x), y)
    penalised = lambda p: data_loss(p) + losses.l2_penalty(p, wd)
    via_loss, via_transform = params, params
    a, b = optim.sgd(0.1), optim.chain(optim.add_decayed_weights(wd, mask=nn.weights_mask), optim.sgd(0.1))
    ref = optax.chain(optax.add_decayed_weights(wd, mask=nn.weights_mask), optax.sgd(0.1))
    sa, sb, sr, via_ref = a.init(params), b.init(params), ref.init(params), params
    step_a = jax.jit(lambda p, s: a.update(jax.grad(penalised)(p), s, p))
    step_b = jax.jit(lambda p, s: b.update(jax.grad(data_loss)(p), s, p))
    step_r = jax.jit(lambda p, s: ref.update(jax.grad(data_loss)(p), s, p))
    for _ in range(10):
        u, sa = step_a(via_loss, sa)
        via_loss = optim.apply_updates(via_loss, u)
        u, sb = step_b(via_transform, sb)
        via_transform = optim.apply_updates(via_transform, u)
        u, sr = step_r(via_ref, sr)
        via_ref = optax.apply_updates(via_ref, u)
    for p, q, r in zip(jax.tree.leaves(via_loss), jax.tree.leaves(via_transform), jax.tree.leaves(via_ref)):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(q, r, rtol=1e-6, atol=1e-7)
    # biases were not decayed: with zero data gradient, only weights shrink
    u, _ = b.update(jax.tree.map(jnp.zeros_like, params), b.init(params), params)
    assert all(float(jnp.abs(layer["b"]).max()) == 0 for layer in u)
    assert all(float(jnp.abs(layer["w"]).max()) > 0 for layer in u)


def test_clip_by_global_norm_matches_optax(key, standard_promotion):
    grads = jax.tree.map(lambda g: 10 * g, random_tree(key))
    for max_norm in (0.5, 1.0, 1e3):
        ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optim.clip_by_global_norm(max_norm).init(grads))
        ref, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.clip_by_global_norm(max_norm).init(grads))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    zero = jax.tree.map(jnp.zeros_like, grads)
    out, _ = optim.clip_by_global_norm(1.0).update(zero, optim.clip_by_global_norm(1.0).init(zero))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))


# ----------------------------------------------------------- hyperparameters in state
def test_inject_hyperparams_changes_learning_rate_without_recompiling(key):
    params = random_tree(key)
    grads = random_tree(jax.random.fold_in(key, 1))
    opt = optim.inject_hyperparams(optim.adam)(learning_rate=0.01, b1=0.9, fold_bias_correction=True)
    state = opt.init(params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.01)
    step = jax.jit(opt.update)
    u1, s1 = step(grads, state, params)
    # same dtype and weak-type as stored, or jit sees a new input type
    s_half = s1._replace(hyperparams={**s1.hyperparams, "learning_rate": jnp.float32(0.005)})
    u2, _ = step(grads, s_half, params)
    u2_ref, _ = optim.adam(0.005, fold_bias_correction=True).update(
        grads, optim.adam(0.005, fold_bias_correction=True).init(params)._replace(
            count=jnp.ones([], jnp.int32), mu=s1.inner_state.mu, nu=s1.inner_state.nu), params)
    assert step._cache_size() == 1
    for a, b in zip(jax.tree.leaves(u2), jax.tree.leaves(u2_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    u_plain, _ = optim.adam(0.01, fold_bias_correction=True).update(
        grads, optim.adam(0.01, fold_bias_correction=True).init(params), params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_inject_hyperparams_evaluates_schedules(key):
    params = {"w": jnp.ones(3)}
    opt = optim.inject_hyperparams(optim.sgd)(learning_rate=schedules.piecewise_constant_schedule(0.1, {2: 0.1}))
    state = opt.init(params)
    seen = []
    for _ in range(4):
        u, state = opt.update({"w": jnp.ones(3)}, state, params)
        seen.append(float(-u["w"][0]))
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.01, 0.01], rtol=1e-6)


# ----------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: optim.sgd(-0.1), r"learning_rate must be in \[0, inf\]; got -0.1"),
        (lambda: optim.momentum(0.01, momentum=1.0), r"momentum must be in \[0, 1\); got 1.0"),
        (lambda: optim.adam(b1=1.5), r"b1 must be in \[0, 1\)"),
        (lambda: optim.adam(b2=-0.1), r"b2 must be in \[0, 1\)"),
        (lambda: optim.adam(eps=-1e-8), r"eps must be in \[0, inf\]"),
        (lambda: optim.rmsprop(decay=2.0), r"decay must be in \[0, 1\]"),
        (lambda: optim.adagrad(initial_accumulator_value=-1.0), r"initial_accumulator_value"),
        (lambda: optim.adamw(weight_decay=-1.0), r"weight_decay must be in \[0, inf\]"),
        (lambda: optim.clip_by_global_norm(0.0), r"max_norm must be in \(0, inf\]"),
        (lambda: optim.sgd(float("nan")), r"learning_rate must not be NaN"),
        (lambda: optim.sgd(jnp.array(-1.0)), r"learning_rate must be in"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, kind, facts",
    [
        (lambda: optim.adam(b1=1.5), optim.HyperparameterValueError, ("adam", "b1", "in [0, 1)", 1.5)),
        (lambda: optim.sgd(-0.1), ValueError, ("sgd", "learning_rate", "in [0, inf]", -0.1)),
        (lambda: optim.clip_by_global_norm(0.0), ValueError, ("clip_by_global_norm", "max_norm", "in (0, inf]", 0.0)),
        (lambda: optim.rmsprop(decay=float("nan")), ValueError, ("rmsprop", "decay", "a number, not NaN", "nan")),
        (lambda: optim.adam(b2="0.9"), optim.HyperparameterTypeError,
         ("adam", "b2", "a number, a JAX scalar or a schedule (a callable count -> value)", "0.9")),
        (lambda: optim.adagrad(eps=lambda count: 0.1), TypeError, ("adagrad", "eps", "a number or a JAX scalar", None)),
        (lambda: optim.adagrad(eps_in_sqrt="yes"), TypeError, ("adagrad", "eps_in_sqrt", "True or False", "yes")),
    ],
)
def test_bad_hyperparameters_carry_their_facts(call, kind, facts):
    """Code reads which optimizer, argument, expectation and value from the error's attributes (as
    the command line does, to name its flag), never from its text; the type stays TypeError or
    ValueError."""
    with pytest.raises(kind) as info:
        call()
    err = info.value
    assert isinstance(err, optim.HyperparameterError)
    assert isinstance(err, TypeError) != isinstance(err, ValueError)
    optimizer, argument, expected, found = facts
    assert (err.optimizer, err.argument, err.expected) == (optimizer, argument, expected)
    assert str(err).startswith(f"{optimizer}: {argument} must ")
    if found == "nan":
        assert math.isnan(err.found)
    elif found is not None:
        assert err.found == found
    else:
        assert callable(err.found)
        return  # a lambda does not pickle
    clone = pickle.loads(pickle.dumps(err))  # e.g. out of a worker process: the facts survive
    assert (type(clone), str(clone), clone.argument, clone.expected) == (type(err), str(err), argument, expected)


def _hyperparameters(factory):
    """The numeric hyperparameters of ``factory`` (those whose default is a number) and whether
    each may be a schedule (the eps-like ones and initial values may not)."""
    fixed = ("eps", "eps_root", "initial_accumulator_value", "initial_scale")
    return {n: n not in fixed for n, p in inspect.signature(factory).parameters.items()
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}


# A value of each kind the checks must refuse, with how the error message names it.
BAD_TYPES = [("0.01", "str '0.01'"), (None, "None"), (True, "bool True"), ([0.01], "list [0.01]"),
             (0.01 + 0j, "complex (0.01+0j)"), (np.ones(2), "float64 array of shape (2,)"),
             (jnp.ones((1,)), "float32 array of shape (1,)"), (np.bool_(False), "bool array of shape ()"),
             (jnp.array(1j), "complex64 array of shape ()")]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_hyperparameters_of_a_wrong_type_raise_type_errors_naming_them(name):
    factory = FACTORIES[name]
    for arg, schedulable in _hyperparameters(factory).items():
        expected = "a number, a JAX scalar or a schedule (a callable count -> value)" if schedulable \
            else "a number or a JAX scalar"
        for value, found in BAD_TYPES:
            with pytest.raises(TypeError, match=re.escape(f"{name}: {arg} must be {expected}; found {found}")):
                factory(**{arg: value})
        if not schedulable:
            with pytest.raises(TypeError, match=re.escape(f"{name}: {arg} must be a number or a JAX scalar "
                                                          f"(it cannot be a schedule); found function")):
                factory(**{arg: lambda count: 0.1})
    for flag in ("eps_in_sqrt", "fold_bias_correction"):
        if flag in inspect.signature(factory).parameters:
            with pytest.raises(TypeError, match=re.escape(f"{name}: {flag} must be True or False; found str 'False'")):
                factory(**{flag: "False"})


def test_wrappers_check_their_arguments_types():
    for value, found in BAD_TYPES:
        with pytest.raises(TypeError, match=re.escape(f"add_decayed_weights: weight_decay must be a number, a JAX "
                                                      f"scalar or a schedule (a callable count -> value); found {found}")):
            optim.add_decayed_weights(value)
        with pytest.raises(TypeError, match=re.escape(f"clip_by_global_norm: max_norm must be a number, a JAX scalar "
                                                      f"or a schedule (a callable count -> value); found {found}")):
            optim.clip_by_global_norm(value)
        with pytest.raises(TypeError, match=re.escape(f"adam: learning_rate must be a number, a JAX scalar or a "
                                                      f"schedule (a callable count -> value); found {found}")):
            optim.inject_hyperparams(optim.adam)(learning_rate=value)
    for value, found in [(2.0, "float 2.0"), (True, "bool True"), ("5", "str '5'"), (None, "None")]:
        with pytest.raises(TypeError, match=re.escape(f"apply_if_finite: max_consecutive_errors must be an int >= 0; "
                                                      f"found {found}")):
            optim.apply_if_finite(optim.sgd(), value)
    with pytest.raises(TypeError, match=r"apply_if_finite: inner must be an optimizer.*found str 'adam'"):
        optim.apply_if_finite("adam")
    with pytest.raises(TypeError, match=r"inject_hyperparams: factory must be an optimizer factory.*found str"):
        optim.inject_hyperparams("adam")
    with pytest.raises(TypeError, match=r"adamw: weight_decay must be .*; found None"):
        optim.adamw(weight_decay=None)


ACCEPTED = [1, 0.01, np.float32(0.01), np.float64(0.01), np.int32(1), np.array(0.01), jnp.float32(0.01),
            jnp.array(1), jnp.bfloat16(0.01)]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_numbers_of_every_kind_and_schedules_are_accepted(name):
    """Python, NumPy and JAX scalars (0-d arrays) work as learning rates and give the same update;
    so does a schedule returning the value."""
    factory, params = FACTORIES[name], {"w": jnp.linspace(-1.0, 1.0, 4)}
    grads = {"w": jnp.cos(jnp.arange(4.0))}
    ref, _ = factory(learning_rate=0.5).update(grads, factory(learning_rate=0.5).init(params), params)
    for value in ACCEPTED + [lambda count: 0.5]:
        opt = factory(learning_rate=value)
        updates, _ = opt.update(grads, opt.init(params), params)
        assert updates["w"].dtype == jnp.float32
        if callable(value):
            np.testing.assert_allclose(updates["w"], ref["w"], rtol=1e-6)


def test_traced_hyperparameters_pass_the_checks_inside_jit_and_vmap(key):
    """Tracers are type-checked only: every numeric hyperparameter of every optimizer can be
    vmapped over, and a traced non-scalar or boolean is still refused."""
    params = random_tree(key)
    grads = random_tree(jax.random.fold_in(key, 1))
    for name, factory in sorted(FACTORIES.items()):
        for arg in _hyperparameters(factory):
            default = inspect.signature(factory).parameters[arg].default
            values = jnp.array([default, default * 0.5 if default else 0.1], jnp.float32)

            def one(v):
                opt = factory(**{arg: v})
                return opt.update(grads, opt.init(params), params)[0]

            batched = jax.vmap(one)(values)
            for i in range(2):
                for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(one(values[i]))):
                    np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7, err_msg=f"{name} {arg}")
    with pytest.raises(TypeError, match=re.escape("sgd: learning_rate must be a number, a JAX scalar or a schedule "
                                                  "(a callable count -> value); found traced float32 array of shape (3,)")):
        jax.jit(lambda lr: optim.sgd(lr))(jnp.ones(3))
    with pytest.raises(TypeError, match=r"adam: b1 must be .*; found traced bool array of shape \(\)"):
        jax.jit(lambda b1: optim.adam(b1=b1))(jnp.bool_(True))


def test_decay_needs_params():
    opt = optim.adamw()
    with pytest.raises(ValueError, match="needs params"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))


def test_registry_names_every_optimizer():
    assert set(optim.OPTIMIZERS) >= {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"}
    for name, factory in optim.OPTIMIZERS.items():
        assert isinstance(factory(), optim.Optimizer), name


def test_textbook_defaults():
    """Defaults are the book's: checked by behaviour against the NumPy classes' defaults."""
    from optimizer_table import NpAdaGrad, NpAdam, NpMomentum, NpNesterov, NpRMSprop, NpSGD

    pairs = [(optim.sgd, NpSGD), (optim.momentum, NpMomentum), (optim.nesterov, NpNesterov),
             (optim.adagrad, NpAdaGrad), (optim.rmsprop, NpRMSprop),
             (lambda: optim.adam(fold_bias_correction=True), NpAdam)]
    with jax.enable_x64(True):
        w = np.linspace(-1, 1, 5)
        for ours, ref in pairs:
            opt, book, p, q = ours(), ref(), [w.copy()], jnp.asarray(w)
            s = opt.init(q)
            for t in range(3):
                g = np.cos(w * (t + 1))
                book.update(p, [g])
                u, s = opt.update(jnp.asarray(g), s, q)
                q = optim.apply_updates(q, u)
            np.testing.assert_allclose(q, p[0], rtol=1e-12, atol=1e-14)


def test_state_fields_are_typed():
    """Every state's fields say what they hold (optax's style: ``count: jax.Array``, ``mu:
    Updates``), with our own aliases, never ``Any`` and never optax's."""
    from jaxscratch import _transforms
    states = [v for m in (optim, _transforms) for v in vars(m).values()
              if isinstance(v, type) and issubclass(v, tuple) and v.__name__.endswith("State")]
    assert len(states) >= 12
    for state in states:
        for field, annotation in state.__annotations__.items():
            assert "Any" not in str(annotation) and "optax" not in str(annotation), (state.__name__, field, annotation)
    adam = {k: str(v) for k, v in optim.AdamState.__annotations__.items()}
    assert "jax.Array" in adam["count"] and "Updates" in adam["mu"] and "Updates" in adam["nu"], adam
