"""Our optimizers where the JAX ecosystem expects optax's: flax's TrainState and nnx.Optimizer,
an equinox training loop, and optax's own wrappers (chain, MultiSteps, masked,
multi_transform, inject_hyperparams). Each runs twice, once with ours and once with optax's
equivalent in the same place, and the two trajectories must agree (the gradients come from a
real loss, so differences would feed back)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import optim
from jaxscratch.testing import assert_trees_close

flax = pytest.importorskip("flax")
eqx = pytest.importorskip("equinox")
from flax import linen, nnx  # noqa: E402  (after the importorskip that guards them)
from flax.training import train_state  # noqa: E402 (after the importorskip that guards them)

STEPS = 40
# Ours and optax's round differently in the last bit (a few float32 ulps per step); the gradients
# of a real loss feed that back, so 40 steps drift to ~1e-5 relative: 1e-4 leaves room. What this
# file checks is that each wrapper runs ours as it runs optax's (a wrapper skipping, masking or
# rescheduling wrongly is far past it; measured with adam: b2 0.998 for 0.999 is 1.5e-3 off in the
# params). eps-sized differences are below it here: tests/test_optax_dropin.py checks those, with
# gradients that do not feed back.
RTOL = 1e-4


@pytest.fixture(autouse=True)
def standard_promotion():
    """optax, flax and equinox rely on implicit dtype promotion: run them with the default rules."""
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture
def batch(key):
    kx, kw = jax.random.split(jax.random.fold_in(key, 7))
    x = jax.random.normal(kx, (32, 5))
    y = jnp.tanh(x @ jax.random.normal(kw, (5, 3)))
    return x, y


def _close(a, b, what="ours vs optax"):
    """Each leaf within RTOL of optax's, norm-relative (as jaxscratch.testing.cross_check
    measures): elementwise, an element passing near zero would magnify last-bit rounding."""
    for path, x, y in zip(*zip(*jax.tree_util.tree_flatten_with_path(a)[0]), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        rel = np.linalg.norm(x - y) / np.linalg.norm(y)
        assert rel <= RTOL, f"{what}: leaf {jax.tree_util.keystr(path)} differs by {rel:.2e} (norm-relative)"


def _mse(pred, y):
    return jnp.mean((pred - y) ** 2)


# ---------------------------------------------------------------- flax linen TrainState
class Linen(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(3)(jnp.tanh(linen.Dense(8)(x)))


def _train_state_run(tx, batch, key):
    x, y = batch
    model = Linen()
    state = train_state.TrainState.create(apply_fn=model.apply, params=model.init(key, x), tx=tx)

    @jax.jit
    def step(state):
        grads = jax.grad(lambda p: _mse(state.apply_fn(p, x), y))(state.params)
        return state.apply_gradients(grads=grads)

    losses = []
    for _ in range(STEPS):
        state = step(state)
        losses.append(float(_mse(state.apply_fn(state.params, x), y)))
    return state, losses


@pytest.mark.parametrize("ours,theirs", [
    (lambda: optim.adam(0.01, eps=1e-8), lambda: optax.adam(0.01, eps=1e-8)),
    (lambda: optim.sgd(0.1, momentum=0.9), lambda: optax.sgd(0.1, momentum=0.9)),
    (lambda: optim.adamw(0.01, eps=1e-8, weight_decay=0.1), lambda: optax.adamw(0.01, eps=1e-8, weight_decay=0.1)),
], ids=["adam", "sgd-momentum", "adamw"])
def test_flax_train_state(ours, theirs, batch, key):
    a, losses = _train_state_run(ours(), batch, key)
    b, ref = _train_state_run(theirs(), batch, key)
    assert losses[-1] < 0.7 * losses[0]  # it trained
    assert int(a.step) == STEPS
    np.testing.assert_allclose(losses, ref, rtol=RTOL)
    _close(a.params, b.params)


# ---------------------------------------------------------------- flax nnx.Optimizer
class Nnx(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(5, 8, rngs=rngs)
        self.b = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def _nnx_run(tx, batch):
    x, y = batch
    model = Nnx(nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        grads = nnx.grad(lambda m: _mse(m(x), y))(model)
        opt.update(model, grads)

    losses = []
    for _ in range(STEPS):
        step(model, opt)
        losses.append(float(_mse(model(x), y)))
    return nnx.state(model, nnx.Param), losses


def test_nnx_optimizer(batch):
    a, losses = _nnx_run(optim.adam(0.01, eps=1e-8), batch)
    b, ref = _nnx_run(optax.adam(0.01, eps=1e-8), batch)
    assert losses[-1] < 0.7 * losses[0]
    np.testing.assert_allclose(losses, ref, rtol=RTOL)
    _close(jax.tree.leaves(a), jax.tree.leaves(b))


# ---------------------------------------------------------------- equinox loop
def _equinox_run(tx, batch, key):
    x, y = batch
    net = eqx.nn.MLP(5, 3, 8, 1, activation=jnp.tanh, key=key)
    state = tx.init(eqx.filter(net, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(net, state):
        grads = eqx.filter_grad(lambda n: _mse(jax.vmap(n)(x), y))(net)
        updates, state = tx.update(grads, state, eqx.filter(net, eqx.is_inexact_array))
        return eqx.apply_updates(net, updates), state

    losses = []
    for _ in range(STEPS):
        net, state = step(net, state)
        losses.append(float(_mse(jax.vmap(net)(x), y)))
    return eqx.filter(net, eqx.is_inexact_array), losses


def test_equinox_loop(batch, key):
    a, losses = _equinox_run(optim.nadam(0.01, eps=1e-8), batch, key)
    b, ref = _equinox_run(optax.nadam(0.01, eps=1e-8), batch, key)
    assert losses[-1] < 0.7 * losses[0]
    np.testing.assert_allclose(losses, ref, rtol=RTOL)
    _close(jax.tree.leaves(a), jax.tree.leaves(b))


# ---------------------------------------------------------------- optax's wrappers around ours
def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w": jax.random.normal(k1, (5, 3)), "b": jax.random.normal(k2, (3,)), "s": jax.random.normal(k3, ())}


def _wrapped_run(tx, params, batch):
    x, y = batch

    def loss(p):
        return _mse(jnp.tanh(x @ p["w"] + p["b"][None, :]) * p["s"], y)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    s, out = tx.init(params), []
    for _ in range(STEPS):
        params, s = step(params, s)
        out.append(params)
    return out, float(loss(params))


WRAPPERS = {
    "optax.chain": lambda o: optax.chain(optax.clip_by_global_norm(0.5), o),
    "MultiSteps": lambda o: optax.MultiSteps(o, every_k_schedule=4),
    "masked": lambda o: optax.masked(o, {"w": True, "b": False, "s": True}),
    "multi_transform": None,  # two optimizers: built below
    "inject_hyperparams": None,  # needs the factory: built below
}


def _wrapped(name, lib):
    if name == "multi_transform":
        labels = {"w": "fast", "b": "slow", "s": "slow"}
        return optax.multi_transform({"fast": lib.adam(0.05, eps=1e-8), "slow": lib.sgd(0.01)}, labels)
    if name == "inject_hyperparams":
        return optax.inject_hyperparams(lib.adam)(learning_rate=optax.linear_schedule(0.05, 0.005, STEPS), eps=1e-8)
    return WRAPPERS[name](lib.adam(0.05, eps=1e-8))


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_optax_wrappers_around_ours(name, key, batch):
    params = _params(key)
    ours, loss = _wrapped_run(_wrapped(name, optim), params, batch)
    ref, ref_loss = _wrapped_run(_wrapped(name, optax), params, batch)
    for t, (a, b) in enumerate(zip(ours, ref)):
        _close(a, b, f"step {t}")
    moved = jax.tree.map(lambda a, p: bool(jnp.any(a != p)), ours[-1], params)
    assert all(jax.tree.leaves(moved))  # (optax.masked hands the unmasked b its raw gradient)
    if name == "MultiSteps":  # an update only every 4th step
        assert_trees_close(ours[2], params, rtol=0)
        assert not np.array_equal(ours[3]["w"], params["w"])


def test_inject_hyperparams_of_our_factory_exposes_and_takes_new_values(key, batch):
    params = _params(key)
    tx = optax.inject_hyperparams(optim.adam)(learning_rate=0.05, eps=1e-8)
    state = tx.init(params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.05)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0, state.hyperparams["learning_rate"].dtype)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))  # lr 0: no move
