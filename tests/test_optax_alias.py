"""optax's own optimizer test, as shipped in the optax wheel, run on our optimizers.

``optax/_src/alias_test.py``'s ``test_optimization`` minimises a parabola and the Rosenbrock
function for 10,000 steps in float32 and complex64 (conjugating the gradients as optax asks),
checks the minimum to 3e-2 and that the second call of ``update`` does not recompile. It looks
each optimizer up by name in ``optax.alias``; here it finds ours instead (with optax's
arguments for each), and optimizers we do not have are skipped by that test's own mechanism.
"""
import types
import unittest

import pytest

from jaxscratch import optim

alias_test = pytest.importorskip("optax._src.alias_test")
absltest = pytest.importorskip("absl.testing.absltest")

OURS = ("adadelta", "adagrad", "adam", "adamax", "adamw", "lion", "nadam", "rmsprop", "sgd")


class OurAliases(types.SimpleNamespace):
    def __getattr__(self, name):  # an optimizer optax has and we do not
        raise absltest.SkipTest(f"jaxscratch has no {name}")


def optax_cases(prefix: str):
    return [name for name in unittest.TestLoader().getTestCaseNames(alias_test.AliasTest) if name.startswith(prefix)]


CASES = optax_cases("test_optimization")


@pytest.fixture
def our_aliases(monkeypatch):
    monkeypatch.setattr(alias_test, "alias", OurAliases(**{n: getattr(optim, n) for n in OURS}))


def run_case(name):
    result = unittest.TestResult()
    alias_test.AliasTest(name).run(result)
    return result


@pytest.mark.parametrize("name", CASES)
def test_optax_alias_test_passes_on_ours(our_aliases, name):
    result = run_case(name)
    problems = [text for _, text in result.failures + result.errors]
    assert not problems, "\n".join(problems)
    if result.skipped:  # an optimizer we lack, or a case optax itself skips (complex Lion, ...)
        pytest.skip(result.skipped[0][1])


def test_every_optimizer_of_ours_that_optax_tests_is_run(our_aliases):
    """The skip mechanism skips only optimizers we lack: each of ours runs in both dtypes."""
    ran = set()
    for params in alias_test._OPTIMIZERS_UNDER_TEST:
        if params["opt_name"] in OURS:
            ran.add(params["opt_name"])
    assert ran == set(OURS)
