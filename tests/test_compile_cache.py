"""The on-disk cache of compiled programs: whole files only, named by checksum, self-repairing,
and results that do not depend on it (separate `jaxscratch train` processes sharing a folder)."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from jaxscratch import compile_cache

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--quiet"]

# `jaxscratch train` in a process that reports how many programs it read from the store.
COUNT_HITS = r"""
import json, sys
import jax
from jaxscratch import cli
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
sys.argv = ["jaxscratch", *sys.argv[1:]]
code = cli.run()
print(json.dumps({"code": code, "hits": len(hits)}))
"""


def _entry(folder, name, data: bytes, digest=None):
    path = folder / f"{name}.{digest or hashlib.sha256(data).hexdigest()}"
    path.write_bytes(data)
    return path


def test_tidy_keeps_whole_entries_and_removes_everything_else(tmp_path):
    assert compile_cache._tidy(tmp_path / "absent") == {}  # nothing created by a look
    assert not (tmp_path / "absent").exists()
    good = _entry(tmp_path, "k1-cache", b"program one")
    second = _entry(tmp_path, "k1-cache", b"program one, compiled again")  # equal programs, other bytes
    truncated = _entry(tmp_path, "k2-cache", b"prog", digest=hashlib.sha256(b"program two").hexdigest())
    foreign = tmp_path / "k3-cache"  # JAX's own format: no checksum in the name
    foreign.write_bytes(b"?")
    stale, fresh = tmp_path / ".k4-cache.ab12.tmp", tmp_path / ".k5-cache.cd34.tmp"
    stale.write_bytes(b"half"), fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200,) * 2)
    dead, mine = tmp_path / ".staging" / "999999999-00", tmp_path / ".staging" / f"{os.getpid()}-00"
    dead.mkdir(parents=True), mine.mkdir()
    kept = compile_cache._tidy(tmp_path)
    assert kept == {"k1-cache": good} or kept == {"k1-cache": second}
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {kept["k1-cache"].name, fresh.name, ".staging"}  # a fresh temporary file may be in use
    assert [p.name for p in (tmp_path / ".staging").iterdir()] == [mine.name]  # a dead process's folder goes
    assert not truncated.exists() and not foreign.exists()


def test_enable_checks_its_argument_and_respects_off(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"min_compile_time_s must be a number >= 0; got -1"):
        compile_cache.enable(tmp_path, min_compile_time_s=-1)
    (tmp_path / "a-file").write_text("")
    assert compile_cache.enable(tmp_path / "a-file" / "cache") is None  # cannot be written: no cache, no error
    assert compile_cache._state == {} and jax.config.jax_compilation_cache_dir is None
    monkeypatch.setenv("JAXSCRATCH_COMPILE_CACHE", "off")
    assert compile_cache.default_dir() is None
    monkeypatch.setenv("JAXSCRATCH_COMPILE_CACHE", str(tmp_path / "here"))
    assert compile_cache.default_dir() == tmp_path / "here"
    monkeypatch.delenv("JAXSCRATCH_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == tmp_path / "xdg" / "jaxscratch" / "compiled"


def _train(cwd, env, out):
    proc = subprocess.run([sys.executable, "-c", COUNT_HITS, *ARGS, "--out", out], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["code"] == 0
    with open(cwd / out / "metrics.json") as f:
        history = json.load(f)["history"]
    return report["hits"], {k: v for k, v in history.items() if k != "time"}


def test_processes_share_compiled_programs_with_identical_results(tmp_path):
    folder = tmp_path / "compiled"
    env = {**os.environ, "JAXSCRATCH_COMPILE_CACHE": str(folder), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    hits, first = _train(tmp_path, env, "first")
    entries = sorted(folder.glob("*-cache.*"))
    names = [p.name.split("-")[0] for p in entries]
    assert hits == 0 and "jit_epoch_fn" in names and "jit_eval_fn" in names
    assert all(p.name.rpartition(".")[2] == hashlib.sha256(p.read_bytes()).hexdigest() for p in entries)
    hits, second = _train(tmp_path, env, "second")
    assert hits == len(entries) and second == first  # read back, and the same numbers to the bit
    # A program compiling in about the 0.1 s threshold may be kept only by a later, slower run.
    entries = sorted(folder.glob("*-cache.*"))
    names = [p.name.split("-")[0] for p in entries]
    # A damaged entry is a miss, silently: compiled again, shared anew, the same results.
    epoch_entry = entries[names.index("jit_epoch_fn")]
    epoch_entry.write_bytes(epoch_entry.read_bytes()[:1000])
    hits, third = _train(tmp_path, env, "third")
    assert hits == len(entries) - 1 and third == first
    assert compile_cache._tidy(folder).keys() >= {p.name.rpartition(".")[0] for p in entries}  # whole again
    # off: nothing read, nothing written
    off = {**env, "JAXSCRATCH_COMPILE_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    hits, fourth = _train(tmp_path, off, "fourth")
    assert hits == 0 and fourth == first and not (tmp_path / "xdg" / "jaxscratch").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([".staging"] + [p.name for p in
                                                                 compile_cache._tidy(folder).values()])
    assert list((folder / ".staging").iterdir()) == []  # every private folder removed at exit


def test_a_caller_configured_cache_is_left_alone(tmp_path):
    script = (f"import jax; jax.config.update('jax_compilation_cache_dir', {str(tmp_path / 'theirs')!r})\n"
              f"from jaxscratch import compile_cache\nprint(compile_cache.enable({str(tmp_path / 'ours')!r}))")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
