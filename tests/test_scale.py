"""fit at scale: no recompilation across calls, no host transfer in the training loop, a device
mesh (data parallelism), bf16 mixed precision, the non-finite guard and input checks."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscratch import data, nn, optim, train

from helpers import COMPILES


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    return (xt, yt), (xv, yv)


def _fit(tr, va, opt, epochs=2, drop_rate=0.0, **kw):
    params = nn.init_mlp(jax.random.key(0), (64, 32, 10))
    return train.fit(jax.random.key(1), nn.mlp_model((64, 32, 10), drop_rate=drop_rate), opt, tr, epochs=epochs,
                     batch_size=50, validation=va, params=params, verbose=False, **kw)


def test_fit_compiles_nothing_on_a_second_call_or_new_hyperparameter_values(digits):
    tr, va = digits
    opt = optim.momentum(0.05)
    # the same arguments give the same model object, which keys fit's compiled programs
    assert nn.mlp_model((64, 32, 10), drop_rate=0.1) is nn.mlp_model((64, 32, 10), drop_rate=0.1)
    _fit(tr, va, opt, weight_decay=1e-3, drop_rate=0.1)  # warm: compiles the epoch and evaluation
    with COMPILES as c:
        _fit(tr, va, opt, weight_decay=1e-3, drop_rate=0.1)
    assert c.count == 0
    with COMPILES as c:
        r = _fit(tr, va, opt, epochs=4, weight_decay=0.02, drop_rate=0.1)  # more epochs, another weight decay
    assert c.count == 0 and len(r.history["epoch"]) == 4
    # learning rates live in the state with inject_hyperparams: any value, same program
    make = optim.inject_hyperparams(optim.adam)
    _fit(tr, va, make(learning_rate=1e-3))
    with COMPILES as c:
        r = _fit(tr, va, make(learning_rate=3e-3))
    assert c.count == 0 and float(r.state.opt_state.hyperparams["learning_rate"]) == pytest.approx(3e-3)
    # a change of program (another batch size) does compile: the counter sees compilations
    with COMPILES as c:
        train.fit(jax.random.key(1), nn.mlp_model((64, 32, 10)), opt, tr, epochs=1, batch_size=40, verbose=False)
    assert c.count >= 1


def test_fit_makes_no_implicit_host_transfer(digits):
    """Under jax.transfer_guard("disallow") only explicit transfers may happen: the data's
    upload before training and one device_get per epoch. The training loop itself moves nothing."""
    tr, va = digits
    kw = dict(weight_decay=1e-3, test=va)
    # compile outside the guard (compiling is not a transfer, but keep it simple)
    _fit(tr, va, optim.adam(), drop_rate=0.2, **kw)
    params, key, opt = nn.init_mlp(jax.random.key(0), (64, 32, 10)), jax.random.key(1), optim.adam()
    state = train.init_state(key, params, opt, nn.init_bn_state(params))  # creates arrays: not part of the loop
    model = nn.mlp_model((64, 32, 10), drop_rate=0.2)
    with jax.transfer_guard("disallow"):
        r = train.fit(key, model, opt, tr, epochs=3, batch_size=50, validation=va, verbose=False, state=state, **kw)
    assert len(r.history["val_acc"]) == 3 and np.isfinite(r.history["train_eval_loss"]).all()
    # the guard is live: an implicit host-to-device transfer inside it is refused
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="[Dd]isallowed"):
        jnp.ones(3) + np.ones(3, np.float32)


_MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from jaxscratch import _fitdata, data, losses, nn, optim, train
    assert jax.device_count() == 4, jax.devices()
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    out = {"epoch_compiles": []}
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, d, fun_name="", **_: compiles.append(fun_name)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    for bn in (False, True):
        runs = []
        for mesh in (None, jax.sharding.Mesh(np.array(jax.devices()), ("data",))):
            params = nn.init_mlp(jax.random.key(0), (64, 64, 64, 10), batchnorm=bn)
            model = nn.mlp_model((64, 64, 64, 10), batchnorm=bn, drop_rate=0.1)
            compiles.clear()
            r = train.fit(jax.random.key(1), model, optim.adam(1e-3), (xt, yt), epochs=3, batch_size=64,
                          validation=(xv, yv), params=params, weight_decay=1e-4, verbose=False, mesh=mesh)
            out["epoch_compiles"].append(compiles.count("jit(epoch_fn)"))
            runs.append(r)
        single, sharded = runs
        w = sharded.state.params[0]["w"]
        out[str(bn)] = {
            "loss_single": single.history["step_loss"].tolist(), "loss_mesh": sharded.history["step_loss"].tolist(),
            "val_single": single.history["val_acc"].tolist(), "val_mesh": sharded.history["val_acc"].tolist(),
            "max_param_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                  zip(jax.tree.leaves(single.state.params), jax.tree.leaves(sharded.state.params))),
            "replicated": bool(w.sharding.is_fully_replicated), "n_devices": len(w.sharding.device_set),
        }
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    opt = optim.adam(1e-3)
    model, task = nn.mlp_model((64, 64, 10)), losses.task("cross_entropy")
    epoch_fn, _ = train._programs(model, task, opt.update, batch_size=64, sampling="epoch", n=len(xt),
                                  use_weight_decay=False, mask_leaves=None, compute_dtype=None, mesh=mesh,
                                  data_axis="data", host_order=False)
    (xs, ys, _), _ = _fitdata.layout({"train": (np.asarray(xt), np.asarray(yt))}, 256, task)
    params, model_state = model.init(jax.random.key(1))
    state = train.init_state(jax.random.key(0), params, opt, model_state)
    hlo = epoch_fn.lower(state, xs, ys, train.Hyper(jnp.float32(0))).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    try:
        train.fit(jax.random.key(1), nn.mlp_model((64, 10)), opt, (xt, yt), epochs=1,
                  batch_size=50, verbose=False, mesh=mesh)
    except ValueError as e:
        out["error"] = str(e)
    json.dump(out, sys.stdout)
""")


