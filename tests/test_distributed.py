"""fit across processes: two Python processes on this machine join JAX's distributed runtime
(``jax.distributed.initialize`` over 127.0.0.1, gloo collectives on CPU) and train on one global
mesh that spans both, as the processes of a multi-host GPU or TPU slice would. The result must
equal one process on one device; process 0 alone writes the checkpoint."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxscratch import checkpoint, data, nn, optim, sweep, train

# What each process runs: argv = port, process id, output file, split seed (the same on both
# processes, unless a test wants them to disagree). Two CPU devices per process, so the mesh's
# four devices sum gradients both inside a process and across the two.
_WORKER = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from jax.experimental import multihost_utils
    port, process_id, out, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    saved = os.path.join(os.path.dirname(out), "checkpoint.npz")  # one file, beside both outputs
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    jax.config.update("jax_numpy_dtype_promotion", "strict")  # the suite's rules (tests/conftest.py)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from jaxscratch import checkpoint, data, nn, optim, sweep, train
    assert jax.process_count() == 2 and jax.local_device_count() == 2 and jax.device_count() == 4, jax.devices()
    ds = data.load_digits()  # every process loads the same data
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=seed)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))

    def on_epoch(epoch, result):  # the checkpoint is written by process 0 only
        if jax.process_index() == 0:
            checkpoint.save(saved, result.state, metadata={"epoch": epoch})

    model, opt = nn.mlp_model((64, 32, 10)), optim.adam(1e-3)  # the same objects: the resumed run compiles nothing
    r = train.fit(jax.random.key(1), model, opt, (xt, yt), epochs=2, batch_size=64, validation=(xv, yv),
                  verbose=False, mesh=mesh, on_epoch=on_epoch)
    # resume: every process waits for process 0's file, restores it and trains one more epoch
    multihost_utils.sync_global_devices("checkpoint written")
    resumed = train.fit(jax.random.key(1), model, opt, (xt, yt), epochs=3, batch_size=64, validation=(xv, yv),
                        verbose=False, mesh=mesh, state=checkpoint.restore(saved, r.state), history=r.history)
    w = r.state.params[0]["w"]
    result = {
        "step_loss": r.history["step_loss"].tolist(), "val_acc": r.history["val_acc"].tolist(),
        "resumed_step_loss": resumed.history["step_loss"].tolist(),
        # replicated, so each process reads its own copy: np.asarray needs no cross-host transfer
        "params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(r.state.params)],
        "replicated": bool(w.sharding.is_fully_replicated), "n_devices": len(w.sharding.device_set),
        "n_processes": len({d.process_index for d in w.sharding.device_set}),
    }
    # a sweep with its trials split over all four devices of both processes (5 trials: padded)
    trials = sweep.run_trials(jax.random.key(2), SPEC, HPARAMS, (xt, yt), epochs=2, validation=(xv, yv),
                              devices=jax.devices(), group_size=1)
    result["sweep"] = {k: v.tolist() for k, v in trials.history.items()}
    result["sweep_params"] = [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(trials.state.params)]
    result["sweep_best"] = sweep.table(trials)[0]["trial"]
    _, rows, _ = sweep.successive_halving(jax.random.key(3), SPEC, RANGES, (xt, yt), (xv, yv), **HALVING,
                                          devices=jax.devices(), group_size=1)
    result["halving"] = rows
    cv = sweep.kfold_cv(jax.random.key(4), SPEC, KFOLD, xt, yt, k=2, epochs=1, devices=jax.devices())
    result["kfold"] = {"val_loss": cv.val_loss.tolist(), "val_acc": cv.val_acc.tolist(), "best": cv.best}
    with open(out, "w") as f:
        json.dump(result, f)
""")
_SWEEP = """
SPEC = sweep.Spec(sizes=(64, 32, 10), optimizer="sgd", batch_size=32)
HPARAMS = {"learning_rate": [0.01, 0.03, 0.1, 0.3, 0.05], "weight_decay": [0.0, 1e-4, 1e-3, 0.0, 1e-2]}
KFOLD = {"learning_rate": [0.05, 0.2, 0.1]}  # three configurations on four devices: padded
RANGES, HALVING = {"learning_rate": (0.01, 0.3)}, {"n_trials": 6, "max_epochs": 3, "min_epochs": 1, "eta": 2}
"""
_WORKER = _WORKER.replace("mesh = jax.sharding.Mesh", _SWEEP.lstrip() + "mesh = jax.sharding.Mesh", 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, seeds=(0, 0)):
    """Start both processes; return their exit codes, logs and output files."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no forced device count from outside
    env.update(JAX_PLATFORMS="cpu", JAXSCRATCH_COMPILE_CACHE="off")
    port, outs = _free_port(), [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(outs[i]), str(seeds[i])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs, deadline = [], time.monotonic() + 120  # 120 s for both: a hung collective cannot stall the suite
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate()[0] for p in procs]
        raise AssertionError("the two processes did not finish in 120 s:\n" + "\n".join(
            f"--- process {i}\n{log[-3000:]}" for i, log in enumerate(logs))) from None
    return [p.returncode for p in procs], logs, outs


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One run of both processes, shared by the tests that read it: (folder, both results)."""
    folder = tmp_path_factory.mktemp("distributed")
    codes, logs, outs = _run_two_processes(folder)
    for i, (code, log) in enumerate(zip(codes, logs)):
        assert code == 0, f"process {i} exited with {code}:\n{log[-3000:]}"
    return folder, [json.loads(o.read_text()) for o in outs]


