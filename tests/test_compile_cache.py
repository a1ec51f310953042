"""The on-disk store of compiled programs: atomic, checksummed, self-repairing, and results that
do not depend on it (separate `jaxscratch train` processes sharing one folder)."""
import json
import os
import subprocess
import sys
from pathlib import Path

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


def store(tmp_path):
    return compile_cache._store_class()(tmp_path)


def test_store_round_trip_and_refuses_damaged_entries(tmp_path):
    s = store(tmp_path / "new")
    assert s.get("k1") is None and not (tmp_path / "new").exists()  # nothing created by a read
    s.put("k1", b"executable bytes")
    assert s.get("k1") == b"executable bytes"
    s.put("k1", b"other")  # an existing entry is kept (JAX's rule: same key, same program)
    assert s.get("k1") == b"executable bytes"
    entry = tmp_path / "new" / "k1-cache"
    for damage in (lambda b: b[:-5], lambda b: b[:3], lambda b: bytes([b[0] ^ 1]) + b[1:], lambda b: b""):
        s.put("k1", b"executable bytes")
        entry.write_bytes(damage(entry.read_bytes()))
        assert s.get("k1") is None and not entry.exists()  # a miss, and the damaged entry is gone
    assert sorted(os.listdir(tmp_path / "new")) == []  # no temporary file left behind
    with pytest.raises(ValueError, match="plain file names"):
        s.get("../outside")


def test_enable_checks_its_argument_and_respects_off(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"min_compile_time_s must be a number >= 0; got -1"):
        compile_cache.enable(tmp_path, min_compile_time_s=-1)
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
    entries = sorted(folder.glob("*-cache"))
    names = [p.name.split("-")[0] for p in entries]
    assert hits == 0 and "jit_epoch_fn" in names and "jit_eval_fn" in names
    hits, second = _train(tmp_path, env, "second")
    assert hits == len(entries) and second == first  # read back, and the same numbers to the bit
    # A damaged entry is a miss, silently: compiled again, written anew, the same results.
    epoch_entry = entries[names.index("jit_epoch_fn")]
    blob = epoch_entry.read_bytes()
    epoch_entry.write_bytes(blob[: len(blob) // 2])
    hits, third = _train(tmp_path, env, "third")
    assert hits == len(entries) - 1 and third == first
    assert store(folder).get(epoch_entry.name.removesuffix("-cache")) is not None  # whole again
    # off: nothing read, nothing written
    off = {**env, "JAXSCRATCH_COMPILE_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    hits, fourth = _train(tmp_path, off, "fourth")
    assert hits == 0 and fourth == first and not (tmp_path / "xdg" / "jaxscratch").exists()
    assert sorted(folder.iterdir()) == entries  # no temporary files


def test_a_caller_configured_cache_is_left_alone(tmp_path):
    script = (f"import jax; jax.config.update('jax_compilation_cache_dir', {str(tmp_path / 'theirs')!r})\n"
              f"from jaxscratch import compile_cache\nprint(compile_cache.enable({str(tmp_path / 'ours')!r}))")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