def test_fit_on_a_mesh_of_four_cpu_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    out = json.loads(proc.stdout)
    for bn in ("False", "True"):  # plain, and batch norm (whose batch statistics span all devices)
        r = out[bn]
        np.testing.assert_allclose(r["loss_mesh"], r["loss_single"], rtol=2e-4, atol=2e-5)
        assert np.abs(np.subtract(r["val_mesh"], r["val_single"])).max() <= 0.01
        assert r["max_param_diff"] < 1e-2  # Adam amplifies float rounding a little over 60 steps
        assert r["replicated"] and r["n_devices"] == 4
    assert out["epoch_compiles"] == [1, 1, 1, 1]  # each fit compiles its epoch program once, on a mesh too
    assert out["all_reduce"]  # the gradients are summed across devices
    assert "batch_size must be a multiple of the 4 devices" in out["error"]


def test_bf16_compute_keeps_float32_state_and_trains_like_float32(digits):
    tr, va = digits
    runs = {}
    for dtype in (None, jnp.bfloat16):
        params = nn.init_mlp(jax.random.key(0), (64, 100, 100, 10), batchnorm=True)
        runs[dtype] = train.fit(jax.random.key(1), nn.mlp_model((64, 100, 100, 10), batchnorm=True),
                                optim.adam(1e-3), tr, epochs=8, batch_size=50, validation=va, params=params,
                                verbose=False, compute_dtype=dtype)
    f32, bf16 = runs[None], runs[jnp.bfloat16]
    assert jax.tree.leaves(bf16.state.model_state)  # the batch-norm statistics are checked too
    for leaf in jax.tree.leaves((bf16.state.params, bf16.state.opt_state, bf16.state.model_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    # the same curve to bf16 rounding: final losses within 20% and accuracy within 3 points
    assert bf16.history["train_eval_loss"][-1] == pytest.approx(f32.history["train_eval_loss"][-1], rel=0.2, abs=0.01)
    assert abs(bf16.history["val_acc"][-1] - f32.history["val_acc"][-1]) <= 0.03
    assert bf16.history["val_acc"][-1] >= 0.9
    # and the steps really were computed differently (bf16 is not silently ignored)
    assert not np.array_equal(bf16.history["step_loss"], f32.history["step_loss"])
    with pytest.raises(TypeError, match="compute_dtype must be a floating dtype"):
        _fit(tr, va, optim.sgd(), compute_dtype=jnp.int32)


def test_apply_if_finite_matches_optax_and_skips_bad_steps():
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
    ours = optim.apply_if_finite(optim.momentum(0.1, 0.9), max_consecutive_errors=2)
    ref = optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), max_consecutive_errors=2)
    so, sr, po, pr = ours.init(params), ref.init(params), params, params
    pattern = [False, True, False, True, True, False, True, True, True, False]  # True: a NaN gradient
    for t, bad in enumerate(pattern):
        g = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan) if bad else jnp.cos(p * (t + 1)), params)
        uo, so = jax.jit(ours.update)(g, so, po)
        ur, sr = ref.update(g, sr, pr)
        po, pr = optim.apply_updates(po, uo), optax.apply_updates(pr, ur)
        for field in ("notfinite_count", "last_finite", "total_notfinite"):
            assert int(getattr(so, field)) == int(getattr(sr, field)), (t, field)
        for a, b in zip(jax.tree.leaves(po), jax.tree.leaves(pr)):
            np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True)
    assert int(so.total_notfinite) == sum(pattern)
    assert not np.isfinite(np.asarray(po["w"])).all()  # the third bad step in a row went through
    with pytest.raises(ValueError, match="max_consecutive_errors must be an int >= 0"):
        optim.apply_if_finite(optim.sgd(), -1)


