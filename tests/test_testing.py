"""jaxscratch.testing: cross_check finds known partings at predicted steps; assert_trees_close's messages."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import optim, testing
from optimizer_table import CASES, SHAPES

OPTAX_CASES = [c for c in CASES if c.optax is not None]


def random_tree(seed, lead=(), dtype=jnp.float32, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    return jax.tree.unflatten(treedef, [jnp.asarray(scale * rng.standard_normal(lead + s), dtype) for s in shapes])


@pytest.fixture
def standard_promotion():
    """optax relies on implicit dtype promotion; run what calls it with the default rules."""
    with jax.numpy_dtype_promotion("standard"):
        yield


# ----------------------------------------------------------- known agreements and partings
def test_adam_with_optaxs_eps_agrees(standard_promotion):
    params, grads = random_tree(0), random_tree(1, (1000,))
    r = testing.cross_check(optim.adam(eps=1e-8), optax.adam(1e-3, eps=1e-8), params, grads, names=("ours", "optax"))
    assert r.first_step is None and r.first_leaf is None
    assert r.verdict == f"ours and optax agree to {r.max_diff.max():.1e} over 1000 steps"
    assert r.leaf_diffs.shape == (1000, 6) and r.max_diff.max() <= 1e-5
    moved = [np.linalg.norm(a - p) / np.linalg.norm(p) for a, p in zip(jax.tree.leaves(r.params[0]), jax.tree.leaves(params))]
    assert max(moved) > 1e-2  # the runs went somewhere: agreement is not vacuous


def test_adagrad_accumulator_parts_at_step_0_at_the_predicted_leaf(standard_promotion):
    """The book's AdaGrad (h0 = 0, eps after the root) against optax's (h0 = 0.1, eps inside):
    the first update already differs; float64 NumPy predicts each leaf's difference."""
    params, grads = random_tree(2, scale=0.1), random_tree(3, (50,))
    r = testing.cross_check(optim.adagrad(), optax.adagrad(0.01), params, grads)
    p = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    g = [np.asarray(x[0], np.float64) for x in jax.tree.leaves(grads)]
    book = [w - 0.01 * d / (np.sqrt(d * d) + 1e-7) for w, d in zip(p, g)]
    ref = [w - 0.01 * d / np.sqrt(0.1 + d * d + 1e-7) for w, d in zip(p, g)]
    predicted = np.array([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(book, ref)])
    np.testing.assert_allclose(r.leaf_diffs[0], predicted, rtol=1e-4)
    assert r.first_step == 0 and r.first_leaf == r.paths[int(np.argmax(predicted))]
    assert r.verdict == f"a and b part at step 0, leaf {r.first_leaf}: rel diff {predicted.max():.1e} > 1e-05"


def test_eps_placement_parts_when_a_tiny_gradient_arrives(standard_promotion):
    """Both AdaGrads start at h0 = 0 and differ only in eps: zero gradients leave both still
    (0 / eps and optax's 0 where h = 0), then a gradient of 1e-4 (below sqrt(eps) = 3.2e-4)
    moves ours by ~lr and optax's by lr * 1e-4 / sqrt(1e-8 + 1e-7): they part at step 37 exactly."""
    tiny = lambda step: {"w": jnp.where(step >= 37, 1e-4, 0.0) * jnp.ones(4)}
    r = testing.cross_check(optim.adagrad(0.01), optax.adagrad(0.01, initial_accumulator_value=0.0, eps=1e-7),
                            {"w": jnp.ones(4)}, tiny, steps=40)
    ours, theirs = 1 - 0.01 * 1e-4 / (1e-4 + 1e-7), 1 - 0.01 * 1e-4 / np.sqrt(1e-8 + 1e-7)
    assert np.all(r.leaf_diffs[:37] == 0)
    np.testing.assert_allclose(r.leaf_diffs[37, 0], abs(ours - theirs) / theirs, rtol=1e-4)
    assert r.first_step == 37 and r.first_leaf == "['w']"
    assert r.verdict.startswith("a and b part at step 37, leaf ['w']: rel diff 7.0e-03 > 1e-05")


