"""`jaxscratch train` as separate processes: killed or signalled in the middle of a checkpoint
save, bit-identical results from one seed, nothing written outside --out; and no code-executing
file format anywhere in the package. The processes share one folder of compiled programs.

One module fixture starts every process at once (two reference runs and three runs stopped
during epoch 2's save), then resumes the stopped ones; the tests read what they left.
"""
import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxscratch import checkpoint, compile_cache, runlog

ROOT = Path(__file__).resolve().parents[1]
# Small but complete: batch norm (running statistics), dropout (the PRNG), 3 epochs of ~20 steps.
ARGS = ["train", "--epochs", "3", "--hidden", "16", "--batch-size", "64", "--batchnorm", "--dropout", "0.1", "--quiet"]
CLOCKS = ("wall_time_s", "steps_per_second", "time")  # wall-clock fields: the only ones allowed to differ

# Runs `jaxscratch train`, delivering a signal to itself from a checkpoint hook: in the
# n-th save, right after leaf `leaf` went into the temporary file. Fault injection, not timing luck.
STOP_IN_SAVE = r"""
import os, signal, sys
from jaxscratch import checkpoint, cli
sig, save, leaf = getattr(signal, sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises even if the parent ignores it
saves = []
def hook(index):
    if index == 0:
        saves.append(index)
    if len(saves) == save and index == leaf:
        os.kill(os.getpid(), sig)
checkpoint._after_leaf = hook
sys.exit(cli.main(sys.argv[4:]))
"""
STOPS = {"killed": ("SIGKILL", 3), "terminated": ("SIGTERM", 0), "interrupted": ("SIGINT", 5)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every process in a sandbox whose HOME, caches and temp folder are empty folders of its own."""
    box = tmp_path_factory.mktemp("sandbox")
    dirs = {name: box / name for name in ("home", "cache", "tmp", "mpl", "cwd", "no-matplotlib")}
    for d in dirs.values():
        d.mkdir()
    # The core install, without matplotlib (no figure: 1.5 s less per process; test_cli draws them).
    (dirs["no-matplotlib"] / "matplotlib.py").write_text("raise ImportError('hidden by test_reliability')\n")
    env = {**os.environ, "HOME": str(dirs["home"]), "XDG_CACHE_HOME": str(dirs["cache"]), "TMPDIR": str(dirs["tmp"]),
           "MPLCONFIGDIR": str(dirs["mpl"]), "PYTHONDONTWRITEBYTECODE": "1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(dirs["no-matplotlib"]), str(ROOT)])}
    env.pop("JAXSCRATCH_DATA", None)
    env.pop("JAXSCRATCH_COMPILE_CACHE", None)  # the default: compiled programs in the sandbox's cache, shared

    def start(argv):
        return subprocess.Popen([sys.executable, *argv], cwd=dirs["cwd"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    procs = {name: start(["-m", "jaxscratch", *ARGS, "--out", name]) for name in ("a", "b")}
    for name, (sig, leaf) in STOPS.items():
        procs[name] = start(["-c", STOP_IN_SAVE, sig, "2", str(leaf), *ARGS, "--out", name])
    done = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in procs.items()}
    stopped = {name: {"files": sorted(os.listdir(dirs["cwd"] / name)),
                      "epochs": len(checkpoint.load_metadata(dirs["cwd"] / name / "checkpoint.npz", verify=True)
                                    ["history"]["epoch"]),
                      "logged": [r["epoch"] for r in runlog.read_metrics(dirs["cwd"] / name / "metrics.jsonl")],
                      **({"interrupted": _interrupted(dirs["cwd"] / name)} if name != "killed" else {})}
               for name in STOPS}
    resumed = {name: start(["-m", "jaxscratch", "train", "--out", name, "--resume", "--quiet"]) for name in STOPS}
    after = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in resumed.items()}
    return {"cwd": dirs["cwd"], "dirs": dirs, "done": done, "stopped": stopped, "resumed": after}


def _interrupted(run_dir: Path) -> tuple:
    m = json.loads((run_dir / "metrics.json").read_text())
    return m.get("interrupted"), m.get("stopped_by"), m.get("epochs_done")


def metrics(run_dir: Path) -> dict:
    """metrics.json without its wall-clock fields."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in CLOCKS}
        return obj

    return strip(json.loads((run_dir / "metrics.json").read_text()))


def arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "__manifest__"}