def test_fit_with_the_guard_skips_nonfinite_steps_and_trains_on(digits):
    (x, y), va = digits
    x = np.array(x)
    x[7] = 3e38  # one poisoned row (finite, but its logits overflow): a batch that draws it has NaN gradients
    params, model = nn.init_mlp(jax.random.key(0), (64, 32, 10)), nn.mlp_model((64, 32, 10))
    r = train.fit(jax.random.key(1), model, optim.apply_if_finite(optim.adam(1e-2)), (x, y), epochs=3,
                  batch_size=50, validation=va, params=params, verbose=False)
    assert r.history["skipped_steps"].sum() >= 2  # (the row may fall in an epoch's dropped remainder)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(r.state.params))
    assert r.history["val_acc"][-1] > 0.8
    # without the guard the same data stop the run, naming the step
    with pytest.raises(FloatingPointError, match=r"loss (nan|inf) at step \d+ \(epoch 1\)"):
        train.fit(jax.random.key(1), model, optim.adam(1e-3), (x, y), epochs=3, batch_size=50, params=params,
                  verbose=False)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x[:, :60], y), r"train x of shape \(n, 60\) \(float32\) does not fit the model: ValueError: x "
                                  r"must have shape \(\.\.\., 64\) to match the first layer"),
    (lambda x, y: (x, y + 1), r"train labels must be in \[0, 10\) for the model's 10 outputs; found 1\.\.10"),
    (lambda x, y: (x, y[:-1]), r"train x and y must have the same number of rows"),
    (lambda x, y: (x, np.eye(12, dtype=np.float32)[y]),
     r"cross_entropy needs train targets as integer labels \(n,\) or one-hot rows \(n, 10\) for the model's 10 "
     r"outputs; got float32 of shape \(\d+, 12\)"),
    # integer x are the model's business (token ids are integers); the MLP refuses them under any
    # promotion rules, and fit says so before compiling
    (lambda x, y: (x.astype(np.int32), y), r"train x of shape \(n, 64\) \(int32\) does not fit the model: "
                                           r"TypeError: the MLP takes floating-point inputs; got int32"),
    (lambda x, y: (np.where(np.arange(len(x))[:, None] == 3, np.nan, x), y),
     r"train x must be finite; found 64 NaN or Inf values \(the first in row 3\)"),
])
def test_fit_checks_the_data_against_the_model(digits, bad, message):
    (x, y), _ = digits
    model = nn.mlp_model((64, 10))
    with pytest.raises((ValueError, TypeError), match=message):
        train.fit(jax.random.key(1), model, optim.sgd(), bad(np.asarray(x), np.asarray(y)), epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"val labels must be in \[0, 10\)"):
        train.fit(jax.random.key(1), model, optim.sgd(), (x, y), epochs=1, verbose=False,
                  validation=(x[:10], np.full(10, -1)))