def test_grad_fn_is_evaluated_on_each_optimizers_own_params():
    """On 0.5 w^2, sgd(0.1) and sgd(0.2) give w0 0.9^k and w0 0.8^k after k steps."""
    r = testing.cross_check(optim.sgd(0.1), optim.sgd(0.2), {"w": jnp.full(3, 2.0)}, grad_fn=lambda p, step: p,
                            steps=30)
    k = np.arange(1, 31)
    np.testing.assert_allclose(r.leaf_diffs[:, 0], (0.9**k - 0.8**k) / 0.8**k, rtol=1e-5)


def test_steps_count_from_0_and_reach_the_stream_function():
    """Gradient ``step`` at step ``step``: sgd(1) moves 1 -> 1 - (0 + 1 + ... + step), sgd(0) stays."""
    r = testing.cross_check(optim.sgd(1.0), optim.sgd(0.0), {"w": jnp.ones(())}, lambda step: {"w": step.astype(jnp.float32)},
                            steps=6, rtol=12.0)
    i = np.arange(6)
    np.testing.assert_array_equal(r.leaf_diffs[:, 0], i * (i + 1) / 2)
    assert r.first_step == 5 and r.verdict == "a and b part at step 5, leaf ['w']: rel diff 1.5e+01 > 12"


def test_stream_forms_give_the_same_result():
    params = random_tree(4)
    stacked = random_tree(5, (12,))
    items = [jax.tree.map(lambda g, i=i: g[i], stacked) for i in range(12)]
    opt_a, opt_b = optim.rmsprop(0.01), optim.rmsprop(0.01, eps_in_sqrt=True)
    runs = [testing.cross_check(opt_a, opt_b, params, stacked),
            testing.cross_check(opt_a, opt_b, params, items),
            testing.cross_check(opt_a, opt_b, params, tuple(items)),
            testing.cross_check(opt_a, opt_b, params, iter(items)),
            testing.cross_check(opt_a, opt_b, params, (g for g in items + items), steps=12),
            testing.cross_check(opt_a, opt_b, params, lambda s: jax.tree.map(lambda g: g[s], stacked), steps=12)]
    for r in runs:
        np.testing.assert_array_equal(r.leaf_diffs, runs[0].leaf_diffs)
        assert r.verdict == runs[0].verdict and r.max_diff.shape == (12,)
    assert runs[0].max_diff.max() > 0
    short = testing.cross_check(opt_a, opt_b, params, stacked, steps=5)
    np.testing.assert_array_equal(short.leaf_diffs, runs[0].leaf_diffs[:5])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64, jnp.float64])
def test_dtypes(dtype, request):
    """sgd(0.01) against sgd(0.02) under a constant gradient g: after step i the leaves differ by
    (i+1) 0.01 ||g|| relative to ||w0 - (i+1) 0.02 g||."""
    if dtype == jnp.float64:
        request.getfixturevalue("x64")
    rng = np.random.default_rng(6)
    w0, g = rng.standard_normal((2, 5)) + (1j * rng.standard_normal((2, 5)) if dtype == jnp.complex64 else 0)
    r = testing.cross_check(optim.sgd(0.01), optim.sgd(0.02), {"w": jnp.asarray(w0, dtype)},
                            lambda step: {"w": jnp.asarray(g, dtype)}, steps=20)
    k = np.arange(1, 21)
    expected = k * 0.01 * np.linalg.norm(g) / np.linalg.norm(w0 - k[:, None] * 0.02 * g, axis=1)
    np.testing.assert_allclose(r.leaf_diffs[:, 0], expected, rtol=1e-10 if dtype == jnp.float64 else 1e-5)
    assert r.params[0]["w"].dtype == dtype and r.first_step == 0