def jsonl(run_dir: Path) -> list:
    """metrics.jsonl's records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in CLOCKS} for r in runlog.read_metrics(run_dir / "metrics.jsonl")]


def assert_same_run(x: Path, y: Path):
    assert metrics(x) == metrics(y)
    assert jsonl(x) == jsonl(y) and [r["epoch"] for r in jsonl(x)] == [1, 2, 3]  # every epoch once, in order
    for name in ("checkpoint.npz", "best.npz"):
        ax, ay = arrays(x / name), arrays(y / name)
        assert ax.keys() == ay.keys()
        for k in ax:
            assert ax[k].dtype == ay[k].dtype and ax[k].tobytes() == ay[k].tobytes(), (name, k)


def test_same_seed_gives_bit_identical_runs_in_separate_processes(runs):
    for name in ("a", "b"):
        assert runs["done"][name] == (0, "")
    a, b = runs["cwd"] / "a", runs["cwd"] / "b"
    assert_same_run(a, b)
    assert (a / "best.npz").read_bytes() == (b / "best.npz").read_bytes()  # no clock in it: the same bytes
    step_loss = metrics(a)["history"]["step_loss"]
    assert len(step_loss) == 3 * (1294 // 64) and len(set(step_loss)) > 10  # it really trained


def test_sigkill_during_a_save_keeps_the_previous_checkpoint_and_resume_matches(runs):
    code, err = runs["done"]["killed"]
    assert code == -signal.SIGKILL, err
    stopped = runs["stopped"]["killed"]
    assert stopped["epochs"] == 1  # epoch 1's checkpoint, whole (checksums verified)
    tmp = [f for f in stopped["files"] if f.endswith(".tmp")]  # the killed save's temporary file
    # and its lock file (the OS released the lock itself); metrics.jsonl holds epoch 2 (logged before its save)
    assert [f for f in stopped["files"] if f not in tmp] == [".lock", "checkpoint.npz", "metrics.jsonl"] and len(tmp) == 1
    assert stopped["logged"] == [1, 2]
    assert runs["resumed"]["killed"] == (0, "")
    assert sorted(os.listdir(runs["cwd"] / "killed")) == ["best.npz", "checkpoint.npz", "metrics.json",
                                                          "metrics.jsonl"]  # both gone
    assert_same_run(runs["cwd"] / "killed", runs["cwd"] / "a")


@pytest.mark.parametrize("name", ["terminated", "interrupted"])
def test_sigterm_or_sigint_during_a_save_exits_cleanly_and_resume_matches(runs, name):
    code, err = runs["done"][name]
    assert code == 130
    assert err == f"jaxscratch train: interrupted; the last finished epoch is saved (jaxscratch evaluate {name} " \
                  f"works on it): continue with jaxscratch train --out {name} --resume\n"
    # no temporary file left; a finished run's files, from the last checkpoint: evaluate and predict work on it
    assert runs["stopped"][name] == {"files": ["best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl"],
                                     "epochs": 1, "logged": [1, 2], "interrupted": (True, "interrupted", 1)}
    assert runs["resumed"][name] == (0, "")
    assert_same_run(runs["cwd"] / name, runs["cwd"] / "a")


def test_nothing_is_written_outside_the_run_folders(runs):
    dirs = runs["dirs"]
    for name in ("home", "tmp", "mpl"):
        assert list(dirs[name].rglob("*")) == [], name
    # but compiled programs, in the cache: whole entries only, though five processes shared them at once
    compiled = dirs["cache"] / "jaxscratch" / "compiled"
    files = sorted(p for p in dirs["cache"].rglob("*") if p.is_file())
    assert files and all(p.parent == compiled for p in files), files  # the killed run's private folder is gone
    assert sorted(compile_cache._tidy(compiled).values()) == files  # each one's content matches its name
    assert sorted(os.listdir(dirs["cwd"])) == sorted(["a", "b", *STOPS])
    assert sorted(os.listdir(dirs["cwd"] / "a")) == ["best.npz", "checkpoint.npz", "metrics.json", "metrics.jsonl"]


# ---------------------------------------------------------------- no code-executing formats
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def python_files():
    for folder in ("jaxscratch", "examples", "tools", "benchmarks"):
        yield from sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", list(python_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_and_no_np_load_that_may_unpickle(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not UNSAFE_MODULES & {n.split(".")[0] for n in names}, f"{path}:{node.lineno} imports {names}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy", "jnp"):
            kw = {k.arg: k.value for k in node.keywords}  # NumPy's default is allow_pickle=False
            assert "allow_pickle" not in kw or (isinstance(kw["allow_pickle"], ast.Constant)
                                                and kw["allow_pickle"].value is False), \
                f"{path}:{node.lineno}: np.load may unpickle"
            assert None not in kw, f"{path}:{node.lineno}: np.load(**kwargs) could pass allow_pickle=True"
        if path.parent.name == "jaxscratch" and isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("eval", "exec"), f"{path}:{node.lineno} calls {node.func.id}"
