"""nn.from_flax and nn.from_equinox against each library's own forward pass.

The references call flax's ``module.apply`` / an Equinox module under ``jax.vmap`` directly,
with the keys the adapters document handing over, so outputs and state must match exactly.
"""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("equinox")
import equinox as eqx  # noqa: E402 (after the importorskip that guards them)
import flax.linen as linen  # noqa: E402 (after the importorskip that guards them)
from flax import nnx  # noqa: E402 (after the importorskip that guards them)

from jaxscratch import _adapters, nn  # noqa: E402 (after the importorskip that guards them)

BATCH = 6  # tiny: the whole file runs in seconds; > 1 so batch statistics mean something


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)


def assert_trees_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def assert_grad_flows(model, params, state, x, key):
    """grad of sum(outputs) has params' structure, is finite, and is not all zero (jitted: one
    compilation instead of one per primitive)."""
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, state, x, train=True, key=key)[0])))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(bool(jnp.any(g != 0)) for g in leaves)


def assert_jit_matches(model, params, state, x, key):
    jitted = jax.jit(model.apply, static_argnames="train")
    for train in (True, False):
        assert_trees_close(jitted(params, state, x, train=train, key=key),
                           model.apply(params, state, x, train=train, key=key))


def test_the_adapters_are_nn_functions():
    assert nn.from_flax is _adapters.from_flax
    assert nn.from_equinox is _adapters.from_equinox


def test_the_library_imports_neither_flax_nor_equinox():
    code = "import jaxscratch, sys; assert 'flax' not in sys.modules and 'equinox' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------- flax


class FlaxConvNet(linen.Module):
    """Conv -> batch norm -> relu -> dropout -> dense, with a ``train`` flag."""

    @linen.compact
    def __call__(self, x, train: bool):
        x = linen.Conv(4, (3, 3))(x)  # (batch, 5, 5, 4)
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = linen.Dropout(0.5, deterministic=not train)(linen.relu(x))
        return linen.Dense(3)(x.reshape((x.shape[0], -1)))  # (batch, 3)


class FlaxDeterministicMLP(linen.Module):
    """A flag named ``deterministic`` (True in evaluation), as flax's own layers use."""

    @linen.compact
    def __call__(self, x, deterministic: bool):
        x = linen.Dropout(0.3, deterministic=deterministic)(linen.tanh(linen.Dense(8)(x)))
        return linen.Dense(2)(x)


@pytest.fixture
def image():
    return jax.random.normal(jax.random.key(1), (BATCH, 5, 5, 2))


def test_flax_init_uses_the_documented_keys(key, image):
    model = nn.from_flax(FlaxConvNet(), image)
    params, state = model.init(key)
    k_params, k_dropout = jax.random.split(key, 2)
    variables = FlaxConvNet().init({"params": k_params, "dropout": k_dropout}, image, train=False)
    assert_trees_equal(params, variables["params"])
    assert_trees_equal(state, {"batch_stats": variables["batch_stats"]})


def test_flax_training_matches_module_apply(key, image):
    module = FlaxConvNet()
    model = nn.from_flax(module, image)
    params, state = model.init(key)
    step_key = jax.random.key(7)
    y, new_state = model.apply(params, state, image, train=True, key=step_key)
    y_ref, updated = module.apply({"params": params, **state}, image, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.split(step_key, 1)[0]})
    assert_trees_equal(y, y_ref)
    assert_trees_equal(new_state, updated)
    assert not np.array_equal(new_state["batch_stats"]["BatchNorm_0"]["mean"],
                              state["batch_stats"]["BatchNorm_0"]["mean"])
    y_other, _ = model.apply(params, state, image, train=True, key=jax.random.key(8))
    assert not np.array_equal(y, y_other)  # dropout follows the key


def test_flax_evaluation_matches_module_apply_and_keeps_state(key, image):
    module = FlaxConvNet()
    model = nn.from_flax(module, image)
    params, state = model.init(key)
    _, state = model.apply(params, state, image, train=True, key=key)  # non-trivial statistics
    y, same = model.apply(params, state, image, train=False)
    assert_trees_equal(y, module.apply({"params": params, **state}, image, train=False))
    assert same is state


def test_flax_deterministic_flag(key):
    x = jax.random.normal(jax.random.key(2), (BATCH, 4))
    module = FlaxDeterministicMLP()
    model = nn.from_flax(module, x, deterministic_kwarg="deterministic")
    params, state = model.init(key)
    assert state == {}
    y, new_state = model.apply(params, state, x, train=True, key=key)
    y_ref = module.apply({"params": params}, x, deterministic=False,
                         rngs={"dropout": jax.random.split(key, 1)[0]})
    assert_trees_equal(y, y_ref)
    assert new_state is state
    y_eval, _ = model.apply(params, state, x, train=False)
    assert_trees_equal(y_eval, module.apply({"params": params}, x, deterministic=True))
    assert not np.array_equal(y, y_eval)