def test_atol_ignores_rounding_where_a_leaf_passes_zero():
    """sgd(1) reaches w = 0 exactly at step 1; sgd(1 + 1e-6) lands 1e-6 away: relative to 0 that
    is huge (1e-6 / tiny), absolutely it is rounding-sized."""
    grads = [{"w": jnp.full(2, 0.5)}] * 4
    args = (optim.sgd(1.0 + 1e-6), optim.sgd(1.0), {"w": jnp.ones(2)}, grads)
    r = testing.cross_check(*args)
    assert r.first_step == 1 and r.leaf_diffs[1, 0] > 1e30 and 1e-6 < r.leaf_abs_diffs[1, 0] < 3e-6
    r = testing.cross_check(*args, atol=1e-5)
    assert r.first_step is None and r.verdict.endswith(
        "over 4 steps (relative differences above 1e-05 only where ||a - b|| <= atol 1e-05)")
    r = testing.cross_check(*args, rtol=1e-7, atol=1e-7)
    assert r.first_step == 0 and r.verdict.endswith("rel diff 9.5e-07 > 1e-07, abs diff 6.7e-07 > 1e-07")


def test_nan_counts_as_parting():
    grads = [{"w": jnp.ones(2)}] * 5 + [{"w": jnp.array([1.0, jnp.nan])}] * 3
    r = testing.cross_check(optim.sgd(0.1), optim.sgd(0.1), {"w": jnp.ones(2)}, grads)
    assert r.first_step == 5 and r.verdict == "a and b part at step 5, leaf ['w']: rel diff nan > 1e-05"


def test_empty_pytree():
    r = testing.cross_check(optim.adam(), optim.adam(), {}, [{}] * 3)
    assert r.leaf_diffs.shape == (3, 0) and r.verdict == "a and b agree to 0.0e+00 over 3 steps"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, TypeError, "pass exactly one of grads"),
        ({"grads": [{"w": jnp.ones(2)}], "grad_fn": lambda p, s: p}, TypeError, "pass exactly one of grads"),
        ({"grad_fn": lambda p, s: p}, ValueError, "steps is needed when the gradients come from a function"),
        ({"grads": [{"w": jnp.ones(2)}], "steps": 0}, ValueError, "steps must be an int >= 1; got 0"),
        ({"grads": [{"w": jnp.ones(2)}], "steps": 2}, ValueError, "steps=2 but the gradient stream holds 1 steps"),
        ({"grads": {"w": jnp.ones((3, 2))}, "steps": 4}, ValueError, "steps=4 but the gradient stream holds 3"),
        ({"grads": [{"w": jnp.ones(2)}, {"v": jnp.ones(2)}]}, ValueError, "gradient 1 of the stream has tree structure"),
        ({"grads": [{"w": jnp.ones(3)}]}, ValueError, r"gradient 0 of the stream at leaf \['w'\] has shape \(3,\); "
                                                      r"expected \(2,\)"),
        ({"grads": {"w": jnp.ones(2), "v": 1.0}}, TypeError, "grads must be a sequence or iterable"),
        ({"grads": {"w": jnp.ones(2)}}, ValueError, "grads has the structure of params but not a leading step axis"),
        ({"grads": [], "steps": None}, ValueError, "the gradient stream is empty"),
        ({"grads": [{"w": jnp.ones(2)}], "rtol": -1.0}, ValueError, "rtol must be >= 0"),
        ({"grads": [{"w": jnp.ones(2)}], "atol": float("nan")}, ValueError, "atol must be >= 0; got nan"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        testing.cross_check(optim.sgd(), optim.sgd(), {"w": jnp.ones(2)}, **kwargs)


def test_an_update_of_another_structure_is_named():
    bad = optim.Optimizer(lambda p: (), lambda g, s, p=None: ([g["w"]], s))
    with pytest.raises(ValueError, match="optax's update returned updates with tree structure"):
        testing.cross_check(optim.sgd(), bad, {"w": jnp.ones(2)}, [{"w": jnp.ones(2)}], names=("ours", "optax"))


# ----------------------------------------------------------- the real cross-check
def test_every_optimizer_with_an_optax_equivalent_is_in_the_table():
    covered = {name for name in optim.OPTIMIZERS for c in OPTAX_CASES if c.name == name or c.name.startswith(name + "-")}
    assert covered == set(optim.OPTIMIZERS)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=str)
