"""The docstring examples run (every module of the package), and every public optimizer,
schedule and loss has one."""
import doctest
import importlib
import inspect
import pkgutil

import pytest

import jaxscratch
from jaxscratch import losses, optim, schedules

MODULES = sorted(m.name for m in pkgutil.iter_modules(jaxscratch.__path__, "jaxscratch.")
                 if m.name != "jaxscratch.__main__")  # importing it runs the command


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def public_functions(module, exclude=()):
    return [n for n in module.__all__ if n not in exclude and inspect.isfunction(getattr(module, n))]


WITH_EXAMPLES = (
    [("optim", n) for n in [*optim.OPTIMIZERS, "scale_by_adam", "scale_by_adamax"]]
    + [("schedules", n) for n in public_functions(schedules)]
    + [("losses", n) for n in ("softmax_cross_entropy", "mse", "sum_squared_error", "l2_penalty", "accuracy",
                               "is_weight")]
)


@pytest.mark.parametrize("module, name", WITH_EXAMPLES)
def test_public_function_has_an_example(module, name):
    doc = getattr({"optim": optim, "schedules": schedules, "losses": losses}[module], name).__doc__ or ""
    assert ">>>" in doc, f"{module}.{name} has no docstring example"