def test_flax_module_without_flag_or_state(key):
    x = jax.random.normal(jax.random.key(3), (BATCH, 4))
    module = linen.Dense(3)
    model = nn.from_flax(module, x, train_kwarg=None, rng_names=())
    params, state = model.init(key)
    assert_trees_equal(params, module.init({"params": jax.random.split(key, 1)[0]}, x)["params"])
    for train in (True, False):
        y, new_state = model.apply(params, state, x, train=train)
        assert_trees_equal(y, module.apply({"params": params}, x))
        assert new_state == {}


def test_flax_jit_and_grad(key, image):
    model = nn.from_flax(FlaxConvNet(), image)
    params, state = model.init(key)
    assert_jit_matches(model, params, state, image, key)
    assert_grad_flows(model, params, state, image, key)


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, TypeError, "train_kwarg=None"),  # Dense has no train flag
    ({"train_kwarg": "training"}, TypeError, "'training'"),
    ({"train_kwarg": "mode", "deterministic_kwarg": "deterministic"}, ValueError, "one mode flag"),
    ({"train_kwarg": None, "rngs": {}}, ValueError, "rngs"),
])
def test_flax_bad_mode_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.from_flax(linen.Dense(3), jnp.ones((2, 4)), **kwargs)


@pytest.mark.parametrize("module", [nnx.Linear(4, 3, rngs=nnx.Rngs(0)), eqx.nn.Identity(), "dense"],
                         ids=["nnx", "equinox", "str"])
def test_flax_rejects_non_linen_objects(module):
    with pytest.raises(TypeError, match="flax.linen.Module"):
        nn.from_flax(module, jnp.ones((2, 4)))


def test_flax_training_without_key_says_so(key, image):
    model = nn.from_flax(FlaxConvNet(), image)
    params, state = model.init(key)
    with pytest.raises(ValueError, match="pass key="):
        model.apply(params, state, image, train=True)


# ------------------------------------------------------------------------------------ equinox


class EqxBatchNormNet(eqx.Module):
    """Linear -> BatchNorm(axis_name="batch") -> relu -> dropout -> linear, on one example."""

    first: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    last: eqx.nn.Linear

    def __init__(self, key, mode="batch"):
        k1, k2 = jax.random.split(key)
        self.first = eqx.nn.Linear(4, 8, key=k1)
        self.norm = eqx.nn.BatchNorm(8, axis_name="batch", mode=mode)
        self.drop = eqx.nn.Dropout(0.5)
        self.last = eqx.nn.Linear(8, 3, key=k2)

    def __call__(self, x, state, *, key=None):
        h, state = self.norm(self.first(x), state)
        return self.last(self.drop(jax.nn.relu(h), key=key)), state


class EqxNoKey(eqx.Module):
    """A stateless module whose ``__call__`` takes no key."""

    linear: eqx.nn.Linear

    def __call__(self, x):
        return jnp.tanh(self.linear(x))


@pytest.fixture
def vectors():
    return jax.random.normal(jax.random.key(4), (BATCH, 4))


def make_stateful(mode):
    return lambda k: eqx.nn.make_with_state(EqxBatchNormNet)(k, mode=mode)


def reference_train(net, state, x, key):
    keys = jax.random.split(key, x.shape[0])
    call = lambda x_i, state, key_i: net(x_i, state, key=key_i)  # (key is keyword-only)
    return jax.vmap(call, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))(x, state, keys)


def reference_eval(net, state, x):
    return jax.vmap(eqx.nn.inference_mode(net), axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)


def test_equinox_mlp_instance(vectors):
    mlp = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(5))
    model = nn.from_equinox(mlp)
    params, state = model.init(jax.random.key(99))  # ignored: the MLP was initialised when built
    assert state == ()
    assert_trees_equal(params, eqx.partition(mlp, eqx.is_inexact_array)[0])
    for train in (True, False):
        y, new_state = model.apply(params, state, vectors, train=train, key=jax.random.key(0))
        assert_trees_equal(y, jax.vmap(mlp)(vectors))
        assert new_state == ()