def test_fit_across_two_processes_equals_one_device(two_processes):
    tmp_path, results = two_processes
    assert results[0] == results[1]  # both processes hold the same run
    r = results[0]
    assert r["replicated"] and r["n_devices"] == 4 and r["n_processes"] == 2

    # the same run in this process, on one device
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    model, opt = nn.mlp_model((64, 32, 10)), optim.adam(1e-3)
    single = train.fit(jax.random.key(1), model, opt, (xt, yt), epochs=2, batch_size=64, validation=(xv, yv),
                       verbose=False)
    assert len(r["step_loss"]) == len(single.history["step_loss"]) == 2 * (len(xt) // 64)
    np.testing.assert_allclose(r["step_loss"], single.history["step_loss"], rtol=2e-4, atol=2e-5)
    assert np.abs(np.subtract(r["val_acc"], single.history["val_acc"])).max() <= 0.01
    for got, want in zip(r["params"], jax.tree.leaves(single.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=2e-4, atol=1e-5)
    resumed = train.fit(jax.random.key(1), model, opt, (xt, yt), epochs=3, batch_size=64, validation=(xv, yv),
                        verbose=False, state=single.state, history=single.history)
    np.testing.assert_allclose(r["resumed_step_loss"], resumed.history["step_loss"], rtol=2e-4, atol=2e-5)
    # process 0's checkpoint holds the whole state (parameters, Adam's moments, key, step)
    assert checkpoint.load_metadata(tmp_path / "checkpoint.npz") == {"epoch": 2}
    saved = checkpoint.restore(tmp_path / "checkpoint.npz", single.state)
    assert int(saved.step) == int(single.state.step)
    np.testing.assert_array_equal(jax.random.key_data(saved.key), jax.random.key_data(single.state.key))
    for got, want in zip(jax.tree.leaves((saved.params, saved.opt_state)),
                         jax.tree.leaves((single.state.params, single.state.opt_state)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-5)


def test_sweep_across_two_processes_equals_one_process(two_processes):
    """run_trials over jax.devices() of two processes (trials split over four devices, padded,
    gathered back onto both) trains each trial as one process does."""
    _, results = two_processes
    assert results[0]["sweep"] == results[1]["sweep"] and results[0]["sweep_params"] == results[1]["sweep_params"]
    ds = data.load_digits()
    xt, yt, xv, yv = data.train_val_split(ds.x_train, ds.y_train, 0.1, seed=0)
    namespace = {"sweep": sweep}
    exec(_SWEEP, namespace)
    single = sweep.run_trials(jax.random.key(2), namespace["SPEC"], namespace["HPARAMS"], (xt, yt), epochs=2,
                              validation=(xv, yv))
    r = results[0]
    assert set(r["sweep"]) == set(single.history)
    for k, v in single.history.items():
        assert np.shape(r["sweep"][k]) == v.shape == (5, 2)
        np.testing.assert_allclose(r["sweep"][k], v, rtol=2e-4, atol=2e-5, err_msg=k)
    for got, want in zip(r["sweep_params"], jax.tree.leaves(single.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=2e-4, atol=1e-5)
    assert r["sweep_best"] == sweep.table(single)[0]["trial"]
    # successive halving (rungs of 6, 3 and 2 trials: selections between calls) the same way
    _, rows, _ = sweep.successive_halving(jax.random.key(3), namespace["SPEC"], namespace["RANGES"], (xt, yt),
                                          (xv, yv), **namespace["HALVING"])
    assert [row["trial"] for row in r["halving"]] == [row["trial"] for row in rows]
    for got, want in zip(r["halving"], rows):
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=2e-5, err_msg=k)
    # K-fold cross-validation: configurations split over the four devices, folds vmapped
    cv = sweep.kfold_cv(jax.random.key(4), namespace["SPEC"], namespace["KFOLD"], xt, yt, k=2, epochs=1)
    np.testing.assert_allclose(r["kfold"]["val_loss"], cv.val_loss, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(r["kfold"]["val_acc"], cv.val_acc, rtol=2e-4, atol=2e-5)
    assert r["kfold"]["best"] == cv.best


def test_processes_that_load_different_data_are_refused(tmp_path):
    """Every process must pass fit the same data: the upload compares them and stops the run."""
    codes, logs, _ = _run_two_processes(tmp_path, seeds=(0, 1))  # process 1 splits its data differently
    assert codes == [1, 1], logs
    for log in logs:
        assert "passed to device_put is not the same on each process" in log, log[-3000:]
