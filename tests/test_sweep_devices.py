"""Sweeps split over several devices (CPU devices here: one per core is what use_cpu_cores gives)
give the results of one device, compile one program per configuration, and the optimizer
comparison runs its optimizers side by side. JAX's device count is fixed when it starts, so each
check runs in a child process."""
import json
import os
import subprocess
import sys
import textwrap



_SCRIPT = textwrap.dedent("""
    import json, sys
    import jaxscratch
    assert jaxscratch.devices.use_cpu_cores(3) == 3
    import jax, jax.numpy as jnp, numpy as np
    from jaxscratch import data, nn, optim, sweep
    sys.path.insert(0, sys.argv[1])
    from helpers import COMPILES
    devices = jax.local_devices()
    assert len(devices) == 3, devices
    one = devices[:1]
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.2, seed=0)
    tr, va = (xt[:600], yt[:600]), (xv, yv)
    spec = sweep.Spec(sizes=(64, 32, 10), optimizer="momentum", batch_size=50)
    hp = {"learning_rate": [0.01, 0.03, 0.1, 0.2, 0.05], "weight_decay": [1e-4] * 5}  # 5 trials: padded to 6
    out = {}
    split = sweep.run_trials(jax.random.key(3), spec, hp, tr, epochs=3, validation=va, group_size=1)
    alone = sweep.run_trials(jax.random.key(3), spec, hp, tr, epochs=3, validation=va, group_size=1, devices=one)
    out["history_diff"] = max(float(np.abs(split.history[k] - alone.history[k]).max()) for k in alone.history)
    out["param_diff"] = max(float(jnp.abs(a - b).max()) for a, b in
                            zip(jax.tree.leaves(split.state.params), jax.tree.leaves(alone.state.params)))
    out["shapes"] = [list(a.shape) for a in jax.tree.leaves(split.state.params)]
    # the group program really is split: each device holds its own trials
    program = sweep._compiled.program(sweep._build_train_many, spec, 1, tuple(devices))
    sharding = sweep._trial_sharding(tuple(devices))
    state, hparams = sweep._put_rows(sweep._host_columns([(split.state, split.hparams)]), np.array([0, 1, 2]), sharding)
    x, y, sets = sweep._replicated((jnp.asarray(tr[0]), jnp.asarray(tr[1]), {}), tuple(devices))
    orders = sweep._compiled.program(sweep._build_orders, spec.batch_size, spec.sampling, len(x), tuple(devices))
    new_state, _ = program(state, hparams, x, y, sets, orders(state.key, state.step))
    w = new_state.params[0]["w"]
    out["per_device_rows"] = sorted(s.data.shape[0] for s in w.addressable_shards)
    # successive halving: one training program for every rung, on three devices
    with COMPILES as compiled:
        sweep.successive_halving(jax.random.key(4), spec._replace(sizes=(64, 24, 10)), {"learning_rate": (1e-3, 0.3)},
                                 tr, va, n_trials=12, max_epochs=4, min_epochs=1, eta=3)
    out["halving_train_programs"] = sum(1 for name in compiled.names if "_train_one" in name)
    cv = sweep.kfold_cv(jax.random.key(5), spec, {"learning_rate": [0.01, 0.1]}, xt[:300], yt[:300], k=3, epochs=2)
    cv1 = sweep.kfold_cv(jax.random.key(5), spec, {"learning_rate": [0.01, 0.1]}, xt[:300], yt[:300], k=3, epochs=2,
                         devices=one)
    out["cv_diff"] = float(np.abs(cv.val_loss - cv1.val_loss).max())
    out["cv_best"] = [cv.best, cv1.best]
    params = nn.init_mlp(jax.random.key(0), (64, 32, 10))
    opts = {n: optim.OPTIMIZERS[n]() for n in ("sgd", "momentum", "adagrad", "rmsprop", "adam")}
    with COMPILES as compiled:
        side = sweep.compare_optimizers(jax.random.key(1), opts, params, xt, yt, iterations=30, batch_size=32)
    out["compare_programs"] = [name for name in compiled.names if "local" in name]
    serial = sweep.compare_optimizers(jax.random.key(1), opts, params, xt, yt, iterations=30, batch_size=32,
                                      devices=one)
    out["compare_diff"] = max(float(np.abs(side[n][1] - serial[n][1]).max()) for n in opts)
    out["compare_state_diff"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for n in opts for a, b in
                                    zip(jax.tree.leaves(side[n][0]._replace(key=0)),
                                        jax.tree.leaves(serial[n][0]._replace(key=0))))
    out["compare_devices"] = [sorted(d.id for leaf in jax.tree.leaves(side[n][0])
                                     for d in leaf.devices()) for n in opts]
    try:
        sweep.run_trials(jax.random.key(3), spec, hp, tr, epochs=1, devices=["cpu:0"])
    except TypeError as e:
        out["bad_devices"] = str(e)
    try:
        jaxscratch.devices.use_cpu_cores(2)
    except RuntimeError as e:
        out["late"] = str(e)
    json.dump(out, sys.stdout)
""")


def test_sweeps_split_over_three_cpu_devices_equal_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, os.path.dirname(__file__)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["history_diff"] <= 1e-6 and out["param_diff"] <= 1e-6, out
    assert all(shape[0] == 5 for shape in out["shapes"])  # the padding is dropped
    assert out["per_device_rows"] == [1, 1, 1]
    assert out["halving_train_programs"] == 1, out
    assert out["cv_diff"] <= 1e-5 and out["cv_best"][0] == out["cv_best"][1]
    # five optimizers on three devices: groups of two, one program, the last group padded
    assert len(out["compare_programs"]) == 1, out["compare_programs"]
    assert out["compare_diff"] <= 1e-5 and out["compare_state_diff"] <= 1e-5, out
    assert [set(ids) for ids in out["compare_devices"]] == [{0}, {0}, {1}, {1}, {2}]
    assert "devices must be a non-empty sequence of jax devices" in out["bad_devices"]
    assert "use_cpu_cores() must run before JAX starts its backends" in out["late"]
    assert "JAX_NUM_CPU_DEVICES=2" in out["late"]


def test_use_cpu_cores_leaves_the_environment_variable_alone():
    code = "import jaxscratch, jax; print(jaxscratch.devices.use_cpu_cores(), jax.device_count())"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["3", "3"]