def test_equinox_factory_initialises_with_the_key(key):
    model = nn.from_equinox(lambda k: eqx.nn.MLP(4, 3, 8, 2, key=k))
    params, _ = model.init(key)
    assert_trees_equal(params, eqx.partition(eqx.nn.MLP(4, 3, 8, 2, key=key), eqx.is_inexact_array)[0])
    other, _ = model.init(jax.random.key(1))
    assert not np.array_equal(jax.tree.leaves(params)[0], jax.tree.leaves(other)[0])


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_equinox_batchnorm_dropout_training_matches_vmap(key, vectors, mode):
    model = nn.from_equinox(make_stateful(mode))
    params, state = model.init(key)
    net, state_ref = eqx.nn.make_with_state(EqxBatchNormNet)(key, mode=mode)
    assert_trees_equal(params, eqx.partition(net, eqx.is_inexact_array)[0])
    assert_trees_equal(state, state_ref)
    for step in range(2):  # the second step sees updated statistics (ema: no longer the first time)
        step_key = jax.random.fold_in(key, step)
        y, state = model.apply(params, state, vectors, train=True, key=step_key)
        y_ref, state_ref = reference_train(net, state_ref, vectors, step_key)
        assert_trees_equal(y, y_ref)
        assert_trees_equal(state, state_ref)
    y_eval, same = model.apply(params, state, vectors, train=False)
    y_eval_ref, _ = reference_eval(net, state, vectors)
    assert_trees_equal(y_eval, y_eval_ref)
    assert same is state
    assert not np.array_equal(y_eval, y)


def test_equinox_instance_with_state(key, vectors):
    net, state = eqx.nn.make_with_state(EqxBatchNormNet)(key)
    model = nn.from_equinox(net, state=state)
    params, state0 = model.init(jax.random.key(1))
    assert state0 is state
    y, new_state = model.apply(params, state0, vectors, train=True, key=key)
    assert_trees_equal((y, new_state), reference_train(net, state, vectors, key))


def test_equinox_module_without_key(vectors):
    module = EqxNoKey(eqx.nn.Linear(4, 2, key=jax.random.key(6)))
    model = nn.from_equinox(module)
    params, state = model.init(jax.random.key(0))
    y, _ = model.apply(params, state, vectors, train=True, key=jax.random.key(1))
    assert_trees_equal(y, jax.vmap(module)(vectors))


class EqxWholeBatch(eqx.Module):
    """Takes the whole batch ``(batch, 4)`` at once."""

    linear: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        return x @ self.linear.weight.T + self.linear.bias[None, :]


def test_equinox_whole_batch_module(vectors):
    module = EqxWholeBatch(eqx.nn.Linear(4, 2, key=jax.random.key(6)))
    model = nn.from_equinox(module, per_example=False)
    params, state = model.init(jax.random.key(0))
    y, _ = model.apply(params, state, vectors, train=True, key=jax.random.key(1))
    assert_trees_equal(y, module(vectors))


def test_equinox_jit_and_grad(key, vectors):
    model = nn.from_equinox(make_stateful("batch"))
    params, state = model.init(key)
    assert_jit_matches(model, params, state, vectors, key)
    assert_grad_flows(model, params, state, vectors, key)


def test_equinox_bad_arguments(key):
    with pytest.raises(TypeError, match="equinox.Module"):
        nn.from_equinox(42)
    with pytest.raises(ValueError, match="factory"):
        nn.from_equinox(make_stateful("batch"), state=eqx.nn.make_with_state(EqxBatchNormNet)(key)[1])
    with pytest.raises(TypeError, match="state=state"):  # a (module, state) pair, not a module
        nn.from_equinox(eqx.nn.make_with_state(EqxBatchNormNet)(key))
    with pytest.raises(TypeError, match="found builtins.int"):
        nn.from_equinox(lambda k: 3).init(key)
    with pytest.raises(RuntimeError, match="init"):
        nn.from_equinox(make_stateful("batch")).apply({}, (), jnp.ones((2, 4)), train=False)


# ------------------------------------------------------------------------------------- both


def test_a_training_step_keeps_the_state_tree():
    """Shapes, dtypes and structure of state survive a step, so lax.scan and jit can carry it."""
    image = jax.ShapeDtypeStruct((BATCH, 5, 5, 2), jnp.float32)
    cases = [(nn.from_flax(FlaxConvNet(), image), image)] + [
        (nn.from_equinox(make_stateful(mode)), jax.ShapeDtypeStruct((BATCH, 4), jnp.float32))
        for mode in ("batch", "ema")]
    for model, x in cases:
        params, state = jax.eval_shape(model.init, jax.random.key(0))
        _, new_state = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=True, key=jax.random.key(1)),
                                      params, state, x)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert jax.tree.leaves(new_state) == jax.tree.leaves(state)
