"""Every example runs in its --quick mode, as a user would run it, and prints what it promises.

Each runs in a subprocess (its own argv, matplotlib backend and JAX state) with strict dtype
promotion and raising rank promotion switched on through JAX's environment variables.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> (extra arguments, a regex its output must match, files it must write)
CASES = {
    "quickstart.py": ([], r"final test accuracy (9[0-9]|100)\.\d%", []),
    "gradient_descent.py": (["--out", "{out}"], r"-0\.034\d.*0\.046\d", ["gradient_descent.png"]),
    "optimizer_paths.py": (["--out", "{out}"], r"adagrad\s+lr 1\.5", ["optimizer_paths_textbook.png"]),
    "gradient_check.py": ([], r"relative", []),
    "optimizer_comparison.py": (["--out", "{out}"], r"adam\s+loss \S+\s+test acc (9\d|100)\.\d%",
                                ["optimizer_comparison.png"]),
    "activation_histograms.py": (["--out", "{out}"], r"relu\s+he(\s+0\.[6-9]\d*){5}",  # He keeps the scale
                                 [f"activation_histograms_{a}.png" for a in ("sigmoid", "tanh", "relu")]),
    "weight_init_comparison.py": (["--out", "{out}"],
                                  r"std 0\.01\s+loss 2\.30\d*\s(?s:.*)He sqrt\(2/n\)\s+loss 0\.\d+\s+test acc [89]\d\.\d%",
                                  ["weight_init_comparison.png"]),
    "overfitting.py": (["--out", "{out}"], r"plain\s+100 epochs\s+train\s+9\d\.\d%", ["overfitting.png"]),
    "batchnorm_grid.py": (["--out", "{out}"], r"BN wins at 1[0-6]/16 scales", ["batchnorm_grid.png"]),
    "hyperparameter_search.py": (["--out", "{out}"], r"(?s)random search: 12 trials x 3 epochs.*successive halving: 12 -> 4 trials.*: (NOT )?within 1 point.*halving winner test \d+\.\d%", ["hyperparameter_search.png"]),
    "kfold_cv.py": (["--out", "{out}"], r"(?s)9 configurations x 3 folds.*best: lr \S+ wd \S+.*\(b\) ensemble of the 3 fold models: test \d+\.\d%", ["kfold_cv.png"]),
    "bring_your_own_model.py": (["--out", "{out}"],
                                r"(?s)flax linen\s+[\d,]+ params.*test\s+(8\d|9\d|100)\.\d%.*equinox\s+[\d,]+ params"
                                r".*(\n  seed \d [^\n]*test\s+\d+\.\d%){4}\ntest accuracy over 4 seeds: \d+\.\d% \+- \d+\.\d",
                                ["bring_your_own_model.png"]),
    "regression.py": (["--out", "{out}"], r"epoch 20/20 [^\n]*test rmse 0\.[0-2]\d*\s(?s:.*)fit and command agree",
                      ["regression.png"]),
}


def run_example(script, args):
    env = dict(os.environ, JAX_NUMPY_DTYPE_PROMOTION="strict", JAX_NUMPY_RANK_PROMOTION="raise",
               MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_quick(script, tmp_path):
    args, pattern, files = CASES[script]
    result = run_example(script, [a.format(out=tmp_path) for a in args])
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(pattern, result.stdout), result.stdout[-3000:]
    for name in files:
        path = tmp_path / name
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_library_never_imports_optax_or_matplotlib():
    code = "import sys, jaxscratch; bad = {'optax', 'matplotlib', 'sklearn'} & set(sys.modules); assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr


def test_version_is_exposed():
    import jaxscratch

    assert re.fullmatch(r"\d+\.\d+\.\d+", jaxscratch.__version__)