def test_cross_check_against_optax_over_1000_steps(case, standard_promotion):
    """Every step, every leaf, norm-relative 1e-5. atol=1e-6 because the 2-element bias passes near
    zero (norm ~0.02) in some runs, where float32 rounding of ~5e-7 is a relative 2e-5."""
    params, grads = random_tree(7), random_tree(8, (1000,))
    r = testing.cross_check(case.ours(), case.optax(), params, grads, rtol=1e-5, atol=1e-6, names=(case.name, "optax"))
    assert r.first_step is None, r.verdict
    testing.assert_trees_close(r.params[0], r.params[1], rtol=1e-4, atol=1e-6, names=(case.name, "optax"))
    moved = [np.linalg.norm(a - p) / np.linalg.norm(p) for a, p in zip(jax.tree.leaves(r.params[0]), jax.tree.leaves(params))]
    assert max(moved) > 1e-3


@pytest.mark.parametrize("case", [c for c in OPTAX_CASES if not c.name.startswith("adadelta")], ids=str)
def test_cross_check_against_optax_in_complex64(case, standard_promotion):
    """Complex parameters and gradients (optax's convention: the conjugate of jax.grad), every
    optimizer with an optax equivalent that supports complex numbers (optax's adadelta squares
    them, g**2, and its own test skips it: ours uses |g|^2, tested below): squared magnitudes
    where optax has them, so the two agree as closely as in float32."""
    params = jax.tree.map(lambda a, b: (a + 1j * b).astype(jnp.complex64), random_tree(7), random_tree(17))
    grads = jax.tree.map(lambda a, b: (a + 1j * b).astype(jnp.complex64), random_tree(8, (1000,)),
                         random_tree(18, (1000,)))
    r = testing.cross_check(case.ours(), case.optax(), params, grads, rtol=1e-5, atol=1e-6, names=(case.name, "optax"))
    assert r.first_step is None, r.verdict
    assert all(leaf.dtype == jnp.complex64 for leaf in jax.tree.leaves(r.params[0]))
    moved = [np.linalg.norm(a - p) / np.linalg.norm(p) for a, p in zip(jax.tree.leaves(r.params[0]), jax.tree.leaves(params))]
    assert max(moved) > 1e-3


def test_scale_by_adam_is_optaxs(standard_promotion):
    """The Adam family's shared core: the direction without the learning rate, as optax's."""
    params, grads = jax.tree.map(jnp.zeros_like, random_tree(3)), random_tree(4, (300,))  # params: the summed directions
    for ours, theirs in [(optim.scale_by_adam(eps=1e-8), optax.scale_by_adam(eps=1e-8)),
                         (optim.scale_by_adam(0.8, 0.99, 1e-6, eps_root=1e-9, nesterov=True),
                          optax.scale_by_adam(0.8, 0.99, 1e-6, 1e-9, nesterov=True)),
                         (optim.scale_by_adamax(eps=1e-7), optax.scale_by_adamax(eps=1e-7))]:
        # optax rounds (1 - b2) in float64 and we in float32: 1.3e-5 apart in v, 6.5e-6 in the first direction
        r = testing.cross_check(ours, theirs, params, grads, rtol=1e-5, atol=1e-6)
        assert r.first_step is None, r.verdict


@pytest.mark.parametrize("opt", [optim.adadelta(1.0), optim.adadelta(0.5, weight_decay=1e-3), optim.adam(0.05),
                                 optim.rmsprop(0.01, centered=True, momentum=0.5), optim.adagrad(0.5)],
                         ids=["adadelta", "adadelta-wd", "adam", "rmsprop-centered-momentum", "adagrad"])
def test_complex_parameters_converge(opt):
    """min |z - c|^2 over complex z: the update follows the conjugate gradient (optax's convention)."""
    c = jnp.asarray([1 + 2j, -0.5 + 0.25j, 3 - 1j], jnp.complex64)
    z = {"z": jnp.zeros(3, jnp.complex64)}
    loss = lambda p: jnp.sum(jnp.abs(p["z"] - c) ** 2)  # noqa: E731

    @jax.jit
    def step(z, s):
        g = jax.tree.map(jnp.conj, jax.grad(loss)(z))
        u, s = opt.update(g, s, z)
        return optim.apply_updates(z, u), s

    s = opt.init(z)
    for _ in range(3000):
        z, s = step(z, s)
    assert z["z"].dtype == jnp.complex64
    np.testing.assert_allclose(z["z"], c, atol=3e-2)


