"""Schedules against optax's schedules of the same name, and against their formulas."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import _flags, schedules

# every 7th step, and both sides of each boundary the cases below use
COUNTS = np.unique(np.concatenate([np.arange(0, 1300, 7), [b + d for b in (0, 5, 10, 20, 50, 100, 250, 300, 1000)
                                                           for d in (-1, 0, 1) if b + d >= 0]]))


def values(schedule, counts=COUNTS):
    out = [schedule(jnp.int32(c)) for c in counts]
    assert all(jnp.asarray(v).dtype == jnp.float32 for v in out)
    return np.array([float(v) for v in out])


def optax_values(schedule, counts=COUNTS):
    with jax.numpy_dtype_promotion("standard"):  # optax relies on implicit promotion
        return np.array([float(np.float32(schedule(jnp.int32(c)))) for c in counts])


S, O = schedules, optax
CASES = {
    "constant": (lambda: S.constant_schedule(0.3), lambda: O.constant_schedule(0.3)),
    "exp": (lambda: S.exponential_decay(0.1, 50, 0.5), lambda: O.exponential_decay(0.1, 50, 0.5)),
    "exp-staircase": (lambda: S.exponential_decay(0.1, 50, 0.5, staircase=True),
                      lambda: O.exponential_decay(0.1, 50, 0.5, staircase=True)),
    "exp-floor": (lambda: S.exponential_decay(0.1, 20, 0.5, end_value=0.01),
                  lambda: O.exponential_decay(0.1, 20, 0.5, end_value=0.01)),
    "exp-begin": (lambda: S.exponential_decay(0.2, 30, 0.7, transition_begin=100),
                  lambda: O.exponential_decay(0.2, 30, 0.7, transition_begin=100)),
    "exp-begin-staircase-floor": (
        lambda: S.exponential_decay(0.2, 30, 0.7, transition_begin=250, staircase=True, end_value=0.05),
        lambda: O.exponential_decay(0.2, 30, 0.7, transition_begin=250, staircase=True, end_value=0.05)),
    "exp-growth-ceiling": (lambda: S.exponential_decay(0.01, 100, 2.0, transition_begin=50, end_value=0.3),
                           lambda: O.exponential_decay(0.01, 100, 2.0, transition_begin=50, end_value=0.3)),
    "exp-end-above-init": (lambda: S.exponential_decay(0.01, 10, 0.5, end_value=0.02),
                           lambda: O.exponential_decay(0.01, 10, 0.5, end_value=0.02)),
    "piecewise": (lambda: S.piecewise_constant_schedule(0.1, {100: 0.5, 250: 0.2}),
                  lambda: O.piecewise_constant_schedule(0.1, {100: 0.5, 250: 0.2})),
    "piecewise-unsorted-zero-growth": (
        lambda: S.piecewise_constant_schedule(0.1, {1000: 0.0, 0: 3.0, 20: 0.1, 5: 1.5}),
        lambda: O.piecewise_constant_schedule(0.1, {1000: 0.0, 0: 3.0, 20: 0.1, 5: 1.5})),
    "piecewise-none": (lambda: S.piecewise_constant_schedule(0.7), lambda: O.piecewise_constant_schedule(0.7)),
    "cosine": (lambda: S.cosine_decay_schedule(0.2, 300), lambda: O.cosine_decay_schedule(0.2, 300)),
    "cosine-alpha-exponent": (lambda: S.cosine_decay_schedule(0.2, 300, alpha=0.1, exponent=2.0),
                              lambda: O.cosine_decay_schedule(0.2, 300, alpha=0.1, exponent=2.0)),
    "warmup-cosine": (lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 50, 300, end_value=0.05),
                      lambda: O.warmup_cosine_decay_schedule(0.0, 1.0, 50, 300, end_value=0.05)),
    "warmup-cosine-0": (lambda: S.warmup_cosine_decay_schedule(0.1, 1.0, 0, 300),
                        lambda: O.warmup_cosine_decay_schedule(0.1, 1.0, 0, 300)),
    "warmup-cosine-exponent": (lambda: S.warmup_cosine_decay_schedule(0.2, 0.5, 100, 1000, end_value=0.01, exponent=0.5),
                               lambda: O.warmup_cosine_decay_schedule(0.2, 0.5, 100, 1000, end_value=0.01, exponent=0.5)),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_optax(name):
    ours, ref = CASES[name]
    np.testing.assert_allclose(values(ours()), optax_values(ref()), rtol=2e-6, atol=1e-8)


def test_cases_are_not_vacuous():
    """Every case above changes value somewhere in COUNTS (except the constant ones; end_value above init_value clips to a constant, as optax)."""
    moving = [n for n, (ours, _) in CASES.items() if np.ptp(values(ours())) > 1e-3]
    assert set(CASES) - set(moving) == {"constant", "piecewise-none", "exp-end-above-init"}


def test_formulas():
    ref = np.where(COUNTS < 250, 0.2, 0.2 * 0.7 ** np.floor((COUNTS - 250) / 30))
    np.testing.assert_allclose(values(CASES["exp-begin-staircase-floor"][0]()), np.maximum(ref, 0.05), rtol=1e-6)
    expected = np.where(COUNTS < 100, 0.1, np.where(COUNTS < 250, 0.05, 0.01))
    np.testing.assert_allclose(values(CASES["piecewise"][0]()), expected, rtol=1e-6)


def test_names_and_signatures_are_optaxs():
    """Our positional arguments are optax's, in its order; our keyword-only ones are optax's too,
    with its defaults; every public schedule has an optax namesake."""
    assert set(schedules.__all__) == {"Schedule", "constant_schedule", "cosine_decay_schedule", "exponential_decay",
                                      "piecewise_constant_schedule", "warmup_cosine_decay_schedule"}
    for name in set(schedules.__all__) - {"Schedule"}:
        ours = inspect.signature(getattr(schedules, name)).parameters
        theirs = inspect.signature(getattr(optax, name)).parameters
        positional = [p for p in ours.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert [p.name for p in positional] == list(theirs)[: len(positional)], name
        for p in ours.values():
            assert p.name in theirs and p.default == theirs[p.name].default, (name, p.name)
        assert set(ours) == set(theirs), name


def test_old_names_are_gone():
    for old in ("constant", "cosine_decay", "warmup_cosine_decay", "piecewise_constant"):
        assert not hasattr(schedules, old)


def test_optional_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        schedules.exponential_decay(0.1, 10, 0.5, 5)  # optax reads 5 as transition_begin
    with pytest.raises(TypeError):
        schedules.cosine_decay_schedule(0.1, 10, 0.1)


def test_jit_vmap_and_array_counts():
    """Jitted and batched counts give the eager values (to the float32 rounding of a fused cos)."""
    for name, (ours, _) in CASES.items():
        s = ours()
        counts = jnp.asarray(COUNTS, jnp.int32)
        batched = jax.jit(jax.vmap(s))(counts)
        np.testing.assert_allclose(batched, values(s), rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(s(counts), values(s), rtol=1e-6, atol=1e-6, err_msg=name)


def test_traced_values():
    """Values may be traced: one compiled program serves every init_value and decay_rate."""
    @jax.jit
    def at(init_value, decay_rate, scale, count):
        return (schedules.exponential_decay(init_value, 20, decay_rate, end_value=0.01)(count),
                schedules.piecewise_constant_schedule(init_value, {10: scale})(count))

    for v, r, c in [(0.1, 0.5, 37), (0.3, 2.0, 55), (0.05, 0.9, 3)]:
        e, p = at(v, r, 0.25, c)
        np.testing.assert_allclose(e, schedules.exponential_decay(v, 20, r, end_value=0.01)(c), rtol=1e-6)
        np.testing.assert_allclose(p, schedules.piecewise_constant_schedule(v, {10: 0.25})(c), rtol=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "exponential", "cosine", "warmup-cosine"])
def test_cli_schedules_are_the_formulas(schedule):
    """The command's --schedule values, 4 steps per epoch over 5 epochs (learning rate 0.1)."""
    cfg = {**_flags.DEFAULTS, "optimizer": "sgd", "learning_rate": 0.1, "epochs": 5, "schedule": schedule,
           "decay_epochs": 2, "decay_factor": 0.5, "warmup_epochs": 1}
    opt = _flags.build_optimizer(cfg, 4)
    params, seen = {"w": jnp.zeros(())}, []
    state = opt.init(params)
    for _ in range(25):
        u, state = opt.update({"w": jnp.ones(())}, state, params)
        seen.append(-float(u["w"]))
    t = np.arange(25)
    expected = {
        "constant": np.full(25, 0.1),
        "exponential": 0.1 * 0.5 ** np.floor(t / 8),
        "cosine": 0.1 * 0.5 * (1 + np.cos(np.pi * np.minimum(t, 20) / 20)),
        "warmup-cosine": np.where(t < 4, 0.1 * t / 4, 0.1 * 0.5 * (1 + np.cos(np.pi * np.clip(t - 4, 0, 16) / 16))),
    }[schedule]
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: S.exponential_decay(0.1, 0, 0.5), ValueError, "transition_steps must be an int >= 1; got 0"),
        (lambda: S.exponential_decay(0.1, 2.5, 0.5), ValueError, "transition_steps must be an int >= 1; got 2.5"),
        (lambda: S.exponential_decay(0.1, 10, 0.0), ValueError, "decay_rate must be > 0; got 0.0"),
        (lambda: S.exponential_decay(0.1, 10, -0.5), ValueError, "decay_rate must be > 0"),
        (lambda: S.exponential_decay(0.1, 10, 0.5, transition_begin=-1), ValueError,
         "transition_begin must be an int >= 0; got -1"),
        (lambda: S.exponential_decay(0.1, 10, 0.5, staircase="yes"), TypeError, "staircase must be True or False"),
        (lambda: S.exponential_decay(0.1, 10, "0.5"), TypeError, "expected a number or a JAX scalar; got str"),
        (lambda: S.cosine_decay_schedule(0.1, -5), ValueError, "decay_steps must be an int >= 1; got -5"),
        (lambda: S.cosine_decay_schedule(0.1, True), ValueError, "decay_steps must be an int >= 1; got True"),
        (lambda: S.piecewise_constant_schedule([10, 20], [0.1, 0.01, 0.001]), TypeError,
         r"boundaries_and_scales must be a dict \{step: scale\}.*got list"),
        (lambda: S.piecewise_constant_schedule(0.1, {10: -0.5}), ValueError, "the scale at step 10 must be >= 0"),
        (lambda: S.piecewise_constant_schedule(0.1, {-3: 0.5}), ValueError, "each step must be an int >= 0; got -3"),
        (lambda: S.piecewise_constant_schedule(0.1, {1.5: 0.5}), ValueError, "each step must be an int >= 0; got 1.5"),
        (lambda: S.warmup_cosine_decay_schedule(0, 1, 100, 100), ValueError,
         r"warmup_steps must be an int in \[0, decay_steps=100\)"),
        (lambda: S.warmup_cosine_decay_schedule(0, 1, -1, 100), ValueError, "warmup_steps must be an int >= 0"),
        (lambda: S.warmup_cosine_decay_schedule(0, 0.0, 10, 100, end_value=0.1), ValueError,
         "peak_value 0 with end_value 0.1"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
