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

from jaxscratch import checkpoint, data, nn, optim, train

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
    from jaxscratch import checkpoint, data, nn, optim, train
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
    with open(out, "w") as f:
        json.dump(result, f)
""")


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


def test_fit_across_two_processes_equals_one_device(tmp_path):
    codes, logs, outs = _run_two_processes(tmp_path)
    for i, (code, log) in enumerate(zip(codes, logs)):
        assert code == 0, f"process {i} exited with {code}:\n{log[-3000:]}"
    results = [json.loads(o.read_text()) for o in outs]
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


def test_processes_that_load_different_data_are_refused(tmp_path):
    """Every process must pass fit the same data: the upload compares them and stops the run."""
    codes, logs, _ = _run_two_processes(tmp_path, seeds=(0, 1))  # process 1 splits its data differently
    assert codes == [1, 1], logs
    for log in logs:
        assert "passed to device_put is not the same on each process" in log, log[-3000:]