# ----------------------------------------------------------- assert_trees_close
def test_close_trees_pass():
    a = {"w": jnp.ones((2, 3)), "b": [jnp.zeros(3), jnp.array([1.0, jnp.nan])]}
    testing.assert_trees_close(a, a)
    testing.assert_trees_close(a, jax.tree.map(lambda x: x * (1 + 1e-7), a), rtol=1e-6)
    testing.assert_trees_close({"z": jnp.array([1 + 1j], jnp.complex64)}, {"z": jnp.array([1 + 1.0000001j], jnp.complex64)})
    testing.assert_trees_close({"x": jnp.zeros(2)}, {"x": jnp.full(2, 1e-9)}, atol=1e-8)


def test_message_names_the_first_differing_leaf():
    a = {"layers": [{"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, {"w": jnp.ones(2)}]}
    b = {"layers": [{"w": jnp.ones((2, 3)).at[1, 2].set(1.25), "b": jnp.zeros(3)}, {"w": jnp.full(2, 2.0)}]}
    with pytest.raises(AssertionError) as info:
        testing.assert_trees_close(a, b, rtol=1e-6, names=("ours", "optax"))
    assert str(info.value) == (
        "ours and optax differ at leaf ['layers'][0]['w']: 1 of 6 elements past rtol=1e-06, atol=0; largest abs diff "
        "2.500e-01 at index (1, 2) (ours=1, optax=1.25), largest rel diff 2.000e-01\n  (and 1 more leaves differ)")


def test_message_for_a_complex_leaf_and_a_scalar():
    with pytest.raises(AssertionError, match=r"differ at leaf \['s'\]: 1 of 1 elements .* largest abs diff 1\.000e\+00 "
                                             r"\(a=1\+1j, b=1\+0j\), largest rel diff 1\.000e\+00"):
        testing.assert_trees_close({"s": jnp.asarray(1 + 1j, jnp.complex64)}, {"s": jnp.asarray(1 + 0j, jnp.complex64)})


def test_nan_against_a_number_is_a_difference():
    with pytest.raises(AssertionError, match=r"largest abs diff inf at index \(1,\) \(a=nan, b=2\)"):
        testing.assert_trees_close({"w": jnp.array([1.0, jnp.nan])}, {"w": jnp.array([1.0, 2.0])})


@pytest.mark.parametrize(
    "a, b, match",
    [
        ({"w": jnp.ones(2), "c": jnp.ones(1)}, {"w": jnp.ones(2), "d": jnp.ones(1)},
         r"a and b differ in tree structure: leaves only in a: \['c'\]; leaves only in b: \['d'\]\n  a: PyTreeDef"),
        ({"w": jnp.ones(2)}, {"w": jnp.ones(2), "v": {"x": jnp.ones(1)}},
         r"leaves only in a: none; leaves only in b: \['v'\]\['x'\]"),
        ([jnp.ones(2), jnp.ones(2)], (jnp.ones(2), jnp.ones(2)), "the same leaf paths in different containers"),
        ({"w": jnp.ones(2)}, {"w": jnp.ones(3)}, r"differ at leaf \['w'\]: shape \(2,\) in a, \(3,\) in b"),
        ({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.int32)}, r"differ at leaf \['w'\]: dtype float32 in a, int32 in b"),
        (jnp.ones(2), jnp.zeros(2), r"differ at leaf \(the root\): 2 of 2 elements"),
    ],
)
def test_structure_shape_and_dtype_mismatches(a, b, match):
    with pytest.raises(AssertionError, match=match):
        testing.assert_trees_close(a, b)


def test_check_dtypes_false_compares_values_only():
    testing.assert_trees_close({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.int32)}, check_dtypes=False)
